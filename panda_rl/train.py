"""Trains an agent: ``python -m panda_rl.train --config configs/mujoco_ppo_mlp.py``.

Any config field can be overridden on the command line (``--config.algorithm.gamma=0.98``);
unknown fields fail before anything runs. The library entry point is
:func:`train_and_evaluate`, which notebooks and tests call directly::

    from panda_rl.config import load_config
    from panda_rl.train import train_and_evaluate
    result = train_and_evaluate(load_config("configs/mujoco_ppo_mlp.py",
                                            ["runner.max_epochs=10"]))

Python only sequences iterations here: each ``Trainer.train_iteration`` is one compiled
program. Around it this module measures compile time and throughput, logs every metric,
evaluates every ``runner.val_check_interval`` iterations, checkpoints every
``runner.save_interval`` iterations and at the end, resumes (``runner.resume=True``), and
stops with a clear error if the loss becomes NaN.
"""

import panda_rl  # noqa: F401  (first: sets XLA:CPU flags before any JAX backend starts)

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import ml_collections

from panda_rl import metrics as M
from panda_rl.checkpoint import CHECKPOINT_SUBDIR, Checkpointer, CheckpointError
from panda_rl.config import (RESUME_FREE_FIELDS, ConfigError, config_diff, config_to_dict,
                             logger_backends, run_dir, validate_config)
from panda_rl.logger import MetricLogger, MissingBackendError, check_backends, make_logger

# Timing metrics this loop adds to every iteration's metrics.
COMPILE_S = "time/compile_s"  # first iteration only: compiling the iteration program
ITERATION_S = "time/iteration_s"  # wall time of the iteration (device work + host sync)
ENV_STEPS_PER_S = "time/env_steps_per_s"  # env steps of the iteration / time/iteration_s
ENV_STEPS = "time/env_steps"  # total env steps so far (x axis for "success vs env steps")
WALL_S = "time/wall_s"  # seconds since this process started training (compile included)
EVAL_S = "time/eval_s"  # wall time of an evaluation (first one includes its compile)
VIDEO_S = "time/video_s"  # wall time of writing an evaluation's videos (first: + compile)
TIMING_METRICS = (COMPILE_S, ITERATION_S, ENV_STEPS_PER_S, ENV_STEPS, WALL_S, EVAL_S, VIDEO_S)

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


# --------------------------------------------------------------------------------------
# Hooks and helpers.


def video_dir(config: ml_collections.ConfigDict) -> Path:
  """Where evaluation videos go: ``env.eval.video_cfg.video_base_dir`` if set, else
  ``<runner.logger.log_path>/video/eval`` (the issue's default), with ``<project>/<experiment>``
  below it so that runs never overwrite each other's videos."""
  base = config.env.eval.video_cfg.get("video_base_dir", "")
  if base:
    return Path(base).expanduser()
  logger = config.runner.logger
  return (Path(logger.log_path).expanduser() / "video" / "eval" / logger.project_name /
          logger.experiment_name)


class EvalVideos:
  """The evaluation-video hook: ``record(trainer, state, key, step) -> [paths]``.

  Writes ``video_cfg.num_videos`` deterministic (mean-action) episodes of the eval env as
  ``<video_dir>/iter_<step:06d>_ep<i>.mp4`` (see :mod:`panda_rl.video`). Episode i starts
  from the same reset key as the evaluation's env i (``key`` is the evaluation's), so the
  videos show the first evaluation episodes. The recording program is compiled at the first
  call; later calls pass the new parameters as arguments and reuse it.
  """

  def __init__(self, config: ml_collections.ConfigDict, directory: Path):
    from panda_rl import video

    vc = config.env.eval.video_cfg
    try:
      self.num_videos, h, w, self.fps = video.check_settings(vc.num_videos, vc.resolution,
                                                             vc.fps)
    except ValueError as e:
      raise ConfigError(f"env.eval.video_cfg: {e}") from None
    self.resolution = (h, w)
    self.directory = Path(directory)
    self._recorder = None

  def prepare(self, trainer: Any) -> None:
    """Builds the recorder for ``trainer.eval_env`` (no compiling).

    Raises:
      ConfigError: the eval env cannot be rendered (no ``mj_model``, cameras or time limit).
    """
    from panda_rl import video

    def policy(params, obs):
      return trainer.policy_fn(params["params"], params["normalizer"],
                               deterministic=True)(obs)

    try:
      self._recorder = video.VideoRecorder(
          trainer.eval_env, policy, num_videos=self.num_videos, resolution=self.resolution,
          fps=self.fps)
    except (ValueError, AttributeError) as e:
      raise ConfigError(f"env.eval.video_cfg.save_video=True, but {e}. Run with "
                        "--config.env.eval.video_cfg.save_video=False.") from None

  def __call__(self, trainer: Any, state: Any, key: jax.Array, step: int) -> list:
    from panda_rl import video

    if self._recorder is None:
      self.prepare(trainer)
    params = video.local_copy({"params": state.params, "normalizer": state.normalizer})
    return self._recorder.record(params, key, self.directory, f"iter_{int(step):06d}")


