"""GRPO: group-relative advantages against hand-computed numbers, the loss, groups that share
their initial state and restart together, learning on PointReach-v0, config errors, and a
tiny CLI run whose event file has GRPO's metrics and no critic metrics."""

import panda_rl  # noqa: F401  (first: XLA flags)

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl import training, validation
from panda_rl.agents import grpo
from panda_rl.config import ConfigError, load_config
from panda_rl.envs.base import Env, EnvState
from panda_rl.envs.groups import GroupAutoResetWrapper
from panda_rl.networks import gaussian_kl, gaussian_log_prob

REPO = Path(__file__).resolve().parents[1]
GRPO_CONFIG = str(REPO / "configs" / "mujoco_grpo_mlp.py")


# --------------------------------------------------------------------------------------
# Advantages.

# [T=6, B=4], groups {0, 1} and {2, 3}, as GroupAutoResetWrapper reports them.
# Group 0, round 1 (t 0-3): env 0 ends at t=2 with return 3 and waits at t=3; env 1 ends at
#   t=3 with return 1; the group resets after t=3. Round 2 (t 4-5) is still running at the
#   end of the rollout: left out.
# Group 1, round 1 (t 0-1): returns 2 and 4. Round 2 (t 2-5): env 2 ends at t=4 with return
#   5 and waits at t=5, env 3 ends at t=5 with return 5: no spread, advantages 0.
EPISODE_RETURN = np.array([
    [1.0, 0.25, 1.0, 2.0],
    [2.0, 0.50, 2.0, 4.0],
    [3.0, 0.75, 1.0, 1.0],
    [3.0, 1.00, 3.0, 2.0],
    [0.5, 2.00, 5.0, 3.0],
    [1.5, 4.00, 5.0, 5.0]], np.float32)
GROUP_RESET = np.array([
    [0, 0, 0, 0],
    [0, 0, 1, 1],
    [0, 0, 0, 0],
    [1, 1, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 1, 1]], np.float32)
STEP_VALID = np.array([
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [0, 1, 1, 1],
    [1, 1, 1, 1],
    [1, 1, 0, 1]], np.float32)
EXPECTED_MASK = np.array([
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [1, 1, 1, 1],
    [0, 1, 1, 1],
    [0, 0, 1, 1],
    [0, 0, 0, 1]], np.float32)


def _advantages(**kw):
  adv, mask, stats = jax.jit(grpo.group_advantages, static_argnames=(
      "group_size", "std_norm", "eps", "reward_scale"))(
          jnp.asarray(EPISODE_RETURN), jnp.asarray(GROUP_RESET), jnp.asarray(STEP_VALID),
          group_size=2, **kw)
  return np.asarray(adv), np.asarray(mask), {k: float(v) for k, v in stats.items()}


@pytest.mark.parametrize("std_norm, reward_scale", [(False, 1.0), (True, 1.0), (False, 2.0)])
def test_group_advantages_hand_computed(std_norm, reward_scale):
  adv, mask, stats = _advantages(std_norm=std_norm, reward_scale=reward_scale)
  # Group 0 round 1: returns (3, 1), mean 2, std 1. Group 1 round 1: (2, 4), mean 3, std 1.
  # Group 1 round 2: (5, 5): 0. Without std normalisation the deviations scale with the
  # rewards; with it, A = dev / (std + eps).
  unit = 1.0 / (1.0 + grpo.STD_EPS) if std_norm else reward_scale
  a0, a1, a2, a3 = unit, -unit, -unit, unit
  expected = np.array([
      [a0, a1, a2, a3],
      [a0, a1, a2, a3],
      [a0, a1, 0, 0],
      [0, a1, 0, 0],
      [0, 0, 0, 0],
      [0, 0, 0, 0]], np.float32)
  np.testing.assert_array_equal(mask, EXPECTED_MASK)
  np.testing.assert_allclose(adv, expected, rtol=1e-6, atol=1e-7)
  # Three rounds completed: stds 1, 1, 0 (in env reward units); one has no spread.
  assert stats[M.GROUP_RETURN_STD] == pytest.approx(2 / 3)
  assert stats[M.ZERO_SPREAD_GROUPS] == pytest.approx(1 / 3)
  assert stats[M.VALID_FRACTION] == pytest.approx(EXPECTED_MASK.mean())


