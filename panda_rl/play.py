"""Runs a policy in C MuJoCo: ``python -m panda_rl.play --checkpoint DIR`` (or ``--policy scripted``).

The env is the C MuJoCo twin (:mod:`panda_rl.envs.pick_cube_c`) of the checkpoint config's
evaluation env (the task as specified, no curriculum), the policy the checkpoint's
deterministic one (:func:`panda_rl.load_policy`) or the scripted pick policy
(``--policy scripted``, state env only). Vision policies see images rendered by the project's
renderer from the C MuJoCo state (:mod:`panda_rl.envs.pick_cube_vision_c`).

* With a display (and neither ``--episodes``, ``--video`` nor ``--headless``) it opens
  MuJoCo's interactive viewer (``mujoco.viewer.launch_passive``) and plays episode after
  episode in real time, printing each one's outcome, until the window is closed.
* Otherwise it runs ``--episodes`` (default 10) episodes headless, env ``i`` reset from
  ``--seed + i``, and prints the success rate; ``--video`` also writes the first
  ``--num_videos`` episodes as mp4 files (front | wrist, step number, success bar: the
  evaluation videos' format, :mod:`panda_rl.video`) to ``--video_dir`` (default
  ``<run dir>/video/play``, or ``runs/video/play`` for the scripted policy).

User errors (no checkpoint, an env without a C MuJoCo version, bad flags) print one line and
exit with status 2.
"""

import panda_rl  # noqa: F401  (first: sets XLA:CPU flags before any JAX backend starts)

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np

from panda_rl import sim2sim

POLICIES = ("checkpoint", "scripted")
DEFAULT_EPISODES = 10


class Setup(NamedTuple):
  """What to play: the env (id, overrides), the policy and its name, video defaults."""

  env_id: str
  overrides: Dict[str, Any]
  policy: Callable[[Any], Any]
  name: str
  video_dir: Path
  resolution: int
  fps: float


def has_display() -> bool:
  """Whether MuJoCo's viewer can open a window here."""
  if sys.platform in ("darwin", "win32"):
    return True
  return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def setup(policy: str, checkpoint: Optional[str], step: Optional[int], env_id: str) -> Setup:
  """Loads the policy and picks the env; ValueError / CheckpointError on bad input."""
  if policy not in POLICIES:
    raise ValueError(f"--policy must be one of {list(POLICIES)}, got {policy!r}")
  if policy == "scripted":
    if env_id not in ("PandaPickCube-v0",):
      raise ValueError(f"the scripted policy reads the cube position: it runs on "
                       f"PandaPickCube-v0, not {env_id!r}")
    return Setup(env_id, {}, sim2sim.scripted_policy(), "scripted",
                 Path("runs") / "video" / "play", 128, 25.0)
  if not checkpoint:
    raise ValueError("give --checkpoint DIR (a training run) or --policy scripted")
  from panda_rl.evaluate import default_video_dir, eval_env_settings

  loaded = panda_rl.load_policy(checkpoint, step=step, deterministic=True)
  env_id, overrides = eval_env_settings(loaded.config)
  if env_id not in sim2sim.C_ENVS:
    raise ValueError(f"the checkpoint's env {env_id!r} has no C MuJoCo version; "
                     f"available: {sorted(sim2sim.C_ENVS)}")
  vc = loaded.config.env.eval.get("video_cfg", None) or {}
  return Setup(env_id, dict(overrides), loaded, f"iter_{int(loaded.step):06d}",
               default_video_dir(checkpoint).parent / "play", int(vc.get("resolution", 128)),
               float(vc.get("fps", 25)))


class FrameRecorder:
  """Renders the first ``count`` envs (front | wrist) after every reset / step (on_frame)."""

  def __init__(self, model, count: int, resolution: int):
    import jax

    from panda_rl.envs.pick_cube_vision_c import kinematics
    from panda_rl.render import Renderer
    from panda_rl.video import CAMERAS

    renderer = Renderer(model, camera_names=CAMERAS, height=resolution, width=resolution,
                        outputs=("rgb",))
    self._render = jax.jit(jax.vmap(lambda k: jax.numpy.concatenate(
        [renderer.render(k)[c]["rgb"] for c in CAMERAS], axis=1)))
    self._kinematics = kinematics
    self.count, self.frames = count, []

  def __call__(self, envs: List[Any]) -> None:
    self.frames.append(np.asarray(self._render(self._kinematics(
        [e.data for e in envs[:self.count]]))))

  def write(self, traj: sim2sim.Trajectories, directory: Path, name: str,
            fps: float) -> List[Path]:
    """One mp4 per recorded episode: its reset frame plus one per step."""
    from panda_rl.video import annotate, write_mp4

    frames = np.stack(self.frames)  # [T + 1, count, H, 2W, 3]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(self.count):
      n = int(traj.length[i]) + 1
      success = np.concatenate([[False], traj.step_success[:n - 1, i]])
      paths.append(write_mp4(directory / f"play_{name}_ep{i}.mp4",
                             annotate(frames[:n, i], success), fps))
    return paths


