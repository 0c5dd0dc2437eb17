"""The run loop: :func:`train_and_evaluate` (the library entry point notebooks and the CLI call).

Python only sequences iterations here: each ``Trainer.train_iteration`` is one compiled
program (or the placement's few); a fresh one-device run compiles it in a thread while it
builds the initial state, and says after the first iteration how long it took to start and
where the compilation cache is; the evaluation program compiles in a thread from the end of
the setup on, so the first evaluation does not stop training to compile. Around it this
module measures compile time and throughput, logs every metric (``time/*`` named in
:mod:`panda_rl.metrics`), evaluates every ``runner.val_check_interval`` iterations (and writes
evaluation videos if asked), checkpoints every ``runner.save_interval`` iterations and at the
end (flushing the loggers with each checkpoint), resumes (``runner.resume=True``), and stops
with a clear error if the loss becomes NaN. With ``runner.num_seeds = S > 1`` the iteration
and the evaluation run every seed at once and each seed logs to ``<run dir>/seed_<k>/``, the
run directory gets their mean / min / max (:mod:`panda_rl.seeds`)::

    from panda_rl.config import load_config
    from panda_rl.runner import train_and_evaluate
    result = train_and_evaluate(load_config("configs/mujoco_ppo_mlp.py",
                                            ["runner.max_epochs=10"]))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np

import panda_rl
from panda_rl import compile_cache
from panda_rl import metrics as M
from panda_rl import seeds
from panda_rl import training
from panda_rl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer
from panda_rl.config import config_to_dict, logger_backends, num_seeds, run_dir
from panda_rl.logger import MetricLogger, check_backends
from panda_rl.eval_videos import EvalVideos, video_recorder
from panda_rl.lifecycle import Preemption, initial_state  # noqa: F401 (re-exported)

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
    num_seeds: ``runner.num_seeds`` = S. With S > 1 ``state`` is the stacked state of the
      seeds (:meth:`seed_state`), ``metrics`` and ``eval_metrics`` their aggregate (mean,
      ``<name>_min``, ``<name>_max``; :func:`panda_rl.seeds.aggregate`).
    per_seed: per seed k, ``{metric name: [(iteration, value), ...]}`` of the iterations
      this call ran (``eval/*`` at the evaluated ones): the seeds' curves. One entry for
      S = 1.
    seed_eval_metrics: per seed, host floats of its last evaluation.
  """

  state: Any
  metrics: Dict[str, float]
  eval_metrics: Dict[str, float]
  workdir: Path
  checkpoint_step: Optional[int]
  num_seeds: int = 1
  per_seed: List[Dict[str, List[Tuple[int, float]]]] = dataclasses.field(default_factory=list)
  seed_eval_metrics: List[Dict[str, float]] = dataclasses.field(default_factory=list)

  def seed_state(self, k: int) -> Any:
    """Seed ``k``'s TrainState (for S = 1 the state itself, k = 0)."""
    if not 0 <= k < self.num_seeds:
      raise IndexError(f"seed {k} of a run of {self.num_seeds} seed(s)")
    return self.state if self.num_seeds == 1 else seeds.select(self.state, k)


def _eval_key(seed: int, iteration: int) -> jax.Array:
  # A stream separate from training's (which starts at PRNGKey(seed)), fixed per iteration,
  # so evaluation never changes the training trajectory and a resumed run evaluates alike.
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x65766131),
                            iteration)


def _eval_keys(seed: int, count: int, iteration: int) -> jax.Array:
  """The evaluation key of ``seed`` (one seed) or the [S, 2] keys of seeds seed + k."""
  return seeds.per_seed(lambda s: _eval_key(s, iteration), seed, count)


def _say(pbar, msg: str) -> None:
  if jax.process_index() != 0:
    return
  try:
    if pbar is not None:
      pbar.write(msg)
    else:
      print(msg, flush=True)
  except BrokenPipeError:
    # Whoever read stdout is gone (a closed terminal, `| head`, a stopped supervisor): the
    # run goes on, and its stop saves its checkpoint, so the lines go to stderr from now on.
    _stdout_to_devnull()
    print(msg, file=sys.stderr, flush=True)


