"""Evaluation videos: deterministic episodes of a policy, rendered on device, written as mp4.

    recorder = VideoRecorder(env, lambda params, obs: policy(obs), num_videos=2,
                             resolution=128, fps=25)
    paths = recorder.record(params, key, "runs/videos", name="iter_000020")
    # -> runs/videos/iter_000020_ep0.mp4, iter_000020_ep1.mp4

One jitted program resets ``num_videos`` envs, then a ``lax.scan`` over the episode steps
them with the policy and renders every state with the pure-JAX renderer
(:mod:`panda_rl.render`); the host only cuts each episode at its end, draws the overlay and
encodes. Each frame is the camera views side by side (``front | wrist``: [H, C * W, 3]), with
the env step number in the top-left corner and a bar along the bottom edge that is green while
the env's ``metrics["success"]`` holds, amber once the episode has succeeded but no longer
does, and grey before any success.

A video is exactly one episode: the reset state plus one frame per step up to and including
the step that ended it (``done``), so ``episode length + 1`` frames. Rendering reads only
``state.data`` (with the env's ``mj_model``); observations go to the policy untouched, so state
envs (flat obs) and vision envs (dict obs) work alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from panda_rl import evaluation
from panda_rl.envs.base import Env
from panda_rl.evaluation import single_env

CAMERAS = ("front", "wrist")
# Overlay colours (RGB uint8).
TEXT_RGB = (255, 255, 255)
SUCCESS_RGB = (40, 200, 70)  # success holds at this step
SUCCEEDED_RGB = (230, 170, 40)  # the episode succeeded earlier, not at this step
NO_SUCCESS_RGB = (70, 70, 70)  # no success yet

# 3 x 5 pixel digits, one string per row ("#" = ink).
_FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", "..#", "..#", "..#"),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}
_GLYPHS = {c: np.array([[ch == "#" for ch in row] for row in rows]) for c, rows in _FONT.items()}


@dataclasses.dataclass
class Episodes:
  """Rendered episodes on the host, one entry per video.

  Attributes:
    frames: per episode, uint8 [L + 1, H, C * W, 3]: the reset state, then one frame per step
      up to and including the one that ended the episode (L = its length). No overlay.
    success: per episode, bool [L + 1]: ``metrics["success"] > 0`` in each frame's state.
    lengths: int [N] episode lengths (steps).
  """

  frames: List[np.ndarray]
  success: List[np.ndarray]
  lengths: np.ndarray

  @property
  def success_once(self) -> np.ndarray:
    """bool [N]: whether each episode succeeded at any step."""
    return np.array([bool(s.any()) for s in self.success])


def check_settings(num_videos: int, resolution: Any, fps: float) -> Tuple[int, int, int, float]:
  """Validates video settings; returns ``(num_videos, height, width, fps)``.

  ``resolution`` is one int (square views) or ``(height, width)``. Raises ValueError.
  """
  errors = []
  if isinstance(num_videos, bool) or not isinstance(num_videos, (int, np.integer)) \
      or num_videos < 1:
    errors.append(f"num_videos must be an int >= 1, got {num_videos!r}")
  hw = tuple(resolution) if isinstance(resolution, (tuple, list)) else (resolution, resolution)
  if len(hw) != 2 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool)
                             and x >= 8 for x in hw):
    errors.append(f"resolution must be an int >= 8 or (height, width), got {resolution!r}")
  if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
    errors.append(f"fps must be > 0, got {fps!r}")
  if errors:
    raise ValueError("; ".join(errors))
  return int(num_videos), int(hw[0]), int(hw[1]), float(fps)


def episode_steps(env: Env) -> int:
  """The env's time limit (``config.episode_length`` or ``episode_length``)."""
  n = getattr(env, "episode_length", None)
  config = getattr(env, "config", None)
  if n is None and config is not None:
    n = config.get("episode_length", None) if hasattr(config, "get") else None
  if n is None:
    raise ValueError(f"{type(env.unwrapped).__name__} declares no episode_length; pass "
                     "max_steps to VideoRecorder")
  return int(n)


def local_copy(tree: Any) -> Any:
  """``tree`` on this process's first device (replicated multi-host arrays: the local copy).

  Lets one process record videos from parameters that live on a mesh spanning many
  processes, without a collective.
  """
  device = jax.local_devices()[0]

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError("cannot record videos from parameters sharded across processes")
      x = x.addressable_data(0)
    return jax.device_put(x, device)

  return jax.tree.map(one, tree)


