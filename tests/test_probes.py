"""Graded probe envs (panda_rl/envs/probes.py): their closed forms, and PPO / GRPO solving
them through the public trainer API.

PPO (critic): the value of each value probe's observations must reach its closed form,
V = 1 / obs / (gamma, 1), within VALUE_TOL = 0.05; measured after 20 iterations, seeds 0-2:
errors <= 0.0031. The action probes' policy mean must reach the best action within
ACTION_TOL = 0.1 (per component; at 16 test observations for ProbeActionObs); measured
after 40 iterations, seeds 0-2: errors <= 0.058 (PPO and GRPO).

GRPO (no critic): every group shares its start, so on the value probes (action-independent
rewards) all members of a group have the same return: every group has zero spread, every
advantage is exactly 0, and the policy mean's parameters must not move at all (only the
state-independent log_std feels the entropy bonus). On the action probes the groups do have
spread, and the policy mean must reach the best action.

Sizes: 64 envs x 4 steps, (32, 32) MLPs, lr 3e-3. The whole file: ~70 s on 2 CPU cores
with an empty compile cache, 30-50 s with a warm one (each trainer trains in ~1 s).
"""

import panda_rl  # noqa: F401  (sets the XLA:CPU flags before JAX starts)

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl import normalizer as obs_norm
from panda_rl.config import load_config_file
from panda_rl.training import Trainer

_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
VALUE_PROBES = ("ProbeConstant-v0", "ProbeObsReward-v0", "ProbeDiscount-v0")
ACTION_PROBES = ("ProbeAction-v0", "ProbeActionObs-v0")
VALUE_ITERATIONS = 20
ACTION_ITERATIONS = 40
VALUE_TOL = 0.05
ACTION_TOL = 0.1
# Observations where the learned action is checked for ProbeActionObs-v0 (inside the
# [-0.8, 0.8]^2 range the env draws from).
_ACTION_OBS = np.random.default_rng(0).uniform(-0.7, 0.7, (16, 2)).astype(np.float32)


# ------------------------------------------------------------------ the envs themselves
def _episode(env_id, key=0, action=None, **overrides):
  """[(state after reset), (state after step 1), ...] of one whole episode."""
  env = panda_rl.make(env_id, **overrides)
  state = env.reset(jax.random.PRNGKey(key))
  states = [state]
  a = jnp.zeros(env.action_size) if action is None else jnp.asarray(action, jnp.float32)
  for _ in range(env.episode_length):
    states.append(env.step(states[-1], a))
  return env, states


@pytest.mark.parametrize("env_id", VALUE_PROBES + ACTION_PROBES)
def test_probe_interface(env_id):
  env, states = _episode(env_id)
  assert env.observation_size == states[0].obs.shape[0]
  for s in states:
    assert s.obs.dtype == jnp.float32 and s.reward.dtype == jnp.float32
    assert set(s.metrics) == {"success"}
  # The episode ends by termination (no bootstrap) at its last step, and not before.
  assert [float(s.done) for s in states[1:]] == [0.0] * (env.episode_length - 1) + [1.0]
  assert float(states[-1].terminated) == 1.0 and float(states[-1].truncated) == 0.0
  with pytest.raises(ValueError, match="unknown config key"):
    panda_rl.make(env_id, not_a_key=1)
  with pytest.raises(ValueError, match="action must have shape"):
    env.step(states[0], jnp.zeros(env.action_size + 1))


