"""panda_rl/_mjx_sums.py: MJX's solver sums over more than 32 rows, chunked on CPU."""

import panda_rl  # noqa: F401  (first: XLA flags, MJX patches)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mujoco.mjx._src import solver

from panda_rl import _mjx_sums


@pytest.mark.parametrize("shape, axis", [((37,), None), ((37,), 0), ((37, 3), 0),
                                         ((65, 2), 0), ((32, 3), 0), ((37, 3), 1),
                                         ((37, 3), None)])
def test_chunked_sum_is_the_sum(shape, axis):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  got = _mjx_sums.chunked_sum(jnp, x, axis=axis)
  np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.sum(x, axis=axis)), rtol=1e-5,
                             atol=1e-5)
  assert got.shape == jnp.sum(x, axis=axis).shape


def _reduce_windows(fn, x):
  return jax.jit(jax.vmap(fn)).lower(x).compile().as_text().count("reduce-window(")


def test_on_cpu_a_37_row_sum_compiles_without_a_reduce_window():
  """What the patch is for: XLA:CPU turns a sum over more than 32 rows into an unfused
  reduce-window; the chunks' sums stay ordinary reductions (vmapped, as MJX runs)."""
  x = jnp.ones((64, 37, 3), jnp.float32)
  plain = _reduce_windows(lambda a: jnp.sum(a * 2.0, axis=0), x)
  chunked = _reduce_windows(lambda a: _mjx_sums.chunked_sum(jnp, a * 2.0, axis=0), x)
  assert jax.default_backend() == "cpu"
  assert plain > 0 and chunked == 0, (plain, chunked)


def test_patch_installs_and_opt_out_removes(monkeypatch):
  try:
    monkeypatch.setenv(_mjx_sums.ENV_VAR, "0")
    assert _mjx_sums.patch().endswith(f"({_mjx_sums.ENV_VAR}=0)")
    assert solver.jp is jnp
    monkeypatch.setenv(_mjx_sums.ENV_VAR, "1")
    assert _mjx_sums.patch().startswith("MJX solver sums over more than 32 rows")
    assert isinstance(solver.jp, _mjx_sums.SolverNumpy) and solver.jp.numpy is jnp
    assert solver.jp.where is jnp.where  # everything else is jax.numpy's own
    _mjx_sums.patch()  # twice: still one layer
    assert solver.jp.numpy is jnp
  finally:
    monkeypatch.delenv(_mjx_sums.ENV_VAR, raising=False)
    _mjx_sums.patch()
