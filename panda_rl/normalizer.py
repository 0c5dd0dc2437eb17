"""Running mean / variance of observations, as a pytree with pure update and normalise.

Statistics combine batches with the parallel form of Welford's algorithm (Chan et al.), so
one update with a [T, B, D] batch equals T updates with [B, D] batches and equals the plain
mean / variance of everything seen (a test checks this). Observations may be pytrees (dicts
for vision envs): floating leaves are normalised; integer leaves (uint8 images) pass through
untouched and keep a placeholder statistic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class RunningStats:
  """Mean and (population) variance of every observation seen so far.

  Attributes:
    mean: pytree like one observation, float32 (shape () placeholders for integer leaves).
    var: same structure as ``mean``.
    count: [] float32 number of observations seen (0 -> identity normalisation).
  """

  mean: Any
  var: Any
  count: Array


def init(obs: Any) -> RunningStats:
  """Identity statistics (mean 0, var 1, count 0) for observations shaped like ``obs``.

  Args:
    obs: ONE observation (no batch axis), or a ShapeDtypeStruct pytree of one.
  """
  shape = lambda x: tuple(x.shape) if _is_float_leaf(x) else ()
  mean = jax.tree.map(lambda x: jnp.zeros(shape(x), jnp.float32), obs)
  var = jax.tree.map(lambda x: jnp.ones(shape(x), jnp.float32), obs)
  return RunningStats(mean=mean, var=var, count=jnp.zeros((), jnp.float32))


def _is_float_leaf(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def update(stats: RunningStats, batch: Any) -> RunningStats:
  """Adds a batch of observations (any number of leading axes, e.g. [T, B, ...]).

  Every leaf must have the same leading axes; the trailing axes are those of ``stats.mean``.
  """
  leaves = [x for x in jax.tree.leaves(batch) if _is_float_leaf(x)]
  means = [m for m, x in zip(jax.tree.leaves(stats.mean), jax.tree.leaves(batch))
           if _is_float_leaf(x)]
  if not leaves:
    return stats
  first, first_mean = leaves[0], means[0]
  lead = first.shape[:first.ndim - first_mean.ndim]
  n_b = jnp.asarray(float(max(1, _prod(lead))), jnp.float32)
  n_a = stats.count
  n = n_a + n_b

  def combine(mean_a, var_a, x):
    if not _is_float_leaf(x):
      return mean_a, var_a
    axes = tuple(range(x.ndim - mean_a.ndim))
    x = x.astype(jnp.float32)
    mean_b = jnp.mean(x, axis=axes)
    var_b = jnp.var(x, axis=axes)
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    # Chan et al.: M2 = M2_a + M2_b + delta^2 * n_a * n_b / n, stored divided by n.
    var = (var_a * n_a + var_b * n_b + delta * delta * (n_a * n_b / n)) / n
    return mean, var

  out = jax.tree.map(combine, stats.mean, stats.var, batch)
  is_pair = lambda p: isinstance(p, tuple)
  mean = jax.tree.map(lambda p: p[0], out, is_leaf=is_pair)
  var = jax.tree.map(lambda p: p[1], out, is_leaf=is_pair)
  return RunningStats(mean=mean, var=var, count=n)


def _prod(shape) -> int:
  out = 1
  for s in shape:
    out *= int(s)
  return out


def normalize(stats: RunningStats, obs: Any, clip: float = 10.0, eps: float = 1e-8) -> Any:
  """(obs - mean) / sqrt(var + eps), clipped to [-clip, clip]; any leading axes.

  Integer leaves are returned unchanged. With ``count == 0`` the statistics are the
  identity (mean 0, var 1), so an untrained normaliser does no harm.
  """
  def leaf(mean, var, x):
    if not _is_float_leaf(x):
      return x
    z = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + eps)
    return jnp.clip(z, -clip, clip).astype(x.dtype)

  return jax.tree.map(leaf, stats.mean, stats.var, obs)