def test_value_probe_rewards():
  _, (s0, s1) = _episode("ProbeConstant-v0", action=[0.7])
  assert float(s0.obs[0]) == 0.0 and float(s1.reward) == 1.0 and float(s1.metrics["success"]) == 1
  signs = set()
  for key in range(8):
    _, (s0, s1) = _episode("ProbeObsReward-v0", key=key)
    assert float(s0.obs[0]) in (-1.0, 1.0) and float(s1.reward) == float(s0.obs[0])
    signs.add(float(s0.obs[0]))
  assert signs == {-1.0, 1.0}
  _, (s0, s1, s2) = _episode("ProbeDiscount-v0", action=[-0.3])
  assert [float(s.obs[0]) for s in (s0, s1)] == [0.0, 1.0]
  assert [float(s.reward) for s in (s1, s2)] == [0.0, 1.0]
  assert [float(s.metrics["success"]) for s in (s1, s2)] == [0.0, 1.0]


def test_action_probe_rewards_and_success():
  env, (_, s1) = _episode("ProbeAction-v0", action=[0.5, -0.3])
  np.testing.assert_array_equal(np.asarray(env.a_star), np.float32([0.5, -0.3]))
  assert float(s1.reward) == 0.0 and float(s1.metrics["success"]) == 1.0
  _, (_, s1) = _episode("ProbeAction-v0", action=[0.3, 0.5])
  np.testing.assert_allclose(float(s1.reward), -(0.2**2 + 0.8**2), rtol=1e-6)
  assert float(s1.metrics["success"]) == 0.0
  _, (_, s1) = _episode("ProbeAction-v0", action=[2.0, -0.3])  # clipped to 1.0
  np.testing.assert_allclose(float(s1.reward), -0.25, rtol=1e-6)
  _, (_, s1) = _episode("ProbeAction-v0", action=[0.1], a_star=(0.2,))
  assert s1.obs.shape == (1,) and float(s1.metrics["success"]) == 1.0

  env = panda_rl.make("ProbeActionObs-v0")
  keys = jax.random.split(jax.random.PRNGKey(0), 64)
  obs = np.stack([np.asarray(env.reset(k).obs) for k in keys])
  assert obs.shape == (64, 2) and np.all(np.abs(obs) <= 0.8) and obs.std() > 0.3
  s0 = env.reset(jax.random.PRNGKey(3))
  s1 = env.step(s0, s0.obs + jnp.asarray([0.06, 0.0]))
  np.testing.assert_allclose(float(s1.reward), -0.06**2, rtol=1e-4)
  assert float(s1.metrics["success"]) == 1.0
  s1 = env.step(s0, s0.obs + jnp.asarray([0.08, 0.08]))  # 0.113 away: no success
  assert float(s1.metrics["success"]) == 0.0


# ------------------------------------------------------------------ training
def _config(algo, env_id, iterations):
  c = load_config_file(os.path.join(_CONFIGS, f"mujoco_{algo}_mlp.py"))
  c.env.train.env_id = env_id
  c.env.train.overrides = {}  # the config file's overrides are PandaPickCube's
  c.env.train.num_envs = 64  # GRPO: 8 groups of 8
  c.env.eval.num_envs = 64
  c.rollout.num_steps = 4  # >= every probe's episode_length (GRPO needs whole episodes)
  c.actor.model.policy_hidden = (32, 32)
  c.actor.model.value_hidden = (32, 32)
  c.actor.optim.lr = 3e-3
  c.algorithm.update_epochs = 4
  c.algorithm.num_minibatches = 4
  c.runner.max_epochs = iterations
  return c


_trained = {}


@pytest.fixture(scope="module", autouse=True)
def _drop_trained():
  yield
  _trained.clear()


def _train(algo, env_id):
  """(trainer, initial params, final state, per-iteration metrics, eval metrics), cached."""
  if (algo, env_id) not in _trained:
    iterations = ACTION_ITERATIONS if env_id in ACTION_PROBES else VALUE_ITERATIONS
    trainer = Trainer(_config(algo, env_id, iterations))
    state = trainer.init(jax.random.PRNGKey(0))
    params0 = jax.tree.map(np.asarray, state.params)  # a copy: the state is donated
    history = []
    for _ in range(iterations):
      state, metrics = trainer.train_iteration(state)
      history.append(jax.device_get(metrics))
    evaluation = jax.device_get(trainer.evaluate(state, jax.random.PRNGKey(1)))
    _trained[algo, env_id] = trainer, params0, state, history, evaluation
  return _trained[algo, env_id]


