"""PPO: GAE advantages, the clipped-ratio policy loss, clipped value loss and entropy bonus.

:func:`ppo_loss` is the pure loss; :class:`PPO` is the :class:`~panda_rl.agents.base.Algorithm`
the trainer runs. The definitions of every number reported are in :mod:`panda_rl.metrics`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from panda_rl import metrics as M
from panda_rl.agents import gae as gae_lib
from panda_rl.agents.base import Algorithm, flatten_time
from panda_rl.networks import forward, gaussian_entropy, gaussian_log_prob

Array = jax.Array


class PPOBatch(NamedTuple):
  """One (mini)batch of PPO training data; every field has leading axis [N].

  Attributes:
    obs: [N, ...] observations as the policy saw them (already normalised).
    actions: [N, A] actions taken (unclipped Gaussian samples).
    old_log_prob: [N] log-probability of ``actions`` under the rollout policy.
    old_values: [N] V(obs) under the rollout value net.
    advantages: [N] raw GAE advantages (standardised inside the loss if enabled).
    returns: [N] value targets (advantages + old_values).
  """

  obs: Any
  actions: Array
  old_log_prob: Array
  old_values: Array
  advantages: Array
  returns: Array


def _value_loss(values: Array, batch: PPOBatch, value_clip: float) -> Tuple[Array, Array]:
  """(0.5 * mean squared value error, clipped around old_values when value_clip > 0;
  share of samples where that clip is active)."""
  err = jnp.square(values - batch.returns)
  if value_clip <= 0:
    return 0.5 * jnp.mean(err), jnp.zeros((), jnp.float32)
  values_clipped = batch.old_values + jnp.clip(values - batch.old_values,
                                               -value_clip, value_clip)
  value_loss = 0.5 * jnp.mean(jnp.maximum(err, jnp.square(values_clipped - batch.returns)))
  value_clip_active = jnp.mean(
      (jnp.abs(values - batch.old_values) > value_clip).astype(jnp.float32))
  return value_loss, value_clip_active


def ppo_loss(params: Dict[str, Any], apply_fns: Any, batch: PPOBatch, key: Array, *,
             clip_ratio: float = 0.2, value_clip: float = 0.2, value_coef: float = 0.5,
             entropy_coef: float = 0.0, normalize_advantages: bool = True
             ) -> Tuple[Array, Dict[str, Array]]:
  """PPO's clipped surrogate loss on one minibatch.

  Args:
    params: ``{"policy": ..., "value": ...}``.
    apply_fns: an :class:`~panda_rl.networks.ActorCritic` (its ``forward(params, obs)``), or
      any object with ``policy_apply(policy_params, obs) -> (mean [N, A], log_std [N, A])``
      and ``value_apply(value_params, obs) -> [N]``.
    batch: :class:`PPOBatch` with leading axis [N].
    key: unused (the Gaussian entropy is exact); kept so every loss has one signature.
    clip_ratio: epsilon of the probability-ratio clip.
    value_clip: value-prediction clip range around ``old_values``; <= 0 disables it.
    value_coef: weight of the value loss in the total.
    entropy_coef: weight of the entropy bonus (subtracted from the total).
    normalize_advantages: standardise advantages over this minibatch.

  Returns:
    (loss [], metrics): ``train/*`` scalars named in :mod:`panda_rl.metrics`, all but
    grad_norm and lr, which the optimiser step adds.
  """
  del key
  # One pass through the network(s): with a shared encoder it runs once for both heads.
  mean, log_std, values = forward(apply_fns, params, batch.obs)
  log_prob = gaussian_log_prob(mean, log_std, batch.actions)
  entropy = gaussian_entropy(log_std)

  adv = batch.advantages
  if normalize_advantages:
    adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)

  log_ratio = log_prob - batch.old_log_prob
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
  policy_loss = jnp.mean(jnp.maximum(-adv * ratio, -adv * clipped))

  value_loss, value_clip_active = _value_loss(values, batch, value_clip)
  entropy_loss = jnp.mean(entropy)
  loss = policy_loss + value_coef * value_loss - entropy_coef * entropy_loss

  sg = jax.lax.stop_gradient
  metrics = {
      M.APPROX_KL: sg(jnp.mean(-log_ratio)),
      M.CLIP_FRACTION: sg(jnp.mean((jnp.abs(ratio - 1.0) > clip_ratio).astype(jnp.float32))),
      M.CLIPPED_RATIO: sg(jnp.mean(clipped)),
      M.POLICY_LOSS: sg(policy_loss),
      M.VALUE_LOSS: sg(value_loss),
      M.VALUE_CLIP_RATIO: sg(value_clip_active),
      M.EXPLAINED_VARIANCE: sg(M.explained_variance(batch.returns, values)),
      M.ENTROPY_LOSS: sg(entropy_loss),
      M.LOSS: sg(loss),
  }
  return loss, metrics


@dataclasses.dataclass(frozen=True)
class PPO(Algorithm):
  """PPO with GAE (``algorithm.adv_type = "gae"``): a value net, truncation bootstrapping."""

  name: str = "gae"
  needs_value: bool = True
  iteration_metrics: Tuple[str, ...] = M.ITERATION_METRICS
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_ratio: float = 0.2
  value_clip: float = 0.2
  value_coef: float = 0.5
  entropy_coef: float = 0.0
  normalize_advantages: bool = True

  @classmethod
  def from_config(cls, alg: Any) -> "PPO":
    return cls(reward_scale=float(alg.reward_scale), gamma=float(alg.gamma),
               gae_lambda=float(alg.gae_lambda), clip_ratio=float(alg.clip_ratio),
               value_clip=float(alg.value_clip), value_coef=float(alg.value_coef),
               entropy_coef=float(alg.entropy_coef),
               normalize_advantages=bool(alg.normalize_advantages))

  @staticmethod
  def config_problems(config: Any) -> List[str]:
    alg = config.algorithm
    checks = ((0.0 < alg.gamma <= 1.0, f"algorithm.gamma must be in (0, 1], got {alg.gamma}"),
              (0.0 <= alg.gae_lambda <= 1.0,
               f"algorithm.gae_lambda must be in [0, 1], got {alg.gae_lambda}"),
              (alg.value_coef >= 0.0,
               f"algorithm.value_coef must be >= 0, got {alg.value_coef}"))
    return [msg for ok, msg in checks if not ok]

  def make_batch(self, networks, state, traj, obs):
    del networks, state
    advantages, returns = gae_lib.compute_gae(
        traj.reward * self.reward_scale, traj.value, traj.bootstrap_value, traj.terminated,
        traj.truncated, gamma=self.gamma, gae_lambda=self.gae_lambda)
    batch = PPOBatch(obs=jax.tree.map(flatten_time, obs), actions=flatten_time(traj.action),
                     old_log_prob=flatten_time(traj.log_prob),
                     old_values=flatten_time(traj.value),
                     advantages=flatten_time(advantages), returns=flatten_time(returns))
    return batch, advantages, M.rollout_metrics(traj.reward, advantages)

  def loss(self, params, networks, batch, key):
    return ppo_loss(params, networks, batch, key, clip_ratio=self.clip_ratio,
                    value_clip=self.value_clip, value_coef=self.value_coef,
                    entropy_coef=self.entropy_coef,
                    normalize_advantages=self.normalize_advantages)
