"""The run loop: :func:`train_and_evaluate` (the library entry point notebooks and the CLI call).

Python only sequences iterations here: each ``Trainer.train_iteration`` is one compiled
program (or the placement's few); a fresh one-device run compiles it in a thread while it
builds the initial state, and says after the first iteration how long it took to start and
where the compilation cache is. Around it this module measures compile time and throughput,
logs every metric (``time/*`` named in :mod:`panda_rl.metrics`), evaluates every
``runner.val_check_interval`` iterations (and writes evaluation videos if asked), checkpoints
every ``runner.save_interval`` iterations and at the end (flushing the loggers with each
checkpoint), resumes (``runner.resume=True``), and stops with a clear error if the loss becomes
NaN::

    from panda_rl.config import load_config
    from panda_rl.runner import train_and_evaluate
    result = train_and_evaluate(load_config("configs/mujoco_ppo_mlp.py",
                                            ["runner.max_epochs=10"]))
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import jax
import ml_collections

import panda_rl
from panda_rl import compile_cache
from panda_rl import metrics as M
from panda_rl import training
from panda_rl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer, CheckpointError
from panda_rl.config import RESUME_FREE_FIELDS, config_diff, config_to_dict, logger_backends
from panda_rl.config import run_dir
from panda_rl.logger import MetricLogger, check_backends, make_logger
from panda_rl.eval_videos import EvalVideos, video_recorder

# Metrics whose non-finite value means the parameters are poisoned.
_NAN_GUARDED = (M.LOSS, M.POLICY_LOSS, M.VALUE_LOSS)


class TrainingDivergedError(FloatingPointError):
  """The loss became NaN/inf; nothing from the diverged iterations was checkpointed."""


@dataclasses.dataclass
class TrainResult:
  """What :func:`train_and_evaluate` returns.

  Attributes:
    state: the final TrainState (on device).
    metrics: host floats of the last iteration's metrics (timing included).
    eval_metrics: host floats of the last evaluation (empty if none ran).
    workdir: the run directory (event files, ``checkpoints/``).
    checkpoint_step: step of the last checkpoint written (None if none).
  """

  state: Any
  metrics: Dict[str, float]
  eval_metrics: Dict[str, float]
  workdir: Path
  checkpoint_step: Optional[int]


def _host(trainer, metrics: Mapping[str, Any]) -> Dict[str, float]:
  return {k: float(v) for k, v in trainer.fetch(dict(metrics)).items()}


def _eval_key(seed: int, iteration: int) -> jax.Array:
  # A stream separate from training's (which starts at PRNGKey(seed)), fixed per iteration,
  # so evaluation never changes the training trajectory and a resumed run evaluates alike.
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x65766131),
                            iteration)


def _say(pbar, msg: str) -> None:
  if jax.process_index() == 0:
    if pbar is not None:
      pbar.write(msg)
    else:
      print(msg, flush=True)


def _progress(total: int, initial: int):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, mininterval=1.0,
              desc="train", disable=jax.process_index() != 0)


# --------------------------------------------------------------------------------------
# Starting or resuming.


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


def initial_state(trainer, config, ckpt: Checkpointer, key: jax.Array, say):
  """A fresh state, or the newest complete checkpoint's (``runner.resume=True``)."""
  if not _check_resumable(config, ckpt, say):
    return trainer.init(key)
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


# --------------------------------------------------------------------------------------
# Stopping early.


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


# --------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: Optional[str | Path] = None) -> TrainResult:
  """Trains for ``runner.max_epochs`` iterations with logging, evaluation and checkpoints.

  Args:
    config: the experiment config (``configs/*.py`` ``get_config()``, overrides applied).
    workdir: run directory for event files and ``checkpoints/``; default
      ``<runner.logger.log_path>/<project_name>/<experiment_name>``.

  Returns:
    A :class:`TrainResult` with the final state and the last metrics.

  Raises:
    ConfigError (PlacementError) / MissingBackendError: bad settings, before compiling.
    CheckpointError: an existing run without ``runner.resume``, or a checkpoint that is
      damaged or does not fit the config.
    TrainingDivergedError: the loss became NaN; the last good checkpoint is untouched.
  """
  t_enter = time.perf_counter()
  check_backends(logger_backends(config))
  workdir = Path(workdir) if workdir is not None else run_dir(config)
  trainer = training.Trainer(config)  # validates the whole config first
  record_video = video_recorder(config)
  if record_video is not None:
    record_video.prepare(trainer)  # an eval env that cannot be rendered fails here
  ckpt = Checkpointer(workdir / CHECKPOINT_SUBDIR, max_to_keep=config.runner.max_to_keep)
  run = _Run(config, trainer, ckpt, workdir, record_video, t_enter)
  try:
    return run.train()
  finally:
    run.close()


