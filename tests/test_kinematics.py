"""The MJCF's forward kinematics matches Franka's published DH parameters."""

import mujoco
import numpy as np

import panda_rl
from panda_rl.envs.pick_cube import ASSET, HOME_QPOS

# Modified (Craig) DH: (a_{i-1}, d_i, alpha_{i-1}) for joints 1..7, then the flange.
DH = [(0.0, 0.333, 0.0), (0.0, 0.0, -np.pi / 2), (0.0, 0.316, np.pi / 2),
      (0.0825, 0.0, np.pi / 2), (-0.0825, 0.384, -np.pi / 2), (0.0, 0.0, np.pi / 2),
      (0.088, 0.0, np.pi / 2)]
FLANGE_D = 0.107
TCP_OFFSET = 0.1034  # Franka Hand TCP, beyond the flange along its z axis


def _mdh(a, d, alpha, theta):
  ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
  return np.array([[ct, -st, 0, a],
                   [st * ca, ct * ca, -sa, -d * sa],
                   [st * sa, ct * sa, ca, d * ca],
                   [0, 0, 0, 1]])


def dh_tcp(q):
  t = np.eye(4)
  for (a, d, alpha), qi in zip(DH, q):
    t = t @ _mdh(a, d, alpha, qi)
  t = t @ _mdh(0.0, FLANGE_D + TCP_OFFSET, 0.0, 0.0)
  return t[:3, 3], t[:3, :3]


def test_tcp_matches_dh_model():
  m = mujoco.MjModel.from_xml_path(ASSET)
  d = mujoco.MjData(m)
  rng = np.random.default_rng(0)
  lo, hi = m.jnt_range[:7, 0], m.jnt_range[:7, 1]
  worst = 0.0
  for _ in range(200):
    q = rng.uniform(lo, hi)
    d.qpos[:7] = q
    mujoco.mj_kinematics(m, d)
    pos, rot = dh_tcp(q)
    worst = max(worst, np.linalg.norm(d.site("tcp").xpos - pos))
    # The TCP's z axis (the approach direction) is the flange's z axis.
    np.testing.assert_allclose(d.site("tcp").xmat.reshape(3, 3)[:, 2], rot[:, 2], atol=1e-6)
  assert worst < 1e-3, f"TCP differs from the DH model by {worst * 1e3:.3f} mm"


def test_home_posture_points_down():
  m = mujoco.MjModel.from_xml_path(ASSET)
  d = mujoco.MjData(m)
  d.qpos[:7] = HOME_QPOS
  mujoco.mj_kinematics(m, d)
  np.testing.assert_allclose(d.site("tcp").xpos, dh_tcp(HOME_QPOS)[0], atol=1e-6)
  np.testing.assert_allclose(d.site("tcp").xmat.reshape(3, 3)[:, 2], [0, 0, -1], atol=1e-2)


def test_joint_limits_and_cube_from_datasheet():
  m = mujoco.MjModel.from_xml_path(ASSET)
  np.testing.assert_allclose(m.jnt_range[3], [-3.0718, -0.0698])
  np.testing.assert_allclose(m.jnt_range[5], [-0.0175, 3.7525])
  np.testing.assert_allclose(m.actuator_ctrlrange[:7, 1], [87, 87, 87, 87, 12, 12, 12])
  cube = m.geom("cube")
  np.testing.assert_allclose(cube.size, [0.02, 0.02, 0.02])
  np.testing.assert_allclose(m.body("cube").mass, 0.1)
  assert {m.camera(i).name for i in range(m.ncam)} == {"front", "wrist"}
  # Only explicit pairs collide: no geom takes part in automatic collision detection.
  assert not np.any(m.geom_contype) and not np.any(m.geom_conaffinity)
  assert m.npair == 4


def test_only_the_rows_that_can_act_are_constraints():
  """MJX solves every potential row at every substep, so the scene makes only those that
  can act: the elbow's and the fingers' limits, friction where something is gripped or
  rests on the floor, a frictionless floor under the fingertips."""
  from mujoco import mjx

  m = mujoco.MjModel.from_xml_path(ASSET)
  limited = {m.joint(j).name for j in range(m.njnt) if m.jnt_limited[j]}
  assert limited == {"joint4", "finger_left", "finger_right"}
  # The unlimited arm joints still carry their datasheet ranges (as data: IK, tests).
  np.testing.assert_allclose(m.jnt_range[5], [-0.0175, 3.7525])
  assert m.pair_dim[m.pair("tip_floor").id] == 1
  assert [m.pair_dim[m.pair(n).id] for n in ("left_pad_cube", "right_pad_cube",
                                              "cube_floor")] == [3, 3, 3]
  d = mjx.make_data(mjx.put_model(m, impl="jax"))
  # 3 limits + tip-floor 2 contacts x 1 + (2 + 2 pad + 4 floor contacts) x 4 (pyramidal)
  assert d._impl.efc_J.shape[0] == 3 + 2 + 8 * 4


def test_the_controller_keeps_the_unlimited_arm_joints_inside_their_ranges():
  """What makes dropping those limit rows safe: under random actions and the scripted
  pick (which bends the elbow to its limit for cubes near the base), every arm joint but
  the elbow stays well inside its datasheet range (measured: >= 0.52 rad)."""
  from panda_rl import sim2sim

  envs = [sim2sim.make_c_env("PandaPickCube-v0") for _ in range(32)]
  m = envs[0].model
  free = [j for j in range(7) if not m.jnt_limited[j]]
  lo, hi = m.jnt_range[free, 0], m.jnt_range[free, 1]
  closest = [np.inf]

  def frame(envs):
    q = np.stack([e.data.qpos[free] for e in envs])
    closest[0] = min(closest[0], float(np.min(np.minimum(q - lo, hi - q))))

  rng = np.random.default_rng(0)
  policies = [lambda obs: rng.uniform(-1, 1, (len(obs), 4)), sim2sim.scripted_policy()]
  for policy, seed in zip(policies, (0, 7)):
    sim2sim.c_episodes(envs, policy, seed=seed, on_frame=frame)
  assert closest[0] > 0.25, closest[0]
