"""GAE: the lax.scan implementation against a plain Python loop and hand-computed cases."""

import panda_rl  # noqa: F401  (sets XLA flags before jax starts)

import numpy as np
import pytest

from panda_rl.agents.gae import compute_gae


def loop_gae(rewards, values, last_value, final_values, terminated, truncated, gamma, lam):
  """CleanRL-style reference: next value from the next step's value (or ``last_value``),
  from ``final_values`` at a truncation, and 0 at a termination. Float64, one env at a time."""
  T, B = rewards.shape
  adv = np.zeros((T, B))
  for b in range(B):
    running = 0.0
    for t in reversed(range(T)):
      if terminated[t, b]:
        next_value, cont = 0.0, 0.0
      elif truncated[t, b]:
        next_value, cont = final_values[t, b], 0.0
      else:
        next_value = values[t + 1, b] if t + 1 < T else last_value[b]
        cont = 1.0
      delta = rewards[t, b] + gamma * next_value - values[t, b]
      running = delta + gamma * lam * cont * running
      adv[t, b] = running
  return adv, adv + values


def random_rollout(seed, T=17, B=5):
  rng = np.random.default_rng(seed)
  rewards = rng.normal(size=(T, B)).astype(np.float32)
  values = rng.normal(size=(T, B)).astype(np.float32)
  last_value = rng.normal(size=(B,)).astype(np.float32)
  final_values = rng.normal(size=(T, B)).astype(np.float32)
  terminated = (rng.random((T, B)) < 0.1).astype(np.float32)
  truncated = ((rng.random((T, B)) < 0.1) & (terminated == 0)).astype(np.float32)
  done = np.maximum(terminated, truncated)
  # What the rollout stores: V(final_obs), which is the next step's V(obs) unless the
  # step ended the episode. At terminations it is garbage the GAE must ignore.
  next_values = np.concatenate([values[1:], last_value[None]], axis=0)
  bootstrap = np.where(done > 0, final_values, next_values).astype(np.float32)
  bootstrap = np.where(terminated > 0, 1e3, bootstrap).astype(np.float32)
  return rewards, values, last_value, final_values, bootstrap, terminated, truncated


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.97, 0.0)])
def test_scan_gae_matches_python_loop(seed, gamma, lam):
  r, v, last_v, final_v, boot, term, trunc = random_rollout(seed)
  assert term.sum() > 0 and trunc.sum() > 0  # both kinds of episode end are exercised
  adv, ret = compute_gae(r, v, boot, term, trunc, gamma, lam)
  ref_adv, ref_ret = loop_gae(r, v, last_v, final_v, term, trunc, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-5, atol=1e-5)


def test_hand_computed_truncation_vs_termination():
  # One env, 3 steps, gamma 0.5, lambda 0.5. Step 1 ends the episode.
  r = np.array([[1.0], [2.0], [3.0]], np.float32)
  v = np.array([[0.5], [1.0], [2.0]], np.float32)
  g, lam = 0.5, 0.5
  # Truncated at step 1, V(final_obs) = 4; after it, the next episode: V(s'_2) = 6.
  boot = np.array([[1.0], [4.0], [6.0]], np.float32)
  zero = np.zeros((3, 1), np.float32)
  trunc = np.array([[0.0], [1.0], [0.0]], np.float32)
  adv, ret = compute_gae(r, v, boot, zero, trunc, g, lam)
  d2 = 3 + 0.5 * 6 - 2.0  # 4.0
  d1 = 2 + 0.5 * 4 - 1.0  # 3.0 (bootstraps from V(final_obs) = 4)
  d0 = 1 + 0.5 * 1 - 0.5  # 1.0
  a2, a1 = d2, d1  # the trace is cut at the episode end
  a0 = d0 + g * lam * a1  # 1.75
  np.testing.assert_allclose(np.asarray(adv)[:, 0], [a0, a1, a2], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ret)[:, 0], [a0 + 0.5, a1 + 1.0, a2 + 2.0], rtol=1e-6)

  # Terminated instead: no bootstrap at step 1, whatever V(final_obs) says.
  adv_t, _ = compute_gae(r, v, boot, trunc, zero, g, lam)
  d1_t = 2 - 1.0  # 1.0
  np.testing.assert_allclose(np.asarray(adv_t)[:, 0], [d0 + g * lam * d1_t, d1_t, d2],
                             rtol=1e-6)


def test_lambda_one_gives_discounted_returns():
  rng = np.random.default_rng(3)
  T, B, g = 6, 2, 0.9
  r = rng.normal(size=(T, B)).astype(np.float32)
  v = rng.normal(size=(T, B)).astype(np.float32)
  boot = np.concatenate([v[1:], np.zeros((1, B), np.float32)])
  zero = np.zeros((T, B), np.float32)
  _, ret = compute_gae(r, v, boot, zero, zero, g, 1.0)
  # Monte-Carlo return with V(s_T) = 0 at the end of the rollout.
  mc = np.zeros((T, B))
  acc = np.zeros(B)
  for t in reversed(range(T)):
    acc = r[t] + g * acc
    mc[t] = acc
  np.testing.assert_allclose(np.asarray(ret), mc, rtol=1e-5, atol=1e-5)