class _InBackground:
  """``fn()`` in a daemon thread (it does not hold up an exiting process); ``result()`` waits
  for it and returns its value or raises its exception."""

  def __init__(self, fn):
    import threading

    self._out: Dict[str, Any] = {}

    def work():
      try:
        self._out["value"] = fn()
      except BaseException as e:  # re-raised in the waiting thread
        self._out["error"] = e

    self._thread = threading.Thread(target=work, daemon=True, name="panda_rl-compile")
    self._thread.start()

  def result(self):
    self._thread.join()
    if "error" in self._out:
      raise self._out["error"]
    return self._out["value"]


class _Run:
  """The host side of one training run: sequencing, timing, logging, evaluation, saving."""

  def __init__(self, config, trainer, ckpt: Checkpointer, workdir: Path,
               record_video: Optional[EvalVideos], t_enter: float):
    self.config, self.r = config, config.runner
    self.trainer, self.ckpt, self.workdir = trainer, ckpt, workdir
    self.record_video = record_video
    self.logger: MetricLogger = MetricLogger()
    self.pbar = None
    self.last_saved: Optional[int] = None
    self.eval_metrics: Dict[str, float] = {}
    self.success = float("nan")  # last finite env/success_once, for the progress bar
    self.preemption = Preemption()
    self.t_enter = t_enter  # when train_and_evaluate was called

  def say(self, msg: str) -> None:
    _say(self.pbar, msg)

  def close(self) -> None:
    self.preemption.close()
    if self.pbar is not None:
      self.pbar.close()
    self.ckpt.close()  # waits for in-flight saves: the last started checkpoint completes
    self.logger.close()  # flushes every backend

  def _start(self):
    """(state, first iteration to run): restores or initialises, opens the loggers."""
    state = initial_state(self.trainer, self.config, self.ckpt,
                          jax.random.PRNGKey(self.r.seed), self.say)
    start = int(self.trainer.fetch(state.iteration))
    self.last_saved = self.ckpt.latest_step()
    self.logger = make_logger(self.config, self.workdir,
                              purge_step=start + 1 if start > 0 else None)
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      (self.workdir / "config.json").write_text(
          json.dumps(config_to_dict(self.config), indent=2))
    if not self.trainer.placement.single_device:
      self.say(self.trainer.placement.describe())
      self.say(self.trainer.placement.table())
    return state, start

  def _compile_ahead(self) -> Optional["_InBackground"]:
    """A fresh one-device run compiles its iteration for the abstract initial state in a
    thread, while the initial state is built (its own program compiles meanwhile): XLA
    compiles on one core each, and tracing overlaps compiling."""
    if not self.trainer.placement.single_device or self.ckpt.all_steps():
      return None
    abstract = self.trainer.abstract_state(jax.random.PRNGKey(self.r.seed))
    return _InBackground(lambda: self.trainer.compile_iteration(abstract))

  def train(self) -> TrainResult:
    r = self.r
    ahead = self._compile_ahead()
    state, start = self._start()
    if start >= r.max_epochs:
      self.say(f"Nothing to do: the checkpoint is at iteration {start} >= "
               f"runner.max_epochs={r.max_epochs}.")
      return TrainResult(state, {}, {}, self.workdir, self.last_saved)
    t_setup = time.perf_counter()  # the initial state is ready
    step_fn, compile_s = (ahead.result() if ahead is not None
                          else self.trainer.compile_iteration(state))
    t_ready = time.perf_counter()
    env_steps = int(self.trainer.fetch(state.env_steps))
    self.pbar = _progress(r.max_epochs, start)
    metrics: Dict[str, float] = {}
    done = start
    for done in range(start + 1, r.max_epochs + 1):
      t0 = time.perf_counter()
      state, device_metrics = step_fn(state)
      metrics = _host(self.trainer, device_metrics)  # blocks until the iteration has finished
      steps_before, env_steps = env_steps, int(self.trainer.fetch(state.env_steps))
      self._timing(metrics, time.perf_counter() - t0, env_steps - steps_before, env_steps,
                   self.t_enter, compile_s if done == start + 1 else False)
      if done == start + 1:
        self._report_start(t_ready - self.t_enter, t_setup - self.t_enter, compile_s,
                           metrics[M.ITERATION_S])
      self._after_iteration(state, metrics, done, env_steps)
      if done < r.max_epochs and self.preemption.requested(done):
        self._stop_early(state, done, env_steps)
        break
    self.pbar.close()
    self.ckpt.wait_until_finished()
    self.say(f"Done: {done} iterations, {env_steps:,} env steps in "
             f"{time.perf_counter() - self.t_enter:.1f}s; checkpoints in {self.ckpt.directory}.")
    return TrainResult(state, metrics, self.eval_metrics, self.workdir, self.last_saved)

  def _stop_early(self, state, done: int, env_steps: int) -> None:
    if self.last_saved != done:
      self._save(state, done, env_steps)
    self.ckpt.wait_until_finished()
    self.say(f"{self.preemption.received}: stopped after iteration {done}/{self.r.max_epochs} "
             f"with checkpoint step {done} in {self.ckpt.directory}; continue with "
             "--config.runner.resume=True.")

  def _report_start(self, started_s: float, setup_s: float, compile_s: Optional[float],
                    iteration_s: float) -> None:
    """One line: how long the run took to reach its first iteration (setup: config check,
    envs, initial state; compile: the iteration program, alongside setup in a fresh run),
    and where JAX's persistent compilation cache is."""
    where = compile_cache.cache_dir()
    cache = f"compilation cache {where}" if where else "no persistent compilation cache"
    if compile_s is None:  # several programs compiled on first use: in the iteration
      parts = f"setup {setup_s:.1f}s; {cache}"
    else:
      parts = f"setup {setup_s:.1f}s, compile {compile_s:.1f}s; {cache}"
    self.say(f"Started in {started_s:.1f}s ({parts}); first iteration {iteration_s:.1f}s.")

  @staticmethod
  def _timing(metrics, dt: float, steps: int, env_steps: int, t_run: float, compile_s):
    metrics[M.ITERATION_S] = dt
    metrics[M.ENV_STEPS_PER_S] = steps / max(dt, 1e-9)
    metrics[M.ENV_STEPS] = float(env_steps)
    metrics[M.WALL_S] = time.perf_counter() - t_run
    if compile_s is not False:
      # Without ahead-of-time compilation the first iteration's time includes compiling.
      metrics[M.COMPILE_S] = compile_s if compile_s is not None else dt

  def _after_iteration(self, state, metrics: Dict[str, float], done: int,
                       env_steps: int) -> None:
    r = self.r
    self._check_finite(metrics, done)
    if r.val_check_interval > 0 and (done % r.val_check_interval == 0
                                     or done == r.max_epochs):
      metrics.update(self._evaluate(state, done, env_steps))
    self.logger.log(metrics, step=done)
    if (r.save_interval > 0 and done % r.save_interval == 0) or done == r.max_epochs:
      self._save(state, done, env_steps)
    self._progress(metrics, env_steps)

  def _check_finite(self, metrics: Dict[str, float], done: int) -> None:
    """NaN guard: stop before anything of a diverged iteration reaches a checkpoint."""
    bad = {k: metrics[k] for k in _NAN_GUARDED if k in metrics and not math.isfinite(metrics[k])}
    if not bad:
      return
    self.logger.log(metrics, step=done)
    self.logger.flush()
    self.ckpt.wait_until_finished()
    where = (f"the last good checkpoint is step {self.last_saved} in {self.ckpt.directory}"
             if self.last_saved is not None else "no checkpoint was written")
    raise TrainingDivergedError(
        f"Training diverged at iteration {done}: {bad}. Nothing was saved for this or any "
        f"later iteration; {where}. Try a lower actor.optim.lr or actor.optim.max_grad_norm, "
        "then --config.runner.resume=True to continue from the last good checkpoint.")

  def _evaluate(self, state, done: int, env_steps: int) -> Dict[str, float]:
    key = _eval_key(self.r.seed, done)
    t0 = time.perf_counter()
    out = _host(self.trainer, self.trainer.evaluate(state, key))
    out[M.EVAL_S] = time.perf_counter() - t0  # the first evaluation includes its compile
    if self.record_video is not None:
      if jax.process_count() > 1:  # process 0 renders: the policy's values, on every process
        params, normalizer = self.trainer.fetch((state.params, state.normalizer))
        state = state.replace(params=params, normalizer=normalizer)
      if jax.process_index() == 0:
        out.update(self.record_video.safe_record(self.trainer, state, key, done))
    self.eval_metrics = out
    self.say(f"[iter {done}/{self.r.max_epochs}] env steps {env_steps:,}  " + "  ".join(
        f"{k}={v:.4g}" for k, v in out.items()))
    return out

  def _save(self, state, done: int, env_steps: int) -> None:
    meta = dict(self.trainer.checkpoint_meta(), iteration=done, env_steps=env_steps,
                panda_rl_version=panda_rl.__version__)
    self.ckpt.save(done, self.trainer.to_checkpoint(state), self.config, meta=meta)
    self.last_saved = done
    self.logger.flush()  # a killed run keeps every scalar up to its last checkpoint

  def _progress(self, metrics: Dict[str, float], env_steps: int) -> None:
    if math.isfinite(metrics.get(M.SUCCESS_ONCE, float("nan"))):
      self.success = metrics[M.SUCCESS_ONCE]  # else keep the last one with episodes
    post = {"steps": f"{env_steps:,}", "sps": f"{metrics[M.ENV_STEPS_PER_S]:,.0f}",
            "success": f"{self.success:.2f}" if math.isfinite(self.success) else "-"}
    if M.EVAL_SUCCESS_ONCE in self.eval_metrics:
      post["eval"] = f"{self.eval_metrics[M.EVAL_SUCCESS_ONCE]:.2f}"
    self.pbar.set_postfix(post, refresh=False)
    self.pbar.update(1)
