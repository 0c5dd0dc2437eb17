"""The Franka Panda robot base shared by the pick-cube envs: model, ids and control.

:class:`PandaBase` owns what does not depend on the task: loading the MJCF scene with the
configured physics options, the ids of the sites / bodies / joints the tasks read, the
operational-space controller (:mod:`panda_rl.envs.controller`), the home-pose reset
template (forward kinematics done once on the host) and the physics substep loop of one
control step. The task (:mod:`panda_rl.envs.pick_cube`) adds config validation, reset,
step, reward and observation on top.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import mujoco
from mujoco import mjx

from panda_rl.envs import controller as controller_lib
from panda_rl.envs.base import Env

ASSET = os.path.join(os.path.dirname(__file__), "assets", "panda_pick_cube.xml")
HOME_QPOS = (0.0, -0.785, 0.0, -2.35, 0.0, 1.57, 0.785)
TORQUE_LIMITS = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)


GRASP_PAIRS = ("left_pad_cube", "right_pad_cube")  # the finger pads' contacts with the cube


def scene_model(cfg: ml_collections.ConfigDict) -> mujoco.MjModel:
  """The scene's ``MjModel`` as ``cfg`` sets it: what MJX and the C MuJoCo env both step.

  Args:
    cfg: a config with ``sim_dt``, ``solver_iterations``, ``ls_iterations`` and the grasp
      contact: ``grasp_friction`` (sliding friction of the pad-cube pairs) and
      ``grasp_timeconst`` (their solref time constant, s).
  """
  mj = mujoco.MjModel.from_xml_path(ASSET)
  mj.opt.timestep = cfg.sim_dt
  mj.opt.iterations = cfg.solver_iterations
  mj.opt.ls_iterations = cfg.ls_iterations
  for name in GRASP_PAIRS:
    pair = mj.pair(name)
    pair.friction[:2] = cfg.grasp_friction
    pair.solref[0] = cfg.grasp_timeconst
  return mj


def load_model(cfg: ml_collections.ConfigDict) -> tuple[mujoco.MjModel, mjx.Model]:
  """(:func:`scene_model`, its MJX copy on this process's device)."""
  mj = scene_model(cfg)
  return mj, mjx.put_model(mj, impl="jax", device=local_device())


def local_device():
  """Where the env's constants live: this process's first device. (MJX's default is
  ``jax.devices()[0]``, which on a pod belongs to process 0: unreadable by the others.)"""
  return jax.local_devices()[0]


class PandaBase(Env):
  """Model, ids, controller and home template of the Panda pick-cube scene.

  Attributes set here (read by the tasks, tests and scripts):
    config: the validated task config.
    n_substeps: physics steps per control step (ctrl_dt / sim_dt).
    mj_model, mjx_model: the compiled model and its MJX copy.
    controller: the :class:`~panda_rl.envs.controller.OperationalSpaceController`.
    _tcp, _hand, _hand_root: TCP site id, hand body id and its tree's root body id.
    _cube_qpos, _cube_qvel: address of the cube's free joint in qpos [7] / qvel [6].
    _template: ``mjx.Data`` at the home pose after forward kinematics (host, once).
    _home_data: the same state as a host ``mujoco.MjData``.
    _home_tcp: [3] float32 TCP position at home.
  """

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.config = cfg
    self.n_substeps = int(round(cfg.ctrl_dt / cfg.sim_dt))
    mj, self.mjx_model = load_model(cfg)
    self.mj_model = mj

    self._tcp = mj.site("tcp").id
    self._hand = mj.body("hand").id
    self._hand_root = int(mj.body_rootid[self._hand])
    self._cube_qpos = int(mj.jnt_qposadr[mj.joint("cube_joint").id])
    self._cube_qvel = int(mj.jnt_dofadr[mj.joint("cube_joint").id])
    # Tool pointing straight down, fingers along world y (the home orientation).
    self._rot_target = jnp.diag(jnp.array([1.0, -1.0, -1.0], jnp.float32))
    self.controller = controller_lib.OperationalSpaceController(
        model=self.mjx_model, tcp_site=self._tcp, hand_root=self._hand_root,
        q_home=jnp.asarray(HOME_QPOS, jnp.float32),
        tau_max=jnp.asarray(TORQUE_LIMITS, jnp.float32), rot_target=self._rot_target,
        kp=cfg.osc_kp, damping_ratio=cfg.osc_damping_ratio, nullspace_kp=cfg.nullspace_kp)

    # Reset template: home posture, forward kinematics done once on the host. A reset only
    # moves the cube; the arm quantities the controller reads do not depend on it, and the
    # next mjx.step recomputes everything, so no physics runs inside reset.
    data = mujoco.MjData(mj)
    mujoco.mj_resetDataKeyframe(mj, data, mj.key("home").id)
    mujoco.mj_forward(mj, data)
    self._home_data = data
    self._template = mjx.put_data(mj, data, impl="jax", device=local_device())
    self._home_tcp = jnp.asarray(data.site_xpos[self._tcp], jnp.float32)

  @property
  def action_size(self) -> int:
    return 4

  def _simulate(self, data: mjx.Data, target: jax.Array, finger: jax.Array) -> mjx.Data:
    """Runs the ``n_substeps`` physics steps of one control step.

    Args:
      data: the state at the start of the control step.
      target: [3] controller target (world, m), held for the whole control step.
      finger: [] commanded position of each finger joint (m).
    Returns:
      the ``mjx.Data`` after the last substep (may hold NaN if the physics blew up).
    """

    ctrl_lib = self.controller
    once = self.config.controller_rate == "control"
    dyn = ctrl_lib.dynamics(data) if once else None

    def substep(data, _):
      tau = ctrl_lib.torque_with(dyn if once else ctrl_lib.dynamics(data), data, target)
      ctrl = jnp.concatenate([tau, jnp.stack([finger, finger])])
      return mjx.step(self.mjx_model, data.replace(ctrl=ctrl)), None

    data, _ = jax.lax.scan(substep, data, None, length=self.n_substeps)
    return data

  def _tcp_velocity(self, data: mjx.Data) -> jax.Array:
    """[3] TCP linear velocity from the arm joint velocities of ``data``."""
    return controller_lib.tcp_velocity(data, self._tcp, self._hand_root)
