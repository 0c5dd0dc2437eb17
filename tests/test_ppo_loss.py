"""Every PPO loss term and every metric against numbers computed by hand (numpy) here."""

import panda_rl  # noqa: F401  (sets XLA flags before jax starts)

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from panda_rl import metrics as M
from panda_rl.agents import sgd
from panda_rl.agents.ppo import PPOBatch, ppo_loss


class LinearNets:
  """Tiny stand-in networks with hand-checkable outputs (1-D obs, 1-D action).

  mean = w * obs, log_std = params["log_std"] (state-independent), V = v * obs + c.
  """

  def policy_apply(self, p, obs):
    mean = p["w"] * obs
    return mean, jnp.broadcast_to(p["log_std"], mean.shape)

  def value_apply(self, p, obs):
    return p["v"] * obs[:, 0] + p["c"]


OBS = np.array([[1.0], [2.0], [-1.0], [0.5]])
ACTIONS = np.array([[0.7], [0.4], [-0.9], [0.1]])
OLD_LOGP = np.array([-0.5, -1.2, -0.3, -0.6])
OLD_VALUES = np.array([1.0, 1.0, -0.6, 0.2])
ADV = np.array([1.0, 2.0, -0.5, -1.5])
RETURNS = np.array([1.5, 2.5, -1.0, 0.0])
W, LOG_STD, V, C = 0.5, -0.5, 0.8, 0.1
HP = dict(clip_ratio=0.2, value_clip=0.2, value_coef=0.5, entropy_coef=0.01)


def params(w=W, log_std=LOG_STD, v=V, c=C):
  f = lambda x: jnp.asarray(x, jnp.float32)
  return {"policy": {"w": f(w), "log_std": f([log_std])}, "value": {"v": f(v), "c": f(c)}}


def batch():
  f = lambda x: jnp.asarray(x, jnp.float32)
  return PPOBatch(obs=f(OBS), actions=f(ACTIONS), old_log_prob=f(OLD_LOGP),
                  old_values=f(OLD_VALUES), advantages=f(ADV), returns=f(RETURNS))


