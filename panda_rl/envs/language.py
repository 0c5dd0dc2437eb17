"""Task instructions as token ids: a small fixed vocabulary and a word-level tokenizer.

Strings cannot live in jitted arrays, so a vision env carries its instruction as int32 token
ids ``[L]`` (padded with :data:`PAD_ID`) and the text itself as a Python attribute. The
vocabulary is fixed and small: it covers the pick-and-place phrasing of the tasks here, and
the policy's embedding table (:class:`panda_rl.networks.CNNEncoder`) is sized from it, so
adding words changes the parameter shapes of new checkpoints (append, never reorder).

    tokenize("Pick up the cube.", 8)  # -> int32 [8]: pick up the cube . <pad> <pad> <pad>
    detokenize(tokenize("Pick up the cube.", 8))  # -> "Pick up the cube."
"""

from __future__ import annotations

import re
from typing import Dict, Sequence

import numpy as np

PAD, UNK = "<pad>", "<unk>"
VOCAB: tuple = (
    PAD, UNK, ".", ",", "pick", "up", "the", "a", "cube", "block", "lift", "grasp", "and",
    "it", "place", "put", "on", "in", "to", "move", "push", "table", "red", "green", "blue",
)
PAD_ID, UNK_ID = 0, 1
VOCAB_SIZE = len(VOCAB)
TOKEN_IDS: Dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
_PUNCT = {".", ","}
_WORD = re.compile(r"[a-z]+|[.,]")


def split_words(text: str) -> list:
  """Lower-cased words and punctuation marks: "Pick up the cube." -> [pick, up, the, cube, .]."""
  return _WORD.findall(text.lower())


def tokenize(text: str, length: int, strict: bool = True) -> np.ndarray:
  """Token ids of ``text``, padded with ``PAD_ID`` to ``length``: int32 [length].

  Args:
    text: the instruction (case and spacing are not kept; letters, "." and "," only).
    length: L, the fixed number of ids returned.
    strict: raise on words outside :data:`VOCAB` and on texts longer than ``length``
      (False: unknown words become ``UNK_ID`` and the text is cut).
  """
  words = split_words(text)
  unknown = [w for w in words if w not in TOKEN_IDS]
  if strict and unknown:
    raise ValueError(f"instruction {text!r}: words {unknown} are not in the vocabulary "
                     f"{list(VOCAB[2:])}")
  if strict and len(words) > length:
    raise ValueError(f"instruction {text!r} has {len(words)} tokens; at most {length} fit "
                     "(raise the env's instruction_length)")
  ids = [TOKEN_IDS.get(w, UNK_ID) for w in words][:length]
  return np.asarray(ids + [PAD_ID] * (length - len(ids)), np.int32)


def detokenize(ids: Sequence[int]) -> str:
  """Inverse of :func:`tokenize` up to case and spacing: capitalised first word,
  punctuation attached to the word before it, padding dropped."""
  out = ""
  for i in np.asarray(ids).reshape(-1).tolist():
    if i == PAD_ID:
      continue
    word = VOCAB[i] if 0 <= i < VOCAB_SIZE else UNK
    out += word if (word in _PUNCT or not out) else " " + word
  return out[:1].upper() + out[1:]
