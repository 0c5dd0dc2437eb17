"""Shared fixtures. Compiling an MJX env step takes tens of seconds on 2 CPU cores, so the
pick-cube env and its jitted functions are built once per session and shared, and JAX's
persistent compilation cache makes repeated runs cheap."""

import os

import panda_rl  # noqa: F401  (sets XLA:CPU flags before the backend starts)
import jax
import pytest

_CACHE = os.environ.get("PANDA_RL_TEST_JAX_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "panda_rl_jax_tests"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


@pytest.fixture(scope="session")
def pick_env():
  return panda_rl.make("PandaPickCube-v0")


@pytest.fixture(scope="session")
def pick_fns(pick_env):
  """Jitted batched reset/step of the pick-cube env (compiled once per session)."""
  reset = jax.jit(jax.vmap(pick_env.reset))
  step = jax.jit(jax.vmap(pick_env.step))
  return reset, step