def video_recorder(config: ml_collections.ConfigDict) -> Optional[EvalVideos]:
  """Returns the hook writing eval videos (:class:`EvalVideos`), or None if disabled.

  Called before anything is built: checks the video settings (ConfigError). Videos go to
  :func:`video_dir`; the training loop calls the hook right after each evaluation, on
  process 0 only, and a failure there is logged as a warning without stopping training.
  """
  if not config.env.eval.video_cfg.save_video:
    return None
  return EvalVideos(config, video_dir(config))


def _host(metrics: Mapping[str, Any]) -> Dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def _finite(x: float) -> bool:
  return math.isfinite(x)


def _eval_key(seed: int, iteration: int) -> jax.Array:
  # A stream separate from training's (which starts at PRNGKey(seed)), fixed per iteration,
  # so evaluation never changes the training trajectory and a resumed run evaluates alike.
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x65766131),
                            iteration)


def _sizes(trainer: Any) -> Dict[str, Any]:
  env = getattr(trainer, "env", None) or getattr(trainer, "train_env", None)
  out = {}
  for name in ("observation_size", "action_size"):
    try:
      value = getattr(env, name)
      json.dumps(value)
      out[name] = value
    except Exception:  # noqa: BLE001 - sizes are a convenience for load_policy
      pass
  return out


def _compile(trainer: Any, state: Any):
  """Compiles one iteration ahead of time; returns (callable, compile seconds or None).

  Uses the trainer's ``compile_iteration`` (the program of its placement, see
  :mod:`panda_rl.placement`), else its pure ``iteration_fn`` (jitted here with the state
  donated, as ``train_iteration`` does), so that compiling is timed apart from running.
  """
  if hasattr(trainer, "compile_iteration"):
    return trainer.compile_iteration(state)
  fn = getattr(trainer, "iteration_fn", None)
  if fn is None:
    return trainer.train_iteration, None
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0).lower(state).compile()
  return compiled, time.perf_counter() - t0


def _progress(total: int, initial: int):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, mininterval=1.0,
              desc="train", disable=jax.process_index() != 0)


def _say(pbar, msg: str) -> None:
  if jax.process_index() == 0:
    if pbar is not None:
      pbar.write(msg)
    else:
      print(msg, flush=True)


# --------------------------------------------------------------------------------------
# Starting or resuming.


