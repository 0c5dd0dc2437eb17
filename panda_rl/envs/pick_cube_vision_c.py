"""PandaPickCubeVision-v0's observation on the C MuJoCo task (:mod:`panda_rl.envs.pick_cube_c`).

Physics, reward and episode rules are :class:`~panda_rl.envs.pick_cube_c.PandaPickCubeC`'s;
the observation is :class:`~panda_rl.envs.pick_cube_vision.PandaPickCubeVision`'s dict
(``front`` / ``wrist`` uint8 [H, W, 3], ``tcp_pos``, ``tcp_vel``, ``gripper_pos``,
``instruction``), with the images rendered by the project's pure-JAX renderer
(:class:`panda_rl.render.Renderer`, the one the MJX env renders with inside its step) from
the C MuJoCo state's kinematics, so the pixels are those the policy was trained on. The
physics step runs no JAX; the renderer does (one jitted call renders a whole batch of envs:
:meth:`PandaPickCubeVisionC.observe_batch`).

After a step the images show the kinematics ``mj_step`` computed before integrating (as MJX's
images do); after a reset, ``mj_forward``'s, i.e. the cube where it is (the MJX env moves the
cube's kinematics for its first image the same way).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Sequence

import numpy as np

from panda_rl.envs import language
from panda_rl.envs import pick_cube_vision as vision
from panda_rl.envs.pick_cube_c import PandaPickCubeC


class Kinematics(NamedTuple):
  """What :meth:`panda_rl.render.Renderer.render` reads from a state (float32 arrays)."""

  geom_xpos: Any
  geom_xmat: Any
  cam_xpos: Any
  cam_xmat: Any
  xpos: Any
  xmat: Any


def kinematics(datas: Sequence[Any]) -> Kinematics:
  """Stacks the render inputs of several ``MjData`` (or one, without the batch axis)."""
  def stack(name):
    return np.stack([np.asarray(getattr(d, name), np.float32) for d in datas])

  return Kinematics(*(stack(f) for f in Kinematics._fields))


def split_config(overrides: Dict[str, Any]):
  """(task overrides, vision settings) with PandaPickCubeVision's keys and checks."""
  vision_keys = set(vision.vision_config().keys())
  valid = set(vision.default_config().keys())
  unknown = sorted(set(overrides) - valid)
  if unknown:
    raise ValueError(f"PandaPickCubeVisionC: unknown config key(s) {unknown}; "
                     f"valid keys: {sorted(valid)}")
  settings = vision.vision_config()
  settings.update({k: v for k, v in overrides.items() if k in vision_keys})
  for name in ("image_height", "image_width", "instruction_length"):
    value = settings[name]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
      raise ValueError(f"PandaPickCubeVisionC: {name} must be an int >= 1, got {value!r}")
  return {k: v for k, v in overrides.items() if k not in vision_keys}, settings


class PandaPickCubeVisionC(PandaPickCubeC):
  """The pick-cube task in C MuJoCo with PandaPickCubeVision-v0's observations."""

  def __init__(self, **overrides):
    task, settings = split_config(overrides)
    self._renderer = None  # built on first use (the base __init__ resets without observing)
    super().__init__(**task)
    cfg = vision.default_config()
    cfg.update(self.config.to_dict())
    cfg.update(settings.to_dict())
    self.config = cfg
    self.instruction_text = str(cfg.instruction)
    self._tokens = language.tokenize(self.instruction_text, int(cfg.instruction_length))
    self.observation_size = {cam: (int(cfg.image_height), int(cfg.image_width), 3)
                             for cam in vision.CAMERAS}
    self.observation_size.update({name: (n,) for name, n in vision.PROPRIO})
    self.observation_size["instruction"] = (int(cfg.instruction_length),)

  @staticmethod
  def obs_dict(obs):
    return dict(obs)

  def render_fn(self):
    """The jitted batched renderer: Kinematics [N] -> {camera: {"rgb": [N, H, W, 3]}}."""
    if self._renderer is None:
      import jax

      from panda_rl.render import Renderer

      renderer = Renderer(self.model, camera_names=vision.CAMERAS,
                          height=int(self.config.image_height),
                          width=int(self.config.image_width), outputs=("rgb",))
      self._renderer = jax.jit(jax.vmap(renderer.render))
    return self._renderer

  def observe(self, flat_obs: np.ndarray) -> Dict[str, np.ndarray]:
    batch = self.observe_batch([self], np.asarray(flat_obs)[None])
    return {k: v[0] for k, v in batch.items()}

  @classmethod
  def observe_batch(cls, envs, flat_obs: np.ndarray) -> Dict[str, np.ndarray]:
    """Dict observations of ``envs`` (same settings) from their flat obs [N, 10]."""
    first = envs[0]
    images = first.render_fn()(kinematics([e.data for e in envs]))
    flat = np.asarray(flat_obs, np.float32)
    parts = PandaPickCubeC.obs_dict(flat)
    obs = {cam: np.asarray(images[cam]["rgb"]) for cam in vision.CAMERAS}
    obs.update({name: parts[name] for name, _ in vision.PROPRIO})
    obs["instruction"] = np.broadcast_to(first._tokens, (len(envs),) + first._tokens.shape)
    return obs
