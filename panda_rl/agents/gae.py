"""Generalised advantage estimation over a [T, B] rollout, with truncation bootstrapping.

For each step t of each env (all arrays [T, B]):

    next_v_t = bootstrap_values_t * (1 - terminated_t)
    delta_t  = r_t + gamma * next_v_t - values_t
    A_t      = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},    A_T = 0
    R_t      = A_t + values_t                                        (value targets)

``bootstrap_values_t`` is V(s'_t), the value of the observation step t reached *before* any
auto-reset (AutoResetWrapper's ``info["final_obs"]``). So:

* an ordinary step bootstraps from the next state's value (s'_t is the next obs);
* a time-limit truncation bootstraps from the value of the state the episode was cut at
  (the episode did not really end, its future was only unobserved);
* a termination does not bootstrap (the future is known to be worth 0);
* ``done = max(terminated, truncated)`` stops the advantage trace from leaking across the
  episode boundary into the next episode's first steps;
* the last rollout step bootstraps from V(s'_{T-1}) like any other step.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def compute_gae(rewards: Array, values: Array, bootstrap_values: Array, terminated: Array,
                truncated: Array, gamma: float, gae_lambda: float) -> Tuple[Array, Array]:
  """Advantages and value targets by a reverse ``lax.scan`` over time.

  Args:
    rewards: [T, B] reward of step t.
    values: [T, B] V(s_t), the value of the observation acted on at step t.
    bootstrap_values: [T, B] V(s'_t), the value of the observation step t reached (before
      auto-reset); equals ``values[t + 1]`` wherever step t did not end the episode.
    terminated: [T, B] 1.0 where the episode ended for a task reason (no bootstrap).
    truncated: [T, B] 1.0 where the episode hit its time limit (bootstrap).
    gamma: discount factor.
    gae_lambda: GAE lambda (1 = Monte-Carlo returns, 0 = one-step TD).

  Returns:
    (advantages [T, B], returns [T, B]) with ``returns = advantages + values``.
  """
  terminated = terminated.astype(values.dtype)
  done = jnp.maximum(terminated, truncated.astype(values.dtype))
  deltas = rewards + gamma * (1.0 - terminated) * bootstrap_values - values
  decay = gamma * gae_lambda * (1.0 - done)

  def backward(next_adv, xs):
    delta, d = xs
    adv = delta + d * next_adv
    return adv, adv

  _, advantages = jax.lax.scan(backward, jnp.zeros_like(values[0]), (deltas, decay),
                               reverse=True)
  return advantages, advantages + values
