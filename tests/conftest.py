"""Shared fixtures. Compiling an MJX env step takes tens of seconds on 2 CPU cores, so the
pick-cube env and its jitted functions are built once per session and shared, and JAX's
persistent compilation cache makes repeated runs cheap."""

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
  """Environment for tests that run ``python -m panda_rl.*`` in a subprocess: the repo
  importable, and this session's persistent compile cache (the subprocesses compile the same
  programs, and the cache turns ~15 s compiles into ~1 s loads)."""
  e = dict(os.environ)
  e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + e.get("PYTHONPATH", "")
  cache = jax.config.jax_compilation_cache_dir or str(tmp_path_factory.mktemp("jax_cache"))
  e.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  e.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return e
