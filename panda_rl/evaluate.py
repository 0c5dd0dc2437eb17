"""Evaluates a checkpoint: ``python -m panda_rl.evaluate --checkpoint DIR [--episodes N]``.

Rebuilds the policy with :func:`panda_rl.load_policy` (no training code), runs N
deterministic (mean-action) episodes on the evaluation env named in the checkpoint's config,
and prints the success rate (share of episodes with ``metrics["success"] > 0`` at any step),
the mean return and the mean episode length.

With ``--video`` it also writes ``--num_videos`` deterministic episodes as mp4 files
(``iter_<step>_ep<i>.mp4``, see :mod:`panda_rl.video`) to ``--video_dir``, by default
``<run dir>/video/evaluate``; size and frame rate default to the config's
``env.eval.video_cfg``.

A checkpoint of several seeds (``runner.num_seeds``) holds one policy per seed:
``--policy_seed K`` picks seed K's (default 0). (``--seed`` is the episodes' PRNG seed.)
"""

import panda_rl  # noqa: F401  (first: sets XLA:CPU flags before any JAX backend starts)

import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import jax

from panda_rl import metrics as M
from panda_rl.config import program_settings
from panda_rl.evaluation import evaluate_policy  # noqa: F401  (the one evaluation loop)


def eval_env_settings(config) -> tuple:
  """(env_id, overrides) of ``config.env.eval``, falling back to ``config.env.train``.

  Overrides inherited from the train env lose its training-only keys (reset curricula,
  ``registry.eval_overrides``), exactly as in the trainer's evaluation.
  """
  from panda_rl.validation import env_settings

  return env_settings(config.env.eval, config.env.train)


def evaluate_checkpoint(checkpoint: str, episodes: int = 100, seed: int = 0,
                        step: Optional[int] = None, num_envs: Optional[int] = None, *,
                        policy: Optional[Callable] = None,
                        policy_seed: int = 0) -> Dict[str, float]:
  """Loads the policy of ``checkpoint`` and evaluates it on its config's eval env.

  ``seed``: PRNG seed of the episodes; ``policy_seed``: which seed's policy of a multi-seed
  checkpoint; ``policy``: an already loaded ``panda_rl.load_policy(checkpoint, step=step)``.
  """
  if policy is None:
    policy = panda_rl.load_policy(checkpoint, step=step, deterministic=True, seed=policy_seed)
  env_id, overrides = eval_env_settings(policy.config)
  env = panda_rl.make(env_id, **overrides)
  batch = num_envs or int(policy.config.env.eval.num_envs)
  # What the episodes program is built from: it is kept traced under these settings.
  settings = {"config": program_settings(policy.config), "env_id": env_id,
              "overrides": overrides, "deterministic": bool(policy.deterministic)}
  out = evaluate_policy(env, policy, episodes, jax.random.PRNGKey(seed), num_envs=batch,
                        settings=settings)
  out["step"] = policy.step
  if getattr(policy, "num_seeds", 1) > 1:
    out["policy_seed"] = policy.seed
  out["env_id"] = env_id
  return out


def default_video_dir(checkpoint: str) -> Path:
  """``<run dir>/video/evaluate`` of a run dir, checkpoints dir or step dir."""
  from panda_rl.checkpoint import CHECKPOINT_SUBDIR, resolve_checkpoint_path

  root, _ = resolve_checkpoint_path(checkpoint)
  run = root.parent if root.name == CHECKPOINT_SUBDIR else root
  return run / "video" / "evaluate"


