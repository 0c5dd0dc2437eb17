"""MJX's constraint solver with its sums over constraint rows kept fusible on XLA:CPU.

The Newton solver's line search sums per-row terms over every constraint row (37 in the
pick-cube scene) three times per line-search iteration, and its cost update sums them
again. XLA:CPU rewrites every reduction over more than 32 elements into a ``reduce-window``
of 32-element windows followed by a small reduce (its tree-reduction pass), and that
``reduce-window`` runs as its own, unfused op: a ``jax.profiler`` trace of the env
(``scripts/profile_trace.py``) charged 5.6% of the env's time to it.

:func:`patch` gives MJX's solver module a ``jax.numpy`` whose ``sum`` over a leading axis
longer than 32 adds chunks of at most 32 rows instead, each an ordinary reduction that
fuses with its operands; nothing else in the solver changes. The result is the same sum in
another order (float32 rounding apart). On GPU/TPU the plain ``sum`` is traced. Opt out with
``PANDA_RL_MJX_SOLVER_SUMS=0``.
"""

from __future__ import annotations

import functools
import operator
import os

CHUNK = 32  # XLA:CPU's tree-reduction pass leaves reductions of up to 32 elements alone
ENV_VAR = "PANDA_RL_MJX_SOLVER_SUMS"

STATUS: str = "not applied"


def chunked_sum(jnp, a, axis=None, **kwargs):
  """``jnp.sum(a, axis, **kwargs)``; on CPU, a sum over a leading axis longer than
  :data:`CHUNK` is the sum of the chunks' sums."""
  import jax

  shape = jnp.shape(a)
  leading = axis == 0 or (axis is None and len(shape) == 1)
  if (kwargs or not leading or not shape or shape[0] <= CHUNK
      or jax.default_backend() != "cpu"):
    return jnp.sum(a, axis=axis, **kwargs)
  parts = [jnp.sum(a[i:i + CHUNK], axis=0) for i in range(0, shape[0], CHUNK)]
  return functools.reduce(operator.add, parts)


class SolverNumpy:
  """``jax.numpy`` as MJX's solver module sees it: everything forwarded, ``sum`` chunked."""

  def __init__(self, jnp):
    self.numpy = jnp
    self.sum = functools.partial(chunked_sum, jnp)

  def __getattr__(self, name):
    return getattr(self.numpy, name)


def patch() -> str:
  """Installs (or, with ``PANDA_RL_MJX_SOLVER_SUMS=0``, removes) the chunked sums in
  ``mujoco.mjx._src.solver``; returns and records what it did."""
  global STATUS
  from mujoco.mjx._src import solver

  jnp = solver.jp.numpy if isinstance(solver.jp, SolverNumpy) else solver.jp
  if os.environ.get(ENV_VAR, "1").strip() == "0":
    solver.jp = jnp
    STATUS = f"solver sums as MJX writes them ({ENV_VAR}=0)"
  else:
    solver.jp = SolverNumpy(jnp)
    STATUS = f"MJX solver sums over more than {CHUNK} rows chunked on CPU"
  return STATUS