def run_headless(s: Setup, episodes: int, seed: int, video: bool, num_videos: int,
                 video_dir: Optional[str], resolution: Optional[int]):
  """``episodes`` C MuJoCo episodes in lockstep; returns (Trajectories, video paths)."""
  if episodes < 1:
    raise ValueError(f"--episodes must be >= 1, got {episodes}")
  envs = [sim2sim.make_c_env(s.env_id, **s.overrides) for _ in range(episodes)]
  recorder = None
  if video:
    if num_videos < 1:
      raise ValueError(f"--num_videos must be >= 1, got {num_videos}")
    recorder = FrameRecorder(envs[0].model, min(num_videos, episodes),
                             resolution or s.resolution)
  traj = sim2sim.c_episodes(envs, s.policy, seed=seed, on_frame=recorder)
  paths = []
  if recorder is not None:
    paths = recorder.write(traj, Path(video_dir) if video_dir else s.video_dir, s.name, s.fps)
  return traj, paths


def _batch1(obs: Any) -> Any:
  if isinstance(obs, dict):
    return {k: np.asarray(v)[None] for k, v in obs.items()}
  return np.asarray(obs)[None]


def run_viewer(s: Setup, seed: int) -> None:  # pragma: no cover (needs a display)
  """Plays episodes in MuJoCo's passive viewer, in real time, until the window closes."""
  import mujoco.viewer

  env = sim2sim.make_c_env(s.env_id, **s.overrides)
  dt = float(env.config.ctrl_dt)
  episode, obs, success = 0, env.reset(seed=seed), False
  with mujoco.viewer.launch_passive(env.model, env.data) as viewer:
    with viewer.lock():  # look at the workspace from the front, a little from above
      viewer.cam.lookat[:] = (0.4, 0.0, 0.15)
      viewer.cam.distance, viewer.cam.azimuth, viewer.cam.elevation = 1.6, 180.0, -25.0
    while viewer.is_running():
      start = time.perf_counter()
      result = env.step(np.asarray(s.policy(_batch1(obs)))[0])
      success |= result.metrics["success"] > 0
      viewer.sync()
      obs = result.obs
      if result.done:
        print(f"episode {episode}: {'success' if success else 'no success'} "
              f"({env.steps} steps)", flush=True)
        episode, success = episode + 1, False
        obs = env.reset(seed=seed + episode)
      time.sleep(max(0.0, dt - (time.perf_counter() - start)))


def _define_flags():
  from absl import flags

  flags.DEFINE_string("checkpoint", None, "Run directory, its checkpoints/ directory, or "
                      "one checkpoints/<step> directory.")
  flags.DEFINE_enum("policy", "checkpoint", list(POLICIES), "The checkpoint's policy or "
                    "the scripted pick policy.")
  flags.DEFINE_string("env", "PandaPickCube-v0", "Env of the scripted policy (a checkpoint "
                      "brings its own).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
  flags.DEFINE_integer("episodes", None, f"Run this many episodes headless (default "
                       f"{DEFAULT_EPISODES} when there is no display).")
  flags.DEFINE_integer("seed", 0, "Episode i starts from the C env's reset with seed + i.")
  flags.DEFINE_bool("headless", False, "Never open the viewer.")
  flags.DEFINE_bool("video", False, "Write episodes as mp4 videos (headless).")
  flags.DEFINE_string("video_dir", None, "Directory of the videos (default: <run dir>/"
                      "video/play, runs/video/play for the scripted policy).")
  flags.DEFINE_integer("num_videos", 2, "Episodes written as videos.")
  flags.DEFINE_integer("video_resolution", None, "Height/width of each camera view "
                       "(default: the config's env.eval.video_cfg.resolution, or 128).")
  flags.DEFINE_bool("json", False, "Also print the results as one JSON line.")


def main(argv) -> None:

  from panda_rl.checkpoint import CheckpointError
  from panda_rl.cli import fail, start

  f = start(argv)
  t0 = time.perf_counter()
  try:
    s = setup(f.policy, f.checkpoint, f.step, f.env)
    if f.episodes is None and not f.video and not f.headless and has_display():
      run_viewer(s, f.seed)
      return
    episodes = DEFAULT_EPISODES if f.episodes is None else f.episodes
    traj, paths = run_headless(s, episodes, f.seed, f.video,
                               f.num_videos, f.video_dir, f.video_resolution)
  except (CheckpointError, ValueError, OSError) as e:
    fail("panda_rl.play", e)
  n, k = len(traj.success), int(traj.success.sum())
  print(f"{s.name} on {s.env_id} in C MuJoCo: {n} episodes in "
        f"{time.perf_counter() - t0:.1f}s")
  print(f"success rate: {k / n:.3f} ({k}/{n})")
  print(f"mean episode length: {traj.length.mean():.1f}")
  for path in paths:
    print(f"video: {path}")
  if f.json:
    print(json.dumps({"env_id": s.env_id, "policy": s.name, "episodes": n,
                      "success_rate": k / n, "mean_length": float(traj.length.mean()),
                      "videos": [str(p) for p in paths]}))


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
