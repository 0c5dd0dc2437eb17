"""Checkpoints of the whole training state plus the config that produced it (orbax).

Layout of one run (``run_dir = <log_path>/<project>/<experiment>``)::

    run_dir/checkpoints/<step>/state/   the TrainState pytree (StandardSave)
    run_dir/checkpoints/<step>/config/  the experiment config (JsonSave)
    run_dir/checkpoints/<step>/meta/    sizes and counters for load_policy (JsonSave)

``<step>`` is the number of completed training iterations. Orbax writes each checkpoint
into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so a run killed during a
save leaves only a tmp directory, which is never listed as a step: resuming picks the last
*complete* checkpoint (tests/test_interrupt.py kills real runs to check this). Nothing here
deletes tmp or damaged directories (``cleanup_tmp_directories=False``); only
``runner.max_to_keep`` retires old complete ones. The one exception is orbax's own: saving a
step again (a resumed run reaching the step whose save was interrupted) first removes that
step's unfinished tmp directory, which the complete checkpoint then replaces.

Restoring goes into an *abstract* target (``jax.eval_shape`` of ``Trainer.init``): orbax
reads each array straight into the shape, dtype and sharding the current config asks for.
Before it does, :meth:`Checkpointer.restore` compares the saved tree with the target and
fails with the differing leaves and config fields when they cannot fit.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


STATE, CONFIG, META = "state", "config", "meta"
CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(RuntimeError):
  """A checkpoint is missing, damaged, or does not fit the current config."""


def _quiet_closed_loop_callbacks() -> None:
  """Drops the noise that follows a failed orbax read, so the CheckpointError is what shows.

  orbax reads through tensorstore inside ``asyncio.run``. When one read fails (a damaged
  file), the loop is closed while tensorstore still finishes the other reads it started;
  their completion callbacks then call ``loop.call_soon_threadsafe`` on the closed loop from
  tensorstore's threads, and Python prints each ``RuntimeError: Event loop is closed`` as an
  "exception ignored" traceback (``sys.unraisablehook``) -- dozens of them around the one
  message that matters, after the read has already failed. This hook drops exactly those
  (raised by ``asyncio``'s ``_check_closed``) and passes everything else to the previous hook.
  Installed once, before the first read: the callbacks can fire before the error reaches us.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_panda_rl_quiet_closed_loop", False):
    return

  def hook(unraisable):
    exc, tb = unraisable.exc_value, unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    if (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
        and tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"):
      return
    previous(unraisable)

  hook._panda_rl_quiet_closed_loop = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_drop_orphaned_read_errors)


def _drop_orphaned_read_errors(record: logging.LogRecord) -> bool:
  """Drops asyncio's "Task/Future exception was never retrieved" for tensorstore reads.

  The same failed read as above: when one read fails, orbax stops waiting and the other reads'
  tasks (or the bare futures tensorstore hands asyncio) end with their own tensorstore errors
  nobody awaits; asyncio logs each with its traceback when it is collected. The error we raise
  already names the damaged file. Other never-retrieved errors are still logged.
  """
  exc = record.exc_info[1] if record.exc_info else None
  return not (str(record.msg).startswith(_NEVER_RETRIEVED)
              and exc is not None and "tensorstore_spec" in str(exc))


# asyncio's two wordings (base_events' default exception handler, via Task or Future __del__).
_NEVER_RETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")


def _handlers():
  return {STATE: ocp.StandardCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler(),
          META: ocp.JsonCheckpointHandler()}


# --------------------------------------------------------------------------------------
# Locating checkpoints.


def _is_manager_root(path: Path) -> bool:
  return path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def resolve_checkpoint_path(path: str | os.PathLike) -> Tuple[Path, Optional[int]]:
  """Finds the checkpoint directory (root of step dirs) and step a user pointed at.

  Accepts a run directory (containing ``checkpoints/``), a checkpoints root (containing
  ``<step>/`` dirs), or one step directory (``.../checkpoints/<step>``).

  Returns:
    ``(root, step)`` with ``step=None`` meaning "the latest complete one".
  """
  p = Path(path).expanduser().absolute()
  if not p.exists():
    raise CheckpointError(f"Checkpoint path {str(p)!r} does not exist.")
  if p.name.isdigit() and (p / CONFIG).is_dir():
    return p.parent, int(p.name)
  if (p / CHECKPOINT_SUBDIR).is_dir():
    p = p / CHECKPOINT_SUBDIR
  if _is_manager_root(p):
    return p, None
  raise CheckpointError(
      f"No checkpoints under {str(path)!r}: expected a run directory with "
      f"'{CHECKPOINT_SUBDIR}/<step>/', a checkpoints directory with '<step>/' "
      f"sub-directories, or a single '<step>/' directory.")


# --------------------------------------------------------------------------------------
# Comparing a saved tree with an abstract target.


def _key_str(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat_shapes(tree: Any) -> Dict[str, Tuple[Tuple[int, ...], str]]:
  """path "a.b.c" -> (shape, dtype name) for every array-like leaf."""
  out = {}
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in leaves:
    name = ".".join(_key_str(k) for k in path)
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    dtype = getattr(leaf, "dtype", None)
    out[name] = (shape, str(np.dtype(dtype)) if dtype is not None else type(leaf).__name__)
  return out


def tree_mismatches(saved: Any, target: Any, limit: int = 12) -> List[str]:
  """Leaves whose presence, shape or dtype differ between a saved tree and a target."""
  a, b = _flat_shapes(saved), _flat_shapes(target)
  out = []
  for name in sorted(set(a) | set(b)):
    if name not in b:
      out.append(f"{name}: in the checkpoint {a[name][0]} {a[name][1]}, not in the "
                 "current state")
    elif name not in a:
      out.append(f"{name}: in the current state {b[name][0]} {b[name][1]}, not in the "
                 "checkpoint")
    elif a[name][0] != b[name][0]:
      out.append(f"{name}: checkpoint shape {a[name][0]} vs current {b[name][0]}")
    elif a[name][1] != b[name][1] and a[name][1] != "object" and b[name][1] != "object":
      out.append(f"{name}: checkpoint dtype {a[name][1]} vs current {b[name][1]}")
  if len(out) > limit:
    out = out[:limit] + [f"... and {len(out) - limit} more"]
  return out


# --------------------------------------------------------------------------------------


class Checkpointer:
  """Saves/restores ``(TrainState, config, meta)`` under ``directory`` with orbax.

  Args:
    directory: the checkpoints root (``run_dir/checkpoints``); created on first save.
    max_to_keep: keep only the newest N complete checkpoints (``None``/0: keep all).
    async_save: write in a background thread (the device->host copy happens before
      :meth:`save` returns, so the caller may donate the state's buffers right after).
    read_only: never create or delete anything (evaluation, ``load_policy``).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: Optional[int] = None,
               async_save: bool = True, read_only: bool = False):
    self.directory = Path(directory).absolute()
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f"Checkpoint directory {str(self.directory)!r} does not exist.")
    _quiet_closed_loop_callbacks()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep or None,
        save_interval_steps=0 if read_only else 1,  # orbax warns when it has to set this
        create=not read_only,
        cleanup_tmp_directories=False,  # a tmp dir is evidence of an interrupted save
        enable_async_checkpointing=async_save,
        read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=_handlers())

  # -- queries ----------------------------------------------------------------------------

  def all_steps(self) -> List[int]:
    """Steps of the complete checkpoints, ascending (tmp dirs are not steps)."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def incomplete(self) -> List[Path]:
    """Leftovers of interrupted saves (orbax tmp directories); never deleted here (orbax
    replaces one when the same step is saved again)."""
    if not self.directory.is_dir():
      return []
    return sorted(p for p in self.directory.iterdir()
                  if ocp.path.atomicity_types.TMP_DIR_SUFFIX in p.name)

  def _step_dir(self, step: int) -> Path:
    return self.directory / str(step)

  def resolve_step(self, step: Optional[int] = None) -> int:
    """``step`` if it is a complete checkpoint, the latest complete one for None; else
    raises :class:`CheckpointError` listing what exists."""
    steps = self.all_steps()
    if step is None:
      if not steps:
        extra = ""
        if self.incomplete():
          extra = (" (only incomplete saves: "
                   + ", ".join(p.name for p in self.incomplete()) + ")")
        raise CheckpointError(
            f"No complete checkpoint in {str(self.directory)!r}{extra}.")
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f"No complete checkpoint for step {step} in "
                            f"{str(self.directory)!r}; available steps: {steps}.")
    return step

  def _damaged(self, step: int, what: str, err: BaseException) -> CheckpointError:
    others = [s for s in self.all_steps() if s != step]
    detail = str(err) if len(str(err)) < 300 else str(err)[:300] + " ..."
    return CheckpointError(
        f"Checkpoint {str(self._step_dir(step))!r} is damaged or unreadable ({what}: "
        f"{type(err).__name__}: {detail}). It was NOT deleted. Move it aside (e.g. rename it "
        f"to '{step}.damaged') to resume from an earlier checkpoint"
        + (f" (complete steps: {others})" if others else " (there is no other)") + ".")

  # -- config / meta ------------------------------------------------------------------------

  def restore_config(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The config (plain dict, as saved) of ``step`` (default: the latest)."""
    step = self.resolve_step(step)
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
    except Exception as e:  # noqa: BLE001 - any failure here means an unreadable file
      raise self._damaged(step, "config", e) from e

  def restore_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The ``meta`` item (sizes and counters) of ``step``; ``{}`` for checkpoints without."""
    step = self.resolve_step(step)
    if not (self._step_dir(step) / META).is_dir():
      return {}
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    except Exception as e:  # noqa: BLE001
      raise self._damaged(step, "meta", e) from e

  def saved_tree(self, step: Optional[int] = None) -> Any:
    """The saved state's tree of array metadata (shape/dtype/sharding), no data read."""
    step = self.resolve_step(step)
    try:
      md = self._manager.item_metadata(step)[STATE]
      if md is None:
        raise ValueError("no metadata for the 'state' item")
      return md.tree if hasattr(md, "tree") else md
    except Exception as e:  # noqa: BLE001
      raise self._damaged(step, "state metadata", e) from e

  # -- save / restore -----------------------------------------------------------------------

  def save(self, step: int, state: Any, config: Any, meta: Optional[Mapping] = None) -> None:
    """Starts saving ``state`` + ``config`` (a ConfigDict or dict) as ``step``.

    Returns once the arrays are copied off the device; the files are written in the
    background (see :meth:`wait_until_finished`). Only process 0 writes the JSON items;
    orbax coordinates the array writes across processes.
    """
    from panda_rl.config import config_to_dict

    cfg = config_to_dict(config) if hasattr(config, "to_json_best_effort") else dict(config)
    items = {STATE: ocp.args.StandardSave(_drop_empty(state)),
             CONFIG: ocp.args.JsonSave(cfg)}
    if meta is not None:
      items[META] = ocp.args.JsonSave(dict(meta))
    self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              current_config: Any = None) -> Tuple[Any, Dict[str, Any], int]:
    """Restores the training state of ``step`` (default: latest complete) into a target.

    Args:
      abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape(
        trainer.init, key)``) or of arrays, giving the structure, shapes, dtypes and
        shardings wanted.
      current_config: the config of the run asking; its differences from the saved one
        are named in the error when the saved arrays cannot fit.

    Returns:
      ``(state, saved_config_dict, step)``.

    Raises:
      CheckpointError: no checkpoint, a damaged one, or one that does not fit.
    """
    step = self.resolve_step(step)
    saved_config = self.restore_config(step)
    mismatches = tree_mismatches(self.saved_tree(step), _drop_empty(abstract_state))
    if mismatches:
      raise CheckpointError(self._mismatch_message(step, mismatches, saved_config,
                                                   current_config))
    target = jax.tree.map(_abstract_leaf, _drop_empty(abstract_state))
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)}))
    except Exception as e:  # noqa: BLE001
      raise self._damaged(step, "state", e) from e
    state = jax.tree.map(_refill, abstract_state, restored[STATE])
    return state, saved_config, step

  def _mismatch_message(self, step, mismatches, saved_config, current_config) -> str:
    from panda_rl.config import RESUME_FREE_FIELDS, config_diff

    msg = (f"Checkpoint {str(self._step_dir(step))!r} does not fit the current config: the "
           "saved training state differs in\n  " + "\n  ".join(mismatches))
    if current_config is not None:
      diff = config_diff(saved_config, current_config, ignore=RESUME_FREE_FIELDS)
      if diff:
        msg += ("\nConfig fields that differ (checkpoint -> current):\n  "
                + "\n  ".join(diff[:20]) + ("\n  ..." if len(diff) > 20 else ""))
    msg += ("\nResume with the checkpoint's settings, or start a new run (another "
            "runner.logger.experiment_name).")
    return msg

  def wait_until_finished(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _abstract_leaf(x: Any) -> Any:
  """Arrays -> ShapeDtypeStruct with their sharding; ShapeDtypeStructs pass through."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, np.ndarray):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  return x


def _is_empty(x: Any) -> bool:
  shape = getattr(x, "shape", None)
  return shape is not None and int(np.prod(shape)) == 0


def _drop_empty(tree: Any) -> Any:
  """Zero-size arrays -> None. orbax cannot save them, and MJX's ``Data`` has several
  (e.g. ``act`` for a model without actuator activations); :func:`_refill` restores them."""
  return jax.tree.map(lambda x: None if _is_empty(x) else x, tree)


def _refill(target: Any, x: Any) -> Any:
  if _is_empty(target):
    zeros = jax.numpy.zeros(target.shape, target.dtype)
    sharding = getattr(target, "sharding", None)  # a placed state: put it where it belongs
    return jax.device_put(zeros, sharding) if sharding is not None else zeros
  return _like_fresh(target, x)


def _like_fresh(target: Any, x: Any) -> Any:
  """Where the target asked for no sharding, returns an *uncommitted* single-device array,
  as a fresh ``jax.jit`` output is: the resumed run then compiles exactly the program of an
  uninterrupted run (committed inputs add sharding annotations and miss the compile cache).
  """
  if (isinstance(target, jax.ShapeDtypeStruct) and target.sharding is None
      and isinstance(x, jax.Array) and len(x.sharding.device_set) == 1):
    return jax.device_put(np.asarray(x))
  return x


def restore_subtree(directory: str | os.PathLike, step: int, target: Mapping[str, Any]) -> Any:
  """Reads only the parts of a saved state named by ``target`` (partial restore).

  ``target`` mirrors the top of the saved state, e.g. ``{"params": ..., "normalizer":
  ...}`` with ``jax.ShapeDtypeStruct`` leaves (from :meth:`Checkpointer.saved_tree`). The
  rest of the checkpoint (optimizer state, env state) is never read.
  """
  _quiet_closed_loop_callbacks()
  manager = ocp.CheckpointManager(
      Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0),
      item_handlers={STATE: ocp.PyTreeCheckpointHandler()})
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  try:
    out = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item=dict(target), restore_args=restore_args, partial_restore=True)}))[STATE]
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"Checkpoint {str(Path(directory) / str(step))!r} is damaged or "
                          f"unreadable ({type(e).__name__}: {e}). It was NOT deleted.") from e
  finally:
    manager.close()
  return out
