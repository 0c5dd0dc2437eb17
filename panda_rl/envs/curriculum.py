"""Reset curricula of the pick-cube task: start states computed once on the host.

Two training-only curricula replace a share of the ordinary resets (cube on the floor, arm
at home):

* :class:`InHandStart`: the home pose with the fingers closed on the cube (it shows the
  learner what holding the cube is worth);
* :class:`PregraspGrid`: the open hand around (or a little above) the cube, at one of a grid
  of arm poses found by inverse kinematics (a reverse curriculum that makes closing on the
  cube and lifting it easy to discover).

The templates are built with C MuJoCo on the host (``*.build``); inside the jitted reset,
``select`` picks a curriculum pose or keeps the ordinary one with elementwise selects, so
no physics and no control flow runs on the device.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx

from panda_rl.envs.panda import local_device

# Inverse kinematics of the grid poses: iterations, and the errors (position m, rotation
# rad) below which a pose is converged (stop early) or accepted (else it is left out).
_IK_ITERATIONS = 500
_IK_CONVERGED = (1e-4, 1e-3)
_IK_ACCEPTED = (1e-3, 1e-2)
_GRID_XY = (4, 5)  # cube positions along x and y in the grid


def _home_data(mj: mujoco.MjModel) -> mujoco.MjData:
  """A fresh ``MjData`` at the model's "home" keyframe (no kinematics yet)."""
  data = mujoco.MjData(mj)
  mujoco.mj_resetDataKeyframe(mj, data, mj.key("home").id)
  return data


@dataclasses.dataclass(frozen=True, eq=False)
class InHandStart:
  """Home pose, fingers closed on the cube, cube centred at the TCP.

  Attributes:
    data: the start state (``mjx.Data``, one env).
    tcp: [3] float32 controller target of this start (the home TCP).
    prob: share of resets that start here.
  """

  data: mjx.Data
  tcp: jax.Array
  prob: float

  @classmethod
  def build(cls, mj: mujoco.MjModel, tcp: np.ndarray, cube_qpos: int,
            prob: float) -> "InHandStart":
    """Builds the template on the host.

    Args:
      mj: the model.
      tcp: [3] home TCP position (float64, from the home forward kinematics).
      cube_qpos: address of the cube's free joint in qpos.
      prob: share of resets that use it.
    """
    data = _home_data(mj)
    c = cube_qpos
    data.qpos[7:9] = 0.0195  # pads 0.5 mm into the 4 cm cube: a firm grip from step one
    data.qpos[c:c + 3] = tcp
    data.ctrl[7:9] = 0.0
    mujoco.mj_forward(mj, data)
    return cls(data=mjx.put_data(mj, data, impl="jax", device=local_device()), tcp=jnp.asarray(tcp, jnp.float32),
               prob=prob)

  def select(self, key: jax.Array, data: mjx.Data, grip: jax.Array,
             target: jax.Array) -> Tuple[mjx.Data, jax.Array, jax.Array]:
    """With probability ``prob``, replaces (data, grip [], target [3]) by the in-hand start.

    Returns:
      (data, grip command (1 = closed when in hand), controller target [3]).
    """
    in_hand = jax.random.bernoulli(key, self.prob)
    data = jax.tree.map(lambda a, b: jnp.where(in_hand, a, b), self.data, data)
    grip = in_hand.astype(jnp.float32)
    target = jnp.where(in_hand, self.tcp, target)
    return data, grip, target


def solve_pose_ik(mj: mujoco.MjModel, data: mujoco.MjData, tcp_site: int, goal: Sequence[float],
                  rot_goal: np.ndarray, q_home: np.ndarray) -> np.ndarray:
  """Damped-least-squares IK of the TCP (position + orientation), in place on ``data``.

  Starts from ``data.qpos[:7]``; each iteration takes a damped least-squares step toward
  the goal plus a pull toward ``q_home`` in the Jacobian's nullspace (so the elbow stays
  up), limited to 0.2 rad and clipped to the joint ranges.

  Args:
    mj: the model. data: host state, modified in place (its arm qpos is the solution).
    tcp_site: TCP site id. goal: [3] TCP position (m). rot_goal: [3, 3] TCP orientation.
    q_home: [7] nullspace posture.
  Returns:
    [6] the last (position, rotation) error evaluated.
  """
  lo, hi = mj.jnt_range[:7, 0], mj.jnt_range[:7, 1]
  jacp, jacr = np.zeros((3, mj.nv)), np.zeros((3, mj.nv))
  for _ in range(_IK_ITERATIONS):
    mujoco.mj_kinematics(mj, data)
    mujoco.mj_comPos(mj, data)
    rot = data.site_xmat[tcp_site].reshape(3, 3)
    err = np.concatenate([np.asarray(goal) - data.site_xpos[tcp_site],
                          0.5 * np.sum(np.cross(rot.T, rot_goal.T), axis=0)])
    if np.linalg.norm(err[:3]) < _IK_CONVERGED[0] and np.linalg.norm(err[3:]) < _IK_CONVERGED[1]:
      break
    mujoco.mj_jacSite(mj, data, jacp, jacr, tcp_site)
    jac = np.concatenate([jacp, jacr])[:, :7]
    dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-3 * np.eye(6), err)
    null = np.eye(7) - np.linalg.pinv(jac) @ jac
    dq = dq + 0.1 * null @ (q_home - data.qpos[:7])
    dq *= min(1.0, 0.2 / (np.linalg.norm(dq) + 1e-12))
    data.qpos[:7] = np.clip(data.qpos[:7] + dq, lo, hi)
  return err


