"""The training library end to end on the PointReach-v0 probe: it learns, it is reproducible,
its metrics are complete, its config errors are clear."""

import panda_rl

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl import rollout as rollout_lib
from panda_rl import training
from panda_rl.config import load_config_file
from panda_rl.envs.base import AutoResetWrapper

_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "configs", "mujoco_ppo_mlp.py")


def base_config():
  return load_config_file(_CONFIG_FILE)


def probe_config():
  """PPO sized for the probe: 32 envs x 16 steps = 512 samples per iteration."""
  c = base_config()
  c.env.train.env_id = "PointReach-v0"
  c.env.train.overrides = {}  # the default config's overrides are PandaPickCube's
  c.env.train.num_envs = 32
  c.env.eval.num_envs = 64
  c.rollout.num_steps = 16
  c.actor.model.policy_hidden = (32, 32)
  c.actor.model.value_hidden = (32, 32)
  c.actor.optim.lr = 3e-3
  c.algorithm.gamma = 0.9
  c.algorithm.update_epochs = 4
  c.algorithm.num_minibatches = 4
  c.runner.max_epochs = 20
  return c


@pytest.fixture(scope="module")
def trainer():
  # One trainer for the module: its jitted programs compile once and are shared by tests.
  return training.Trainer(probe_config())


def run(trainer, seed, n):
  state = trainer.init(jax.random.PRNGKey(seed))
  history = []
  for _ in range(n):
    state, metrics = trainer.train_iteration(state)
    history.append(jax.device_get(metrics))
  return state, history


def test_ppo_solves_point_reach(trainer):
  state = trainer.init(jax.random.PRNGKey(0))
  before = trainer.evaluate(state, jax.random.PRNGKey(123))
  state, history = run(trainer, 0, 20)
  after = trainer.evaluate(state, jax.random.PRNGKey(123))
  assert float(before[M.EVAL_SUCCESS_ONCE]) < 0.5
  assert float(after[M.EVAL_SUCCESS_ONCE]) >= 0.9, after
  assert float(after[M.EVAL_RETURN]) > -3.0, after  # random policy: about -7 to -23
  assert float(after[M.EVAL_EPISODE_LEN]) == 25.0
  finished = [h for h in history if h[M.NUM_EPISODES] > 0]
  assert finished and finished[-1][M.SUCCESS_ONCE] >= 0.9
  assert finished[-1][M.RETURN] > finished[0][M.RETURN]


def test_same_seed_same_result(trainer):
  s1, h1 = run(trainer, 7, 3)
  s2, h2 = run(trainer, 7, 3)
  s3, _ = run(trainer, 8, 3)
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), (s1.params, s1.opt_state,
                      s1.normalizer), (s2.params, s2.opt_state, s2.normalizer))
  assert all(jax.tree.leaves(same))
  assert h1[-1][M.LOSS] == h2[-1][M.LOSS]
  w1 = s1.params["policy"]["torso"]["dense_0"]["kernel"]
  w3 = s3.params["policy"]["torso"]["dense_0"]["kernel"]
  assert not bool(jnp.all(w1 == w3))


def test_iteration_metrics_and_counters(trainer):
  state, history = run(trainer, 1, 2)
  terms = {M.REWARD_TERMS_PREFIX + "distance", M.REWARD_TERMS_PREFIX + "success"}
  for metrics in history:
    assert set(metrics) == set(M.ITERATION_METRICS) | terms
    for name in M.TRAIN_METRICS + M.ROLLOUT_METRICS:
      assert np.isfinite(metrics[name]), name
  # 16 steps of 25-step episodes: no episode ends in iteration 1, all 32 end in iteration 2.
  assert history[0][M.NUM_EPISODES] == 0 and np.isnan(history[0][M.SUCCESS_ONCE])
  # Raw reward terms: the mean over the rollout's steps of -|goal - pos| and of success.
  assert all(-3.0 < h[M.REWARD_TERMS_PREFIX + "distance"] < 0.0 for h in history)
  assert all(0.0 <= h[M.REWARD_TERMS_PREFIX + "success"] <= 1.0 for h in history)
  assert history[1][M.NUM_EPISODES] == 32 and history[1][M.EPISODE_LEN] == 25
  assert int(state.iteration) == 2 and int(state.env_steps) == 2 * 32 * 16
  # The first minibatch of an iteration sees ratio 1: KL and clipping stay small.
  assert abs(history[0][M.APPROX_KL]) < 0.1
  assert float(state.normalizer.count) == 2 * 32 * 16


