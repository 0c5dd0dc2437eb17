"""JAX's persistent compilation cache, on by default (panda_rl/compile_cache.py): the per-user
default directory, the override and the opt-out, a cache the user gave JAX left alone, and a
second process of the same tiny training run (and `evaluate` of another checkpoint of it)
reading every program from the cache instead of compiling it, and the traced programs from
the program cache (panda_rl/program_cache.py) instead of tracing them. No timing is asserted
here; scripts/benchmark_startup.py measures the start times.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from panda_rl import compile_cache, program_cache
from processes import with_cpu_devices

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
RUN = ("panda_rl", "mujoco_ppo_mlp")

TINY = [
    "env.train.env_id=PointReach-v0",
    "env.train.overrides={}",
    "env.train.num_envs=8",
    "env.eval.num_envs=4",
    "rollout.num_steps=16",
    "algorithm.num_minibatches=2",
    "algorithm.update_epochs=2",
    "actor.model.policy_hidden=(16,16)",
    "actor.model.value_hidden=(16,16)",
    "runner.max_epochs=4",
    "runner.val_check_interval=2",
    "runner.save_interval=2",
]

# --------------------------------------------------------------------------------------
# Which directory.


def test_default_dir_is_per_user(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.default_dir() == tmp_path / "xdg" / "panda_rl" / "jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.default_dir() == tmp_path / "home" / ".cache" / "panda_rl" / "jax"


@pytest.mark.parametrize("value", [None, "", "1"])
def test_unset_means_the_default(monkeypatch, tmp_path, value):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.requested_dir(value) == tmp_path / "panda_rl" / "jax"


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false", "no", " 0 "])
def test_opt_out_values(value):
  assert compile_cache.requested_dir(value) is None


def test_override_is_a_directory(monkeypatch, tmp_path):
  assert compile_cache.requested_dir(str(tmp_path / "c")) == tmp_path / "c"
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compile_cache.requested_dir("~/jc") == tmp_path / "jc"


@pytest.fixture
def jax_cache_config():
  """Restores JAX's cache settings after a test that lets configure() change them."""
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_enable_compilation_cache", saved[1])


def test_configure_sets_the_requested_dir(jax_cache_config, monkeypatch, tmp_path):
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
  status = compile_cache.configure()
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
  assert compile_cache.cache_dir() == str(tmp_path / "mine")
  assert status == (f"persistent compilation cache: {tmp_path / 'mine'} "
                    f"({compile_cache.ENV_VAR}={tmp_path / 'mine'})")


def test_configure_opt_out(jax_cache_config, monkeypatch):
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv(compile_cache.ENV_VAR, "0")
  assert compile_cache.configure() == (f"persistent compilation cache off "
                                       f"({compile_cache.ENV_VAR}=0)")
  assert jax.config.jax_compilation_cache_dir is None and compile_cache.cache_dir() is None


def test_configure_keeps_the_users_jax_settings(jax_cache_config, monkeypatch, tmp_path):
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "ours"))
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
  assert compile_cache.configure().endswith("(set for JAX by the user)")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")
  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_enable_compilation_cache", False)
  assert "turned off" in compile_cache.configure()
  assert jax.config.jax_compilation_cache_dir is None and compile_cache.cache_dir() is None


# --------------------------------------------------------------------------------------
# At `import panda_rl`, in fresh processes.

_IMPORT = """
import json, logging
records = []
class _Keep(logging.Handler):
  def emit(self, r):
    records.append(r.getMessage())
logging.getLogger("panda_rl").addHandler(_Keep())
logging.getLogger("panda_rl").setLevel(logging.INFO)
import panda_rl, jax
from panda_rl import compile_cache, program_cache
print("RESULT " + json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                              "status": compile_cache.STATUS, "records": records}))
"""


