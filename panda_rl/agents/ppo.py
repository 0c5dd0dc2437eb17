"""PPO's loss: clipped-ratio policy loss, clipped value loss, entropy bonus (pure function).

The definitions of every number this loss reports are in :mod:`panda_rl.metrics`.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from panda_rl import metrics as M
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

  err = jnp.square(values - batch.returns)
  if value_clip > 0:
    values_clipped = batch.old_values + jnp.clip(values - batch.old_values,
                                                 -value_clip, value_clip)
    value_loss = 0.5 * jnp.mean(jnp.maximum(err, jnp.square(values_clipped - batch.returns)))
    value_clip_active = jnp.mean(
        (jnp.abs(values - batch.old_values) > value_clip).astype(jnp.float32))
  else:
    value_loss = 0.5 * jnp.mean(err)
    value_clip_active = jnp.zeros((), jnp.float32)

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