def hand_loss(w=W, log_std=LOG_STD, v=V, c=C, normalize=True, clip=0.2, vclip=0.2,
              vcoef=0.5, ecoef=0.01):
  """The PPO loss written out in float64 numpy, term by term."""
  x, a = OBS[:, 0], ACTIONS[:, 0]
  std = np.exp(log_std)
  logp = -0.5 * ((a - w * x) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
  ratio = np.exp(logp - OLD_LOGP)
  adv = (ADV - ADV.mean()) / (ADV.std() + 1e-8) if normalize else ADV
  clipped = np.clip(ratio, 1 - clip, 1 + clip)
  policy_loss = np.mean(np.maximum(-adv * ratio, -adv * clipped))
  values = v * x + c
  if vclip > 0:
    v_clipped = OLD_VALUES + np.clip(values - OLD_VALUES, -vclip, vclip)
    value_loss = 0.5 * np.mean(np.maximum((values - RETURNS) ** 2, (v_clipped - RETURNS) ** 2))
    value_clip_ratio = np.mean(np.abs(values - OLD_VALUES) > vclip)
  else:
    value_loss = 0.5 * np.mean((values - RETURNS) ** 2)
    value_clip_ratio = 0.0
  entropy = log_std + 0.5 * np.log(2 * np.pi * np.e)  # one action dim
  loss = policy_loss + vcoef * value_loss - ecoef * entropy
  return loss, {
      M.APPROX_KL: np.mean(OLD_LOGP - logp),
      M.CLIP_FRACTION: np.mean(np.abs(ratio - 1) > clip),
      M.CLIPPED_RATIO: np.mean(clipped),
      M.POLICY_LOSS: policy_loss,
      M.VALUE_LOSS: value_loss,
      M.VALUE_CLIP_RATIO: value_clip_ratio,
      M.EXPLAINED_VARIANCE: 1 - np.var(RETURNS - values) / np.var(RETURNS),
      M.ENTROPY_LOSS: entropy,
      M.LOSS: loss,
  }


def test_hand_numbers_exercise_every_branch():
  # The batch is chosen so that both clips are active on some samples and not on others.
  _, m = hand_loss()
  assert m[M.CLIP_FRACTION] == 0.5 and m[M.VALUE_CLIP_RATIO] == 0.5


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("vclip", [0.2, 0.0])
def test_loss_and_metrics_match_hand_computation(normalize, vclip):
  hp = dict(HP, value_clip=vclip)
  loss, metrics = ppo_loss(params(), LinearNets(), batch(), jax.random.PRNGKey(0),
                           normalize_advantages=normalize, **hp)
  ref_loss, ref = hand_loss(normalize=normalize, vclip=vclip)
  assert set(metrics) == set(ref)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-6)
  for name, value in ref.items():
    np.testing.assert_allclose(float(metrics[name]), value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_explicit_numbers():
  # A few values written out, so a wrong shared convention in hand_loss would show too.
  _, m = ppo_loss(params(), LinearNets(), batch(), jax.random.PRNGKey(0), **HP)
  # ratios: 1.02706, 1.33880, 0.71434, 1.16239 -> clipped 1.02706, 1.2, 0.8, 1.16239
  np.testing.assert_allclose(float(m[M.CLIPPED_RATIO]), (1.027055 + 1.2 + 0.8 + 1.162393) / 4,
                             rtol=1e-5)
  # V = 0.9, 1.7, -0.7, 0.5; |V - V_old| = 0.1, 0.7, 0.1, 0.3 > 0.2 on two of four.
  np.testing.assert_allclose(float(m[M.VALUE_CLIP_RATIO]), 0.5)
  # entropy of N(., exp(-0.5)^2) = -0.5 + 0.5 * log(2 pi e) = 0.918939
  np.testing.assert_allclose(float(m[M.ENTROPY_LOSS]), 0.9189385, rtol=1e-6)


def test_ratio_is_one_at_the_rollout_policy():
  # With old_log_prob from the same policy: ratio 1, no clipping, KL 0.
  x, a = OBS[:, 0], ACTIONS[:, 0]
  logp = -0.5 * ((a - W * x) / np.exp(LOG_STD)) ** 2 - LOG_STD - 0.5 * np.log(2 * np.pi)
  b = batch()._replace(old_log_prob=jnp.asarray(logp, jnp.float32))
  _, m = ppo_loss(params(), LinearNets(), b, jax.random.PRNGKey(0), **HP)
  np.testing.assert_allclose(float(m[M.APPROX_KL]), 0.0, atol=1e-6)
  assert float(m[M.CLIP_FRACTION]) == 0.0
  np.testing.assert_allclose(float(m[M.CLIPPED_RATIO]), 1.0, atol=1e-6)


def test_gradient_step_reports_grad_norm_before_clipping_and_lr():
  # Gradient by central finite differences of the float64 hand loss.
  base = dict(w=W, log_std=LOG_STD, v=V, c=C)
  grads = []
  for name in base:
    hi, lo = dict(base), dict(base)
    hi[name] += 1e-6
    lo[name] -= 1e-6
    grads.append((hand_loss(**hi)[0] - hand_loss(**lo)[0]) / 2e-6)
  ref_norm = np.sqrt(np.sum(np.square(grads)))
  assert ref_norm > 0.05  # the clip below is really active

  loss_fn = lambda p, b, k: ppo_loss(p, LinearNets(), b, k, **HP)
  schedule = optax.linear_schedule(1e-2, 0.0, 10)
  opt = optax.chain(optax.clip_by_global_norm(0.05), optax.adam(schedule))
  p = params()
  _, _, m = sgd.gradient_step(loss_fn, opt, p, opt.init(p), batch(), jax.random.PRNGKey(0),
                              schedule(3))
  np.testing.assert_allclose(float(m[M.GRAD_NORM]), ref_norm, rtol=1e-3)
  np.testing.assert_allclose(float(m[M.LR]), 1e-2 * 0.7, rtol=1e-6)


def test_minibatch_epochs_reports_mean_lr_and_updates_params():
  loss_fn = lambda p, b, k: ppo_loss(p, LinearNets(), b, k, **HP)
  schedule = optax.linear_schedule(1e-2, 0.0, 10)
  opt = optax.adam(schedule)
  p = params()
  new_p, _, m = sgd.minibatch_epochs(loss_fn, opt, schedule, p, opt.init(p), batch(),
                                     jax.random.PRNGKey(0), num_epochs=2, num_minibatches=2,
                                     first_update=jnp.asarray(4))
  # Updates 4, 5, 6, 7 of a 10-step linear decay from 1e-2: lr 6e-3, 5e-3, 4e-3, 3e-3.
  np.testing.assert_allclose(float(m[M.LR]), 4.5e-3, rtol=1e-5)
  assert set(m) == set(M.TRAIN_METRICS)
  assert float(jnp.abs(new_p["policy"]["w"] - p["policy"]["w"])) > 0


def test_episode_and_rollout_metrics_hand_computed():
  # [T=3, B=2]; env 0 ends an episode at t=1 (return 3, length 4, success), env 1 at t=0
  # (return -1, length 2, no success) and at t=2 (return 6, length 2, success).
  done = np.array([[0, 1], [1, 0], [0, 1]], np.float32)
  ep = {
      "episode_return": np.array([[2.0, -1.0], [3.0, 5.0], [0.5, 6.0]], np.float32),
      "episode_length": np.array([[3.0, 2.0], [4.0, 1.0], [1.0, 2.0]], np.float32),
      "episode_success_once": np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32),
  }
  m = M.episode_metrics(jnp.asarray(done), {k: jnp.asarray(v) for k, v in ep.items()})
  np.testing.assert_allclose(float(m[M.RETURN]), (3 - 1 + 6) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(m[M.EPISODE_LEN]), (4 + 2 + 2) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(m[M.REWARD]), (3 / 4 - 1 / 2 + 6 / 2) / 3, rtol=1e-6)
  np.testing.assert_allclose(float(m[M.SUCCESS_ONCE]), 2 / 3, rtol=1e-6)
  assert float(m[M.NUM_EPISODES]) == 3.0

  none = M.episode_metrics(jnp.zeros((3, 2)), {k: jnp.asarray(v) for k, v in ep.items()})
  assert float(none[M.NUM_EPISODES]) == 0.0 and np.isnan(float(none[M.RETURN]))

  rewards = np.array([[1.0, 2.0], [3.0, -4.0], [0.0, 1.0]], np.float32)
  adv = np.array([[0.5, -2.0], [1.5, 0.0], [3.0, -1.0]], np.float32)
  r = M.rollout_metrics(jnp.asarray(rewards), jnp.asarray(adv))
  assert float(r[M.ADVANTAGES_MAX]) == 3.0 and float(r[M.ADVANTAGES_MIN]) == -2.0
  np.testing.assert_allclose(float(r[M.ADVANTAGES_MEAN]), 2.0 / 6, rtol=1e-6)
  np.testing.assert_allclose(float(r[M.REWARDS]), 3.0 / 6, rtol=1e-6)


def test_every_metric_has_a_definition():
  for name in M.ITERATION_METRICS + M.EVAL_METRICS:
    assert M.DEFINITIONS[name]
  assert len(set(M.ITERATION_METRICS)) == len(M.ITERATION_METRICS)
