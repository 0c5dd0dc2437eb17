"""Shared fixtures. Compiling an MJX env step takes tens of seconds on 2 CPU cores, so the
pick-cube env and its jitted functions are built once per session and shared, and JAX's
persistent compilation cache makes repeated runs cheap.

The tests keep their own persistent cache, ``~/.cache/panda_rl_jax_tests`` (or
``$PANDA_RL_TEST_JAX_CACHE``), shared by the pytest workers and every subprocess they start,
and never touch the library's per-user cache (``panda_rl/compile_cache.py``): this process
and its children get it through ``PANDA_RL_COMPILATION_CACHE``, and a cache directory the
user exported for JAX itself is not inherited.
"""

import os
from pathlib import Path

_CACHE = os.environ.get("PANDA_RL_TEST_JAX_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "panda_rl_jax_tests"))
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # before `import jax` reads it
os.environ["PANDA_RL_COMPILATION_CACHE"] = _CACHE

import panda_rl  # noqa: E402,F401  (sets XLA:CPU flags before the backend starts)
import jax  # noqa: E402
import pytest  # noqa: E402

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
