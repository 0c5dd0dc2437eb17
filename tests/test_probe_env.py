"""PointReach-v0: interface, determinism, time limit, termination option, overrides."""

import panda_rl

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl.envs.base import AutoResetWrapper


def test_shapes_dtypes_and_determinism():
  env = panda_rl.make("PointReach-v0", dim=3)
  assert env.observation_size == 6 and env.action_size == 3
  s1 = jax.jit(env.reset)(jax.random.PRNGKey(0))
  s2 = jax.jit(env.reset)(jax.random.PRNGKey(0))
  assert s1.obs.shape == (6,) and s1.obs.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(s1.obs), np.asarray(s2.obs))
  s = jax.jit(env.step)(s1, jnp.ones(3))
  assert s.reward.dtype == jnp.float32 and set(s.metrics) == set(s1.metrics)
  assert "success" in s.metrics


def test_moves_toward_goal_and_clips_actions():
  env = panda_rl.make("PointReach-v0", action_scale=0.1)
  s = env.reset(jax.random.PRNGKey(1))
  pos = np.asarray(s.data["pos"])
  s = env.step(s, jnp.asarray([5.0, -5.0]))  # clipped to [1, -1]
  np.testing.assert_allclose(np.asarray(s.data["pos"]), np.clip(pos + [0.1, -0.1], -1, 1),
                             rtol=1e-6)
  np.testing.assert_allclose(float(s.reward), float(s.metrics["reward_terms/distance"]),
                             rtol=1e-6)


def test_reward_is_the_scaled_sum_of_its_terms():
  env = panda_rl.make("PointReach-v0", success_weight=0.5, goal_radius=0.5)
  assert env.reward_scales == {"distance": 1.0, "success": 0.5}
  s = env.reset(jax.random.PRNGKey(3))
  for _ in range(6):
    s = env.step(s, jnp.clip(5.0 * s.obs[2:], -1.0, 1.0))  # toward the goal
    dist = float(np.linalg.norm(np.asarray(s.data["goal"]) - np.asarray(s.data["pos"])))
    np.testing.assert_allclose(float(s.metrics["reward_terms/distance"]), -dist, rtol=1e-6)
    assert float(s.metrics["reward_terms/success"]) == float(dist < 0.5)
    assert float(s.metrics["success"]) == float(dist < 0.5)
    np.testing.assert_allclose(float(s.reward), -dist + 0.5 * float(dist < 0.5), rtol=1e-6)
  assert float(s.metrics["success"]) == 1.0


def test_truncates_at_the_time_limit_and_auto_resets():
  env = AutoResetWrapper(panda_rl.make("PointReach-v0", episode_length=4), num_envs=3)
  state = env.reset(jax.random.PRNGKey(0))
  step = jax.jit(env.step)
  dones = []
  for _ in range(8):
    state = step(state, jnp.zeros((3, 2)))
    dones.append(np.asarray(state.truncated))
    assert float(state.terminated.sum()) == 0
  dones = np.stack(dones)
  np.testing.assert_array_equal(dones[:, 0], [0, 0, 0, 1, 0, 0, 0, 1])
  np.testing.assert_array_equal(np.asarray(state.metrics["episode_length"]), [4, 4, 4])


def test_terminate_on_success_terminates_not_truncates():
  env = panda_rl.make("PointReach-v0", terminate_on_success=True, goal_radius=10.0)
  s = env.step(env.reset(jax.random.PRNGKey(0)), jnp.zeros(2))
  assert float(s.terminated) == 1.0 and float(s.truncated) == 0.0 and float(s.done) == 1.0


def test_unknown_override_fails_clearly():
  with pytest.raises(ValueError, match="unknown config key.*episode_len"):
    panda_rl.make("PointReach-v0", episode_len=10)