def test_policy_functions(trainer):
  state = trainer.init(jax.random.PRNGKey(2))
  infer = trainer.make_inference_fn(state)
  obs = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)) * 10, jnp.float32)
  a = infer(obs, None)
  assert a.shape == (5, 2) and bool(jnp.all(jnp.abs(a) <= 1.0))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(infer(obs, None)))
  state, _ = trainer.train_iteration(state)  # donates the old state ...
  np.testing.assert_array_equal(np.asarray(a), np.asarray(infer(obs, None)))  # ... infer lives
  sample = jax.jit(trainer.policy_fn(state.params, state.normalizer, deterministic=False))
  s1, s2 = sample(obs, jax.random.PRNGKey(0)), sample(obs, jax.random.PRNGKey(1))
  assert s1.shape == (5, 2) and not bool(jnp.all(s1 == s2))


def test_rollout_bootstraps_from_final_obs():
  env = AutoResetWrapper(panda_rl.make("PointReach-v0", episode_length=3), num_envs=2)
  value = lambda obs: jnp.sum(obs * jnp.arange(1.0, 5.0), axis=-1)
  act = lambda obs, key: (jnp.ones((obs.shape[0], 2)) * 0.5, jnp.zeros(obs.shape[0]),
                          value(obs))
  _, traj = jax.jit(lambda s, k: rollout_lib.collect(env, s, k, 7, act, value))(
      env.reset(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
  assert traj.obs.shape == (7, 2, 4) and traj.value.shape == (7, 2)
  done = np.asarray(traj.done)
  np.testing.assert_array_equal(done[:, 0], [0, 0, 1, 0, 0, 1, 0])
  boot, v = np.asarray(traj.bootstrap_value), np.asarray(traj.value)
  for t in range(6):
    if done[t, 0]:  # V(final_obs), not the next episode's first value
      assert not np.allclose(boot[t], v[t + 1])
    else:
      np.testing.assert_allclose(boot[t], v[t + 1], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(traj.truncated), done)


def test_make_train_matches_iterating(trainer):
  state, _ = run(trainer, 3, 2)
  whole, metrics = jax.jit(trainer.make_train(2))(jax.random.PRNGKey(3))
  assert metrics[M.LOSS].shape == (2,)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               state.params, whole.params)


def test_train_function_reproduces_the_trainer(trainer):
  # A separate Trainer (its own compilation) with the same seed gives the same parameters.
  c = probe_config()
  c.runner.seed = 7
  state, history = training.train(c, num_iterations=3)
  ref, ref_history = run(trainer, 7, 3)
  assert len(history) == 3 and int(state.iteration) == 3
  assert isinstance(history[0][M.LOSS], float)
  assert history[-1][M.LOSS] == float(ref_history[-1][M.LOSS])
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state.params, ref.params)
  assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("field,value,match", [
    ("algorithm.num_minibatches", 7, "divisible by algorithm.num_minibatches"),
    ("algorithm.adv_type", "ppo", "adv_type must be one of"),
    ("actor.optim.lr_schedule", "step", "lr_schedule must be one of"),
    ("actor.model.activation", "gelu", "Unknown activation"),
    ("algorithm.gamma", 1.5, "gamma must be in"),
    ("rollout.num_steps", 0, "rollout.num_steps must be an int >= 1"),
])
def test_bad_config_fails_clearly(field, value, match):
  c = probe_config()
  section, name = field.rsplit(".", 1)
  node = c
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(ValueError, match=match):
    training.Trainer(c)


def test_unknown_env_override_fails_clearly():
  c = probe_config()
  c.env.train.overrides.episode_len = 10
  with pytest.raises(ValueError, match="unknown config key"):
    training.Trainer(c)


