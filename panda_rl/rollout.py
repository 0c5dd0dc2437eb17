"""The scanned collection loop: T steps of a batched, auto-resetting env under a policy.

The loop knows nothing about the algorithm: it calls ``act_fn(obs, key)`` for the action and
its log-probability and value, and ``value_fn(final_obs)`` for the value needed to bootstrap
truncated episodes (see :mod:`panda_rl.agents.gae`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from panda_rl.envs.base import EPISODE_KEYS, Env, EnvState

Array = jax.Array
# obs [B, ...], key -> (action [B, A], log_prob [B], value [B])
ActFn = Callable[[Any, Array], Tuple[Array, Array, Array]]
ValueFn = Callable[[Any], Array]  # obs [B, ...] -> value [B]


class Transition(NamedTuple):
  """One env step of B envs; a rollout stacks them to leading axes [T, B].

  Attributes:
    obs: [T, B, ...] raw observation the action was chosen from (before normalisation).
    action: [T, B, A] action as sampled (the env clips it to [-1, 1]).
    log_prob: [T, B] log-probability of ``action`` under the acting policy.
    value: [T, B] V(obs) (zeros when the algorithm has no value net).
    bootstrap_value: [T, B] V(final_obs): value of the observation the step reached, before
      auto-reset (zeros when the algorithm has no value net).
    reward: [T, B] env reward of the step.
    done: [T, B] 1.0 where the step ended the episode (terminated or truncated).
    terminated: [T, B] 1.0 where it ended for a task reason.
    truncated: [T, B] 1.0 where it hit the time limit.
    episode: dict of [T, B] running episode totals (``EPISODE_KEYS`` of AutoResetWrapper),
      the finished episode's totals where ``done == 1``.
  """

  obs: Any
  action: Array
  log_prob: Array
  value: Array
  bootstrap_value: Array
  reward: Array
  done: Array
  terminated: Array
  truncated: Array
  episode: Dict[str, Array]


def collect(env: Env, env_state: EnvState, key: Array, num_steps: int, act_fn: ActFn,
            value_fn: Optional[ValueFn] = None) -> Tuple[EnvState, Transition]:
  """Runs ``num_steps`` steps of the batched env ``env`` (an AutoResetWrapper).

  Args:
    env: batched env whose ``step`` sets ``info["final_obs"]`` and the episode totals.
    env_state: [B] batched state to continue from.
    key: PRNG key for the policy's sampling.
    num_steps: T.
    act_fn: obs [B, ...], key -> (action [B, A], log_prob [B], value [B]).
    value_fn: obs [B, ...] -> [B] for truncation bootstrapping; None -> zeros.

  Returns:
    (env_state after the last step, Transition with leading axes [T, B]).
  """

  def step(state: EnvState, step_key: Array):
    action, log_prob, value = act_fn(state.obs, step_key)
    nxt = env.step(state, action)
    if value_fn is None:
      bootstrap = jnp.zeros_like(nxt.reward)
    else:
      bootstrap = value_fn(nxt.info["final_obs"])
    record = Transition(
        obs=state.obs, action=action, log_prob=log_prob, value=value,
        bootstrap_value=bootstrap, reward=nxt.reward, done=nxt.done,
        terminated=nxt.terminated, truncated=nxt.truncated,
        episode={k: nxt.metrics[k] for k in EPISODE_KEYS})
    return nxt, record

  return jax.lax.scan(step, env_state, jax.random.split(key, num_steps))