def test_group_advantages_without_a_completed_round():
  adv, mask, stats = jax.jit(grpo.group_advantages, static_argnums=3)(
      jnp.ones((3, 4)), jnp.zeros((3, 4)), jnp.ones((3, 4)), 2)
  assert not np.any(np.asarray(mask)) and not np.any(np.asarray(adv))
  assert np.isnan(float(stats[M.GROUP_RETURN_STD]))
  assert float(stats[M.VALID_FRACTION]) == 0.0


def test_std_norm_uses_the_group_std_of_unequal_spreads():
  # One round, G=4, returns (0, 1, 2, 5): mean 2, population std sqrt(3.5).
  ret = jnp.asarray([[0.0, 1.0, 2.0, 5.0]])
  adv, _, _ = grpo.group_advantages(ret, jnp.ones((1, 4)), jnp.ones((1, 4)), 4,
                                    std_norm=True, eps=0.0)
  np.testing.assert_allclose(np.asarray(adv)[0], (np.array([0, 1, 2, 5]) - 2) / np.sqrt(3.5),
                             rtol=1e-6)


# --------------------------------------------------------------------------------------
# Loss.


class _Linear:
  """policy_apply for the loss tests: mean = obs @ w, log_std = s."""

  def policy_apply(self, p, obs):
    mean = obs @ p["w"]
    return mean, jnp.broadcast_to(p["s"], mean.shape)


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  obs = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
  params = {"policy": {"w": jnp.asarray(rng.normal(size=(3, 2)) * 0.3, jnp.float32),
                       "s": jnp.asarray([-0.5, -0.3], jnp.float32)}}
  mean, log_std = _Linear().policy_apply(params["policy"], obs)
  actions = mean + jnp.exp(log_std) * jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)
  batch = grpo.GRPOBatch(
      obs=obs, actions=actions, old_log_prob=gaussian_log_prob(mean, log_std, actions),
      advantages=jnp.asarray(rng.normal(size=n), jnp.float32),
      mask=jnp.asarray([1, 1, 1, 0, 1, 0, 1, 1], jnp.float32)[:n],
      ref_mean=jnp.zeros((n, 2)), ref_log_std=jnp.full((n, 2), -0.5))
  return params, batch


def test_loss_at_the_rollout_policy_is_minus_the_mean_valid_advantage():
  params, batch = _batch()
  loss, m = grpo.grpo_loss(params, _Linear(), batch, None, clip_ratio=0.2, entropy_coef=0.0)
  w = np.asarray(batch.mask)
  expected = -np.sum(w * np.asarray(batch.advantages)) / w.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert abs(float(m[M.APPROX_KL])) < 1e-6 and float(m[M.CLIP_FRACTION]) == 0.0
  assert set(m) | {M.GRAD_NORM, M.LR} == set(M.GRPO_TRAIN_METRICS)


def test_masked_samples_do_not_matter():
  params, batch = _batch()
  off = np.asarray(batch.mask) == 0
  noisy = batch._replace(
      advantages=jnp.where(off, 1e3, batch.advantages),
      actions=jnp.where(off[:, None], 50.0, batch.actions),
      old_log_prob=jnp.where(off, -1e4, batch.old_log_prob))
  kw = dict(clip_ratio=0.2, entropy_coef=0.01, kl_beta=0.1)
  grad = lambda b: jax.grad(lambda p: grpo.grpo_loss(p, _Linear(), b, None, **kw)[0])(params)
  l1, _ = grpo.grpo_loss(params, _Linear(), batch, None, **kw)
  l2, _ = grpo.grpo_loss(params, _Linear(), noisy, None, **kw)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grad(batch), grad(noisy))


def test_kl_penalty_to_the_reference():
  params, batch = _batch()
  mean, log_std = _Linear().policy_apply(params["policy"], batch.obs)
  same = batch._replace(ref_mean=mean, ref_log_std=log_std)
  _, m = grpo.grpo_loss(params, _Linear(), same, None, kl_beta=1.0)
  assert abs(float(m[M.REF_KL])) < 1e-6
  l0, _ = grpo.grpo_loss(params, _Linear(), batch, None, kl_beta=0.0)
  l1, m1 = grpo.grpo_loss(params, _Linear(), batch, None, kl_beta=0.5)
  w = np.asarray(batch.mask)
  kl = np.asarray(gaussian_kl(mean, log_std, batch.ref_mean, batch.ref_log_std))
  np.testing.assert_allclose(float(m1[M.REF_KL]), np.sum(w * kl) / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(l1) - float(l0), 0.5 * float(m1[M.REF_KL]), rtol=1e-5)