def _stdout_to_devnull() -> None:
  """Points stdout's file descriptor at /dev/null (Python's documented answer to SIGPIPE:
  later writes, and the flush at exit, then succeed instead of failing again)."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)


def _progress(total: int, initial: int):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, mininterval=1.0,
              desc="train", disable=jax.process_index() != 0)


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
    A :class:`TrainResult` with the final state, the last metrics and every seed's curves
    (``runner.num_seeds > 1``: the stacked state, the seeds' aggregate, ``per_seed``).

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
  """The host side of one training run: sequencing, timing, logging, evaluation, saving.

  Metrics travel as one dict of host floats per seed (one dict for S = 1)."""

  def __init__(self, config, trainer, ckpt: Checkpointer, workdir: Path,
               record_video: Optional[EvalVideos], t_enter: float):
    self.config, self.r = config, config.runner
    self.trainer, self.ckpt, self.workdir = trainer, ckpt, workdir
    self.record_video = record_video
    self.num_seeds = num_seeds(config)
    self.loggers = seeds.RunLoggers(MetricLogger())
    self.pbar = None
    self.last_saved: Optional[int] = None
    self.eval_metrics: Dict[str, float] = {}
    self.seed_eval_metrics: List[Dict[str, float]] = []
    self.history: List[Dict[str, List[Tuple[int, float]]]] = [
        {} for _ in range(self.num_seeds)]
    self.success = float("nan")  # last finite env/success_once, for the progress bar
    self.preemption = Preemption()
    self.t_enter = t_enter  # when train_and_evaluate was called
    self.eval_ahead: Optional[_InBackground] = None  # the evaluation, compiling

  def say(self, msg: str) -> None:
    _say(self.pbar, msg)

  def close(self) -> None:
    self.preemption.close()
    if self.pbar is not None:
      self.pbar.close()
    self.ckpt.close()  # waits for in-flight saves: the last started checkpoint completes
    self.loggers.close()  # flushes every backend

  def _key(self) -> jax.Array:
    return self.trainer.initial_key(self.r.seed)

  def _count(self, counter) -> int:
    """A host int of a state counter (equal for every seed)."""
    return int(np.asarray(self.trainer.fetch(counter)).reshape(-1)[0])

  def _result(self, state, metrics: Dict[str, float]) -> TrainResult:
    return TrainResult(state, metrics, self.eval_metrics, self.workdir, self.last_saved,
                       self.num_seeds, self.history, self.seed_eval_metrics)

  def _start(self):
    """(state, first iteration to run): restores or initialises, opens the loggers."""
    state = initial_state(self.trainer, self.config, self.ckpt, self._key(), self.say)
    start = self._count(state.iteration)
    self.last_saved = self.ckpt.latest_step()
    self.loggers = seeds.RunLoggers.open(self.config, self.workdir, self.num_seeds,
                                         purge_step=start + 1 if start > 0 else None)
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      (self.workdir / "config.json").write_text(
          json.dumps(config_to_dict(self.config), indent=2))
    placement = self.trainer.placement
    if not placement.single_device:
      self.say(placement.describe())
      if not (placement.collocated and placement.single_process):
        self.say(placement.table())
    return state, start

  def _compile_ahead(self) -> Optional["_InBackground"]:
    """A fresh collocated run on one process (one device, or one CPU device per core)
    compiles its iteration for the abstract initial state in a thread, while the initial
    state is built (its own program compiles meanwhile): XLA compiles on one core each, and
    tracing overlaps compiling."""
    placement = self.trainer.placement
    if not (placement.collocated and placement.single_process) or self.ckpt.all_steps():
      return None
    abstract = self.trainer.abstract_state(self._key())
    return _InBackground(lambda: self.trainer.compile_iteration(abstract))

  def _compile_evaluation_ahead(self, state) -> Optional["_InBackground"]:
    """A collocated run on one process that evaluates compiles the evaluation program in a
    thread as soon as its initial state is built, for arguments shaped and placed like
    ``state``'s, so the first evaluation need not stop training to compile. (On the 2-core
    CPU this saves nothing measurable: the compiles share the cores; BENCHMARKS.md.) A
    failure there is only reported: the evaluation then compiles when it is first used."""
    placement, r = self.trainer.placement, self.r
    if not (placement.collocated and placement.single_process) or r.val_check_interval <= 0:
      return None
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)
    key = _eval_keys(int(r.seed), self.num_seeds, 0)

    def compile_evaluation():
      try:
        return self.trainer.compile_evaluation(like, key)
      except Exception as e:  # noqa: BLE001 - reported; the evaluation compiles on use
        self.say(f"Compiling the evaluation ahead failed ({type(e).__name__}: {e}); it "
                 "compiles at the first evaluation instead.")
        return None

    return _InBackground(compile_evaluation)

  def train(self) -> TrainResult:
    r = self.r
    ahead = self._compile_ahead()
    state, start = self._start()
    if start >= r.max_epochs:
      self.say(f"Nothing to do: the checkpoint is at iteration {start} >= "
               f"runner.max_epochs={r.max_epochs}.")
      return self._result(state, {})
    t_setup = time.perf_counter()  # the initial state is ready
    self.eval_ahead = self._compile_evaluation_ahead(state)
    step_fn, compile_s = (ahead.result() if ahead is not None
                          else self.trainer.compile_iteration(state))
    t_ready = time.perf_counter()
    env_steps = self._count(state.env_steps)
    self.pbar = _progress(r.max_epochs, start)
    metrics: Dict[str, float] = {}
    done = start
    for done in range(start + 1, r.max_epochs + 1):
      t0 = time.perf_counter()
      state, device_metrics = step_fn(state)
      # Blocks until the iteration has finished.
      per_seed = seeds.split(self.trainer.fetch(dict(device_metrics)), self.num_seeds)
      steps_before, env_steps = env_steps, self._count(state.env_steps)
      timing = self._timing(time.perf_counter() - t0, env_steps - steps_before, env_steps,
                            self.t_enter, compile_s if done == start + 1 else False)
      for m in per_seed:
        m.update(timing)
      if done == start + 1:
        self._report_start(t_ready - self.t_enter, t_setup - self.t_enter, compile_s,
                           timing[M.ITERATION_S])
      metrics = self._after_iteration(state, per_seed, done, env_steps)
      if done < r.max_epochs and self.preemption.requested(done):
        self._stop_early(state, done, env_steps)
        break
    self.pbar.close()
    self.ckpt.wait_until_finished()
    self.say(f"Done: {done} iterations, {env_steps:,} env steps"
             + (f" per seed ({self.num_seeds} seeds)" if self.num_seeds > 1 else "")
             + f" in {time.perf_counter() - self.t_enter:.1f}s; checkpoints in "
             f"{self.ckpt.directory}.")
    return self._result(state, metrics)

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
  def _timing(dt: float, steps: int, env_steps: int, t_run: float, compile_s
              ) -> Dict[str, float]:
    """``time/*`` of an iteration (per seed: env steps and their rate are one seed's)."""
    out = {M.ITERATION_S: dt, M.ENV_STEPS_PER_S: steps / max(dt, 1e-9),
           M.ENV_STEPS: float(env_steps), M.WALL_S: time.perf_counter() - t_run}
    if compile_s is not False:
      # Without ahead-of-time compilation the first iteration's time includes compiling.
      out[M.COMPILE_S] = compile_s if compile_s is not None else dt
    return out

  def _after_iteration(self, state, per_seed: List[Dict[str, float]], done: int,
                       env_steps: int) -> Dict[str, float]:
    """Checks, evaluates, logs and saves after iteration ``done``; the run's metrics."""
    r = self.r
    self._check_finite(per_seed, done)
    if r.val_check_interval > 0 and (done % r.val_check_interval == 0
                                     or done == r.max_epochs):
      for m, out in zip(per_seed, self._evaluate(state, done, env_steps)):
        m.update(out)
    metrics = self._log(per_seed, done)
    if (r.save_interval > 0 and done % r.save_interval == 0) or done == r.max_epochs:
      self._save(state, done, env_steps)
    self._progress(metrics, env_steps)
    return metrics

  def _log(self, per_seed: List[Dict[str, float]], done: int) -> Dict[str, float]:
    for curves, m in zip(self.history, per_seed):
      for name, value in m.items():
        curves.setdefault(name, []).append((done, value))
    return self.loggers.log(per_seed, done)

  def _check_finite(self, per_seed: List[Dict[str, float]], done: int) -> None:
    """NaN guard: stop before anything of a diverged iteration reaches a checkpoint (any
    seed's loss)."""
    bad = {}
    for k, m in enumerate(per_seed):
      for name in _NAN_GUARDED:
        if name in m and not math.isfinite(m[name]):
          bad[name if self.num_seeds == 1 else f"{name} (seed {k})"] = m[name]
    if not bad:
      return
    self._log(per_seed, done)
    self.loggers.flush()
    self.ckpt.wait_until_finished()
    where = (f"the last good checkpoint is step {self.last_saved} in {self.ckpt.directory}"
             if self.last_saved is not None else "no checkpoint was written")
    raise TrainingDivergedError(
        f"Training diverged at iteration {done}: {bad}. Nothing was saved for this or any "
        f"later iteration; {where}. Try a lower actor.optim.lr or actor.optim.max_grad_norm, "
        "then --config.runner.resume=True to continue from the last good checkpoint.")

  def _evaluate(self, state, done: int, env_steps: int) -> List[Dict[str, float]]:
    """Every seed's evaluation (one vmapped program), one dict per seed."""
    key = _eval_keys(int(self.r.seed), self.num_seeds, done)
    t0 = time.perf_counter()
    if self.eval_ahead is not None:  # waits for the program compiling in the background
      self.eval_ahead.result()
      self.eval_ahead = None
    per_seed = seeds.split(self.trainer.fetch(dict(self.trainer.evaluate(state, key))),
                           self.num_seeds)
    shared = {M.EVAL_S: time.perf_counter() - t0}  # the first includes (waiting for) its compile
    if self.record_video is not None:
      shared.update(self._videos(state, key, done))
    for m in per_seed:
      m.update(shared)
    self.seed_eval_metrics = per_seed
    self.eval_metrics = per_seed[0] if self.num_seeds == 1 else seeds.aggregate(per_seed)
    shown = per_seed[0] if self.num_seeds == 1 else {
        k: v for k, v in self.eval_metrics.items()
        if not k.endswith((seeds.MIN_SUFFIX, seeds.MAX_SUFFIX))}
    line = "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
    if self.num_seeds > 1:
      line = (f"mean over {self.num_seeds} seeds: {line}  {M.EVAL_SUCCESS_ONCE} per seed: "
              + " ".join(f"{m[M.EVAL_SUCCESS_ONCE]:.3g}" for m in per_seed))
    self.say(f"[iter {done}/{self.r.max_epochs}] env steps {env_steps:,}  {line}")
    return per_seed

  def _videos(self, state, key, done: int) -> Dict[str, float]:
    """The evaluation videos (of seed 0 in a multi-seed run)."""
    if self.num_seeds > 1:
      state, key = seeds.select(state, 0), key[0]
    if jax.process_count() > 1:  # process 0 renders: the policy's values, on every process
      params, normalizer = self.trainer.fetch((state.params, state.normalizer))
      state = state.replace(params=params, normalizer=normalizer)
    if jax.process_index() == 0:
      return self.record_video.safe_record(self.trainer, state, key, done)
    return {}

  def _save(self, state, done: int, env_steps: int) -> None:
    meta = dict(self.trainer.checkpoint_meta(), iteration=done, env_steps=env_steps,
                num_seeds=self.num_seeds, panda_rl_version=panda_rl.__version__)
    self.ckpt.save(done, self.trainer.to_checkpoint(state), self.config, meta=meta)
    self.last_saved = done
    self.loggers.flush()  # a killed run keeps every scalar up to its last checkpoint

  def _progress(self, metrics: Dict[str, float], env_steps: int) -> None:
    if math.isfinite(metrics.get(M.SUCCESS_ONCE, float("nan"))):
      self.success = metrics[M.SUCCESS_ONCE]  # else keep the last one with episodes
    post = {"steps": f"{env_steps:,}", "sps": f"{metrics[M.ENV_STEPS_PER_S]:,.0f}",
            "success": f"{self.success:.2f}" if math.isfinite(self.success) else "-"}
    if M.EVAL_SUCCESS_ONCE in self.eval_metrics:
      post["eval"] = f"{self.eval_metrics[M.EVAL_SUCCESS_ONCE]:.2f}"
    self.pbar.set_postfix(post, refresh=False)
    self.pbar.update(1)
