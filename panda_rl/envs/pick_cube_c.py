"""PandaPickCube-v0 in C MuJoCo: the task written against ``mujoco.MjModel`` / ``MjData``.

The same MJCF (:data:`panda_rl.envs.panda.ASSET`, with the task's timestep and solver
iterations), the same operational-space controller at every physics substep (ported to
numpy from :mod:`panda_rl.envs.controller`; its Jacobian and task inertia once per control
step by default, as the MJX env's ``controller_rate``), the same observation, reward
terms, success, out-of-bounds termination and time limit as
:class:`panda_rl.envs.pick_cube.PandaPickCube`,
and the same config keys (``PandaPickCubeC(reward_type="sparse")``). Nothing in ``reset`` or
``step`` runs JAX: physics is ``mujoco.mj_step``, everything else is numpy in float64 (MJX
runs in float32). The env is stateful, like MjData: ``reset`` / ``reset_to`` start an
episode, ``step`` advances it.

    env = PandaPickCubeC()
    obs = env.reset(seed=0)                 # float32 [10], PandaPickCube's layout
    step = env.step(np.zeros(4))            # StepResult(obs, reward, terminated, ...)
    env.data                                # the mujoco.MjData, e.g. for mujoco.viewer

Timing is MJX's too: ``mj_step`` computes kinematics before it integrates, so after a step
``site_xpos`` (TCP observation, reward, controller inputs) lags ``qpos`` by one substep, as
the PandaPickCube docstring describes for ``mjx.step``; the cube position comes from
``qpos``. ``reset_to`` loads a state (e.g. an MJX reset's ``qpos``) and runs ``mj_forward``;
the arm quantities the controller and observation read then equal the MJX reset template's.

Agreement with the MJX env (``tests/test_sim2sim.py``, measured on 16 random-action episodes
of 100 steps from the same initial states, 2026-12-02): TCP positions differ by at most
1.7e-6 m (float32 MJX vs float64 C), cube positions by at most 3.6e-4 m (the cube's first
settling onto the floor takes a slightly different transient in MJX's and C's contact
solvers; the resting heights agree to 1e-6 m); the test asks 1e-5 m and 1 mm. Closed loop,
with a policy acting on each simulator's own observations, trajectories drift apart slowly
(grasps amplify small differences); success rates agree (BENCHMARKS.md, "Sim-to-sim").

Not supported here: the training-only reset curricula (``reset_in_hand_prob``,
``reset_pregrasp_prob`` must be 0: this env runs the task as evaluated).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import mujoco
import numpy as np

from panda_rl.envs import pick_cube
from panda_rl.envs.base import REWARD_TERMS_PREFIX, scaled_reward_sum
from panda_rl.envs.panda import HOME_QPOS, TORQUE_LIMITS, scene_model

ARM_DOFS = 7
ROT_TARGET = np.diag([1.0, -1.0, -1.0])  # tool pointing down, fingers along world y
_BAD_PHYSICS = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                mujoco.mjtWarning.mjWARN_BADQACC)


class StepResult(NamedTuple):
  """What :meth:`PandaPickCubeC.step` returns (one env, host values).

  Attributes:
    obs: the observation after the step (float32 [10], or a dict for the vision env).
    reward: the step's reward (``reward_type``).
    terminated: the episode ended for a task reason (cube out of bounds, bad physics).
    truncated: the time limit was reached (and the episode did not terminate).
    metrics: ``success``, ``reward_terms/<name>``, ``out_of_bounds``, ``nan_physics``.
  """

  obs: Any
  reward: float
  terminated: bool
  truncated: bool
  metrics: Dict[str, float]

  @property
  def done(self) -> bool:
    return self.terminated or self.truncated


def task_config(overrides: Dict[str, Any]):
  """PandaPickCube's validated config; the training-only curricula are refused."""
  cfg = pick_cube._config(dict(overrides))  # the MJX task's own validation
  used = [k for k in pick_cube.PandaPickCube.TRAIN_ONLY_KEYS if cfg[k] > 0]
  if used:
    raise ValueError(f"PandaPickCubeC runs the task as evaluated: the training-only reset "
                     f"curricula {used} must be 0")
  return cfg