def test_rollout_records_raw_reward_terms_and_logs_their_means():
  # PointReach's default reward is 1.0 * distance + 0.0 * success: the distance term is the
  # reward itself, so the recorded term must equal the recorded reward step by step.
  env = AutoResetWrapper(panda_rl.make("PointReach-v0"), num_envs=4)
  act = lambda obs, noise: (noise, jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0]))
  _, traj = jax.jit(lambda s, k: rollout_lib.collect(env, s, k, 6, act))(
      env.reset(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
  assert set(traj.terms) == {"reward_terms/distance", "reward_terms/success"}
  np.testing.assert_array_equal(traj.terms["reward_terms/distance"], traj.reward)
  logged = M.reward_term_metrics(traj.terms)
  np.testing.assert_allclose(logged[M.REWARD_TERMS_PREFIX + "distance"],
                             np.mean(np.asarray(traj.reward)), rtol=1e-6)
  mask = jnp.zeros_like(traj.reward).at[0].set(1.0)  # only the first step counts
  np.testing.assert_allclose(M.reward_term_metrics(traj.terms, mask)[
      M.REWARD_TERMS_PREFIX + "distance"], np.mean(np.asarray(traj.reward[0])), rtol=1e-6)


def test_rollout_noise_white_and_correlated():
  """rho = 0: each step's noise is step_noise of split(key, T)[t]; rho > 0: the AR(1)
  recursion on that same white noise, N(0, 1) at every step, lag-1 correlation rho."""
  key = jax.random.PRNGKey(5)
  white = rollout_lib.rollout_noise(key, 4, 3, 2)
  for t, k in enumerate(jax.random.split(key, 4)):
    np.testing.assert_array_equal(white[t], rollout_lib.step_noise(k, 3, 2))
  rho = 0.8
  ar = np.asarray(rollout_lib.rollout_noise(key, 4, 3, 2, rho))
  w = np.asarray(white)
  np.testing.assert_array_equal(ar[0], w[0])
  np.testing.assert_allclose(ar[1], rho * w[0] + 0.6 * w[1], rtol=1e-6)  # sqrt(1 - 0.64)
  np.testing.assert_allclose(ar[2], rho * ar[1] + 0.6 * w[2], rtol=1e-6)
  np.testing.assert_allclose(ar[3], rho * ar[2] + 0.6 * w[3], rtol=1e-6)
  big = np.asarray(rollout_lib.rollout_noise(jax.random.PRNGKey(6), 8, 20000, 1, rho))[..., 0]
  np.testing.assert_allclose(big.std(axis=1), 1.0, atol=0.03)  # every step still N(0, 1)
  lag1 = np.mean(big[1:] * big[:-1], axis=1)
  np.testing.assert_allclose(lag1, rho, atol=0.03)


def test_collect_acts_on_the_correlated_noise():
  env = AutoResetWrapper(panda_rl.make("PointReach-v0"), num_envs=4)
  act = lambda obs, noise: (noise, jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0]))
  key = jax.random.PRNGKey(1)
  for stages in (1, 2):
    _, traj = jax.jit(lambda s, k: rollout_lib.collect(
        env, s, k, 6, act, num_stages=stages, noise_correlation=0.9))(
            env.reset(jax.random.PRNGKey(0)), key)
    np.testing.assert_allclose(traj.action, rollout_lib.rollout_noise(key, 6, 4, 2, 0.9),
                               rtol=1e-6)


def test_rollout_noise_correlated_on_some_dimensions_only():
  """A coefficient per action dimension: the dimensions at 0 get the white noise itself, the
  others the AR(1) recursion of test_rollout_noise_white_and_correlated."""
  key = jax.random.PRNGKey(5)
  white = np.asarray(rollout_lib.rollout_noise(key, 4, 3, 2))
  both = np.asarray(rollout_lib.rollout_noise(key, 4, 3, 2, 0.8))
  second = np.asarray(rollout_lib.rollout_noise(key, 4, 3, 2, (0.0, 0.8)))
  np.testing.assert_array_equal(second[..., 0], white[..., 0])
  np.testing.assert_allclose(second[..., 1], both[..., 1], rtol=1e-6)
  np.testing.assert_array_equal(rollout_lib.rollout_noise(key, 4, 3, 2, (0.0, 0.0)), white)


def test_noise_correlation_dims_from_the_config():
  c = probe_config()
  c.rollout.noise_correlation = 0.9
  assert rollout_lib.noise_correlation(c.rollout, 4) == 0.9  # no dims: every dimension
  c.rollout.noise_correlation_dims = (3,)
  assert rollout_lib.noise_correlation(c.rollout, 4) == (0.0, 0.0, 0.0, 0.9)
  c.rollout.noise_correlation_dims = (1,)
  assert training.Trainer(c).noise_correlation == (0.0, 0.9)  # PointReach: 2-D actions
  assert rollout_lib.is_white((0.0, 0.0)) and not rollout_lib.is_white((0.0, 0.9))


@pytest.mark.parametrize("dims, message", [
    ((2,), r"noise_correlation_dims=\(2,\) names action dimension\(s\) \[2\], but the env's "
           r"actions have 2 \(dimensions 0-1\)"),
    ((1, 1), r"noise_correlation_dims must be distinct action dimensions"),
    ((-1,), r"noise_correlation_dims must be distinct action dimensions")])
def test_bad_noise_correlation_dims_fail_clearly(dims, message):
  c = probe_config()
  c.rollout.noise_correlation_dims = dims
  with pytest.raises(ValueError, match=message):
    training.Trainer(c)


def test_per_dimension_policy_settings_that_do_not_fit_the_actions_fail_clearly():
  """actor.model.mean_bound / min_log_std name one entry per action dimension: a config with
  another count is one ConfigError naming the key, before anything compiles."""
  from panda_rl.config import ConfigError

  c = probe_config()
  c.actor.model.mean_bound = (None, None, 0.3)
  with pytest.raises(ConfigError, match=r"actor.model.mean_bound=.*3 entries.*actions have 2"):
    training.Trainer(c)


