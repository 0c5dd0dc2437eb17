"""PandaPickCube-v0: a Franka Panda must grasp a 4 cm cube and lift it (MJX, pure JAX).

Scene, control, reward and reset follow ``shared/design/TASK.md``; every number is a field of
:func:`default_config` and can be overridden: ``make("PandaPickCube-v0", sim_dt=0.004)``.

Defaults that differ from the task's reference values, and why (measured, see BENCHMARKS.md):

* ``sim_dt = 0.005`` (4 substeps per 20 ms control step) instead of 0.002: grasps stay
  stable (the scripted policy's success rate is the check) at 2.5x fewer physics steps.
  0.01 is 1.7-1.9x faster and the scripted policy still lifts 98.2% of cubes, but PPO with
  the default recipe stopped grasping on two seeds (BENCHMARKS.md, "Speed work"), so it is
  an option, not the default.
* ``solver_iterations = 3``, ``ls_iterations = 4``: 2 iterations drop grasps (44% scripted
  success), 3 keep them (99.4%), at ~1.4x the speed of 4/8.
* The home TCP is at (0.308, 0, 0.490): the DH model plus Franka's 0.1034 m TCP offset puts
  it 5 cm higher than the "about (0.31, 0, 0.44)" of the reference text.

Reward (``reward_type``): "dense" is ``sum(reward_scales[n] * term_n)`` over the terms
``reach = exp(-reach_sharpness |cube - tcp|)`` (scale ``reach_weight``) and
``lift = clip(height / lift_height, 0, 1)`` (scale ``lift_weight``); "relative" is the
change of the dense reward since the last step; "sparse" is the success indicator. Every
raw term is in ``state.metrics["reward_terms/<name>"]``, success in ``metrics["success"]``.

Observation (flat float32 [10]): ``tcp_pos`` (3), ``tcp_vel`` (3), ``gripper_pos`` (1, the
measured finger opening in metres, 0..0.08), ``cube_pos`` (3); :meth:`obs_dict` splits it.
Action [4] in [-1, 1]: xyz moves the controller target by ``action_scale_xyz * a`` (clipped
to the workspace box), a[3] changes the gripper command (0 open, 1 closed).

Kinematic quantities (``site_xpos``) read after ``mjx.step`` refer to the state at the
start of the last physics substep (MJX integrates after computing them), i.e. they lag the
returned ``qpos`` by one substep (5 ms); the cube position is read from ``qpos`` directly.

Code layout: the robot (model, ids, home template, physics loop) is
:class:`panda_rl.envs.panda.PandaBase`, the operational-space controller is
:mod:`panda_rl.envs.controller`, the reset curricula are :mod:`panda_rl.envs.curriculum`;
this module holds the task: config, reset, step, reward and observation.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from panda_rl.envs import curriculum
from panda_rl.envs.base import REWARD_TERMS_PREFIX, EnvState, scaled_reward_sum
from panda_rl.envs.panda import ASSET, HOME_QPOS, TORQUE_LIMITS, PandaBase

__all__ = ["ASSET", "GRIPPER_MODES", "HOME_QPOS", "OBS_LAYOUT", "REWARD_TERMS", "REWARD_TYPES",
           "TARGET_MODES", "TORQUE_LIMITS", "PandaPickCube", "default_config", "grip_command"]

OBS_LAYOUT = (("tcp_pos", 3), ("tcp_vel", 3), ("gripper_pos", 1), ("cube_pos", 3))
REWARD_TYPES = ("dense", "relative", "sparse")
TARGET_MODES = ("tcp", "accumulate")
CONTROLLER_RATES = ("substep", "control")
GRIPPER_MODES = ("delta", "absolute")
# Dense-reward terms in summation order, and the config key of each one's scale.
REWARD_TERMS = (("reach", "reach_weight"), ("lift", "lift_weight"))


def default_config() -> ml_collections.ConfigDict:
  """All task parameters; ``make(..., key=value)`` overrides them (unknown keys fail)."""
  c = ml_collections.ConfigDict()
  c.ctrl_dt = 0.02  # control period (50 Hz)
  c.sim_dt = 0.005  # physics step; ctrl_dt / sim_dt substeps per control step
  c.episode_length = 100  # control steps before truncation
  c.action_scale_xyz = 0.1  # metres the target moves per unit action per step
  # Where each step's xyz displacement starts from: "tcp" (the measured TCP, so the target
  # never runs ahead of the arm and the observation tells the policy everything it needs)
  # or "accumulate" (the previous target: the target is hidden state that can lead the
  # TCP by many centimetres). BENCHMARKS.md compares the two for PPO.
  c.target_mode = "tcp"
  c.action_scale_grip = 1.0  # gripper-command change per unit action ("delta" mode)
  # How a[3] sets the gripper command: "delta" (TASK.md: the command changes by
  # action_scale_grip * a[3] and is held between steps) or "absolute" (the command is
  # (a[3] + 1) / 2 each step: -1 open, +1 closed, nothing held between steps).
  c.gripper_mode = "delta"
  c.workspace_low = (0.2, -0.3, 0.0)  # target clip box, lower corner (m)
  c.workspace_high = (0.6, 0.3, 0.5)  # target clip box, upper corner (m)
  c.cube_xy_low = (0.25, -0.25)  # cube reset xy range, lower corner
  c.cube_xy_high = (0.55, 0.25)  # cube reset xy range, upper corner
  c.cube_yaw_range = 0.0  # cube reset yaw uniform in [-r, r] radians (0 = axis-aligned)
  # Share of resets that start with the cube already held in the closed hand at the home
  # pose (lift measured from the floor). A training curriculum: it shows the learner what
  # holding the cube is worth; evaluation always uses 0 (the task as specified).
  c.reset_in_hand_prob = 0.0
  # Share of resets that start with the open hand around (or a little above) the cube on the
  # floor, at one of a grid of precomputed arm poses: a reverse curriculum that makes closing
  # on the cube and lifting it easy to discover. Evaluation always uses 0.
  c.reset_pregrasp_prob = 0.0
  c.pregrasp_heights = (0.0, 0.03, 0.06)  # TCP heights above the cube centre in that grid (m)
  c.out_of_bounds_margin = 0.1  # terminate when the cube leaves workspace + margin
  c.osc_kp = 200.0  # task-space stiffness (position and orientation)
  c.osc_damping_ratio = 1.0  # task-space damping ratio
  c.nullspace_kp = 10.0  # joint-space pull toward the home posture in the nullspace
  # How often the controller's Jacobian and task-space inertia (its mass-matrix solves) are
  # computed: "control" (once per control step, from the step's first state; errors,
  # velocities and gravity still every substep) or "substep" (every physics substep, the
  # default before 2026-12-07; BENCHMARKS.md "Rows that never act" compares the two).
  c.controller_rate = "control"
  c.max_finger_opening = 0.04  # per-finger travel (m); command 0 -> open, 1 -> closed
  c.reward_type = "dense"  # dense | relative | sparse
  c.reach_weight = 0.3  # dense reward: weight of exp(-reach_sharpness * |cube - tcp|)
  c.reach_sharpness = 20.0  # dense reward: decay of the reach term (1/m)
  c.lift_weight = 0.7  # dense reward: weight of the lift term
  c.lift_height = 0.2  # dense reward: lift term saturates at this height above start (m)
  c.success_height = 0.1  # success: cube at least this far above its start (m)
  c.success_radius = 0.05  # success: cube within this distance of the TCP (m)
  c.solver_iterations = 3  # MuJoCo Newton solver iterations (2 drops grasps: BENCHMARKS.md)
  c.ls_iterations = 4  # MuJoCo line-search iterations
  # The finger pads' contacts with the cube (their <pair>s; MuJoCo's pair defaults):
  c.grasp_friction = 1.0  # sliding friction
  c.grasp_timeconst = 0.02  # solref time constant (s); MuJoCo raises it to >= 2 * sim_dt
  return c


def grip_command(cfg, grip, a3):
  """The gripper command (0 open .. 1 closed) after gripper action ``a3`` (in [-1, 1]) from
  the previous command ``grip`` (see ``gripper_mode``); works on jax and numpy values."""
  if cfg.gripper_mode == "absolute":
    return 0.5 * (a3 + 1.0)
  return (jnp if isinstance(a3, jax.Array) else np).clip(
      grip + cfg.action_scale_grip * a3, 0.0, 1.0)


def _config(overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  cfg = default_config()
  unknown = sorted(set(overrides) - set(cfg.keys()))
  if unknown:
    raise ValueError(f"PandaPickCube: unknown config key(s) {unknown}; "
                     f"valid keys: {sorted(cfg.keys())}")
  cfg.update(overrides)
  if cfg.reward_type not in REWARD_TYPES:
    raise ValueError(f"PandaPickCube: reward_type must be one of {REWARD_TYPES}, "
                     f"got {cfg.reward_type!r}")
  if cfg.target_mode not in TARGET_MODES:
    raise ValueError(f"PandaPickCube: target_mode must be one of {TARGET_MODES}, "
                     f"got {cfg.target_mode!r}")
  if cfg.gripper_mode not in GRIPPER_MODES:
    raise ValueError(f"PandaPickCube: gripper_mode must be one of {GRIPPER_MODES}, "
                     f"got {cfg.gripper_mode!r}")
  if cfg.controller_rate not in CONTROLLER_RATES:
    raise ValueError(f"PandaPickCube: controller_rate must be one of {CONTROLLER_RATES}, "
                     f"got {cfg.controller_rate!r}")
  n = cfg.ctrl_dt / cfg.sim_dt
  if abs(n - round(n)) > 1e-6 or round(n) < 1:
    raise ValueError(f"PandaPickCube: ctrl_dt ({cfg.ctrl_dt}) must be a positive integer "
                     f"multiple of sim_dt ({cfg.sim_dt})")
  return cfg


def _quat_yaw(yaw: jax.Array) -> jax.Array:
  return jnp.array([jnp.cos(yaw / 2), 0.0, 0.0, jnp.sin(yaw / 2)])


class PandaPickCube(PandaBase):
  """Functional pick-cube env: ``reset(key)`` and ``step(state, action)`` for ONE env.

  The robot (model, ids, controller, home template) comes from
  :class:`~panda_rl.envs.panda.PandaBase`, the reset curricula from
  :mod:`panda_rl.envs.curriculum`; this class holds the task: reset, step, reward and
  observation.

  Attributes:
    reward_scales: dense-reward term name -> scale; the dense reward is the sum of
      ``scale * term`` in this order, and every raw term is logged in ``state.metrics``
      as ``"reward_terms/<name>"``.
  """

  # Reset curricula: an eval env built from the training overrides drops them.
  TRAIN_ONLY_KEYS = ("reset_in_hand_prob", "reset_pregrasp_prob")

  def __init__(self, **overrides):
    super().__init__(_config(overrides))
    cfg = self.config
    self._ws_low = jnp.asarray(cfg.workspace_low, jnp.float32)
    self._ws_high = jnp.asarray(cfg.workspace_high, jnp.float32)
    self.reward_scales = {name: float(cfg[key]) for name, key in REWARD_TERMS}
    home = self._home_data
    self._in_hand = self._pregrasp = None
    if cfg.reset_in_hand_prob > 0:
      self._in_hand = curriculum.InHandStart.build(
          self.mj_model, home.site_xpos[self._tcp].copy(), self._cube_qpos,
          cfg.reset_in_hand_prob)
    if cfg.reset_pregrasp_prob > 0:
      self._pregrasp = curriculum.PregraspGrid.build(
          self.mj_model, home, self._template, cfg, self._tcp, self._cube_qpos,
          np.asarray(self._rot_target, np.float64), HOME_QPOS)

  # ------------------------------------------------------------------ interface
  @property
  def observation_size(self) -> int:
    return sum(n for _, n in OBS_LAYOUT)

  @staticmethod
  def obs_dict(obs: jax.Array) -> Dict[str, jax.Array]:
    """Splits flat observations [..., 10] into the named parts."""
    out, i = {}, 0
    for name, n in OBS_LAYOUT:
      out[name] = obs[..., i:i + n]
      i += n
    return out

  def reset(self, key: jax.Array) -> EnvState:
    """A fresh episode: cube at a random xy (and yaw) on the floor, arm at home, or, with
    the configured probabilities, a curriculum start (pre-grasp pose, then cube in hand)."""
    k_xy, k_yaw, k_hand, k_pre, k_pose, k_off = jax.random.split(key, 6)
    data = self._place_cube(k_xy, k_yaw)
    c = self._cube_qpos
    z_floor = data.qpos[c + 2]
    grip = jnp.zeros(())
    target = self._home_tcp
    if self._pregrasp is not None:
      data, target = self._pregrasp.select((k_pre, k_pose, k_off), data, target)
    if self._in_hand is not None:
      data, grip, target = self._in_hand.select(k_hand, data, grip, target)
    cube = data.qpos[c:c + 3]
    obs = self._obs(data, jnp.zeros(3), cube)
    reward, terms = self._reward(data, cube, z_floor)
    info = {
        "step": jnp.zeros((), jnp.int32),
        "target": target,
        "grip_cmd": grip,
        "z_init": z_floor,
        "prev_reward": reward,
    }
    zero = jnp.zeros(())
    metrics = dict(terms, nan_physics=zero, out_of_bounds=zero)
    return EnvState(data=data, obs=obs, reward=zero, done=zero, terminated=zero,
                    truncated=zero, info=info, metrics=metrics)

  def step(self, state: EnvState, action: jax.Array) -> EnvState:
    """One control step: move the controller target by the action, simulate, score."""
    self.check_action(action)
    cfg = self.config
    target, grip, finger = self._command(state, action)
    data, bad = self._simulate_guarded(state.data, target, finger)
    c = self._cube_qpos
    cube = data.qpos[c:c + 3]
    tcp_vel = self._tcp_velocity(data)
    # If the input state itself was corrupt, nothing finite is left to keep: zero it out.
    obs = self._obs(data, tcp_vel, cube)
    obs = jnp.where(bad, jnp.nan_to_num(obs, nan=0.0, posinf=0.0, neginf=0.0), obs)
    shaped, terms = self._reward(data, cube, state.info["z_init"])
    if cfg.reward_type == "dense":
      reward = shaped
    elif cfg.reward_type == "relative":
      reward = shaped - state.info["prev_reward"]
    else:
      reward = terms["success"]

    oob = self._out_of_bounds(cube)
    terminated = (oob | bad).astype(jnp.float32)
    step = state.info["step"] + 1
    truncated = (step >= cfg.episode_length).astype(jnp.float32) * (1.0 - terminated)
    reward = jnp.where(bad, 0.0, jnp.nan_to_num(reward))
    shaped = jnp.where(bad, 0.0, shaped)
    info = dict(state.info, step=step, target=target, grip_cmd=grip, prev_reward=shaped)
    metrics = dict(terms, nan_physics=bad.astype(jnp.float32),
                   out_of_bounds=oob.astype(jnp.float32))
    return state.replace(data=data, obs=obs, reward=reward, done=jnp.maximum(terminated, truncated),
                         terminated=terminated, truncated=truncated, info=info,
                         metrics=metrics)

  # ------------------------------------------------------------------ reward
  def reward_terms(self, data, cube: jax.Array, z_init: jax.Array
                   ) -> Tuple[Dict[str, jax.Array], jax.Array]:
    """The raw (unscaled) dense-reward terms and the success indicator (TASK.md).

    Args:
      data: the state (its ``site_xpos`` gives the TCP).
      cube: [3] cube position. z_init: [] cube height at the start of the episode.
    Returns:
      ({"reach": exp(-reach_sharpness |cube - tcp|), "lift": clip(height / lift_height,
      0, 1)}, success [] float32: lifted >= success_height and within success_radius).
    """
    cfg = self.config
    tcp = data.site_xpos[self._tcp]
    dist = jnp.linalg.norm(cube - tcp)
    reach = jnp.exp(-cfg.reach_sharpness * dist)
    height = cube[2] - z_init
    lift = jnp.clip(height / cfg.lift_height, 0.0, 1.0)
    success = (height >= cfg.success_height) & (dist <= cfg.success_radius)
    return {"reach": reach, "lift": lift}, success.astype(jnp.float32)

  def _reward(self, data, cube, z_init):
    """Dense reward [] (``sum(reward_scales[n] * term_n)``) and the step's reward metrics
    (``reward_terms/<name>`` raw terms and ``success``)."""
    terms, success = self.reward_terms(data, cube, z_init)
    metrics = {REWARD_TERMS_PREFIX + name: value for name, value in terms.items()}
    metrics["success"] = success
    return scaled_reward_sum(terms, self.reward_scales), metrics

  # ------------------------------------------------------------------ pieces
  def _place_cube(self, k_xy: jax.Array, k_yaw: jax.Array):
    """The home template with the cube at a uniform random xy and yaw on the floor."""
    cfg = self.config
    xy = jax.random.uniform(k_xy, (2,), minval=jnp.asarray(cfg.cube_xy_low),
                            maxval=jnp.asarray(cfg.cube_xy_high))
    yaw = jax.random.uniform(k_yaw, (), minval=-cfg.cube_yaw_range, maxval=cfg.cube_yaw_range)
    t = self._template
    c = self._cube_qpos
    qpos = t.qpos.at[c:c + 2].set(xy).at[c + 3:c + 7].set(_quat_yaw(yaw))
    return t.replace(qpos=qpos)

  def _command(self, state: EnvState, action: jax.Array):
    """Controller target [3], gripper command [] (0 open .. 1 closed) and finger position []
    after applying ``action`` [4] to ``state``."""
    cfg = self.config
    action = jnp.clip(action, -1.0, 1.0)
    origin = (state.data.site_xpos[self._tcp] if cfg.target_mode == "tcp"
              else state.info["target"])
    target = jnp.clip(origin + cfg.action_scale_xyz * action[:3], self._ws_low, self._ws_high)
    grip = grip_command(cfg, state.info["grip_cmd"], action[3])
    finger = cfg.max_finger_opening * (1.0 - grip)
    return target, grip, finger

  def _simulate_guarded(self, data, target, finger):
    """Physics of one control step, and [] bool: whether it produced NaN/inf.

    NaN physics keeps the last finite state (so nothing downstream sees NaN); the step
    then ends the episode (the auto-reset wrapper resets this env) and counts it.
    """
    new = self._simulate(data, target, finger)
    bad = ~(jnp.all(jnp.isfinite(new.qpos)) & jnp.all(jnp.isfinite(new.qvel)))
    new = jax.tree.map(lambda n, old: jnp.where(bad, old, n), new, data)
    return new, bad

  def _out_of_bounds(self, cube: jax.Array) -> jax.Array:
    """[] bool: the cube left the workspace box grown by ``out_of_bounds_margin``."""
    margin = self.config.out_of_bounds_margin
    low = self._ws_low - margin
    high = self._ws_high + margin
    return jnp.any(cube < low) | jnp.any(cube > high)

  def _obs(self, data, tcp_vel, cube) -> jax.Array:
    """Flat float32 [10] observation (see :data:`OBS_LAYOUT`)."""
    tcp = data.site_xpos[self._tcp]
    opening = data.qpos[7] + data.qpos[8]
    return jnp.concatenate([tcp, tcp_vel, opening[None], cube]).astype(jnp.float32)
