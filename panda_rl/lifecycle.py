"""The start and the end of a run, for the run loop (:mod:`panda_rl.runner`): a fresh or
resumed initial state (:func:`initial_state`, ``runner.resume``) and clean stops on SIGTERM /
SIGINT (:class:`Preemption`)."""

from __future__ import annotations

from typing import Optional

import jax

from panda_rl.checkpoint import Checkpointer, CheckpointError
from panda_rl.config import RESUME_FREE_FIELDS, config_diff, num_seeds


def _check_resumable(config, ckpt: Checkpointer, say) -> bool:
  """Whether to restore; raises on an existing run without ``runner.resume``."""
  steps = ckpt.all_steps()
  if steps and not config.runner.resume:
    raise CheckpointError(
        f"{str(ckpt.directory)!r} already holds checkpoints (steps {steps}). Continue that "
        "run with --config.runner.resume=True, or start a new one under another "
        "--config.runner.logger.experiment_name (or delete the directory).")
  if not steps and config.runner.resume:
    extra = ""
    if ckpt.incomplete():
      extra = " (ignoring incomplete saves: " + ", ".join(
          p.name for p in ckpt.incomplete()) + ")"
    say(f"runner.resume=True but no complete checkpoint in {ckpt.directory}{extra}; "
        "starting from scratch.")
  return bool(steps)


def _check_num_seeds(config, ckpt: Checkpointer) -> None:
  """One clear error, before any array is read, when the checkpoint holds another number of
  seeds (its state's leading seed axis would not fit)."""
  saved, now = num_seeds(ckpt.restore_config()), num_seeds(config)
  if saved != now:
    raise CheckpointError(
        f"{str(ckpt.directory)!r} holds a run of runner.num_seeds={saved} seed(s), but the "
        f"config asks for runner.num_seeds={now}. Resume with --config.runner.num_seeds="
        f"{saved}, or start a new run under another --config.runner.logger.experiment_name.")


def initial_state(trainer, config, ckpt: Checkpointer, key: jax.Array, say):
  """A fresh state, or the newest complete checkpoint's (``runner.resume=True``)."""
  if not _check_resumable(config, ckpt, say):
    return trainer.init(key)
  _check_num_seeds(config, ckpt)
  # The restore target carries the placement's shardings: orbax reads each process's shards
  # straight onto its devices.
  state, saved_config, step = ckpt.restore(trainer.checkpoint_target(key),
                                           current_config=config)
  state = trainer.from_checkpoint(state)
  diff = config_diff(saved_config, config, ignore=RESUME_FREE_FIELDS)
  if diff:
    say("Resuming with config changes (checkpoint -> now):\n  " + "\n  ".join(diff))
  saved_epochs = saved_config.get("runner", {}).get("max_epochs")
  if config.actor.optim.lr_schedule != "constant" and saved_epochs != config.runner.max_epochs:
    say(f"Note: runner.max_epochs changed ({saved_epochs} -> {config.runner.max_epochs}) "
        f"and the {config.actor.optim.lr_schedule!r} learning-rate schedule decays over "
        "it, so the rest of the run differs from an uninterrupted one.")
  say(f"Resumed from checkpoint step {step} ({ckpt.directory / str(step)}).")
  return state


class Preemption:
  """SIGTERM / SIGINT end a run cleanly: the current iteration finishes, a checkpoint is
  written, and the run returns (the CLI exits 0); ``runner.resume=True`` continues exactly.

  One process: Python signal handlers set a flag (a second SIGINT interrupts at once).
  Several processes (``jax.distributed``): JAX's preemption service, which listens for
  SIGTERM on every process and agrees on one step for all of them
  (``multihost_utils.reached_preemption_sync_point``); SIGINT is not propagated there.
  """

  SIGNALS = ("SIGTERM", "SIGINT")

  def __init__(self):
    import signal
    import threading

    self.received: Optional[str] = None
    self._previous = {}
    self._multi = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be installed from the main thread
    for name in self.SIGNALS if not self._multi else ("SIGINT",):
      sig = getattr(signal, name)
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    import signal

    del frame
    self.received = signal.Signals(signum).name
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one: now

  def requested(self, step: int) -> bool:
    """Whether to stop after ``step`` (called once per iteration, on every process)."""
    if self._multi:
      from jax.experimental import multihost_utils

      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.received = "SIGTERM"
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
        pass
    return self.received is not None

  def close(self) -> None:
    import signal

    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
