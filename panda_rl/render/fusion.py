"""Small numerics written for XLA:CPU's fusion and vectorisation (used by the renderer).

Each helper exists because the obvious way to write it was measured to make XLA:CPU (with
the MJX fast-path flags of ``panda_rl/_xla.py``) emit scalar loops or recompute work: see
the docstrings. They are exact (or exactly the op they replace).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inv_norm(sq_norm):
  """1 / sqrt(sq_norm), written so that it vectorises on XLA:CPU.

  XLA lowers ``rsqrt`` (and rewrites ``1 / sqrt(x)`` into it) to a scalar x86 intrinsic
  that keeps LLVM from vectorising the whole fused loop (measured: the shading ran ~8x
  slower). Dividing by ``max(sqrt(x), tiny)`` is not pattern-matched into rsqrt.
  """
  return 1.0 / jnp.maximum(jnp.sqrt(sq_norm), 1e-15)


def power(x, exponent):
  """x ** exponent for x > 0: repeated squaring when the exponent is a static integer."""
  if isinstance(exponent, float) and exponent.is_integer() and 0 <= exponent <= 1024:
    e, result, base = int(exponent), None, x
    while e:
      if e & 1:
        result = base if result is None else result * base
      e >>= 1
      if e:
        base = base * base
    return jnp.ones_like(x) if result is None else result
  return jnp.exp(exponent * jnp.log(x))


def materialize_f32(x, anchor):
  """Returns float32 ``x`` unchanged, as the output of a division XLA cannot fold.

  XLA:CPU fuses elementwise chains into their consumers. When a consumer reads each element
  several times (neighbour differences, multi-column lookups) the producer is recomputed
  for every read, and some consumers (gathers, concatenations, channel interleaves) do not
  vectorise, dragging all the fused arithmetic into a scalar loop. XLA does not fuse an
  expensive producer (a divide) into a consumer that reuses its elements, so dividing by a
  runtime 1.0 (``0 * tanh(finite) + 1``, exact) makes ``x`` materialise once.
  (``lax.optimization_barrier`` does not help: XLA:CPU removes it before fusion.)

  Args:
    x: float32 array, any shape.
    anchor: any runtime float array with a finite first element (e.g. the camera position).
  """
  one = 1.0 + 0.0 * jnp.tanh(anchor[0])
  return x / one


def materialize(x, anchor):
  """``materialize_f32`` for uint32 bit patterns (the division by 1.0 is exact)."""
  xf = materialize_f32(jax.lax.bitcast_convert_type(x, jnp.float32), anchor)
  return jax.lax.bitcast_convert_type(xf, jnp.uint32)
