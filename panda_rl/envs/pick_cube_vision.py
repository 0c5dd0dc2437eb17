"""PandaPickCubeVision-v0: the pick-cube task seen through two cameras (MJX + on-device renderer).

Physics, action, reward, success, termination and episode rules are exactly those of
:class:`~panda_rl.envs.pick_cube.PandaPickCube` (this class subclasses it and only replaces
the observation), and every PandaPickCube config key is accepted:
``make("PandaPickCubeVision-v0", image_height=128, image_width=128, reward_type="sparse")``.

Observation (a dict; :meth:`PandaPickCubeVision.obs_dict` documents it too):

* ``front``, ``wrist``: uint8 [H, W, 3] RGB images of the two MJCF cameras, rendered inside
  the jitted ``reset`` / ``step`` by the pure-JAX :class:`panda_rl.render.Renderer`
  (H x W = ``image_height`` x ``image_width``, default 64 x 64; any size works).
* ``tcp_pos`` (3), ``tcp_vel`` (3), ``gripper_pos`` (1): float32 proprioception, the same
  numbers as PandaPickCube's (no ``cube_pos``: the cube is only seen in the images).
* ``instruction``: int32 [``instruction_length``] token ids of :attr:`instruction_text`
  ("Pick up the cube." by default) in :data:`panda_rl.envs.language.VOCAB`, padded with 0.
  The same for every step and env; strings cannot live in jitted arrays, so the text itself
  is the Python attribute ``env.instruction_text``.

Timing of the images: after a step they show the kinematics MJX computed at the start of
the last physics substep (as the PandaPickCube docstring explains for ``site_xpos``), i.e.
the scene 5 ms before the returned ``qpos``. At reset the cube's pose is written into the
kinematic arrays used for rendering (the reset template's kinematics show the cube at its
template pose), so the first image shows the cube where it really is.

Cost: every step renders both cameras for every env; :class:`AutoResetWrapper` also renders
the reset observations of the whole batch on the steps where some episode ends.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from mujoco.mjx._src import math as mjx_math

from panda_rl.envs import language
from panda_rl.envs import pick_cube
from panda_rl.envs.base import EnvState
from panda_rl.render import Renderer

CAMERAS = ("front", "wrist")
PROPRIO = (("tcp_pos", 3), ("tcp_vel", 3), ("gripper_pos", 1))
DEFAULT_INSTRUCTION = "Pick up the cube."


def vision_config() -> ml_collections.ConfigDict:
  """The keys this env adds to PandaPickCube's :func:`~panda_rl.envs.pick_cube.default_config`."""
  c = ml_collections.ConfigDict()
  c.image_height = 64  # rendered image height in pixels (both cameras)
  c.image_width = 64  # rendered image width in pixels (both cameras)
  c.instruction = DEFAULT_INSTRUCTION  # task text; its words must be in language.VOCAB
  c.instruction_length = 8  # L: token ids per instruction (padded with 0)
  return c


def default_config() -> ml_collections.ConfigDict:
  """All PandaPickCube keys plus :func:`vision_config`'s; ``make(...)`` overrides them."""
  c = pick_cube.default_config()
  c.update(vision_config().to_dict())
  return c


