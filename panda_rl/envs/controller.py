"""Operational-space controller of the Panda arm (pure JAX, no env class).

The controller turns a task-space target (a TCP position; the orientation is fixed to the
tool pointing down) into the 7 arm joint torques of one physics substep: a task-space PD
law shaped by the task-space inertia, a joint-space pull toward the home posture filtered
into the nullspace of the TCP Jacobian, compensation of gravity / Coriolis forces
(``qfrc_bias``), and a clip to Franka's torque limits.

Everything here is a pure function of an ``mjx.Data``; :class:`OperationalSpaceController`
only bundles the static inputs (model, ids, gains) so that a step function can call
``controller.torque(data, target)`` inside ``jit`` / ``vmap`` / ``scan``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import flax
import jax
import jax.numpy as jnp
from mujoco import mjx

ARM_DOFS = 7  # the arm's joints are the first 7 dofs (then the two fingers, then the cube)


def tcp_jacobian(data: mjx.Data, tcp_site: int, hand_root: int) -> Tuple[jax.Array, jax.Array]:
  """Translational and rotational Jacobians of the TCP site w.r.t. the arm joints.

  Built from ``cdof`` (the dof motion axes in the com-based frame), as ``mj_jacSite`` does;
  every arm dof is an ancestor of the hand, so no body-tree mask is needed.

  Args:
    data: the MJX state (after kinematics and ``com_pos``: any ``mjx.step`` output).
    tcp_site: model site id of the TCP.
    hand_root: root body id of the hand's kinematic tree (``body_rootid[hand]``).
  Returns:
    (jacp [7, 3], jacr [7, 3]): row i is the TCP's linear / angular velocity per unit
    velocity of arm joint i (the transpose of MuJoCo's [3, nv] layout).
  """
  cdof = data.cdof[:ARM_DOFS]
  offset = data.site_xpos[tcp_site] - data.subtree_com[hand_root]
  jacr = cdof[:, :3]
  jacp = cdof[:, 3:] + jnp.cross(jacr, offset)
  return jacp, jacr


def tcp_velocity(data: mjx.Data, tcp_site: int, hand_root: int) -> jax.Array:
  """[3] linear velocity of the TCP, ``jacp^T qvel_arm`` (the fingers do not move it)."""
  jacp, _ = tcp_jacobian(data, tcp_site, hand_root)
  return jacp.T @ data.qvel[:ARM_DOFS]


@flax.struct.dataclass
class TaskDynamics:
  """What the law needs from the configuration: ``jac`` [6, 7] (TCP Jacobian, linear rows
  first), ``lam`` [6, 6] (task-space inertia) and ``jbar`` [7, 6] (M^-1 J^T Lambda)."""

  jac: jax.Array
  lam: jax.Array
  jbar: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class OperationalSpaceController:
  """Task-space PD + nullspace posture + bias compensation, clipped to the torque limits.

  Attributes:
    model: the ``mjx.Model`` (for the joint-space mass matrix).
    tcp_site: model site id of the TCP.
    hand_root: root body id of the hand (see :func:`tcp_jacobian`).
    q_home: [7] float32 posture the nullspace term pulls toward.
    tau_max: [7] float32 symmetric torque limits (N m).
    rot_target: [3, 3] float32 TCP orientation the controller holds.
    kp: task-space stiffness (position and orientation).
    damping_ratio: task-space damping ratio (kd = 2 ratio sqrt(kp)).
    nullspace_kp: stiffness of the posture pull (critically damped).
  """

  model: mjx.Model
  tcp_site: int
  hand_root: int
  q_home: jax.Array
  tau_max: jax.Array
  rot_target: jax.Array
  kp: Any
  damping_ratio: Any
  nullspace_kp: Any

  def torque(self, data: mjx.Data, target: jax.Array) -> jax.Array:
    """Arm torques [7] that drive the TCP of ``data`` toward ``target`` [3] (world, m)."""
    return self.torque_with(self.dynamics(data), data, target)

  def dynamics(self, data: mjx.Data) -> "TaskDynamics":
    """The configuration-dependent part of the law: the TCP Jacobian, the task-space
    inertia and the dynamically consistent pseudo-inverse (the mass-matrix solves).

    ``env.controller_rate = "control"`` (the default) computes this once per control step
    and reuses it for the control step's substeps (:meth:`torque_with`); "substep" computes
    it every substep."""
    jacp, jacr = tcp_jacobian(data, self.tcp_site, self.hand_root)
    jac = jnp.concatenate([jacp, jacr], axis=1).T  # [6, 7]
    mass = mjx.full_m(self.model, data)[:ARM_DOFS, :ARM_DOFS]
    m_inv_jt = jnp.linalg.solve(mass, jac.T)  # [7, 6] = M^-1 J^T
    lam = jnp.linalg.inv(jac @ m_inv_jt + 1e-4 * jnp.eye(6))  # task-space inertia
    return TaskDynamics(jac=jac, lam=lam, jbar=m_inv_jt @ lam)

  def torque_with(self, dyn: "TaskDynamics", data: mjx.Data, target: jax.Array) -> jax.Array:
    """Arm torques [7] toward ``target`` with the task dynamics ``dyn`` (of this state or
    of the control step's first substep); errors, velocities and the bias forces are
    always those of ``data``."""
    jac = dyn.jac
    qvel = data.qvel[:ARM_DOFS]
    qpos = data.qpos[:ARM_DOFS]

    rot = data.site_xmat[self.tcp_site]
    err_pos = target - data.site_xpos[self.tcp_site]
    err_rot = 0.5 * jnp.sum(jnp.cross(rot.T, self.rot_target.T), axis=0)
    vel = jac @ qvel
    kp = self.kp
    kd = 2.0 * self.damping_ratio * jnp.sqrt(kp)
    acc = kp * jnp.concatenate([err_pos, err_rot]) - kd * vel
    tau_task = jac.T @ (dyn.lam @ acc)

    # Nullspace: posture PD filtered by (I - J^T Jbar^T), Jbar = M^-1 J^T Lambda, so the
    # posture pull cannot disturb the TCP.
    kn = self.nullspace_kp
    tau_post = kn * (self.q_home - qpos) - 2.0 * jnp.sqrt(kn) * qvel
    tau_null = tau_post - jac.T @ (dyn.jbar.T @ tau_post)

    tau = tau_task + tau_null + data.qfrc_bias[:ARM_DOFS]
    return jnp.clip(tau, -self.tau_max, self.tau_max)