def _stack_differing(template: mjx.Data, datas: List[mjx.Data]) -> List[Optional[jax.Array]]:
  """Per leaf of ``template``: the [K, ...] stack of the K states' values, or None where
  every state has the template's value (a reset then selects those few arrays only)."""
  home_leaves = jax.tree.leaves(template)
  pose_leaves = [jax.tree.leaves(d) for d in datas]
  posed = []
  for i, home_leaf in enumerate(home_leaves):
    stack = np.stack([np.asarray(leaves[i]) for leaves in pose_leaves])
    same = stack.shape[1:] == np.shape(home_leaf) and np.array_equal(
        stack, np.broadcast_to(np.asarray(home_leaf), stack.shape))
    posed.append(None if same else jnp.asarray(stack))
  return posed


@dataclasses.dataclass(frozen=True, eq=False)
class PregraspGrid:
  """The open hand posed over a grid of cube positions on the floor.

  Attributes:
    posed: per leaf of the home template's ``mjx.Data``, the stacked [K, ...] values of the
      K poses, or None where every pose has the home value.
    tcp: [K, 3] float32 TCP positions of the poses (their controller targets).
    prob: share of resets that start at one of them (uniformly chosen).
    cube_qpos: address of the cube's free joint in qpos.
  """

  posed: Tuple[Optional[jax.Array], ...]
  tcp: jax.Array
  prob: float
  cube_qpos: int

  @classmethod
  def build(cls, mj: mujoco.MjModel, home: mujoco.MjData, template: mjx.Data, cfg,
            tcp_site: int, cube_qpos: int, rot_goal: np.ndarray,
            q_home: Sequence[float]) -> "PregraspGrid":
    """IK over the grid of (cube x, cube y, TCP height) goals, on the host.

    Each pose comes from :func:`solve_pose_ik` on the TCP (position + pointing down),
    warm-started from the previous accepted pose, and is kept when within 1 mm / 0.01 rad
    of its goal; poses out of reach are left out.

    Args:
      mj: the model. home: host home state after forward kinematics. template: its
        ``mjx.Data``. cfg: the task config (cube_xy_low/high, pregrasp_heights,
        max_finger_opening, reset_pregrasp_prob). tcp_site: TCP site id. cube_qpos: qpos
        address of the cube. rot_goal: [3, 3] TCP orientation. q_home: [7] IK posture.
    Raises:
      RuntimeError: fewer than half of the grid poses are reachable.
    """
    c = cube_qpos
    z_cube = float(home.qpos[c + 2])
    (x0, y0), (x1, y1) = cfg.cube_xy_low, cfg.cube_xy_high
    goals = [(x, y, z_cube + dz) for x in np.linspace(x0, x1, _GRID_XY[0])
             for y in np.linspace(y0, y1, _GRID_XY[1]) for dz in cfg.pregrasp_heights]
    datas, tcps, q_prev = [], [], None
    for goal in goals:
      data = _home_data(mj)
      if q_prev is not None:  # warm start from the neighbouring grid pose
        data.qpos[:7] = q_prev
      err = solve_pose_ik(mj, data, tcp_site, goal, rot_goal, np.asarray(q_home))
      if np.linalg.norm(err[:3]) > _IK_ACCEPTED[0] or np.linalg.norm(err[3:]) > _IK_ACCEPTED[1]:
        continue  # out of reach with the hand pointing down (near the base): skip it
      q_prev = data.qpos[:7].copy()
      data.qpos[c:c + 3] = (goal[0], goal[1], z_cube)
      data.ctrl[7:9] = cfg.max_finger_opening
      mujoco.mj_forward(mj, data)
      datas.append(mjx.put_data(mj, data, impl="jax", device=local_device()))
      tcps.append(data.site_xpos[tcp_site].copy())
    if len(datas) < len(goals) // 2:
      raise RuntimeError(f"PandaPickCube: pre-grasp IK reached only {len(datas)} of "
                         f"{len(goals)} grid poses; check cube_xy_low/high and pregrasp_heights")
    return cls(posed=tuple(_stack_differing(template, datas)),
               tcp=jnp.asarray(np.stack(tcps), jnp.float32), prob=cfg.reset_pregrasp_prob,
               cube_qpos=cube_qpos)

  def select(self, keys: Tuple[jax.Array, jax.Array, jax.Array], data: mjx.Data,
             target: jax.Array) -> Tuple[mjx.Data, jax.Array]:
    """With probability ``prob``, replaces (data, target [3]) by a random grid pose.

    The cube keeps the xy of its grid pose up to a uniform 1 cm offset (the open hand
    spans 8 cm).

    Args:
      keys: (whether to use a pose, which pose, the cube offset) PRNG keys.
      data: the ordinary reset state. target: [3] its controller target.
    Returns:
      (data, target [3]).
    """
    k_pre, k_pose, k_off = keys
    c = self.cube_qpos
    pre = jax.random.bernoulli(k_pre, self.prob)
    k = jax.random.randint(k_pose, (), 0, self.tcp.shape[0])
    leaves, treedef = jax.tree.flatten(data)
    data = treedef.unflatten([leaf if stack is None else jnp.where(pre, stack[k], leaf)
                              for leaf, stack in zip(leaves, self.posed)])
    off = jax.random.uniform(k_off, (2,), minval=-0.01, maxval=0.01)
    data = data.replace(qpos=data.qpos.at[c:c + 2].add(jnp.where(pre, off, 0.0)))
    target = jnp.where(pre, self.tcp[k], target)
    return data, target