def record_checkpoint_videos(checkpoint: str, directory: Optional[str] = None,
                             num_videos: Optional[int] = None, seed: int = 0,
                             step: Optional[int] = None, resolution: Optional[int] = None,
                             fps: Optional[float] = None, *,
                             policy: Optional[Callable] = None) -> List[Path]:
  """Writes deterministic episodes of ``checkpoint``'s policy as mp4 files.

  Args:
    checkpoint: run dir, checkpoints dir or one step dir (as for ``load_policy``).
    directory: where to write (default :func:`default_video_dir`).
    num_videos, resolution, fps: default to the checkpoint config's ``env.eval.video_cfg``.
    seed: PRNG seed of the episodes' initial states.
    step: checkpoint step (default: the latest complete one).
    policy: an already loaded ``panda_rl.load_policy(checkpoint, step=step)``.

  Returns:
    The paths written, ``<directory>/iter_<step:06d>_ep<i>.mp4``.

  Raises:
    ValueError: bad settings or an eval env that cannot be rendered; OSError on writing.
  """
  from panda_rl.video import VideoRecorder

  if policy is None:
    policy = panda_rl.load_policy(checkpoint, step=step, deterministic=True)
  vc = policy.config.env.eval.get("video_cfg", None)
  vc = vc if vc is not None else {}
  env_id, overrides = eval_env_settings(policy.config)
  recorder = VideoRecorder(
      panda_rl.make(env_id, **overrides), lambda _, obs: policy(obs),
      num_videos=num_videos if num_videos is not None else vc.get("num_videos", 2),
      resolution=resolution if resolution is not None else vc.get("resolution", 128),
      fps=fps if fps is not None else vc.get("fps", 25))
  directory = Path(directory) if directory else default_video_dir(checkpoint)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x76696431)  # apart from evaluate's
  return recorder.record((), key, directory, f"iter_{int(policy.step):06d}")


def _define_flags():
  from absl import flags

  flags.DEFINE_string("checkpoint", None, "Run directory, its checkpoints/ directory, or "
                      "one checkpoints/<step> directory.")
  flags.DEFINE_integer("episodes", 100, "Number of evaluation episodes.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the evaluation episodes.")
  flags.DEFINE_integer("policy_seed", 0, "Which seed's policy of a checkpoint of several "
                       "seeds (runner.num_seeds): 0 .. num_seeds - 1.")
  flags.DEFINE_integer("num_envs", None, "Parallel envs (default: the config's "
                       "env.eval.num_envs).")
  flags.DEFINE_bool("json", False, "Also print the results as one JSON line.")
  flags.DEFINE_bool("video", False, "Also write evaluation episodes as mp4 videos.")
  flags.DEFINE_string("video_dir", None, "Directory of the videos (default: "
                      "<run dir>/video/evaluate).")
  flags.DEFINE_integer("num_videos", None, "Episodes written as videos (default: the "
                       "config's env.eval.video_cfg.num_videos).")
  flags.DEFINE_integer("video_resolution", None, "Height/width of each camera view in the "
                       "videos (default: the config's env.eval.video_cfg.resolution).")
  flags.mark_flags_as_required(["checkpoint"])


def main(argv) -> None:

  from panda_rl.checkpoint import CheckpointError
  from panda_rl.cli import EXIT_USER_ERROR, fail, start

  f = start(argv)
  t0 = time.perf_counter()
  try:
    policy = panda_rl.load_policy(f.checkpoint, step=f.step, deterministic=True,
                                  seed=f.policy_seed)
    out = evaluate_checkpoint(f.checkpoint, f.episodes, f.seed, f.step, f.num_envs,
                              policy=policy)
  except (CheckpointError, ValueError) as e:
    fail("panda_rl.evaluate", e)
  n = out[M.EVAL_NUM_EPISODES]
  s = out[M.EVAL_SUCCESS_ONCE]
  which = f" (seed {out['policy_seed']})" if "policy_seed" in out else ""
  print(f"checkpoint step {out['step']}{which} on {out['env_id']}: {n} episodes in "
        f"{time.perf_counter() - t0:.1f}s")
  print(f"success rate: {s:.3f} ({int(round(s * n))}/{n})")
  print(f"mean return: {out[M.EVAL_RETURN]:.3f}")
  print(f"mean episode length: {out[M.EVAL_EPISODE_LEN]:.1f}")
  if f.json:
    print(json.dumps(out))
  if f.video:
    t0 = time.perf_counter()
    try:
      paths = record_checkpoint_videos(f.checkpoint, f.video_dir, f.num_videos, f.seed,
                                       f.step, f.video_resolution, policy=policy)
    except (ValueError, OSError) as e:
      sys.stderr.write(f"panda_rl.evaluate: videos not written: {type(e).__name__}: {e}\n")
      sys.exit(EXIT_USER_ERROR)
    print(f"{len(paths)} videos in {time.perf_counter() - t0:.1f}s:")
    for path in paths:
      print(f"  {path}")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
