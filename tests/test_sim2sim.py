"""The pick-cube task in C MuJoCo (panda_rl/envs/pick_cube_c.py) against the MJX env.

Tolerances, measured (16 random-action episodes from the same initial states, 100 steps):
TCP positions agree to 1.7e-6 m (float32 MJX vs float64 C), cube positions to 3.6e-4 m (the
cube's first settling onto the floor takes a slightly different transient in MJX's and C's
solvers; both rest at the same height to 1e-6 m after ~15 steps). The test asks 1e-5 m for
the TCP and 1 mm for the cube, over whole episodes.
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import jax
import numpy as np
import pytest

from panda_rl import sim2sim
from panda_rl.envs.pick_cube_c import PandaPickCubeC

TCP_TOL = 1e-5  # m, measured 1.7e-6
CUBE_TOL = 1e-3  # m, measured 3.6e-4
NUM_ENVS = 16


@pytest.fixture(scope="module")
def mjx_random_episode(pick_env, pick_fns):
  """16 MJX episodes of uniform random actions: (initial state, actions [T, N, 4], obs
  [T, N, 10], reward [T, N], success [T, N], done [T, N])."""
  reset, step = pick_fns
  steps = pick_env.config.episode_length
  state = reset(jax.random.split(jax.random.PRNGKey(1), NUM_ENVS))
  initial = jax.device_get(state)
  actions = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (steps, NUM_ENVS, 4),
                                          minval=-1.0, maxval=1.0))
  out = []
  for t in range(steps):
    state = step(state, actions[t])
    out.append(jax.device_get((state.obs, state.reward, state.metrics["success"], state.done)))
  obs, reward, success, done = (np.stack(x) for x in zip(*out))
  return initial, actions, obs, reward, success, done


def test_reset_from_an_mjx_reset_state_gives_its_observation(mjx_random_episode):
  initial = mjx_random_episode[0]
  env = PandaPickCubeC()
  for i in range(NUM_ENVS):
    obs = env.reset_to(initial.data.qpos[i])
    np.testing.assert_allclose(obs, initial.obs[i], atol=1e-6)
    assert obs.dtype == np.float32 and env.steps == 0 and env.grip_cmd == 0.0


def test_a_random_action_episode_follows_the_mjx_one_step_by_step(mjx_random_episode):
  initial, actions, obs_m, reward_m, success_m, done_m = mjx_random_episode
  env = PandaPickCubeC()
  steps = len(actions)
  obs_c = np.zeros_like(obs_m)
  reward_c, done_c = np.zeros(reward_m.shape), np.zeros(done_m.shape)
  for i in range(NUM_ENVS):
    env.reset_to(initial.data.qpos[i])
    for t in range(steps):
      r = env.step(actions[t, i])
      obs_c[t, i], reward_c[t, i], done_c[t, i] = r.obs, r.reward, r.done
      assert r.metrics["success"] == success_m[t, i]
  tcp = np.linalg.norm(obs_m[..., :3] - obs_c[..., :3], axis=-1)
  cube = np.linalg.norm(obs_m[..., 7:] - obs_c[..., 7:], axis=-1)
  assert tcp.max() < TCP_TOL, f"TCP differs by up to {tcp.max():.2e} m"
  assert cube.max() < CUBE_TOL, f"cube differs by up to {cube.max():.2e} m"
  np.testing.assert_allclose(obs_c[..., 3:7], obs_m[..., 3:7], atol=1e-3)  # vel, opening
  np.testing.assert_allclose(reward_c, reward_m, atol=1e-3)
  np.testing.assert_array_equal(done_c, done_m)
  assert done_c[-1].all() and not done_c[:-1].any()  # the time limit, nothing earlier


def test_the_scripted_policy_lifts_the_cube_in_c_mujoco():
  envs = [PandaPickCubeC() for _ in range(256)]
  traj = sim2sim.c_episodes(envs, sim2sim.scripted_policy(), seed=0)
  assert traj.success.mean() >= 0.95, f"scripted success {traj.success.mean():.3f}"
  assert (traj.length == 100).all()
  # The envs' own resets: distinct cube positions inside the reset box.
  cube = traj.qpos0[:, 9:11]
  assert len(np.unique(cube, axis=0)) == 256
  assert (cube >= (0.25, -0.25)).all() and (cube <= (0.55, 0.25)).all()


def test_rewards_sparse_and_relative_match_the_dense_terms():
  dense, sparse, rel = (PandaPickCubeC(reward_type=r) for r in ("dense", "sparse", "relative"))
  for env in (dense, sparse, rel):
    env.reset(seed=3)
  a = np.array([0.3, -0.2, -0.5, 0.0])
  prev = dense._prev_reward
  for _ in range(3):
    d, s, r = dense.step(a), sparse.step(a), rel.step(a)
    assert s.reward == s.metrics["success"]
    assert r.reward == pytest.approx(d.reward - prev)
    prev = d.reward


def test_bad_physics_ends_the_episode_with_a_finite_state(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # C MuJoCo logs its warning to ./MUJOCO_LOG.TXT
  env = PandaPickCubeC()
  env.reset(seed=0)
  env.data.qvel[:7] = 1e12  # C MuJoCo warns and resets; the env reports it like MJX's
  r = env.step(np.zeros(4))
  assert r.terminated and r.metrics["nan_physics"] == 1.0 and r.reward == 0.0
  assert np.all(np.isfinite(r.obs))


def test_bad_input_fails_with_a_message():
  with pytest.raises(ValueError, match="curricula"):
    PandaPickCubeC(reset_pregrasp_prob=0.4)
  with pytest.raises(ValueError, match="unknown config key"):
    PandaPickCubeC(sim_dtt=0.002)
  with pytest.raises(ValueError, match=r"shape \[4\]"):
    PandaPickCubeC().step(np.zeros(3))
  with pytest.raises(ValueError, match="No C MuJoCo version"):
    sim2sim.make_c_env("PointReach-v0")


def test_vision_observation_matches_the_mjx_vision_env_at_reset():
  overrides = dict(image_height=32, image_width=32)
  mjx_env = panda_rl.make("PandaPickCubeVision-v0", **overrides)
  keys = jax.random.split(jax.random.PRNGKey(4), 4)
  state = jax.device_get(jax.jit(jax.vmap(mjx_env.reset))(keys))
  envs = [sim2sim.make_c_env("PandaPickCubeVision-v0", **overrides) for _ in range(4)]
  flat = np.stack([e.reset_to(state.data.qpos[i], observe=False) for i, e in enumerate(envs)])
  obs = type(envs[0]).observe_batch(envs, flat)
  assert set(obs) == set(state.obs)
  for cam in ("front", "wrist"):
    assert obs[cam].dtype == np.uint8 and obs[cam].shape == (4, 32, 32, 3)
    same = np.all(obs[cam] == state.obs[cam], axis=-1).mean()
    assert same > 0.995, f"{cam}: {same:.4f} of the pixels agree"
  for name in ("tcp_pos", "tcp_vel", "gripper_pos"):
    np.testing.assert_allclose(obs[name], state.obs[name], atol=1e-6)
  np.testing.assert_array_equal(obs["instruction"], state.obs["instruction"])
  single = envs[0].observe(flat[0])  # one env, no batch axis
  assert single["front"].shape == (32, 32, 3)


def test_gap_counts_success_and_tcp_difference_on_shared_steps():
  t, n = 4, 2
  tcp = np.zeros((t, n, 3))
  alive = np.ones((t, n), bool)
  step_success = np.zeros((t, n), bool)
  a = sim2sim.Trajectories(np.array([True, True]), np.array([4, 4]), tcp, tcp, alive,
                           step_success, np.zeros((n, 16)))
  c_tcp = tcp.copy()
  c_tcp[:, 1, 0] = 0.01
  b = a._replace(success=np.array([True, False]), tcp=c_tcp)
  g = sim2sim.gap(a, b, first_steps=2)
  assert g["success_mjx"] == 1.0 and g["success_c"] == 0.5 and g["success_ratio"] == 0.5
  assert g["tcp_gap_mean_m"] == pytest.approx(0.005)
  assert g["tracking_c_m"] == pytest.approx(0.005) and g["tracking_mjx_m"] == 0.0