def orientation_error(rot: np.ndarray, target: np.ndarray) -> np.ndarray:
  """[3] ``0.5 sum_i cross(rot[:, i], target[:, i])``, the controller's rotation error, in
  plain floats (``np.cross`` on 3-vectors costs more than the rest of the controller)."""
  r, t = rot.tolist(), target.tolist()
  ex = ey = ez = 0.0
  for i in range(3):
    a0, a1, a2, b0, b1, b2 = r[0][i], r[1][i], r[2][i], t[0][i], t[1][i], t[2][i]
    ex += a1 * b2 - a2 * b1
    ey += a2 * b0 - a0 * b2
    ez += a0 * b1 - a1 * b0
  return np.array([0.5 * ex, 0.5 * ey, 0.5 * ez])


class Controller:
  """The operational-space controller of :mod:`panda_rl.envs.controller`, in numpy.

  Same law, same inputs (``site_xpos``, ``site_xmat``, the TCP Jacobian from ``cdof`` via
  ``mj_jacSite``, the joint-space mass matrix, ``qfrc_bias``), computed in float64.
  """

  def __init__(self, model: mujoco.MjModel, tcp_site: int, cfg):
    self.model, self.tcp = model, tcp_site
    self.q_home = np.asarray(HOME_QPOS)
    self.tau_max = np.asarray(TORQUE_LIMITS)
    self.kp, self.kn = float(cfg.osc_kp), float(cfg.nullspace_kp)
    self.kd = 2.0 * float(cfg.osc_damping_ratio) * np.sqrt(self.kp)
    self._jacp = np.zeros((3, model.nv))
    self._jacr = np.zeros((3, model.nv))
    self._mass = np.zeros((model.nv, model.nv))

  def jacobian(self, data: mujoco.MjData) -> np.ndarray:
    """[6, 7]: TCP linear (rows 0-2) and angular (3-5) velocity per arm joint velocity."""
    mujoco.mj_jacSite(self.model, data, self._jacp, self._jacr, self.tcp)
    return np.concatenate([self._jacp[:, :ARM_DOFS], self._jacr[:, :ARM_DOFS]], axis=0)

  def tcp_velocity(self, data: mujoco.MjData) -> np.ndarray:
    """[3] TCP linear velocity ``jacp qvel_arm``."""
    return self.jacobian(data)[:3] @ data.qvel[:ARM_DOFS]

  def torque(self, data: mujoco.MjData, target: np.ndarray, dyn=None) -> np.ndarray:
    """Arm torques [7] driving the TCP of ``data`` toward ``target`` [3]; ``dyn`` (from
    :meth:`dynamics`) reuses an earlier state's Jacobian and task inertia."""
    jac, lam, jbar = self.dynamics(data) if dyn is None else dyn
    qvel, qpos = data.qvel[:ARM_DOFS], data.qpos[:ARM_DOFS]
    rot = data.site_xmat[self.tcp].reshape(3, 3)
    err_pos = target - data.site_xpos[self.tcp]
    err_rot = orientation_error(rot, ROT_TARGET)
    acc = self.kp * np.concatenate([err_pos, err_rot]) - self.kd * (jac @ qvel)
    tau_task = jac.T @ (lam @ acc)
    tau_post = self.kn * (self.q_home - qpos) - 2.0 * np.sqrt(self.kn) * qvel
    tau_null = tau_post - jac.T @ (jbar.T @ tau_post)
    tau = tau_task + tau_null + data.qfrc_bias[:ARM_DOFS]
    return np.clip(tau, -self.tau_max, self.tau_max)

  def dynamics(self, data: mujoco.MjData):
    """(jac [6, 7], task inertia [6, 6], M^-1 J^T Lambda [7, 6]) of ``data``."""
    jac = self.jacobian(data)
    mujoco.mj_fullM(self.model, data, self._mass)
    mass = self._mass[:ARM_DOFS, :ARM_DOFS]
    m_inv_jt = np.linalg.solve(mass, jac.T)  # [7, 6]
    lam = np.linalg.inv(jac @ m_inv_jt + 1e-4 * np.eye(6))
    return jac, lam, m_inv_jt @ lam


