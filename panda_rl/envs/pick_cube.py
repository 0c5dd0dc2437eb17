"""PandaPickCube-v0: a Franka Panda must grasp a 4 cm cube and lift it (MJX, pure JAX).

Scene, control, reward and reset follow ``shared/design/TASK.md``; every number is a field of
:func:`default_config` and can be overridden: ``make("PandaPickCube-v0", sim_dt=0.004)``.

Defaults that differ from the task's reference values, and why (measured, see BENCHMARKS.md):

* ``sim_dt = 0.005`` (4 substeps per 20 ms control step) instead of 0.002: grasps stay
  stable (the scripted policy's success rate is the check) at 2.5x fewer physics steps.
* ``solver_iterations = 3``, ``ls_iterations = 4``: 2 iterations drop grasps (44% scripted
  success), 3 keep them (99.4%), at ~1.4x the speed of 4/8.
* The home TCP is at (0.308, 0, 0.490): the DH model plus Franka's 0.1034 m TCP offset puts
  it 5 cm higher than the "about (0.31, 0, 0.44)" of the reference text.

Observation (flat float32 [10]): ``tcp_pos`` (3), ``tcp_vel`` (3), ``gripper_pos`` (1, the
measured finger opening in metres, 0..0.08), ``cube_pos`` (3); :meth:`obs_dict` splits it.
Action [4] in [-1, 1]: xyz moves the controller target by ``action_scale_xyz * a`` (clipped
to the workspace box), a[3] changes the gripper command (0 open, 1 closed).

Kinematic quantities (``site_xpos``) read after ``mjx.step`` refer to the state at the
start of the last physics substep (MJX integrates after computing them), i.e. they lag the
returned ``qpos`` by one substep (5 ms); the cube position is read from ``qpos`` directly.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import mujoco
import numpy as np
from mujoco import mjx

from panda_rl.envs.base import Env, EnvState

ASSET = os.path.join(os.path.dirname(__file__), "assets", "panda_pick_cube.xml")
HOME_QPOS = (0.0, -0.785, 0.0, -2.35, 0.0, 1.57, 0.785)
OBS_LAYOUT = (("tcp_pos", 3), ("tcp_vel", 3), ("gripper_pos", 1), ("cube_pos", 3))
REWARD_TYPES = ("dense", "relative", "sparse")
TARGET_MODES = ("tcp", "accumulate")
TORQUE_LIMITS = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)


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
  c.action_scale_grip = 1.0  # gripper-command change per unit action
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
  return c


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
  n = cfg.ctrl_dt / cfg.sim_dt
  if abs(n - round(n)) > 1e-6 or round(n) < 1:
    raise ValueError(f"PandaPickCube: ctrl_dt ({cfg.ctrl_dt}) must be a positive integer "
                     f"multiple of sim_dt ({cfg.sim_dt})")
  return cfg


def _quat_yaw(yaw: jax.Array) -> jax.Array:
  return jnp.array([jnp.cos(yaw / 2), 0.0, 0.0, jnp.sin(yaw / 2)])


class PandaPickCube(Env):
  """Functional pick-cube env: ``reset(key)`` and ``step(state, action)`` for ONE env."""

  # Reset curricula: an eval env built from the training overrides drops them.
  TRAIN_ONLY_KEYS = ("reset_in_hand_prob", "reset_pregrasp_prob")

  def __init__(self, **overrides):
    self.config = cfg = _config(overrides)
    self.n_substeps = int(round(cfg.ctrl_dt / cfg.sim_dt))
    mj = mujoco.MjModel.from_xml_path(ASSET)
    mj.opt.timestep = cfg.sim_dt
    mj.opt.iterations = cfg.solver_iterations
    mj.opt.ls_iterations = cfg.ls_iterations
    self.mj_model = mj
    self.mjx_model = mjx.put_model(mj, impl="jax")

    self._tcp = mj.site("tcp").id
    self._hand = mj.body("hand").id
    self._hand_root = int(mj.body_rootid[self._hand])
    self._cube_qpos = int(mj.jnt_qposadr[mj.joint("cube_joint").id])
    self._cube_qvel = int(mj.jnt_dofadr[mj.joint("cube_joint").id])
    self._arm_dofs = np.arange(7)
    self._q_home = jnp.asarray(HOME_QPOS, jnp.float32)
    self._tau_max = jnp.asarray(TORQUE_LIMITS, jnp.float32)
    self._ws_low = jnp.asarray(cfg.workspace_low, jnp.float32)
    self._ws_high = jnp.asarray(cfg.workspace_high, jnp.float32)
    # Tool pointing straight down, fingers along world y (the home orientation).
    self._rot_target = jnp.diag(jnp.array([1.0, -1.0, -1.0], jnp.float32))

    # Reset template: home posture, forward kinematics done once on the host. A reset only
    # moves the cube; the arm quantities the controller reads do not depend on it, and the
    # next mjx.step recomputes everything, so no physics runs inside reset.
    data = mujoco.MjData(mj)
    mujoco.mj_resetDataKeyframe(mj, data, mj.key("home").id)
    mujoco.mj_forward(mj, data)
    self._template = mjx.put_data(mj, data, impl="jax")
    self._home_tcp = jnp.asarray(data.site_xpos[self._tcp], jnp.float32)
    self._in_hand = self._in_hand_template(mj, data.site_xpos[self._tcp].copy())
    if cfg.reset_pregrasp_prob > 0:
      self._pregrasp, self._pregrasp_tcp = self._pregrasp_templates(mj, data)

  # ------------------------------------------------------------------ interface
  @property
  def observation_size(self) -> int:
    return sum(n for _, n in OBS_LAYOUT)

  @property
  def action_size(self) -> int:
    return 4

  @staticmethod
  def obs_dict(obs: jax.Array) -> Dict[str, jax.Array]:
    """Splits flat observations [..., 10] into the named parts."""
    out, i = {}, 0
    for name, n in OBS_LAYOUT:
      out[name] = obs[..., i:i + n]
      i += n
    return out

  @staticmethod
  def _in_hand_template(mj, tcp):
    """Home pose, fingers closed on the cube, cube centred at the TCP (host, once)."""
    data = mujoco.MjData(mj)
    mujoco.mj_resetDataKeyframe(mj, data, mj.key("home").id)
    c = int(mj.jnt_qposadr[mj.joint("cube_joint").id])
    data.qpos[7:9] = 0.0195  # pads 0.5 mm into the 4 cm cube: a firm grip from step one
    data.qpos[c:c + 3] = tcp
    data.ctrl[7:9] = 0.0
    mujoco.mj_forward(mj, data)
    return mjx.put_data(mj, data, impl="jax")

  def _pregrasp_templates(self, mj, home):
    """The open hand posed over a grid of cube positions (host, once): for each leaf of the
    home template's mjx.Data, the stacked [K, ...] values of the K poses, or None where
    every pose has the home value; and the K TCP positions.

    Each pose comes from damped-least-squares IK on the TCP (position + pointing down), and
    is checked to be within 1 mm / 0.01 rad of its goal; poses out of reach are left out.
    """
    cfg = self.config
    c = self._cube_qpos
    z_cube = float(home.qpos[c + 2])
    (x0, y0), (x1, y1) = cfg.cube_xy_low, cfg.cube_xy_high
    goals = [(x, y, z_cube + dz) for x in np.linspace(x0, x1, 4) for y in np.linspace(y0, y1, 5)
             for dz in cfg.pregrasp_heights]
    rot_goal = np.asarray(self._rot_target, np.float64)
    lo, hi = mj.jnt_range[:7, 0], mj.jnt_range[:7, 1]
    jacp, jacr = np.zeros((3, mj.nv)), np.zeros((3, mj.nv))
    datas, tcps = [], []
    for goal in goals:
      data = mujoco.MjData(mj)
      mujoco.mj_resetDataKeyframe(mj, data, mj.key("home").id)
      if datas:  # warm start from the neighbouring grid pose
        data.qpos[:7] = q_prev
      for _ in range(500):
        mujoco.mj_kinematics(mj, data)
        mujoco.mj_comPos(mj, data)
        rot = data.site_xmat[self._tcp].reshape(3, 3)
        err = np.concatenate([np.asarray(goal) - data.site_xpos[self._tcp],
                              0.5 * np.sum(np.cross(rot.T, rot_goal.T), axis=0)])
        if np.linalg.norm(err[:3]) < 1e-4 and np.linalg.norm(err[3:]) < 1e-3:
          break
        mujoco.mj_jacSite(mj, data, jacp, jacr, self._tcp)
        jac = np.concatenate([jacp, jacr])[:, :7]
        dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-3 * np.eye(6), err)
        # Pull toward the home posture in the nullspace so the elbow stays up.
        null = np.eye(7) - np.linalg.pinv(jac) @ jac
        dq = dq + 0.1 * null @ (np.asarray(HOME_QPOS) - data.qpos[:7])
        dq *= min(1.0, 0.2 / (np.linalg.norm(dq) + 1e-12))
        data.qpos[:7] = np.clip(data.qpos[:7] + dq, lo, hi)
      if np.linalg.norm(err[:3]) > 1e-3 or np.linalg.norm(err[3:]) > 1e-2:
        continue  # out of reach with the hand pointing down (near the base): skip it
      q_prev = data.qpos[:7].copy()
      data.qpos[c:c + 3] = (goal[0], goal[1], z_cube)
      data.ctrl[7:9] = cfg.max_finger_opening
      mujoco.mj_forward(mj, data)
      datas.append(mjx.put_data(mj, data, impl="jax"))
      tcps.append(data.site_xpos[self._tcp].copy())
    if len(datas) < len(goals) // 2:
      raise RuntimeError(f"PandaPickCube: pre-grasp IK reached only {len(datas)} of "
                         f"{len(goals)} grid poses; check cube_xy_low/high and pregrasp_heights")
    # Keep (stacked on the host) only the fields that differ from the home template: a reset
    # then selects those few arrays, not the whole mjx.Data.
    home_leaves = jax.tree.leaves(self._template)
    pose_leaves = [jax.tree.leaves(d) for d in datas]
    posed = []
    for i, home_leaf in enumerate(home_leaves):
      stack = np.stack([np.asarray(leaves[i]) for leaves in pose_leaves])
      same = stack.shape[1:] == np.shape(home_leaf) and np.array_equal(
          stack, np.broadcast_to(np.asarray(home_leaf), stack.shape))
      posed.append(None if same else jnp.asarray(stack))
    return posed, jnp.asarray(np.stack(tcps), jnp.float32)

  def reset(self, key: jax.Array) -> EnvState:
    cfg = self.config
    k_xy, k_yaw, k_hand, k_pre, k_pose, k_off = jax.random.split(key, 6)
    xy = jax.random.uniform(k_xy, (2,), minval=jnp.asarray(cfg.cube_xy_low),
                            maxval=jnp.asarray(cfg.cube_xy_high))
    yaw = jax.random.uniform(k_yaw, (), minval=-cfg.cube_yaw_range, maxval=cfg.cube_yaw_range)
    t = self._template
    c = self._cube_qpos
    qpos = t.qpos.at[c:c + 2].set(xy).at[c + 3:c + 7].set(_quat_yaw(yaw))
    data = t.replace(qpos=qpos)
    z_floor = qpos[c + 2]
    grip = jnp.zeros(())
    target = self._home_tcp
    if cfg.reset_pregrasp_prob > 0:
      pre = jax.random.bernoulli(k_pre, cfg.reset_pregrasp_prob)
      k = jax.random.randint(k_pose, (), 0, self._pregrasp_tcp.shape[0])
      leaves, treedef = jax.tree.flatten(data)
      data = treedef.unflatten([leaf if stack is None else jnp.where(pre, stack[k], leaf)
                                for leaf, stack in zip(leaves, self._pregrasp)])
      # The cube sits under the TCP, up to 1 cm off centre (the open hand spans 8 cm).
      off = jax.random.uniform(k_off, (2,), minval=-0.01, maxval=0.01)
      data = data.replace(qpos=data.qpos.at[c:c + 2].add(jnp.where(pre, off, 0.0)))
      target = jnp.where(pre, self._pregrasp_tcp[k], target)
    if cfg.reset_in_hand_prob > 0:
      in_hand = jax.random.bernoulli(k_hand, cfg.reset_in_hand_prob)
      data = jax.tree.map(lambda a, b: jnp.where(in_hand, a, b), self._in_hand, data)
      grip = in_hand.astype(jnp.float32)
      target = jnp.where(in_hand, self._home_tcp, target)
    cube = data.qpos[c:c + 3]
    obs = self._obs(data, jnp.zeros(3), cube)
    info = {
        "step": jnp.zeros((), jnp.int32),
        "target": target,
        "grip_cmd": grip,
        "z_init": z_floor,
        "prev_reward": jnp.zeros(()),
    }
    reward, terms = self._reward(data, cube, z_floor)
    info["prev_reward"] = reward
    zero = jnp.zeros(())
    metrics = dict(terms, nan_physics=zero, out_of_bounds=zero)
    return EnvState(data=data, obs=obs, reward=zero, done=zero, terminated=zero,
                    truncated=zero, info=info, metrics=metrics)

  def step(self, state: EnvState, action: jax.Array) -> EnvState:
    self.check_action(action)
    cfg = self.config
    action = jnp.clip(action, -1.0, 1.0)
    origin = (state.data.site_xpos[self._tcp] if cfg.target_mode == "tcp"
              else state.info["target"])
    target = jnp.clip(origin + cfg.action_scale_xyz * action[:3], self._ws_low, self._ws_high)
    grip = jnp.clip(state.info["grip_cmd"] + cfg.action_scale_grip * action[3], 0.0, 1.0)
    finger = cfg.max_finger_opening * (1.0 - grip)

    def substep(data, _):
      tau = self._osc_torque(data, target)
      ctrl = jnp.concatenate([tau, jnp.stack([finger, finger])])
      return mjx.step(self.mjx_model, data.replace(ctrl=ctrl)), None

    data, _ = jax.lax.scan(substep, state.data, None, length=self.n_substeps)

    # NaN physics: keep the last finite state (so nothing downstream sees NaN), end the
    # episode (the auto-reset wrapper then resets this env) and count it.
    bad = ~(jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel)))
    data = jax.tree.map(lambda new, old: jnp.where(bad, old, new), data, state.data)

    c = self._cube_qpos
    cube = data.qpos[c:c + 3]
    tcp_vel = self._tcp_jacp(data).T @ data.qvel[:7]
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

    margin = cfg.out_of_bounds_margin
    low = self._ws_low - margin
    high = self._ws_high + margin
    oob = jnp.any(cube < low) | jnp.any(cube > high)
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

  # ------------------------------------------------------------------ pieces
  def _obs(self, data, tcp_vel, cube) -> jax.Array:
    tcp = data.site_xpos[self._tcp]
    opening = data.qpos[7] + data.qpos[8]
    return jnp.concatenate([tcp, tcp_vel, opening[None], cube]).astype(jnp.float32)

  def _reward(self, data, cube, z_init):
    """Dense shaped reward and its named terms (TASK.md)."""
    cfg = self.config
    tcp = data.site_xpos[self._tcp]
    dist = jnp.linalg.norm(cube - tcp)
    reach = jnp.exp(-cfg.reach_sharpness * dist)
    height = cube[2] - z_init
    lift = jnp.clip(height / cfg.lift_height, 0.0, 1.0)
    success = (height >= cfg.success_height) & (dist <= cfg.success_radius)
    shaped = cfg.reach_weight * reach + cfg.lift_weight * lift
    return shaped, {"reach": reach, "lift": lift, "success": success.astype(jnp.float32)}

  def _tcp_jacp(self, data) -> jax.Array:
    """[7, 3] translational Jacobian of the TCP w.r.t. the arm joints."""
    jacp, _ = self._tcp_jac(data)
    return jacp

  def _tcp_jac(self, data):
    # Every arm dof is an ancestor of the hand, so no body-tree mask is needed.
    cdof = data.cdof[:7]
    offset = data.site_xpos[self._tcp] - data.subtree_com[self._hand_root]
    jacr = cdof[:, :3]
    jacp = cdof[:, 3:] + jnp.cross(jacr, offset)
    return jacp, jacr

  def _osc_torque(self, data, target) -> jax.Array:
    """Operational-space control: task-space PD + nullspace posture + bias compensation."""
    cfg = self.config
    jacp, jacr = self._tcp_jac(data)
    jac = jnp.concatenate([jacp, jacr], axis=1).T  # [6, 7]
    mass = mjx.full_m(self.mjx_model, data)[:7, :7]
    qvel = data.qvel[:7]
    qpos = data.qpos[:7]

    rot = data.site_xmat[self._tcp]
    err_pos = target - data.site_xpos[self._tcp]
    err_rot = 0.5 * jnp.sum(jnp.cross(rot.T, self._rot_target.T), axis=0)
    vel = jac @ qvel
    kp = cfg.osc_kp
    kd = 2.0 * cfg.osc_damping_ratio * jnp.sqrt(kp)
    acc = kp * jnp.concatenate([err_pos, err_rot]) - kd * vel

    m_inv_jt = jnp.linalg.solve(mass, jac.T)  # [7, 6] = M^-1 J^T
    lam = jnp.linalg.inv(jac @ m_inv_jt + 1e-4 * jnp.eye(6))  # task-space inertia
    tau_task = jac.T @ (lam @ acc)

    # Nullspace: posture PD filtered by (I - J^T Jbar^T), Jbar = M^-1 J^T Lambda.
    kn = cfg.nullspace_kp
    tau_post = kn * (self._q_home - qpos) - 2.0 * jnp.sqrt(kn) * qvel
    jbar = m_inv_jt @ lam  # [7, 6]
    tau_null = tau_post - jac.T @ (jbar.T @ tau_post)

    tau = tau_task + tau_null + data.qfrc_bias[:7]
    return jnp.clip(tau, -self._tau_max, self._tau_max)
