"""The training loop's evaluation-video hook (:class:`EvalVideos`), built from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import jax
import ml_collections

from panda_rl import metrics as M
from panda_rl.config import ConfigError


def video_dir(config: ml_collections.ConfigDict) -> Path:
  """Where evaluation videos go: ``env.eval.video_cfg.video_base_dir`` if set, else
  ``<runner.logger.log_path>/video/eval``, with ``<project>/<experiment>`` below it so that
  runs never overwrite each other's videos."""
  base = config.env.eval.video_cfg.get("video_base_dir", "")
  if base:
    return Path(base).expanduser()
  logger = config.runner.logger
  return (Path(logger.log_path).expanduser() / "video" / "eval" / logger.project_name /
          logger.experiment_name)


class EvalVideos:
  """``record(trainer, state, key, step) -> [paths]``: the evaluation videos of a step.

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

  def __call__(self, trainer: Any, state: Any, key: jax.Array, step: int) -> List[Path]:
    from panda_rl import video

    if self._recorder is None:
      self.prepare(trainer)
    params = video.local_copy({"params": state.params, "normalizer": state.normalizer})
    return self._recorder.record(params, key, self.directory, f"iter_{int(step):06d}")

  def safe_record(self, trainer: Any, state: Any, key: jax.Array, step: int
                  ) -> Dict[str, float]:
    """Writes the videos; a failure is a warning, never a lost log or checkpoint.

    Returns ``{"time/video_s": seconds}``, or {} when writing failed.
    """
    import time

    from absl import logging as absl_logging

    t0 = time.perf_counter()
    try:
      self(trainer, state, key, step)
    except Exception as e:  # noqa: BLE001 - videos are a by-product; training goes on
      absl_logging.warning("Evaluation videos of iteration %d were not written: %s: %s",
                           step, type(e).__name__, e)
      return {}
    return {M.VIDEO_S: time.perf_counter() - t0}


def video_recorder(config: ml_collections.ConfigDict) -> Optional[EvalVideos]:
  """The hook writing eval videos (:class:`EvalVideos`), or None if disabled. Videos go to
  :func:`video_dir`; the run loop calls it right after each evaluation, on process 0 only."""
  if not config.env.eval.video_cfg.save_video:
    return None
  return EvalVideos(config, video_dir(config))
