"""The CPU fast path of panda_rl/_xla.py, each case in a fresh subprocess (XLA reads
``XLA_FLAGS`` once, when the first backend starts): ``import panda_rl`` adds the XLA:CPU flags
when no backend exists, warns when one does, honours ``PANDA_RL_XLA_FLAGS=0`` and
``PANDA_RL_MJX_BARRIER=0``, keeps the user's own ``XLA_FLAGS``, and the MJX quaternion barrier
leaves ``mjx.step`` results unchanged; it splits the CPU into one device per core unless the
user chose a count (``PANDA_RL_CPU_DEVICES``, or the flag in ``XLA_FLAGS``).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FLAGS = ("--xla_cpu_use_fusion_emitters=false",
         "--xla_cpu_experimental_ynn_fusion_type=-reduce")
OPT_OUTS = ("XLA_FLAGS", "PANDA_RL_XLA_FLAGS", "PANDA_RL_MJX_BARRIER", "PANDA_RL_CPU_DEVICES")
DEVICES_FLAG = "--xla_force_host_platform_device_count"

# Collects the "panda_rl" logger's records; prints what the child saw as one JSON line.
_PRELUDE = """
import json, logging, os, sys
records = []
class _Keep(logging.Handler):
  def emit(self, r):
    records.append([r.levelname, r.getMessage()])
if KEEP_RECORDS:
  logging.getLogger("panda_rl").addHandler(_Keep())
  logging.getLogger("panda_rl").setLevel(logging.INFO)
out = {}
"""
_REPORT = """
from panda_rl import _xla
import jax
out.update(status=_xla.STATUS, patch=_xla.MJX_PATCH, xla_flags=os.environ.get("XLA_FLAGS"),
           cpu_devices=_xla.CPU_DEVICES,
           records=records, devices=jax.device_count(),
           works=float(jax.jit(lambda x: x * 2.0)(1.5)))
print("RESULT " + json.dumps(out))
"""


def _child_env(cli_env, **env):
  """The child's environment: none of the user's opt-outs, the CPU backend, and one CPU
  device unless a test asks for the split (the fast-flag tests compare XLA_FLAGS exactly)."""
  e = {k: v for k, v in cli_env.items() if k not in OPT_OUTS}
  e["JAX_PLATFORMS"] = "cpu"
  e["PANDA_RL_CPU_DEVICES"] = "1"
  e.update(env)
  e = {k: v for k, v in e.items() if v is not None}
  return e


def _run(cli_env, body, keep_records=True, **env):
  code = (f"KEEP_RECORDS = {keep_records}\n" + _PRELUDE + textwrap.dedent(body) + _REPORT)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_child_env(cli_env, **env),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):]), proc


def test_import_sets_the_flags_before_the_backend_starts(cli_env):
  # `import jax` alone starts no backend: the flags still apply.
  out, _ = _run(cli_env, "import jax\nimport panda_rl\n")
  assert out["xla_flags"].split() == list(FLAGS)
  assert out["status"] == "set fast-CPU XLA flags: " + " ".join(FLAGS)
  assert ["INFO", "panda_rl: " + out["status"]] in out["records"]
  assert out["works"] == 3.0  # XLA started with them (it aborts on flags it does not know)
  assert out["patch"] == "MJX quaternion product wrapped in an optimization barrier on CPU"


def test_import_keeps_the_users_xla_flags(cli_env):
  user = "--xla_force_host_platform_device_count=3"
  out, _ = _run(cli_env, "import panda_rl\n", XLA_FLAGS=user)
  assert out["xla_flags"].split() == [user, *FLAGS]
  assert out["devices"] == 3  # the user's flag reached XLA
  # A flag the user set to another value is theirs: not overridden, not duplicated.
  mine = "--xla_cpu_use_fusion_emitters=true"
  out, _ = _run(cli_env, "import panda_rl\n", XLA_FLAGS=mine)
  assert out["xla_flags"].split() == [mine, FLAGS[1]]
  out, _ = _run(cli_env, "import panda_rl\n", XLA_FLAGS=" ".join(FLAGS))
  assert out["xla_flags"] == " ".join(FLAGS)
  assert out["status"] == "fast-CPU XLA flags already present in XLA_FLAGS"


def test_warns_when_a_backend_already_exists(cli_env):
  body = """
  import jax
  jax.devices()  # a backend exists before panda_rl is imported
  import panda_rl
  """
  out, _ = _run(cli_env, body)
  assert out["xla_flags"] is None  # too late for XLA: left alone
  assert "could NOT be applied" in out["status"]
  assert "export XLA_FLAGS=" + " ".join(FLAGS) in out["status"]
  assert ["WARNING", "panda_rl: " + out["status"]] in out["records"]
  # Without any logging set up, the warning still reaches the user (stderr).
  _, proc = _run(cli_env, body, keep_records=False)
  assert "could NOT be applied" in proc.stderr


def test_opt_out_of_the_flags(cli_env):
  out, _ = _run(cli_env, "import panda_rl\n", PANDA_RL_XLA_FLAGS="0")
  assert out["xla_flags"] is None
  assert out["status"] == "disabled by PANDA_RL_XLA_FLAGS=0"
  out, _ = _run(cli_env, "import panda_rl\n", PANDA_RL_XLA_FLAGS="0", XLA_FLAGS="--xla_dump_to=")
  assert out["xla_flags"] == "--xla_dump_to="
  assert out["patch"].startswith("MJX quaternion product wrapped")  # independent opt-outs


# A small model whose step chains quaternions: a 3-link ball/hinge arm and a free box
# dropping onto a plane (contacts), so kinematics, collision and the constraint solver run.
_MODEL = """
<mujoco>
  <option timestep="0.005"/>
  <worldbody>
    <geom type="plane" size="2 2 0.1"/>
    <body pos="0 0 1">
      <joint type="ball" damping="0.1"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03"/>
      <body pos="0.3 0 0" quat="0.9 0.1 0.3 0.2">
        <joint type="hinge" axis="0 1 0" damping="0.1"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03"/>
        <body pos="0.3 0 0">
          <joint type="ball"/>
          <geom type="box" size="0.05 0.04 0.03"/>
        </body>
      </body>
    </body>
    <body pos="0.5 0.4 0.3" quat="0.8 0.3 -0.4 0.33">
      <freejoint/>
      <geom type="box" size="0.06 0.05 0.04"/>
    </body>
  </worldbody>
