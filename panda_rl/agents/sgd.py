"""Epochs x minibatches of gradient steps as nested ``lax.scan``s (any loss, any optimiser).

Shared by every algorithm: a loss ``loss_fn(params, batch, key) -> (loss, metrics)`` and a
flat batch pytree with leading axis [N] are all it needs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from panda_rl import metrics as M

Array = jax.Array
LossFn = Callable[[Any, Any, Array], Tuple[Array, Dict[str, Array]]]


def gradient_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, params: Any,
                  opt_state: Any, batch: Any, key: Array, lr: Array
                  ) -> Tuple[Any, Any, Dict[str, Array]]:
  """One optimiser update on one minibatch; adds ``grad_norm`` and ``lr`` to the metrics.

  Args:
    lr: [] the learning rate the optimiser applies at this update (reported, not used:
      the optimiser owns its schedule).
  """
  grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch, key)
  metrics = dict(metrics)
  metrics[M.GRAD_NORM] = optax.tree.norm(grads)  # before the optimiser's norm clip
  metrics[M.LR] = jnp.asarray(lr, jnp.float32)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, metrics


def minibatch_epochs(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                     lr_schedule: optax.Schedule, params: Any, opt_state: Any, data: Any,
                     key: Array, *, num_epochs: int, num_minibatches: int, first_update: Array,
                     constrain: Optional[Callable[[Any], Any]] = None
                     ) -> Tuple[Any, Any, Dict[str, Array]]:
  """``num_epochs`` passes over ``data``, each a fresh shuffle cut into minibatches.

  Args:
    data: pytree, every leaf with leading axis [N]; N divisible by ``num_minibatches``.
    first_update: [] int, number of optimiser updates made before this call (for the
      reported learning rate: ``lr_schedule(first_update + i)`` at the i-th update).
    constrain: applied to each epoch's shuffled data, leaves [num_minibatches, mb_size, ...];
      :mod:`panda_rl.placement` passes a sharding constraint that splits every minibatch
      over the actor devices (data parallel). None: no constraint.

  Returns:
    (params, opt_state, metrics): metrics averaged over all ``num_epochs * num_minibatches``
    updates.
  """
  n = jax.tree.leaves(data)[0].shape[0]
  if n % num_minibatches:
    raise ValueError(f"batch of {n} samples does not split into {num_minibatches} minibatches")
  mb_size = n // num_minibatches

  def epoch(carry, epoch_key):
    params, opt_state, step = carry
    k_perm, k_mb = jax.random.split(epoch_key)
    perm = jax.random.permutation(k_perm, n)
    shuffled = jax.tree.map(
        lambda x: jnp.take(x, perm, axis=0).reshape((num_minibatches, mb_size) + x.shape[1:]),
        data)
    if constrain is not None:
      shuffled = constrain(shuffled)

    def minibatch(carry, xs):
      params, opt_state, step = carry
      mb, mb_key = xs
      params, opt_state, metrics = gradient_step(loss_fn, optimizer, params, opt_state, mb,
                                                 mb_key, lr_schedule(step))
      return (params, opt_state, step + 1), metrics

    carry, metrics = jax.lax.scan(minibatch, (params, opt_state, step),
                                  (shuffled, jax.random.split(k_mb, num_minibatches)))
    return carry, metrics

  (params, opt_state, _), metrics = jax.lax.scan(
      epoch, (params, opt_state, jnp.asarray(first_update, jnp.int32)),
      jax.random.split(key, num_epochs))
  return params, opt_state, jax.tree.map(jnp.mean, metrics)


def make_lr_schedule(config: Any) -> optax.Schedule:
  """Learning rate per optimiser update, decaying to 0 over ``runner.max_epochs`` iterations."""
  optim, alg = config.actor.optim, config.algorithm
  total = max(1, config.runner.max_epochs * alg.update_epochs * alg.num_minibatches)
  if optim.lr_schedule == "constant":
    return optax.constant_schedule(optim.lr)
  if optim.lr_schedule == "linear":
    return optax.linear_schedule(optim.lr, 0.0, total)
  if optim.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(optim.lr, total)
  raise ValueError(f"unknown actor.optim.lr_schedule {optim.lr_schedule!r}")


def make_optimizer(config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Global-norm clip (if ``actor.optim.max_grad_norm > 0``) then Adam with the schedule."""
  optim = config.actor.optim
  adam = optax.adam(schedule, eps=optim.adam_eps)
  if optim.max_grad_norm and optim.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm), adam)
  return adam