def _normalized(state, x):
  return obs_norm.normalize(state.normalizer, jnp.asarray(x, jnp.float32))


def _closed_form_values(trainer, env_id):
  """(raw observations [N, 1], their closed-form values [N])."""
  if env_id == "ProbeConstant-v0":
    return np.float32([[0.0]]), np.array([1.0])
  if env_id == "ProbeObsReward-v0":
    return np.float32([[-1.0], [1.0]]), np.array([-1.0, 1.0])
  gamma = float(trainer.config.algorithm.gamma)
  return np.float32([[0.0], [1.0]]), np.array([gamma, 1.0])


def _best_actions(env_id):
  """(raw observations [N, D], the best action at each [N, A])."""
  if env_id == "ProbeAction-v0":
    return np.float32([[0.0]]), np.array([[0.5, -0.3]])
  return _ACTION_OBS, _ACTION_OBS.astype(np.float64)


@pytest.mark.parametrize("env_id", VALUE_PROBES)
def test_ppo_value_reaches_the_closed_form(env_id):
  trainer, _, state, history, evaluation = _train("ppo", env_id)
  x, expected = _closed_form_values(trainer, env_id)
  value = np.asarray(trainer.networks.value_fn(state.params, _normalized(state, x)))
  np.testing.assert_allclose(value, expected, atol=VALUE_TOL)
  assert all(np.isfinite(h[M.LOSS]) for h in history)
  assert float(evaluation[M.EVAL_SUCCESS_ONCE]) == 1.0  # the value probes always succeed


@pytest.mark.parametrize("env_id", ACTION_PROBES)
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_policy_mean_reaches_the_best_action(algo, env_id):
  trainer, _, state, history, evaluation = _train(algo, env_id)
  x, best = _best_actions(env_id)
  mean = np.asarray(trainer.networks.policy_apply(state.params["policy"],
                                                  _normalized(state, x))[0])
  np.testing.assert_allclose(mean, best, atol=ACTION_TOL)
  assert float(evaluation[M.EVAL_SUCCESS_ONCE]) >= 0.9, evaluation
  assert float(evaluation[M.EVAL_RETURN]) > -0.02, evaluation  # random policy: about -0.7
  if algo == "grpo":  # members of a group act differently: their returns spread
    assert all(h[M.ZERO_SPREAD_GROUPS] == 0.0 for h in history)


@pytest.mark.parametrize("env_id", VALUE_PROBES)
def test_grpo_gets_no_signal_from_value_probes(env_id):
  trainer, params0, state, history, evaluation = _train("grpo", env_id)
  for h in history:
    assert h[M.ZERO_SPREAD_GROUPS] == 1.0 and h[M.GROUP_RETURN_STD] == 0.0
    assert h[M.ADVANTAGES_MIN] == 0.0 and h[M.ADVANTAGES_MAX] == 0.0
  # Zero advantages: the policy mean's parameters get exactly zero gradient, and Adam
  # turns zero gradients into zero updates. The entropy bonus moves log_std only.
  policy0 = dict(params0["policy"])
  policy = dict(jax.tree.map(np.asarray, state.params["policy"]))
  assert not np.array_equal(policy0.pop("log_std"), policy.pop("log_std"))
  same = jax.tree.map(np.array_equal, policy0, policy)
  assert all(jax.tree.leaves(same)), same
  expected_return = {"ProbeConstant-v0": 1.0, "ProbeDiscount-v0": 1.0,
                     "ProbeObsReward-v0": None}[env_id]
  if expected_return is not None:
    assert float(evaluation[M.EVAL_RETURN]) == expected_return
  assert float(evaluation[M.EVAL_SUCCESS_ONCE]) == 1.0