def test_stagger_episodes_resets_in_phases():
  """reset_phases = K: env i's first episode starts (i % K) * L // K steps in, so the batch
  then resets in K groups spread over the episode; the reset observations are untouched."""
  env = AutoResetWrapper(panda_rl.make("PointReach-v0"), num_envs=8)  # L = 25
  fresh = env.reset(jax.random.PRNGKey(0))
  assert rollout_lib.stagger_episodes(fresh, 25, 1) is fresh
  state = rollout_lib.stagger_episodes(fresh, 25, 4)
  np.testing.assert_array_equal(state.info["step"], [0, 6, 12, 18, 0, 6, 12, 18])
  np.testing.assert_array_equal(state.obs, fresh.obs)
  step = jax.jit(env.step)
  done_at = [[] for _ in range(8)]
  for t in range(50):
    state = step(state, jnp.zeros((8, 2)))
    for i in np.flatnonzero(np.asarray(state.done)):
      done_at[i].append(t + 1)
  assert done_at[0] == [25, 50] and done_at[1] == [19, 44] and done_at[3] == [7, 32]
  assert done_at[4] == done_at[0]


def test_trainer_staggers_the_training_envs_only():
  c = probe_config()
  c.env.train.reset_phases = 5
  trainer = training.Trainer(c)
  state = trainer.init(trainer.initial_key(0))
  np.testing.assert_array_equal(np.asarray(state.env_state.info["step"])[:6],
                                [0, 5, 10, 15, 20, 0])


@pytest.mark.parametrize("phases, message", [
    (26, r"env.train.reset_phases=26 must be at most the env's episode_length \(25\)"),
    (0, r"env.train.reset_phases must be an integer >= 1, got 0")])
def test_bad_reset_phases_fail_clearly(phases, message):
  c = probe_config()
  c.env.train.reset_phases = phases
  with pytest.raises(ValueError, match=message):
    training.Trainer(c)


@pytest.mark.parametrize("value", [1.0, -0.1])
def test_bad_noise_correlation_fails_clearly(value):
  c = probe_config()
  c.rollout.noise_correlation = value
  with pytest.raises(ValueError, match="rollout.noise_correlation must be a number in"):
    training.Trainer(c)


def _compile_events(fn):
  """fn()'s result and the names of the JAX tracing / lowering / compiling events it caused."""
  events = []
  listener = lambda event, secs, **kw: events.append(event)  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    out = jax.device_get(fn())
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return out, [e for e in events if e.startswith("/jax/core/compile/")]


def _like(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def test_an_evaluation_compiled_ahead_is_the_one_evaluate_runs():
  c = probe_config()
  c.env.eval.num_envs = 16  # a program of its own (no other test compiles this size)
  trainer = training.Trainer(c)
  state = trainer.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(7)
  assert trainer.compile_evaluation(_like(state), key) > 0.0
  ahead, events = _compile_events(lambda: trainer.evaluate(state, key))
  assert events == []  # nothing traced, lowered or compiled: the program compiled ahead ran
  plain = jax.device_get(training.Trainer(c).evaluate(state, key))
  assert plain.keys() == ahead.keys() and set(ahead) >= {M.EVAL_SUCCESS_ONCE, M.EVAL_RETURN}
  for name in plain:
    np.testing.assert_array_equal(ahead[name], plain[name])


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_a_run_compiles_its_evaluation_beside_its_iteration(tmp_path, monkeypatch, num_seeds):
  from panda_rl.runner import train_and_evaluate

  calls, eval_events = [], []
  compile_evaluation, evaluate = training.Trainer.compile_evaluation, training.Trainer.evaluate

  def spy_compile(self, state, key):
    calls.append(jax.tree.leaves(state))
    return compile_evaluation(self, state, key)

  def spy_evaluate(self, state, key):
    out, events = _compile_events(lambda: evaluate(self, state, key))
    eval_events.append(events)
    return out

  monkeypatch.setattr(training.Trainer, "compile_evaluation", spy_compile)
  monkeypatch.setattr(training.Trainer, "evaluate", spy_evaluate)
  c = probe_config()
  c.env.eval.num_envs = 8  # an evaluation program no other test compiles
  c.runner.max_epochs, c.runner.val_check_interval, c.runner.num_seeds = 3, 2, num_seeds
  c.runner.logger.log_path = str(tmp_path)
  result = train_and_evaluate(c)
  assert len(calls) == 1 and all(isinstance(x, jax.ShapeDtypeStruct) for x in calls[0])
  assert len(eval_events) == 2 and eval_events[0] == []  # the first (of 2) compiled nothing
  assert 0.0 <= result.eval_metrics[M.EVAL_SUCCESS_ONCE] <= 1.0