def _child_env(**env):
  e = {k: v for k, v in os.environ.items()
       if k not in (compile_cache.ENV_VAR, "JAX_COMPILATION_CACHE_DIR",
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_PLATFORMS"] = "cpu"
  e.update(env)
  return e


def _import_result(**env):
  proc = subprocess.run([sys.executable, "-c", _IMPORT], cwd=REPO, env=_child_env(**env),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_import_turns_the_cache_on_in_the_users_cache_dir(tmp_path):
  out = _import_result(XDG_CACHE_HOME=str(tmp_path))
  assert out["dir"] == str(tmp_path / "panda_rl" / "jax")
  assert out["status"].startswith(f"persistent compilation cache: {out['dir']} (default;")
  assert out["records"].count("panda_rl: " + out["status"]) == 1  # logged once


def test_import_leaves_a_jax_cache_dir_from_the_environment(tmp_path):
  out = _import_result(XDG_CACHE_HOME=str(tmp_path / "xdg"),
                       JAX_COMPILATION_CACHE_DIR=str(tmp_path / "theirs"))
  assert out["dir"] == str(tmp_path / "theirs")
  assert not (tmp_path / "xdg").exists()


# --------------------------------------------------------------------------------------
# A second process reads the programs from the cache.

# Counts JAX's persistent-cache events, and names the functions traced, while it trains or
# evaluates; prints them as JSON.
_COUNTED = """
import json, sys
from collections import Counter
import panda_rl, jax
counts, traced = Counter(), Counter()
jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event]))
def _traced(event, secs, fun_name="", **kw):
  if event.endswith("jaxpr_trace_duration"):
    traced.update([fun_name])
jax.monitoring.register_event_duration_secs_listener(_traced)
{body}
out = {{k.rsplit("/", 1)[-1]: v for k, v in counts.items() if "compilation_cache" in k}}
out["traced"] = traced
print("COUNTS " + json.dumps(out))
"""

_TRAIN = """
from panda_rl.config import load_config
from panda_rl.runner import train_and_evaluate
config = load_config(sys.argv[1], sys.argv[3:] + ["runner.logger.log_path=" + sys.argv[2]])
train_and_evaluate(config)
"""

_EVALUATE = """
from panda_rl.evaluate import evaluate_checkpoint
print(evaluate_checkpoint(sys.argv[1], episodes=4, step=int(sys.argv[2])))
"""


def _counted(cache, body, *args, devices=None):
  code = _COUNTED.format(body=textwrap.dedent(body))
  # Every program is written, however fast it compiles: the tiny config's compile in < 1 s.
  env = _child_env(**{compile_cache.ENV_VAR: str(cache),
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  if devices is not None:
    env = with_cpu_devices(env, devices)
  proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("COUNTS ")][-1]
  return json.loads(line[len("COUNTS "):]), proc


def _entries(cache):
  return sorted(p.name for p in Path(cache).glob("*-cache"))


def _exported(cache):
  return sorted(p.name for p in (Path(cache) / program_cache.SUBDIR).glob("*.exported"))


@pytest.mark.parametrize("devices", [1, 2])
def test_a_second_run_reads_every_program_from_the_cache(tmp_path, devices):
  """On one CPU device, and on two (the default placement then shards the programs)."""
  cache = tmp_path / "cache"
  first, proc = _counted(cache, _TRAIN, CONFIG, tmp_path / "a", *TINY, devices=devices)
  written = _entries(cache)
  assert len(written) >= 3  # init, iteration, evaluation (and small helpers)
  assert first.get("cache_misses", 0) == len(written) and not first.get("cache_hits")
  assert f"compilation cache {cache}" in proc.stdout  # the run says where the cache is
  sharded = "placement: env,rollout,actor -> cpu 0-1 (collocated" in proc.stdout
  assert sharded == (devices == 2), proc.stdout[-2000:]

  # The iteration and the evaluation were also kept traced (panda_rl/program_cache.py).
  exported = _exported(cache)
  assert [n.split("-")[0] for n in exported] == ["iteration", "train_evaluation"]
  assert first["traced"]["flat_fn"] == 2

  second, _ = _counted(cache, _TRAIN, CONFIG, tmp_path / "b", *TINY, devices=devices)
  assert _entries(cache) == written  # nothing new compiled and written
  assert not second.get("cache_misses")
  assert second["cache_hits"] == len(written)
  assert _exported(cache) == exported and "flat_fn" not in second["traced"]  # not retraced

  # `evaluate` compiles one program per config, not per checkpoint: after step 2's, step 4's
  # evaluation finds everything in the cache.
  run_dir = tmp_path / "a" / Path(*RUN)
  _counted(cache, _EVALUATE, run_dir, 2, devices=devices)
  with_eval = _entries(cache)
  assert len(with_eval) > len(written)
  assert len(_exported(cache)) == len(exported) + 1  # "episodes"
  other, _ = _counted(cache, _EVALUATE, run_dir, 4, devices=devices)
  assert _entries(cache) == with_eval
  assert not other.get("cache_misses") and other["cache_hits"] >= 1
  assert len(_exported(cache)) == len(exported) + 1 and "flat_fn" not in other["traced"]