def _initial_state(trainer, config, ckpt: Checkpointer, key: jax.Array, pbar_say):
  steps = ckpt.all_steps()
  if steps and not config.runner.resume:
    raise CheckpointError(
        f"{str(ckpt.directory)!r} already holds checkpoints (steps {steps}). Continue that "
        "run with --config.runner.resume=True, or start a new one under another "
        "--config.runner.logger.experiment_name (or delete the directory).")
  if not steps:
    if config.runner.resume:
      extra = ""
      if ckpt.incomplete():
        extra = " (ignoring incomplete saves: " + ", ".join(
            p.name for p in ckpt.incomplete()) + ")"
      pbar_say(f"runner.resume=True but no complete checkpoint in {ckpt.directory}"
               f"{extra}; starting from scratch.")
    return trainer.init(key)
  # The restore target carries the placement's shardings: orbax reads each process's shards
  # straight onto its devices.
  abstract = (trainer.abstract_state(key) if hasattr(trainer, "abstract_state")
              else jax.eval_shape(trainer.init, key))
  state, saved_config, step = ckpt.restore(abstract, current_config=config)
  diff = config_diff(saved_config, config, ignore=RESUME_FREE_FIELDS)
  if diff:
    pbar_say("Resuming with config changes (checkpoint -> now):\n  " + "\n  ".join(diff))
  saved_epochs = saved_config.get("runner", {}).get("max_epochs")
  if config.actor.optim.lr_schedule != "constant" and saved_epochs != config.runner.max_epochs:
    pbar_say(f"Note: runner.max_epochs changed ({saved_epochs} -> {config.runner.max_epochs}) "
             f"and the {config.actor.optim.lr_schedule!r} learning-rate schedule decays over "
             "it, so the rest of the run differs from an uninterrupted one.")
  pbar_say(f"Resumed from checkpoint step {step} ({ckpt.directory / str(step)}).")
  return state


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
    ConfigError / MissingBackendError / NotImplementedError: bad settings, before compiling.
    CheckpointError: an existing run without ``runner.resume``, or a checkpoint that is
      damaged or does not fit the config.
    TrainingDivergedError: the loss became NaN; the last good checkpoint is untouched.
  """
  from panda_rl import training  # heavy: envs, networks, optimizer

  validate_config(config)
  try:
    training.validate_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  check_backends(logger_backends(config))
  workdir = Path(workdir) if workdir is not None else run_dir(config)
  record_video = video_recorder(config)

  trainer = training.Trainer(config)
  if record_video is not None and hasattr(record_video, "prepare"):
    record_video.prepare(trainer)  # an eval env that cannot be rendered fails here
  ckpt = Checkpointer(workdir / CHECKPOINT_SUBDIR, max_to_keep=config.runner.max_to_keep)
  run = _Run(config, trainer, ckpt, workdir, record_video)
  try:
    return run.train()
  finally:
    run.close()


class _Run:
  """The host side of one training run: sequencing, timing, logging, evaluation, saving."""

  def __init__(self, config, trainer, ckpt: Checkpointer, workdir: Path,
               record_video: Optional[Callable]):
    self.config, self.r = config, config.runner
    self.trainer, self.ckpt, self.workdir = trainer, ckpt, workdir
    self.record_video = record_video
    self.logger: MetricLogger = MetricLogger()
    self.pbar = None
    self.last_saved: Optional[int] = None
    self.eval_metrics: Dict[str, float] = {}
    self.success = float("nan")  # last finite env/success_once, for the progress bar

  def say(self, msg: str) -> None:
    _say(self.pbar, msg)

  def close(self) -> None:
    if self.pbar is not None:
      self.pbar.close()
    self.ckpt.close()  # waits for in-flight saves: the last started checkpoint completes
    self.logger.close()

  def train(self) -> TrainResult:
    r = self.r
    state = _initial_state(self.trainer, self.config, self.ckpt, jax.random.PRNGKey(r.seed),
                           self.say)
    start = int(jax.device_get(state.iteration))
    env_steps = int(jax.device_get(state.env_steps))
    self.last_saved = self.ckpt.latest_step()
    self.logger = make_logger(self.config, self.workdir,
                              purge_step=start + 1 if start > 0 else None)
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      (self.workdir / "config.json").write_text(
          json.dumps(config_to_dict(self.config), indent=2))
    placement = getattr(self.trainer, "placement", None)
    if placement is not None and not placement.single_device:
      self.say(placement.describe())
    metrics: Dict[str, float] = {}
    if start >= r.max_epochs:
      self.say(f"Nothing to do: the checkpoint is at iteration {start} >= "
               f"runner.max_epochs={r.max_epochs}.")
      return TrainResult(state, metrics, {}, self.workdir, self.last_saved)

    t_start = time.perf_counter()
    step_fn, compile_s = _compile(self.trainer, state)
    self.pbar = _progress(r.max_epochs, start)
    for done in range(start + 1, r.max_epochs + 1):
      t0 = time.perf_counter()
      state, device_metrics = step_fn(state)
      metrics = _host(device_metrics)  # blocks until the iteration has finished
      dt = time.perf_counter() - t0
      steps_before, env_steps = env_steps, int(jax.device_get(state.env_steps))
      metrics[ITERATION_S] = dt
      metrics[ENV_STEPS_PER_S] = (env_steps - steps_before) / max(dt, 1e-9)
      metrics[ENV_STEPS] = float(env_steps)
      metrics[WALL_S] = time.perf_counter() - t_start
      if done == start + 1:
        # Without ahead-of-time compilation the first iteration's time includes compiling.
        metrics[COMPILE_S] = compile_s if compile_s is not None else dt
      self._check_finite(metrics, done)
      if r.val_check_interval > 0 and (done % r.val_check_interval == 0
                                       or done == r.max_epochs):
        metrics.update(self._evaluate(state, done, env_steps))
      self.logger.log(metrics, step=done)
      if (r.save_interval > 0 and done % r.save_interval == 0) or done == r.max_epochs:
        self._save(state, done, env_steps)
      self._progress(metrics, env_steps)
    self.pbar.close()
    self.ckpt.wait_until_finished()
    self.say(f"Done: {r.max_epochs} iterations, {env_steps:,} env steps in "
             f"{time.perf_counter() - t_start:.1f}s; checkpoints in {self.ckpt.directory}.")
    return TrainResult(state, metrics, self.eval_metrics, self.workdir, self.last_saved)

  def _check_finite(self, metrics: Dict[str, float], done: int) -> None:
    """NaN guard: stop before anything of a diverged iteration reaches a checkpoint."""
    bad = {k: metrics[k] for k in _NAN_GUARDED if k in metrics and not _finite(metrics[k])}
    if not bad:
      return
    self.logger.log(metrics, step=done)
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
    out = _host(self.trainer.evaluate(state, key))
    out[EVAL_S] = time.perf_counter() - t0  # the first evaluation includes its compile
    if self.record_video is not None and jax.process_index() == 0:
      out.update(self._record_video(state, key, done))
    self.eval_metrics = out
    self.say(f"[iter {done}/{self.r.max_epochs}] env steps {env_steps:,}  " + "  ".join(
        f"{k}={v:.4g}" for k, v in out.items()))
    return out

  def _record_video(self, state, key, done: int) -> Dict[str, float]:
    """Writes the evaluation videos; a failure is a warning, never a lost log or checkpoint."""
    from absl import logging as absl_logging

    t0 = time.perf_counter()
    try:
      self.record_video(self.trainer, state, key, done)
    except Exception as e:  # noqa: BLE001 - videos are a by-product; training goes on
      absl_logging.warning("Evaluation videos of iteration %d were not written: %s: %s",
                           done, type(e).__name__, e)
      return {}
    return {VIDEO_S: time.perf_counter() - t0}

  def _save(self, state, done: int, env_steps: int) -> None:
    meta = dict(_sizes(self.trainer), iteration=done, env_steps=env_steps,
                panda_rl_version=panda_rl.__version__)
    self.ckpt.save(done, state, self.config, meta=meta)
    self.last_saved = done

  def _progress(self, metrics: Dict[str, float], env_steps: int) -> None:
    if _finite(metrics.get(M.SUCCESS_ONCE, float("nan"))):
      self.success = metrics[M.SUCCESS_ONCE]  # else keep the last one with episodes
    post = {"steps": f"{env_steps:,}", "sps": f"{metrics[ENV_STEPS_PER_S]:,.0f}",
            "success": f"{self.success:.2f}" if _finite(self.success) else "-"}
    if M.EVAL_SUCCESS_ONCE in self.eval_metrics:
      post["eval"] = f"{self.eval_metrics[M.EVAL_SUCCESS_ONCE]:.2f}"
    self.pbar.set_postfix(post, refresh=False)
    self.pbar.update(1)


# --------------------------------------------------------------------------------------
# Command line.


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file "
                                  "(configs/*.py); override fields with --config.a.b=v.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default: "
                      "<runner.logger.log_path>/<project_name>/<experiment_name>).")
  flags.mark_flags_as_required(["config"])


def parse_flags(argv):
  """absl flag parsing that names unknown ``--config.*`` fields before absl sees them."""
  from absl import app, flags

  from panda_rl.config import (check_override_paths, config_file_from_argv,
                               load_config_file, override_paths_from_argv)

  path = config_file_from_argv(argv)
  if path is not None:
    try:
      check_override_paths(load_config_file(path), override_paths_from_argv(argv))
    except ConfigError as e:
      sys.stderr.write(f"FATAL Flags parsing error:\n{e}\n")
      sys.exit(1)
  return app.parse_flags_with_usage(argv)


def main(argv) -> None:
  from absl import app, flags
  from absl import logging as absl_logging

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax reports every file it writes at INFO; keep the console to the progress bar.
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except (ConfigError, MissingBackendError, CheckpointError, TrainingDivergedError,
          NotImplementedError) as e:
    sys.exit(f"panda_rl.train: {type(e).__name__}: {e}")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main, flags_parser=parse_flags)