</mujoco>
"""

_STEPS = """
import panda_rl
import jax
import mujoco
import numpy as np
from mujoco import mjx
m = mujoco.MjModel.from_xml_string(MODEL)
mx = mjx.put_model(m)
d = mjx.put_data(m, mujoco.MjData(m))
d = d.replace(qvel=d.qvel.at[:].set(np.linspace(-1.0, 1.0, m.nv)))

def run(d):
  return jax.lax.scan(lambda d, _: (mjx.step(mx, d), None), d, None, length=60)[0]

traced = jax.jit(run).trace(d)
out["barrier_in_program"] = "optimization_barrier" in str(traced.jaxpr)
final = traced.lower().compile()(d)
out["qpos"] = np.asarray(final.qpos).tolist()
out["qvel"] = np.asarray(final.qvel).tolist()
out["ncon"] = int(np.asarray(final.contact.dist < 0).sum())
"""


def test_mjx_barrier_leaves_step_results_unchanged(cli_env):
  body = f"MODEL = {_MODEL!r}\n" + _STEPS
  on, _ = _run(cli_env, body)
  off, _ = _run(cli_env, body, PANDA_RL_MJX_BARRIER="0")
  assert on["barrier_in_program"] and not off["barrier_in_program"]
  assert off["patch"] == "quaternion barrier disabled by PANDA_RL_MJX_BARRIER=0"
  assert on["xla_flags"] == off["xla_flags"] == " ".join(FLAGS)
  assert on["ncon"] > 0  # the box landed: contacts were part of the steps compared
  qpos_on, qpos_off = np.asarray(on["qpos"]), np.asarray(off["qpos"])
  assert np.abs(qpos_on - np.asarray(_initial_qpos())).max() > 0.05  # it moved
  # The barrier is an identity, but it changes how XLA fuses, so float32 rounding differs:
  # measured, the first 2 steps are bit-identical, then ~1e-9 apart, 6.3e-7 (qpos) and
  # 1.3e-5 (qvel) after 60.
  np.testing.assert_allclose(qpos_on, qpos_off, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(on["qvel"]), np.asarray(off["qvel"]), rtol=0, atol=1e-4)


def _initial_qpos():
  import mujoco

  return mujoco.MjModel.from_xml_string(_MODEL).qpos0


def test_benchmark_no_fast_flags_turns_off_flags_and_barrier(cli_env, tmp_path):
  """scripts/benchmark_env.py --no-fast-flags measures without the WHOLE fast path (README),
  even with one of the flags already exported by the user."""
  user = "--xla_force_host_platform_device_count=1"
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "benchmark_env.py"), "--env", "PointReach-v0",
       "--batch", "4", "--steps", "2", "--repeats", "1", "--no-fast-flags", "--json", str(out)],
      cwd=REPO, env=_child_env(cli_env, XLA_FLAGS=f"{FLAGS[0]} {user}"), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["xla_status"] == "disabled by PANDA_RL_XLA_FLAGS=0"
  assert result["mjx_patch"] == "quaternion barrier disabled by PANDA_RL_MJX_BARRIER=0"
  assert result["xla_flags"] == user
  assert result["results"][0]["env_steps_per_s"] > 0


def test_auto_cpu_devices_is_a_power_of_two_per_core_and_bad_values_are_named():
  from panda_rl import _xla

  assert [_xla.auto_cpu_devices(c) for c in (1, 2, 3, 4, 6, 8, 16, 96)] == [
      1, 2, 2, 4, 4, 8, 8, 8]
  assert _xla.requested_cpu_devices(None, 2) == 2
  assert _xla.requested_cpu_devices(" auto ", 6) == 4
  assert _xla.requested_cpu_devices("3", 2) == 3  # the user's count, even above the cores
  for bad in ("0", "-2", "two", "1.5"):
    with pytest.raises(ValueError, match="PANDA_RL_CPU_DEVICES"):
      _xla.requested_cpu_devices(bad, 2)


def test_import_splits_the_cpu_into_one_device_per_core(cli_env):
  from panda_rl import _xla

  cores = _xla.available_cores()
  want = _xla.auto_cpu_devices(cores)
  out, _ = _run(cli_env, "import panda_rl\n", PANDA_RL_CPU_DEVICES=None)
  assert out["devices"] == want
  if want > 1:
    assert out["xla_flags"].split() == [*FLAGS, f"{DEVICES_FLAG}={want}"]
    assert out["cpu_devices"] == f"{want} CPU devices (one per core, {cores} core(s))"
  assert ["INFO", "panda_rl: " + out["cpu_devices"]] in out["records"]
  # A count asked for by name; 1 adds no flag at all (JAX's default).
  out, _ = _run(cli_env, "import panda_rl\n", PANDA_RL_CPU_DEVICES="3")
  assert out["devices"] == 3 and f"{DEVICES_FLAG}=3" in out["xla_flags"].split()
  assert out["cpu_devices"] == "3 CPU devices (PANDA_RL_CPU_DEVICES=3)"
  out, _ = _run(cli_env, "import panda_rl\n", PANDA_RL_CPU_DEVICES="1")
  assert out["devices"] == 1 and DEVICES_FLAG not in out["xla_flags"]
  # The user's own flag wins over both.
  out, _ = _run(cli_env, "import panda_rl\n", PANDA_RL_CPU_DEVICES="4",
                XLA_FLAGS=f"{DEVICES_FLAG}=5")
  assert out["devices"] == 5 and out["xla_flags"].count(DEVICES_FLAG) == 1
  assert out["cpu_devices"].startswith("CPU device count set by the user's XLA_FLAGS")


def test_cpu_split_is_reported_when_a_backend_already_exists(cli_env):
  body = """
  import jax
  jax.devices()
  import panda_rl
  """
  out, _ = _run(cli_env, body, PANDA_RL_CPU_DEVICES="2")
  assert out["devices"] == 1
  assert "could NOT be split into 2 devices" in out["cpu_devices"]
  assert ["WARNING", "panda_rl: " + out["cpu_devices"]] in out["records"]


def test_a_bad_cpu_device_count_stops_the_import_with_its_name(cli_env):
  proc = subprocess.run([sys.executable, "-c", "import panda_rl"], cwd=REPO,
                        env=_child_env(cli_env, PANDA_RL_CPU_DEVICES="many"),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "PANDA_RL_CPU_DEVICES='many': expected 'auto' or a positive integer" in proc.stderr