class PandaPickCubeVision(pick_cube.PandaPickCube):
  """Functional pick-cube env with image + proprioception + instruction observations.

  ``reset(key)`` and ``step(state, action)`` for ONE env (vmap them, or use
  :class:`~panda_rl.envs.base.AutoResetWrapper`).
  """

  def __init__(self, **overrides):
    vision_keys = set(vision_config().keys())
    valid = set(default_config().keys())
    unknown = sorted(set(overrides) - valid)
    if unknown:
      raise ValueError(f"PandaPickCubeVision: unknown config key(s) {unknown}; "
                       f"valid keys: {sorted(valid)}")
    super().__init__(**{k: v for k, v in overrides.items() if k not in vision_keys})
    cfg = default_config()
    cfg.update(self.config.to_dict())
    cfg.update({k: v for k, v in overrides.items() if k in vision_keys})
    self.config = cfg
    for name in ("image_height", "image_width", "instruction_length"):
      value = cfg[name]
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"PandaPickCubeVision: {name} must be an int >= 1, got {value!r}")

    self.instruction_text = str(cfg.instruction)
    self._tokens = language.tokenize(self.instruction_text, int(cfg.instruction_length))
    self.renderer = Renderer(self.mj_model, camera_names=CAMERAS,
                             height=int(cfg.image_height), width=int(cfg.image_width),
                             outputs=("rgb",))
    mj = self.mj_model
    self._cube_body = mj.body("cube").id
    self._cube_geoms = np.nonzero(mj.geom_bodyid == self._cube_body)[0]
    self._cube_geom_pos = jnp.asarray(mj.geom_pos[self._cube_geoms], jnp.float32)
    self._cube_geom_quat = jnp.asarray(mj.geom_quat[self._cube_geoms], jnp.float32)

  # ------------------------------------------------------------------ interface
  @property
  def observation_size(self) -> Dict[str, tuple]:
    """name -> shape of one observation (images uint8, ``instruction`` int32, else float32)."""
    h, w = int(self.config.image_height), int(self.config.image_width)
    sizes = {cam: (h, w, 3) for cam in CAMERAS}
    sizes.update({name: (n,) for name, n in PROPRIO})
    sizes["instruction"] = (int(self.config.instruction_length),)
    return sizes

  @staticmethod
  def obs_dict(obs: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """The observation is already a dict: ``front``/``wrist`` uint8 [..., H, W, 3] RGB,
    ``tcp_pos`` [..., 3], ``tcp_vel`` [..., 3], ``gripper_pos`` [..., 1] float32 and
    ``instruction`` int32 [..., L] token ids of ``env.instruction_text`` (decode them with
    :func:`panda_rl.envs.language.detokenize`). Returned as is (a shallow copy)."""
    return dict(obs)

  @property
  def instruction_tokens(self) -> np.ndarray:
    """int32 [L] token ids of :attr:`instruction_text`."""
    return self._tokens.copy()

  def reset(self, key: jax.Array) -> EnvState:
    state = super().reset(key)
    # The template's kinematics show the cube at its template pose: move it for rendering.
    view = self._with_cube_kinematics(state.data)
    return state.replace(obs=self._vision_obs(view, state.obs))

  def step(self, state: EnvState, action: jax.Array) -> EnvState:
    nxt = super().step(state, action)  # PandaPickCube.step never reads state.obs
    return nxt.replace(obs=self._vision_obs(nxt.data, nxt.obs))

  # ------------------------------------------------------------------ pieces
  def _vision_obs(self, data, flat_obs: jax.Array) -> Dict[str, Any]:
    """Images of ``data`` + proprioception from PandaPickCube's flat obs [10] + tokens."""
    parts = pick_cube.PandaPickCube.obs_dict(flat_obs)
    images = self.renderer.render(data)
    obs = {cam: images[cam]["rgb"] for cam in CAMERAS}
    obs.update({name: parts[name] for name, _ in PROPRIO})
    obs["instruction"] = jnp.asarray(self._tokens)
    return obs

  def _with_cube_kinematics(self, data):
    """``data`` with the cube body's and geoms' world poses computed from its ``qpos``.

    The cube is a free body under the world, so its pose is its free joint's (pos, quat);
    this is what ``mjx.kinematics`` would write for it, at a fraction of the cost.
    """
    c, b, g = self._cube_qpos, self._cube_body, self._cube_geoms
    pos, quat = data.qpos[c:c + 3], data.qpos[c + 3:c + 7]
    mat = mjx_math.quat_to_mat(quat)
    geom_pos = pos[None, :] + self._cube_geom_pos @ mat.T
    geom_mat = jax.vmap(lambda q: mat @ mjx_math.quat_to_mat(q))(self._cube_geom_quat)
    return data.replace(
        xpos=data.xpos.at[b].set(pos), xquat=data.xquat.at[b].set(quat),
        xmat=data.xmat.at[b].set(mat), geom_xpos=data.geom_xpos.at[g].set(geom_pos),
        geom_xmat=data.geom_xmat.at[g].set(geom_mat.reshape(data.geom_xmat[g].shape)))