class VideoRecorder:
  """Renders deterministic episodes of a policy and writes them as mp4 files.

  Args:
    env: the env (an :class:`AutoResetWrapper` is unwrapped: a video is one episode). It
      must expose ``mj_model`` (``mujoco.MjModel``) with the cameras named in ``cameras``,
      and a time limit (``config.episode_length``) unless ``max_steps`` is given.
    policy_fn: ``(params, obs [N, ...]) -> action [N, A]``, pure and jittable; ``params`` is
      whatever is passed to :meth:`rollout` (an argument, so new parameters do not
      recompile).
    num_videos: episodes per call (N), rendered in parallel.
    resolution: height/width of each camera view (int), or ``(height, width)``.
    fps: frame rate of the mp4 files.
    cameras: MJCF camera names, left to right.
    max_steps: steps to simulate (default: the env's episode length); episodes still
      running then are cut there.

  Raises:
    ValueError: bad settings, or an env that cannot be rendered.
  """

  def __init__(self, env: Env, policy_fn: Callable[[Any, Any], jax.Array], *,
               num_videos: int = 2, resolution: Any = 128, fps: float = 25,
               cameras: Sequence[str] = CAMERAS, max_steps: Optional[int] = None):
    from panda_rl.render import Renderer

    self.num_videos, self.height, self.width, self.fps = check_settings(
        num_videos, resolution, fps)
    self.env = single_env(env)
    mj_model = getattr(self.env, "mj_model", None)
    if mj_model is None:
      raise ValueError(f"{type(self.env.unwrapped).__name__} has no mj_model to render "
                       "videos from (only MuJoCo envs can be recorded)")
    missing = [c for c in cameras if _camera_id(mj_model, c) < 0]
    if missing:
      raise ValueError(f"{type(self.env.unwrapped).__name__}: no camera named {missing} in "
                       "its model")
    self.cameras = tuple(cameras)
    self.max_steps = int(max_steps) if max_steps is not None else episode_steps(self.env)
    if self.max_steps < 1:
      raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
    self.renderer = Renderer(mj_model, camera_names=self.cameras, height=self.height,
                             width=self.width, outputs=("rgb",))
    self.policy_fn = policy_fn
    self._rollout = jax.jit(self._rollout_impl)

  # ------------------------------------------------------------------ device side

  def _frame(self, data) -> jax.Array:
    """ONE env's state -> uint8 [H, C * W, 3], the camera views side by side."""
    images = self.renderer.render(data)
    return jnp.concatenate([images[c]["rgb"] for c in self.cameras], axis=1)

  def _rollout_impl(self, params: Any, key: jax.Array):
    env, zeros = self.env, jnp.zeros((self.num_videos,), jnp.float32)

    def record(state):
      return (jax.vmap(self._frame)(state.data), state.done,
              state.metrics.get("success", zeros))

    _, state, (frames, done, success) = evaluation.run_episodes(
        env, lambda obs: self.policy_fn(params, obs), key, self.num_videos, record=record,
        num_steps=self.max_steps)
    first = jax.vmap(self._frame)(_with_kinematics(env, state.data))
    # Frames [T + 1, N, H, C * W, 3]; done and success [T] per env, success [T + 1].
    frames = jnp.concatenate([first[None], frames], axis=0)
    success = jnp.concatenate([state.metrics.get("success", zeros)[None], success], axis=0)
    return frames, done, success

  # ------------------------------------------------------------------ host side

  def rollout(self, params: Any, key: jax.Array) -> Episodes:
    """Simulates and renders ``num_videos`` episodes (one compiled program; no overlay)."""
    frames, done, success = jax.device_get(self._rollout(params, key))
    episodes, flags, lengths = [], [], []
    for i in range(self.num_videos):
      ended = np.flatnonzero(done[:, i] > 0.5)
      length = int(ended[0]) + 1 if ended.size else self.max_steps
      episodes.append(np.ascontiguousarray(frames[:length + 1, i]))
      flags.append(success[:length + 1, i] > 0)
      lengths.append(length)
    return Episodes(episodes, flags, np.asarray(lengths, np.int32))

  def write(self, episodes: Episodes, directory: str | os.PathLike, name: str
            ) -> List[Path]:
    """Annotates and writes each episode to ``<directory>/<name>_ep<i>.mp4``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (frames, success) in enumerate(zip(episodes.frames, episodes.success)):
      path = directory / f"{name}_ep{i}.mp4"
      write_mp4(path, annotate(frames, success), self.fps)
      paths.append(path)
    return paths

  def record(self, params: Any, key: jax.Array, directory: str | os.PathLike, name: str
             ) -> List[Path]:
    """:meth:`rollout` then :meth:`write`; returns the paths written."""
    return self.write(self.rollout(params, key), directory, name)


def _camera_id(mj_model, name: str) -> int:
  import mujoco

  return mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_CAMERA, name)


def _with_kinematics(env: Env, data: Any) -> Any:
  """Poses of ``data`` recomputed from its qpos (batched), where the env is an MJX env.

  A reset may move bodies without running kinematics (the pick-cube env only writes the
  cube's qpos; the next physics step recomputes everything); the first frame must show
  where things are.
  """
  from mujoco import mjx

  model = getattr(env, "mjx_model", None)
  if model is None or not isinstance(data, mjx.Data):
    return data
  return jax.vmap(lambda d: mjx.camlight(model, mjx.kinematics(model, d)))(data)


# --------------------------------------------------------------------------------------
# Overlay and encoding (host, numpy).


def draw_text(image: np.ndarray, text: str, top: int, left: int, scale: int = 1,
              rgb: Sequence[int] = TEXT_RGB) -> None:
  """Draws digits (3 x 5 font, ``scale`` pixels per dot) in place, on a darkened box."""
  h, w = image.shape[:2]
  glyphs = [_GLYPHS[c] for c in text]
  if not glyphs:
    return
  gh, gw = 5 * scale, 3 * scale
  width = len(glyphs) * (gw + scale) - scale
  y0, x0 = max(top - scale, 0), max(left - scale, 0)
  y1, x1 = min(top + gh + scale, h), min(left + width + scale, w)
  image[y0:y1, x0:x1] = image[y0:y1, x0:x1] // 3  # backdrop for contrast on any scene
  for k, glyph in enumerate(glyphs):
    mask = np.kron(glyph, np.ones((scale, scale), bool))
    y, x = top, left + k * (gw + scale)
    mh, mw = min(gh, h - y), min(gw, w - x)
    if mh <= 0 or mw <= 0:
      break
    image[y:y + mh, x:x + mw][mask[:mh, :mw]] = rgb


def annotate(frames: np.ndarray, success: np.ndarray) -> np.ndarray:
  """Overlays the step number and the success bar on ONE episode's frames.

  Args:
    frames: uint8 [L + 1, H, W', 3], frame t showing the state after t steps.
    success: bool [L + 1], success in each frame's state.
  Returns:
    A new uint8 [L + 1, H, W', 3] array.
  """
  out = np.array(frames, np.uint8, copy=True)
  height = out.shape[1]
  scale = max(1, round(height / 64))
  bar = max(2, height // 32)
  succeeded = np.maximum.accumulate(np.asarray(success, bool))
  for t, image in enumerate(out):
    draw_text(image, str(t), top=2 * scale, left=2 * scale, scale=scale)
    colour = (SUCCESS_RGB if success[t] else SUCCEEDED_RGB if succeeded[t]
              else NO_SUCCESS_RGB)
    image[height - bar:] = colour
  return out


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
  """Writes uint8 frames [T, H, W, 3] as an H.264 mp4 (odd sizes padded by one black row
  / column, as yuv420p needs even ones). The file appears complete or not at all."""
  import imageio.v2 as imageio

  path = Path(path)
  frames = np.asarray(frames, np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
    raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.shape}")
  pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
  if pad_h or pad_w:
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
  try:
    with _ffmpeg_quiet():
      writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                  pixelformat="yuv420p", macro_block_size=1,
                                  ffmpeg_log_level="error")
      with writer:
        for frame in frames:
          writer.append_data(frame)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
  """Reads an mp4 back: uint8 [T, H, W, 3] (for tests and notebooks)."""
  import imageio.v2 as imageio

  with _ffmpeg_quiet(), imageio.get_reader(path, format="FFMPEG") as reader:
    return np.stack([np.asarray(f) for f in reader])


@contextlib.contextmanager
def _ffmpeg_quiet():
  # imageio-ffmpeg starts ffmpeg by fork + exec, which JAX's fork warning flags too; the
  # child runs no Python (let alone JAX) before exec, so the warning does not apply.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                            category=RuntimeWarning)
    yield