class PandaPickCubeC:
  """The pick-cube task in C MuJoCo, one env (see the module docstring).

  Attributes:
    config: the validated task config (PandaPickCube's keys).
    model, data: the ``mujoco.MjModel`` and the episode's ``mujoco.MjData``.
    n_substeps: physics steps per control step.
    target, grip_cmd, z_init, steps: the episode's controller target [3], gripper command,
      initial cube height and step count.
  """

  def __init__(self, **overrides):
    self.config = cfg = task_config(overrides)
    self.n_substeps = int(round(cfg.ctrl_dt / cfg.sim_dt))
    self.model = m = scene_model(cfg)
    self.data = mujoco.MjData(m)
    self._tcp = m.site("tcp").id
    self._cube_qpos = int(m.jnt_qposadr[m.joint("cube_joint").id])
    self._home_key = m.key("home").id
    self.controller = Controller(m, self._tcp, cfg)
    self._ws_low = np.asarray(cfg.workspace_low, np.float64)
    self._ws_high = np.asarray(cfg.workspace_high, np.float64)
    self.reward_scales = {name: float(cfg[key]) for name, key in pick_cube.REWARD_TERMS}
    self._rng = np.random.default_rng()
    self.reset_to(self.home_qpos(), observe=False)

  # ------------------------------------------------------------------ sizes
  observation_size = 10
  action_size = 4
  obs_layout = pick_cube.OBS_LAYOUT

  @staticmethod
  def obs_dict(obs: np.ndarray) -> Dict[str, np.ndarray]:
    return pick_cube.PandaPickCube.obs_dict(obs)

  # ------------------------------------------------------------------ reset
  def home_qpos(self) -> np.ndarray:
    """[nq] the "home" keyframe (cube at its template pose)."""
    return np.array(self.model.key_qpos[self._home_key], np.float64)

  def sample_qpos(self, rng: np.random.Generator) -> np.ndarray:
    """A reset state as PandaPickCube draws it (cube uniform in xy and yaw; its own RNG)."""
    cfg = self.config
    qpos = self.home_qpos()
    c = self._cube_qpos
    qpos[c:c + 2] = rng.uniform(cfg.cube_xy_low, cfg.cube_xy_high)
    yaw = rng.uniform(-cfg.cube_yaw_range, cfg.cube_yaw_range)
    qpos[c + 3:c + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
    return qpos

  def reset(self, seed: Optional[int] = None, observe: bool = True) -> Any:
    """A fresh episode from a random cube pose (``seed`` reseeds the env's RNG)."""
    if seed is not None:
      self._rng = np.random.default_rng(seed)
    return self.reset_to(self.sample_qpos(self._rng), observe=observe)

  def reset_to(self, qpos: np.ndarray, qvel: Optional[np.ndarray] = None,
               grip_cmd: float = 0.0, observe: bool = True) -> Any:
    """Starts an episode at ``qpos`` [nq] (``qvel`` [nv], default 0); returns the obs.

    The arm starts from the home keyframe's controls and warm start; the controller target
    is the TCP. Use the MJX env's reset ``qpos`` for the same initial state as MJX.
    """
    m, d = self.model, self.data
    mujoco.mj_resetDataKeyframe(m, d, self._home_key)
    d.qpos[:] = np.asarray(qpos, np.float64).reshape(m.nq)
    d.qvel[:] = 0.0 if qvel is None else np.asarray(qvel, np.float64).reshape(m.nv)
    mujoco.mj_forward(m, d)
    c = self._cube_qpos
    self.target = d.site_xpos[self._tcp].copy()
    self.grip_cmd = float(grip_cmd)
    self.z_init = float(d.qpos[c + 2])
    self.steps = 0
    self._prev_reward, _ = self._reward(self._cube())
    flat = self._flat_obs(np.zeros(3))
    return self.observe(flat) if observe else flat

  # ------------------------------------------------------------------ step
  def step(self, action, observe: bool = True) -> StepResult:
    """One control step: move the target by ``action`` [4], simulate, score.

    ``observe=False`` returns the flat observation [10] whatever the env (a batch of vision
    envs renders all its images at once: :meth:`observe_batch`).
    """
    cfg = self.config
    action = np.clip(np.asarray(action, np.float64).reshape(-1), -1.0, 1.0)
    if action.shape != (self.action_size,):
      raise ValueError(f"PandaPickCubeC: action must have shape [4], got {action.shape}")
    origin = self.data.site_xpos[self._tcp] if cfg.target_mode == "tcp" else self.target
    self.target = np.clip(origin + cfg.action_scale_xyz * action[:3], self._ws_low,
                          self._ws_high)
    self.grip_cmd = float(pick_cube.grip_command(cfg, self.grip_cmd, action[3]))
    finger = cfg.max_finger_opening * (1.0 - self.grip_cmd)
    bad = self._simulate(self.target, finger)
    cube = self._cube()
    flat = self._flat_obs(self.controller.tcp_velocity(self.data))
    if bad:
      flat = np.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    shaped, metrics = self._reward(cube)
    reward = {"dense": shaped, "relative": shaped - self._prev_reward,
              "sparse": metrics["success"]}[cfg.reward_type]
    oob = bool(np.any(cube < self._ws_low - cfg.out_of_bounds_margin)
               | np.any(cube > self._ws_high + cfg.out_of_bounds_margin))
    terminated = oob or bad
    self.steps += 1
    truncated = self.steps >= cfg.episode_length and not terminated
    if bad:
      reward = shaped = 0.0
    self._prev_reward = shaped
    metrics.update(out_of_bounds=float(oob), nan_physics=float(bad))
    obs = self.observe(flat) if observe else flat
    return StepResult(obs, float(reward), terminated, truncated, metrics)

  def observe(self, flat_obs: np.ndarray) -> Any:
    """The observation from the flat one (the vision env adds images here)."""
    return flat_obs

  @classmethod
  def observe_batch(cls, envs, flat_obs: np.ndarray) -> Any:
    """Observations of several envs of this class at once: flat [N, 10] -> the batch."""
    return np.asarray(flat_obs, np.float32)

  # ------------------------------------------------------------------ pieces
  def _simulate(self, target: np.ndarray, finger: float) -> bool:
    """The control step's substeps; True (and the state before the step) on bad physics.

    C MuJoCo resets the data by itself when it meets NaN / huge values (a warning); the
    MJX env keeps the last finite state instead, so this does the same.
    """
    m, d = self.model, self.data
    saved = (d.qpos.copy(), d.qvel.copy(), d.qacc_warmstart.copy(), d.time)
    before = [d.warning[w].number for w in _BAD_PHYSICS]
    dyn = self.controller.dynamics(d) if self.config.controller_rate == "control" else None
    for _ in range(self.n_substeps):
      d.ctrl[:ARM_DOFS] = self.controller.torque(d, target, dyn)
      d.ctrl[ARM_DOFS:] = finger
      mujoco.mj_step(m, d)
    bad = (any(d.warning[w].number > n for w, n in zip(_BAD_PHYSICS, before))
           or not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))))
    if bad:
      d.qpos[:], d.qvel[:], d.qacc_warmstart[:], d.time = saved
      mujoco.mj_forward(m, d)
    return bool(bad)

  def _cube(self) -> np.ndarray:
    c = self._cube_qpos
    return self.data.qpos[c:c + 3].copy()

  def tcp(self) -> np.ndarray:
    """[3] the TCP position the observation shows (``site_xpos``)."""
    return self.data.site_xpos[self._tcp].copy()

  def _flat_obs(self, tcp_vel: np.ndarray) -> np.ndarray:
    d = self.data
    opening = d.qpos[7] + d.qpos[8]
    return np.concatenate([self.tcp(), tcp_vel, [opening], self._cube()]).astype(np.float32)

  def _reward(self, cube: np.ndarray):
    """(dense reward, metrics with ``reward_terms/*`` and ``success``), as PandaPickCube."""
    cfg = self.config
    dist = float(np.linalg.norm(cube - self.tcp()))
    height = float(cube[2] - self.z_init)
    terms = {"reach": float(np.exp(-cfg.reach_sharpness * dist)),
             "lift": float(np.clip(height / cfg.lift_height, 0.0, 1.0))}
    success = float(height >= cfg.success_height and dist <= cfg.success_radius)
    metrics = {REWARD_TERMS_PREFIX + k: v for k, v in terms.items()}
    metrics["success"] = success
    return float(scaled_reward_sum(terms, self.reward_scales)), metrics