def test_gaussian_kl_closed_form():
  # 1-D: KL(N(1, 0.5^2) || N(0, 2^2)) = log(2/0.5) + (0.25 + 1) / 8 - 1/2.
  kl = gaussian_kl(jnp.array([1.0]), jnp.log(jnp.array([0.5])), jnp.array([0.0]),
                   jnp.log(jnp.array([2.0])))
  np.testing.assert_allclose(float(kl), np.log(4.0) + 1.25 / 8 - 0.5, rtol=1e-6)
  # Monte Carlo over a 2-D diagonal Gaussian.
  m, s, mo, so = (jnp.array([0.3, -1.0]), jnp.array([-0.2, 0.1]), jnp.array([0.0, 0.5]),
                  jnp.array([0.2, -0.3]))
  x = m + jnp.exp(s) * jax.random.normal(jax.random.PRNGKey(0), (200_000, 2))
  mc = jnp.mean(gaussian_log_prob(m, s, x) - gaussian_log_prob(mo, so, x))
  np.testing.assert_allclose(float(gaussian_kl(m, s, mo, so)), float(mc), rtol=2e-2)


# --------------------------------------------------------------------------------------
# Groups.


def _same(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def _member(tree, i):
  return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def test_pick_cube_groups_share_their_initial_state(pick_env):
  env = GroupAutoResetWrapper(pick_env, num_envs=12, group_size=4)
  state = env.reset(jax.random.PRNGKey(3))
  cube = np.asarray(state.obs)[:, 7:10]
  for g in range(3):
    members = range(4 * g, 4 * g + 4)
    for i in members:  # everything identical: simulator state, obs, info
      assert _same(_member((state.data, state.obs, state.info), i),
                   _member((state.data, state.obs, state.info), 4 * g))
  # Different groups start differently (the cube position is random).
  assert len({tuple(np.round(cube[4 * g], 6)) for g in range(3)}) == 3


def test_point_reach_groups_share_their_initial_state():
  env = GroupAutoResetWrapper(panda_rl.make("PointReach-v0"), num_envs=8, group_size=4)
  obs = np.asarray(env.reset(jax.random.PRNGKey(0)).obs)
  np.testing.assert_array_equal(obs[:4], np.broadcast_to(obs[0], (4, 4)))
  np.testing.assert_array_equal(obs[4:], np.broadcast_to(obs[4], (4, 4)))
  assert not np.allclose(obs[0], obs[4])
  other = np.asarray(env.reset(jax.random.PRNGKey(1)).obs)
  assert not np.allclose(obs[0], other[0])


class _Countdown(Env):
  """Toy env: obs = [x, steps]; x uniform at reset; an action > 0.5 terminates; time limit 3."""

  episode_length = 3

  @property
  def observation_size(self):
    return 2

  @property
  def action_size(self):
    return 1

  def reset(self, key):
    x = jax.random.uniform(key, ())
    z = jnp.zeros(())
    return EnvState(data={"x": x}, obs=jnp.stack([x, z]), reward=z, done=z, terminated=z,
                    truncated=z, info={"step": jnp.zeros((), jnp.int32)},
                    metrics={"success": z})

  def step(self, state, action):
    step = state.info["step"] + 1
    x = state.data["x"] + 1.0
    terminated = (action[0] > 0.5).astype(jnp.float32)
    truncated = (step >= 3).astype(jnp.float32) * (1.0 - terminated)
    return state.replace(data={"x": x}, obs=jnp.stack([x, step.astype(jnp.float32)]),
                         reward=jnp.float32(1.0) + x, done=jnp.maximum(terminated, truncated),
                         terminated=terminated, truncated=truncated, info={"step": step},
                         metrics={"success": terminated})


def test_members_wait_for_their_group_then_restart_together():
  env = GroupAutoResetWrapper(_Countdown(), num_envs=4, group_size=2)
  step = jax.jit(env.step)
  s0 = env.reset(jax.random.PRNGKey(0))
  # Env 0 terminates at step 1; env 1 runs to the time limit (step 3). Group {2, 3}: both
  # terminate at step 2.
  acts = [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
  states = [s0]
  for a in acts:
    states.append(step(states[-1], jnp.asarray(a, jnp.float32)[:, None]))
  s1, s2, s3 = states[1:]
  get = lambda s, k: np.asarray(s.metrics[k])
  # Step 1: env 0 done, waits (keeps its final state); nothing resets.
  np.testing.assert_array_equal(np.asarray(s1.done), [1, 0, 0, 0])
  np.testing.assert_array_equal(get(s1, "group_reset"), [0, 0, 0, 0])
  # Step 2: env 0 waits: frozen, empty, invalid step; group {2, 3} is done and restarts.
  np.testing.assert_array_equal(get(s2, "step_valid"), [0, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(s2.reward)[0], 0.0)
  np.testing.assert_array_equal(np.asarray(s2.obs)[0], np.asarray(s1.obs)[0])
  np.testing.assert_array_equal(get(s2, "episode_return")[0], get(s1, "episode_return")[0])
  np.testing.assert_array_equal(get(s2, "group_reset"), [0, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(s2.done), [0, 0, 1, 1])
  # Step 3: env 1 hits the time limit; group {0, 1} restarts from one fresh shared state.
  np.testing.assert_array_equal(np.asarray(s3.done), [0, 1, 0, 0])
  np.testing.assert_array_equal(get(s3, "group_reset"), [1, 1, 0, 0])
  # At the group reset each member's totals are its episode's: env 0 (1 step), env 1 (3).
  x0 = float(s0.data["x"][0])
  np.testing.assert_allclose(get(s3, "episode_return")[:2],
                             [2 + x0, (2 + x0) + (3 + x0) + (4 + x0)], rtol=1e-6)
  np.testing.assert_array_equal(get(s3, "episode_length")[:2], [1, 3])
  for s, group in ((s2, (2, 3)), (s3, (0, 1))):
    i, j = group
    start = lambda k: _member((s.data, s.obs, {n: v for n, v in s.info.items()
                                               if n != "final_obs"}), k)
    assert _same(start(i), start(j))
    assert float(s.obs[i, 1]) == 0.0  # a fresh episode
    assert float(s.obs[i, 0]) != float(s0.obs[i, 0])  # from a new reset key
  # The totals restart after the reset; the other group's keep running.
  s4 = step(s3, jnp.zeros((4, 1)))
  np.testing.assert_array_equal(get(s4, "episode_length"), [1, 1, 2, 2])


def test_group_size_must_divide_num_envs():
  with pytest.raises(ValueError, match="num_envs=10 is not divisible by group_size=4"):
    GroupAutoResetWrapper(_Countdown(), num_envs=10, group_size=4)


# --------------------------------------------------------------------------------------
# Training.


def probe_config():
  """GRPO on the probe: 8 groups of 8 x one 25-step episode = 1600 samples per iteration."""
  c = load_config(GRPO_CONFIG)
  c.env.train.env_id = "PointReach-v0"
  c.env.train.overrides = {}  # the default config's overrides are PandaPickCube's
  c.env.train.num_envs = 64
  c.env.eval.num_envs = 64
  c.rollout.num_steps = 25
  c.actor.model.policy_hidden = (32, 32)
  c.actor.optim.lr = 3e-3
  c.algorithm.update_epochs = 4
  c.algorithm.num_minibatches = 4
  c.algorithm.kl_beta = 0.01
  c.runner.max_epochs = 12
  return c


def test_grpo_solves_point_reach():
  trainer = training.Trainer(probe_config())
  assert trainer.networks.value is None
  state = trainer.init(jax.random.PRNGKey(0))
  before = trainer.evaluate(state, jax.random.PRNGKey(123))
  ref = jax.tree.map(np.asarray, state.ref_params)
  history = []
  for _ in range(12):
    state, metrics = trainer.train_iteration(state)
    history.append(jax.device_get(metrics))
  after = trainer.evaluate(state, jax.random.PRNGKey(123))
  assert float(before[M.EVAL_SUCCESS_ONCE]) < 0.5
  assert float(after[M.EVAL_SUCCESS_ONCE]) >= 0.9, after
  assert float(after[M.EVAL_RETURN]) > -5.0, after  # random policy: about -7 to -23

  assert "value" not in state.params
  assert _same(ref, jax.tree.map(np.asarray, state.ref_params))  # the reference is frozen
  for m in history:
    assert set(m) == set(M.GRPO_ITERATION_METRICS) | {
        M.REWARD_TERMS_PREFIX + "distance", M.REWARD_TERMS_PREFIX + "success"}
    assert all(np.isfinite(v) for v in m.values()), m
    # Every env plays exactly one 25-step episode per iteration (no early ends here).
    assert m[M.NUM_EPISODES] == 64 and m[M.EPISODE_LEN] == 25 and m[M.VALID_FRACTION] == 1
    assert abs(m[M.ADVANTAGES_MEAN]) < 1e-5  # group-centred
  assert history[0][M.GROUP_RETURN_STD] > history[-1][M.GROUP_RETURN_STD] > 0
  assert history[-1][M.REF_KL] > history[0][M.REF_KL] >= 0
  assert int(state.env_steps) == 12 * 64 * 25


@pytest.mark.parametrize("override, match", [
    ("env.train.num_envs=60", "env.train.num_envs = 60 must be divisible by "
                              "algorithm.group_size = 8"),
    ("algorithm.group_size=1", "group_size must be an int >= 2"),
    ("rollout.num_steps=20", "rollout.num_steps = 20 is shorter than PointReach-v0's "
                             "episode_length = 25"),
])
def test_bad_grpo_config_fails_before_compiling(tmp_path, override, match):
  from panda_rl.train import train_and_evaluate

  c = probe_config()
  c.runner.logger.log_path = str(tmp_path)
  section, value = override.split("=")
  *path, leaf = section.split(".")
  node = c
  for p in path:
    node = node[p]
  node[leaf] = type(node[leaf])(value)
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(c)
  assert not list(tmp_path.rglob("*"))


def test_grpo_config_file_differs_from_ppo_only_where_commented():
  grpo_c, ppo_c = load_config(GRPO_CONFIG), load_config(str(REPO / "configs" /
                                                             "mujoco_ppo_mlp.py"))
  assert grpo_c.algorithm.adv_type == "grpo" and ppo_c.algorithm.adv_type == "gae"
  assert grpo_c.rollout.num_steps == panda_rl.make("PandaPickCube-v0").config.episode_length
  validation.validate_config(grpo_c)


# --------------------------------------------------------------------------------------
# The command line.


def test_cli_run_logs_grpo_metrics_and_no_critic(cli_env, tmp_path):
  from panda_rl import train as train_lib
  from panda_rl.logger import read_scalars

  args = [
      f"--config={GRPO_CONFIG}",
      "--config.env.train.env_id=PointReach-v0",
      "--config.env.train.overrides={}",
      "--config.env.train.num_envs=8",
      "--config.algorithm.group_size=4",
      "--config.env.eval.num_envs=4",
      "--config.rollout.num_steps=25",
      "--config.algorithm.num_minibatches=2",
      "--config.algorithm.update_epochs=1",
      "--config.actor.model.policy_hidden=(16,16)",
      "--config.runner.max_epochs=2",
      "--config.runner.val_check_interval=2",
      "--config.runner.save_interval=2",
      f"--config.runner.logger.log_path={tmp_path}",
  ]
  proc = subprocess.run([sys.executable, "-m", "panda_rl.train", *args], cwd=REPO,
                        env=cli_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
  run_dir = tmp_path / "panda_rl" / "mujoco_grpo_mlp"
  scalars = read_scalars(run_dir)
  expected = set(M.GRPO_ITERATION_METRICS) | set(M.EVAL_METRICS) | {
      M.COMPILE_S, M.ITERATION_S, M.ENV_STEPS}
  missing = sorted(expected - set(scalars))
  assert not missing, f"metrics missing from the event file: {missing}"
  critic = sorted(k for k in scalars if k.startswith("train/critic/"))
  assert not critic, f"critic metrics logged by GRPO: {critic}"
  assert [v for _, v, _ in scalars[M.ENV_STEPS]] == [200.0, 400.0]
  policy = panda_rl.load_policy(run_dir)
  assert policy.step == 2 and policy(np.zeros((3, 4), np.float32)).shape == (3, 2)


def test_resume_is_exact(tmp_path):
  from panda_rl.checkpoint import Checkpointer
  from panda_rl.train import train_and_evaluate

  def config(log_path, epochs, resume=False):
    c = probe_config()
    c.env.train.num_envs, c.env.eval.num_envs = 16, 4
    c.algorithm.update_epochs = 1
    c.runner.max_epochs, c.runner.save_interval, c.runner.val_check_interval = epochs, 1, 0
    c.runner.resume = resume
    c.runner.logger.log_path = str(log_path)
    return c

  straight = train_and_evaluate(config(tmp_path / "a", 2))
  train_and_evaluate(config(tmp_path / "b", 1))
  resumed = train_and_evaluate(config(tmp_path / "b", 2, resume=True))
  for a, b in ((straight.state.params, resumed.state.params),
               (straight.state.ref_params, resumed.state.ref_params)):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
  ck = Checkpointer(tmp_path / "b" / "panda_rl" / "mujoco_grpo_mlp" / "checkpoints")
  assert ck.all_steps() == [1, 2]
  ck.close()


# --------------------------------------------------------------------------------------
# GRPO in every placement (16 virtual CPU devices, in a subprocess).

GRPO_PLACEMENTS = {
    "collocated": ("env,rollout,actor:all", 1),
    "collocated_pipelined": ("env,rollout,actor:all", 2),
    "env_rollout_fused": ("env,rollout:0-7;actor:8-15", 1),
    "disaggregated": ("env:0-3;rollout:4-7;actor:8-15", 1),
    "hybrid_pipelined": ("env:0-7;rollout:8-15;actor:0-15", 2),
}


def _placed_probe_config(spec="env,rollout,actor:all", stages=1):
  c = probe_config()
  c.env.train.num_envs = 128  # 32 groups of 4: whole groups per device and stage
  c.algorithm.group_size = 4
  c.cluster.component_placement = spec
  c.rollout.pipeline_stage_num = stages
  return c


def _grpo_params(config, iterations=2):
  trainer = training.Trainer(config)
  state = trainer.init(jax.random.PRNGKey(0))
  for _ in range(iterations):
    state, metrics = trainer.train_iteration(state)
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  return ({jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves},
          {k: float(v) for k, v in jax.device_get(metrics).items()})


def _child_grpo_placements(out_dir):
  import json

  assert jax.device_count() == 16, jax.devices()
  for name, (spec, stages) in GRPO_PLACEMENTS.items():
    params, metrics = _grpo_params(_placed_probe_config(spec, stages))
    np.savez(Path(out_dir) / f"{name}.npz", **params)
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(metrics))


def test_grpo_runs_in_every_placement_with_the_same_result(cli_env, tmp_path):
  import json

  env = dict(cli_env, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=16"
  proc = subprocess.run([sys.executable, __file__, "grpo_placements", str(tmp_path)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  ref, ref_metrics = _grpo_params(_placed_probe_config())  # this process: one device
  for name in GRPO_PLACEMENTS:
    params = dict(np.load(tmp_path / f"{name}.npz"))
    assert params.keys() == ref.keys()
    for k in ref:
      np.testing.assert_allclose(params[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=f"{name} {k}")
    metrics = json.loads((tmp_path / f"{name}.json").read_text())
    for k in (M.LOSS, M.REF_KL, M.GROUP_RETURN_STD, M.SUCCESS_ONCE):
      np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{name} {k}")


if __name__ == "__main__":
  if sys.argv[1:2] == ["grpo_placements"]:
    _child_grpo_placements(sys.argv[2])
  else:
    raise SystemExit(f"unknown mode {sys.argv[1:]}")


def test_grpo_rejects_staggered_resets():
  """GRPO starts every rollout from fresh envs: env.train.reset_phases has nothing to do."""
  c = probe_config()
  c.env.train.reset_phases = 2
  with pytest.raises(ValueError, match=r"reset_phases=2: grpo starts every rollout from "
                                       r"freshly reset envs"):
    training.Trainer(c)
