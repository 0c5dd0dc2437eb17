"""Programs kept traced across processes (panda_rl/program_cache.py): an exported program
gives exactly the plain jitted program's results, called or compiled ahead of time, with its
donations; the key follows the settings and the arguments; a program that cannot be exported,
or a damaged file, still runs. (That a second process reads the training and evaluation
programs instead of tracing them: tests/test_compile_cache.py.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl import compile_cache, program_cache
from panda_rl.config import load_config, program_settings
from panda_rl.training import Trainer

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/mujoco_ppo_mlp.py"
TINY = ["env.train.env_id=PointReach-v0", "env.train.overrides={}", "env.train.num_envs=8",
        "env.eval.num_envs=4", "rollout.num_steps=16", "algorithm.num_minibatches=2",
        "algorithm.update_epochs=2", "actor.model.policy_hidden=(16,16)",
        "actor.model.value_hidden=(16,16)"]


def _equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(leaves_a) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_an_exported_iteration_gives_the_plain_results(tmp_path):
  config = load_config(CONFIG, TINY)
  trainer = Trainer(config)
  state = trainer.init(jax.random.PRNGKey(0))
  plain = jax.jit(trainer.iteration_fn)(state)
  settings = program_settings(config)
  exported = program_cache.jit(trainer.iteration_fn, "it", settings, where=tmp_path)(state)
  files = list(tmp_path.glob("it-*.exported"))
  assert len(files) == 1
  # A new instance (as in a later process) reads the file instead of tracing.
  fresh = program_cache.jit(trainer.iteration_fn, "it", settings, where=tmp_path)
  traced = []
  listener = lambda event, secs, fun_name="", **kw: traced.append(fun_name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    loaded = fresh(state)
    ahead = fresh.compile(state)(state)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert "flat_fn" not in traced and list(tmp_path.glob("it-*.exported")) == files
  for out in (exported, loaded, ahead):
    _equal(plain, out)


def test_donated_arguments_are_donated(tmp_path):
  f = program_cache.jit(lambda a, b: (a["x"] + b, b * 2), "donate", {}, donate_argnums=(0,),
                        where=tmp_path)
  a, b = {"x": jnp.arange(4.0)}, jnp.ones(4)
  out = f(a, b)
  np.testing.assert_array_equal(out[0], [1, 2, 3, 4])
  assert a["x"].is_deleted() and not b.is_deleted()


def test_the_key_follows_settings_and_arguments():
  def key(what, *args):
    leaves, treedef = jax.tree.flatten(args)
    return program_cache.program_key("p", what, leaves, treedef)

  x = jnp.zeros((3, 2))
  assert key({"gamma": 0.97}, x) == key({"gamma": 0.97}, jnp.ones((3, 2)))
  others = [key({"gamma": 0.98}, x), key({"gamma": 0.97}, jnp.zeros((4, 2))),
            key({"gamma": 0.97}, x.astype(jnp.int32)), key({"gamma": 0.97}, {"a": x}),
            key({"gamma": 0.97}, x, x)]
  assert len({key({"gamma": 0.97}, x), *others}) == 1 + len(others)


def test_logging_and_bookkeeping_fields_do_not_name_a_new_program():
  a = load_config(CONFIG, TINY)
  b = load_config(CONFIG, TINY + ["runner.logger.log_path=elsewhere", "runner.resume=True",
                                  "runner.save_interval=7"])
  c = load_config(CONFIG, TINY + ["algorithm.gamma=0.9"])
  assert program_settings(a) == program_settings(b) != program_settings(c)
  assert "runner.max_epochs" in program_settings(a)  # learning-rate schedules read it


def test_a_program_that_cannot_be_exported_runs_plainly(tmp_path):
  def noisy(x):
    jax.debug.callback(lambda v: None, x)  # host callbacks cannot be exported
    return x + 1

  out = program_cache.jit(noisy, "noisy", {}, where=tmp_path)(jnp.ones(3))
  np.testing.assert_array_equal(out, [2, 2, 2])
  assert not list(tmp_path.glob("*.exported"))


def test_a_damaged_file_is_traced_again(tmp_path, caplog):
  f = lambda x: {"y": jnp.sin(x)}
  program_cache.jit(f, "dmg", {}, where=tmp_path)(jnp.ones(3))
  (path,) = tmp_path.glob("dmg-*.exported")
  path.write_bytes(b"not a program")
  out = program_cache.jit(f, "dmg", {}, where=tmp_path)(jnp.ones(3))
  np.testing.assert_allclose(out["y"], np.sin(np.ones(3)))
  assert "ignoring unreadable exported program" in caplog.text
  assert program_cache._read(path) is not None  # written again


def test_off_with_the_compilation_cache_or_on_its_own(monkeypatch, tmp_path):
  monkeypatch.setattr(compile_cache, "cache_dir", lambda: str(tmp_path))
  assert program_cache.directory() == tmp_path / program_cache.SUBDIR
  monkeypatch.setenv(program_cache.ENV_VAR, "0")
  assert program_cache.directory() is None
  monkeypatch.delenv(program_cache.ENV_VAR)
  monkeypatch.setattr(compile_cache, "cache_dir", lambda: None)
  assert program_cache.directory() is None


_LAPACK = """
import sys
from pathlib import Path
import jax, jax.numpy as jnp
from panda_rl import program_cache
solve = lambda a, b: jnp.linalg.solve(a, b) + jnp.linalg.cholesky(a)[:, 0]
f = program_cache.jit(solve, "lapack", {}, where=Path(sys.argv[1]))
print("RESULT", f(jnp.eye(3) * 2.0, jnp.ones(3)).tolist())
"""


def test_a_fresh_process_runs_a_read_program_with_lapack_calls(tmp_path):
  """A process that only reads an exported Cholesky / LU solve used to crash (jaxlib loads
  its LAPACK kernels when it lowers such an op, and a read program lowers none)."""
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  outs = []
  for _ in range(2):  # the first writes the program, the second only reads it
    proc = subprocess.run([sys.executable, "-c", _LAPACK, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs.append([x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1])
    assert len(list(tmp_path.glob("lapack-*.exported"))) == 1
  expected = (0.5 + np.sqrt(2.0)) * np.eye(3)[0] + 0.5 * (1 - np.eye(3)[0])
  assert outs[0] == outs[1]
  np.testing.assert_allclose(json.loads(outs[1].split(" ", 1)[1]), expected, rtol=1e-6)
