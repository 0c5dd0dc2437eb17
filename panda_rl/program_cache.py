"""Traced programs kept across processes, beside JAX's persistent compilation cache.

JAX's compilation cache (:mod:`panda_rl.compile_cache`) saves XLA's compile, not the Python
tracing and lowering before it, and tracing MJX's physics into the training iteration (or
the evaluation) takes 5-10 s on a 2-core CPU, in every process. So the
library's large programs are also kept *traced*: :func:`jit` exports a program with
``jax.export`` (StableHLO, with the output's tree structure) into
``<compilation cache>/exported/``, and a later process with the same key reads it back in a
fraction of a second; the compilation cache then supplies its compiled form. The exported
program is the one ``jax.jit`` would compile (results are bit-identical; a test checks).

The key is a hash of everything the traced program depends on: the program's name and the
settings it is built from (e.g. the experiment config, minus logging and bookkeeping), the
arguments' tree structure, shapes, dtypes and placements, panda_rl's own source files, the
versions of the libraries that trace it (jax, jaxlib, mujoco, mujoco-mjx, flax, optax, chex,
numpy, ml-collections), JAX's configuration, ``XLA_FLAGS``, the MJX patches (quaternion
barrier, solver sums), and the backend and devices. What it cannot see is code changed
while Python runs (a function of panda_rl replaced in a notebook): set
``PANDA_RL_PROGRAM_CACHE=0`` then. It is off whenever
the compilation cache is off (``PANDA_RL_COMPILATION_CACHE=0``). A program that cannot be
exported (e.g. it holds a host callback) is jitted as usual.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax

from panda_rl import compile_cache

_log = logging.getLogger("panda_rl")

ENV_VAR = "PANDA_RL_PROGRAM_CACHE"
SUBDIR = "exported"
FORMAT = 1  # bump when the file layout changes
_DISTRIBUTIONS = ("jax", "jaxlib", "mujoco", "mujoco-mjx", "flax", "optax", "chex", "numpy",
                  "ml-collections")
# JAX settings that change where or whether programs are cached or logged, not what they are.
_SETTINGS_IGNORED = ("cache", "log", "explain", "dump")


def directory() -> Optional[Path]:
  """Where exported programs are kept; None when the program cache is off."""
  if os.environ.get(ENV_VAR, "1").strip().lower() in compile_cache.OFF_VALUES:
    return None
  where = compile_cache.cache_dir()
  return Path(where) / SUBDIR if where else None


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
  root = Path(__file__).resolve().parent
  h = hashlib.sha256()
  for path in sorted(root.rglob("*")):
    if path.is_file() and path.suffix in (".py", ".xml") and "__pycache__" not in path.parts:
      h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
  return h.hexdigest()


def _versions() -> Dict[str, str]:
  out = {}
  for name in _DISTRIBUTIONS:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = "-"
  return out


def _environment() -> Dict[str, Any]:
  from panda_rl import _mjx_sums, _xla

  devices = jax.devices()
  settings = {k: repr(v) for k, v in jax.config.values.items()
              if not any(word in k for word in _SETTINGS_IGNORED)}
  return {"format": FORMAT, "source": _source_digest(), "versions": _versions(),
          "jax_settings": settings, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "mjx_patch": _xla.MJX_PATCH, "mjx_solver_sums": _mjx_sums.STATUS,
          "backend": jax.default_backend(),
          "platform_version": getattr(getattr(devices[0], "client", None), "platform_version",
                                      ""),
          "devices": [d.device_kind for d in devices], "processes": jax.process_count()}


def _arguments(leaves: Sequence[Any], treedef) -> Dict[str, Any]:
  # Static pytree data may print as "<... object at 0x...>" (MJX's contact fields): the
  # addresses differ between processes; what those objects hold is fixed by the source and
  # the settings, which the key holds.
  tree = re.sub(r" at 0x[0-9a-fA-F]+", "", str(treedef))
  return {"tree": tree, "leaves": [f"{jax.typeof(x)} {_placement(x)}" for x in leaves]}


def _placement(x) -> str:
  """A leaf's sharding when it spans several devices; on one device (or abstract, not yet
  placed) nothing, so a program compiled for the abstract state serves the concrete one."""
  sharding = getattr(x, "sharding", None)
  return str(sharding) if sharding is not None and len(sharding.device_set) > 1 else ""


def program_key(name: str, what: Any, leaves: Sequence[Any], treedef) -> str:
  """The hash naming a program: ``name``, the settings ``what`` it is built from (JSON-able),
  its arguments and everything else it depends on (module docstring)."""
  blob = json.dumps({"name": name, "what": what, "args": _arguments(leaves, treedef),
                     "env": _environment()}, sort_keys=True, default=repr)
  return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _flat(fn: Callable, treedef) -> Tuple[Callable, list]:
  """``fn`` taking and returning flat lists of leaves, and a list that receives the output's
  treedef when it is traced."""
  out_trees = []

  def flat_fn(*leaves):
    out_leaves, tree = jax.tree.flatten(fn(*jax.tree.unflatten(treedef, leaves)))
    out_trees.append(tree)
    return out_leaves

  return flat_fn, out_trees


class CachedJit:
  """``jax.jit(fn, donate_argnums=...)`` whose trace is kept in the program cache.

  Call it like the jitted function, or ``compile(*args)`` for a compiled callable with the
  same calling convention. Each argument signature (tree, shapes, dtypes, placements) is one
  program.
  """

  def __init__(self, fn: Callable, name: str, what: Any, donate_argnums: Sequence[int] = (),
               where: Optional[Path] = None):
    self.fn, self.name, self.what = fn, name, what
    self.donate_argnums = tuple(donate_argnums)
    self.where = where  # None: directory() when the program is built
    self._programs: Dict[Any, Tuple[Callable, Callable]] = {}

  def __call__(self, *args):
    call, unflatten, leaves = self._program(args)
    return unflatten(call(*leaves))

  def compile(self, *args) -> Callable:
    """The program compiled ahead of time for arguments like ``args``."""
    call, unflatten, leaves = self._program(args)
    compiled = call.lower(*leaves).compile()
    return lambda *new_args: unflatten(compiled(*jax.tree.leaves(new_args)))

  def _program(self, args):
    leaves, treedef = jax.tree.flatten(args)
    signature = (treedef, tuple(_arguments(leaves, treedef)["leaves"]))
    if signature not in self._programs:
      call, unflatten = self._load_or_export(leaves, treedef)
      self._programs[signature] = jax.jit(call, donate_argnums=self._donated(args)), unflatten
    call, unflatten = self._programs[signature]
    return call, unflatten, leaves

  def _donated(self, args) -> Tuple[int, ...]:
    """Flat positions of the leaves of the donated arguments."""
    out, start = [], 0
    for i, a in enumerate(args):
      n = len(jax.tree.leaves(a))
      if i in self.donate_argnums:
        out.extend(range(start, start + n))
      start += n
    return tuple(out)

  def _load_or_export(self, leaves, treedef) -> Tuple[Callable, Callable]:
    """(a function of the flat leaves, output leaves -> output): read from the program
    cache, or exported and written to it, or (cache off, not exportable) plain."""
    flat_fn, out_trees = _flat(self.fn, treedef)
    plain = flat_fn, lambda out: jax.tree.unflatten(out_trees[-1], out)
    where = self.where or directory()
    if where is None:
      return plain
    path = where / f"{self.name}-{program_key(self.name, self.what, leaves, treedef)}.exported"
    loaded = _read(path)
    if loaded is None:
      try:
        exported = jax.export.export(jax.jit(flat_fn))(*leaves)
      except Exception as e:  # not exportable: host callbacks, unstable custom calls, ...
        _log.info("panda_rl: program %r is not kept traced (%s: %s)", self.name,
                  type(e).__name__, e)
        return plain
      loaded = exported, out_trees[-1]
      _write(path, *loaded)
    exported, out_tree = loaded
    return exported.call, lambda out: jax.tree.unflatten(out_tree, out)


@functools.lru_cache(maxsize=1)
def _prepare_lapack() -> None:
  """Loads jaxlib's CPU LAPACK kernels, as lowering a linear-algebra op does.

  jaxlib fills in its LAPACK kernels' function pointers only when it lowers such an op; a
  program read back with ``jax.export`` lowers none, so its first Cholesky or LU solve
  (MJX's physics has both) would call a null pointer and crash the process (the upstream
  report: jax-ml/jax#29610). Lowering one tiny Cholesky first avoids that.
  """
  if jax.default_backend() == "cpu":  # lowered only: nothing runs or compiles
    jax.jit(jax.numpy.linalg.cholesky).lower(jax.ShapeDtypeStruct((2, 2), "float32"))


def _read(path: Path):
  try:
    blob = pickle.loads(path.read_bytes())
    _prepare_lapack()
    return jax.export.deserialize(bytearray(blob["exported"])), blob["out_tree"]
  except FileNotFoundError:
    return None
  except Exception as e:  # damaged or from an incompatible version: trace afresh
    _log.warning("panda_rl: ignoring unreadable exported program %s (%s: %s)", path,
                 type(e).__name__, e)
    return None


def _write(path: Path, exported, out_tree) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(pickle.dumps({"exported": bytes(exported.serialize()),
                                  "out_tree": out_tree}))
    os.replace(tmp, path)  # atomic: a concurrent reader sees all of it or nothing
  except OSError as e:
    _log.warning("panda_rl: could not keep program %s (%s)", path, e)


def jit(fn: Callable, name: str, what: Any, donate_argnums: Sequence[int] = (),
        where: Optional[Path] = None) -> CachedJit:
  """``jax.jit(fn, donate_argnums=...)``, traced once per machine and key (see the module).

  Args:
    fn: the function to jit.
    name: the program's name (the start of its file name).
    what: JSON-able settings ``fn`` is built from (part of the key).
    donate_argnums: as for ``jax.jit``.
    where: the directory of exported programs (default :func:`directory`).
  """
  return CachedJit(fn, name, what, donate_argnums, where)
