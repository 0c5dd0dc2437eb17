"""Pods (issue 12): the placements users write, run across processes.

Each multi-process check starts this file as N localhost processes (``jax.distributed``
with gloo collectives on CPU, ``--xla_force_host_platform_device_count`` devices each),
the stand-in for a pod. Groups that span processes exchange data with the collective
transfers of :mod:`panda_rl.transfer`.

* the three placement examples users copy (pipelined, fully shared, fully separated) on
  2 processes x 8 devices, PPO and GRPO, train like the collocated run on one process
  with the same 16 devices (parameters after 3 iterations, to float rounding), and every
  transfer's payload equals its source bit for bit;
* a 4 processes x 4 devices layout with groups cut across process boundaries;
* SIGTERM to one process of a 2-process run: both finish the iteration, checkpoint, exit
  0; resuming gives the uninterrupted run's parameters;
* a 2-process checkpoint restores on 1 process with another placement, and the reverse;
* multi-host errors end every process with a message naming the cause, in bounded time.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # a subprocess: the repo and tests importable first
  sys.path[:0] = [os.path.dirname(HERE), HERE]

import panda_rl  # noqa: F401,E402  (first: XLA flags)
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from panda_rl.config import load_config  # noqa: E402
from processes import finish, free_port  # noqa: E402

REPO = Path(HERE).parent
CONFIGS = {"ppo": REPO / "configs" / "mujoco_ppo_mlp.py",
           "grpo": REPO / "configs" / "mujoco_grpo_mlp.py"}
# The examples of the issue on 2 processes x 8 devices: (component_placement, stages).
EXAMPLES = {
    "pipelined": ("env:0-7;rollout:8-15;actor:0-15", 2),
    "shared": ("env,rollout,actor:all", 1),
    "separated": ("env:0-3;rollout:4-7;actor:8-15", 1),
}
# 4 processes x 4 devices, groups cut across process boundaries (env on processes 0-1,
# rollout on 1-3, actor everywhere).
FOUR = ("env:2-5;rollout:6-13;actor:0-15", 2)
ITERATIONS = 3
TINY = {
    "env.train.env_id": "PointReach-v0",
    "env.train.overrides": {},
    "env.train.num_envs": 64,
    "env.eval.num_envs": 8,
    "rollout.num_steps": 8,
    "actor.model.policy_hidden": (16, 16),
    "actor.optim.lr": 3e-3,
    "algorithm.update_epochs": 2,
    "algorithm.num_minibatches": 4,
    "runner.max_epochs": ITERATIONS,
    "runner.save_interval": ITERATIONS,
    "runner.val_check_interval": ITERATIONS,
}
# A placement across processes against the collocated one on one process: the same global
# computation, but gradient all-reduces sum in another order (the tolerance of
# tests/test_placement.py's equivalence check).
RTOL, ATOL = 1e-4, 1e-5


def pod_config(algo="ppo", spec="env,rollout,actor:all", stages=1, nproc=1, pid=0, port=0,
               **overrides):
  # GRPO: whole episodes per rollout (PointReach's are 25 steps), groups of 4 envs.
  extra = {"algorithm.group_size": 4, "rollout.num_steps": 25} if algo == "grpo" else {}
  if nproc > 1:
    extra.update({"cluster.num_nodes": nproc, "cluster.process_id": pid,
                  "cluster.coordinator_address": f"localhost:{port}"})
  return load_config(str(CONFIGS[algo]), {
      **TINY, **extra, "cluster.component_placement": spec,
      "rollout.pipeline_stage_num": stages, **overrides})


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


# --------------------------------------------------------------------------------------
# Children (each one process of a run).


class _CheckedMover:
  """Wraps every transfer of a run: fetches source and result and compares their bytes
  (the first few transfers of each kind, so the check stays cheap)."""

  def __init__(self, log, per_kind=3):
    from panda_rl import transfer

    self.transfer, self.log, self.per_kind, self.seen = transfer, log, per_kind, {}
    self.original = transfer.Mover.__call__
    self.busy = False
    checker = self

    def call(mover, tree, shardings):
      out = checker.original(mover, tree, shardings)
      if not checker.busy:
        checker.check(mover, tree, out, shardings)
      return out

    transfer.Mover.__call__ = call

  def check(self, mover, tree, out, shardings):
    leaves = jax.tree.leaves(tree)
    kind = tuple((tuple(sorted(d.id for d in x.sharding.device_set)), x.shape)
                 for x in leaves[:1])
    if self.seen.get(kind, 0) >= self.per_kind:
      return
    self.seen[kind] = self.seen.get(kind, 0) + 1
    self.busy = True
    try:
      src, dst = self.transfer.fetch((tree, out), mover)
    finally:
      self.busy = False
    same = all(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
               for a, b in zip(jax.tree.leaves(src), jax.tree.leaves(dst)))
    if isinstance(shardings, jax.sharding.Sharding):
      targets = [shardings] * len(leaves)
    else:
      targets = jax.tree.structure(tree).flatten_up_to(shardings)
    placed = all(y.sharding.device_set == t.device_set
                 for y, t in zip(jax.tree.leaves(out), targets))
    self.log.append({"kind": repr(kind), "leaves": len(leaves), "bit_exact": bool(same),
                     "placed": bool(placed)})

  def close(self):
    self.transfer.Mover.__call__ = self.original


def _child_pod(out, pid, nproc, port, algo, names):
  """Trains each named example (or "four") on this pod; writes params per process."""
  from panda_rl.runner import train_and_evaluate
  from panda_rl import transfer

  for name in names.split(","):
    spec, stages = FOUR if name == "four" else EXAMPLES[name]
    log = []
    checker = _CheckedMover(log)
    try:
      result = train_and_evaluate(pod_config(algo, spec, stages, nproc, pid, port),
                                  Path(out) / f"{algo}_{name}")
    finally:
      checker.close()
    params = transfer.fetch(result.state.params)
    np.savez(Path(out) / f"{algo}_{name}_p{pid}.npz", **_flat(params))
    (Path(out) / f"{algo}_{name}_transfers_p{pid}.json").write_text(json.dumps(log))
  jax.distributed.shutdown()


def _child_single(out, algo, restore_from=""):
  """The collocated reference on one process, 16 devices; optionally first restores a
  checkpoint written by a pod (another placement) and dumps what it restored."""
  from panda_rl import training
  from panda_rl.checkpoint import Checkpointer
  from panda_rl.runner import initial_state, train_and_evaluate

  assert jax.process_count() == 1 and jax.device_count() == 16
  if restore_from:
    config = pod_config(algo, **{"runner.resume": True, "runner.max_epochs": ITERATIONS + 1})
    trainer = training.Trainer(config)
    with Checkpointer(Path(restore_from) / "checkpoints") as ckpt:
      state = initial_state(trainer, config, ckpt, jax.random.PRNGKey(0), print)
    np.savez(Path(out) / "restored.npz", **_flat(trainer.fetch(state.params)))
    state, _ = trainer.train_iteration(state)  # and trains on from there
    assert int(state.iteration) == ITERATIONS + 1
    return
  result = train_and_evaluate(pod_config(algo), Path(out) / f"{algo}_single")
  np.savez(Path(out) / f"{algo}_single.npz", **_flat(jax.device_get(result.state.params)))


def _child_resume(out, pid, nproc, port, run_dir, epochs, dump):
  """Resumes ``run_dir`` on this pod (the separated example); dumps restored params."""
  from panda_rl import training, transfer
  from panda_rl.checkpoint import Checkpointer
  from panda_rl.runner import initial_state, train_and_evaluate

  spec, stages = EXAMPLES["separated"]
  config = pod_config("ppo", spec, stages, nproc, pid, port,
                      **{"runner.resume": True, "runner.max_epochs": int(epochs)})
  if dump:
    trainer = training.Trainer(config)
    with Checkpointer(Path(run_dir) / "checkpoints", read_only=True) as ckpt:
      state = initial_state(trainer, config, ckpt, jax.random.PRNGKey(0), print)
    np.savez(Path(out) / f"restored_p{pid}.npz", **_flat(trainer.fetch(state.params)))
  result = train_and_evaluate(config, Path(run_dir))
  params = transfer.fetch(result.state.params)
  np.savez(Path(out) / f"resumed_p{pid}.npz", **_flat(params))
  jax.distributed.shutdown()


def _child_stop(run_dir, pid, nproc, port, lost=False):
  """A run of the separated example, to be stopped by a signal (``lost``: a long one with a
  short heartbeat timeout, one of whose processes gets killed)."""
  from panda_rl import transfer
  from panda_rl.runner import train_and_evaluate

  spec, stages = EXAMPLES["separated"]
  extra = {"runner.max_epochs": 100000, "cluster.heartbeat_timeout_s": 10} if lost else {}
  result = train_and_evaluate(pod_config("ppo", spec, stages, nproc, pid, port, **{
      "runner.max_epochs": ITERATIONS, "runner.save_interval": 0,
      "runner.val_check_interval": 0, **extra}), Path(run_dir))
  print(f"stopped at {int(transfer.fetch(result.state.iteration))}", flush=True)
  jax.distributed.shutdown()


# --------------------------------------------------------------------------------------
# Launching.


def _env(devices):
  e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  e["XLA_FLAGS"] = (e.get("XLA_FLAGS", "") +
                    f" --xla_force_host_platform_device_count={devices}")
  e.pop("JAX_COMPILATION_CACHE_DIR", None)  # several writers of one cache: keep them apart
  e["PANDA_RL_COMPILATION_CACHE"] = "0"
  return e


def _start(nproc, devices, *args):
  port = free_port()
  return [subprocess.Popen([sys.executable, __file__, args[0], str(i), str(nproc), str(port),
                            *map(str, args[1:])], cwd=REPO, env=_env(devices),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(nproc)]


def _run_single(out, algo, restore_from=""):
  proc = subprocess.run([sys.executable, __file__, "single", str(out), algo, restore_from],
                        cwd=REPO, env=_env(16), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return proc.stdout


def _assert_params_close(got, want, what):
  assert got.keys() == want.keys(), what
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {k}")


def _load(path):
  return dict(np.load(path))


# --------------------------------------------------------------------------------------
# The checks.


# The module's tests share their runs: one pytest-xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("pods")


@pytest.fixture(scope="module")
def pod_runs(tmp_path_factory):
  """``pod_runs(algo)``: every example on 2 processes x 8 devices and the collocated
  reference on one, run once per algorithm -> (directory, process outputs)."""
  out, logs = tmp_path_factory.mktemp("pods"), {}

  def run(algo):
    if algo not in logs:
      logs[algo] = finish(_start(2, 8, "pod", out, algo, ",".join(EXAMPLES)))
      _run_single(out, algo)
    return out, logs[algo]
  return run


@pytest.fixture
def pods(pod_runs):
  return pod_runs("ppo")


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_every_example_trains_across_processes_like_collocated(pod_runs, algo):
  out, _ = pod_runs(algo)
  ref = _load(out / f"{algo}_single.npz")
  for name in EXAMPLES:
    p0, p1 = _load(out / f"{algo}_{name}_p0.npz"), _load(out / f"{algo}_{name}_p1.npz")
    for k in p0:  # every process holds the same parameters
      np.testing.assert_array_equal(p0[k], p1[k], err_msg=f"{name}: {k}")
    _assert_params_close(p0, ref, f"{algo} {name} vs collocated")
    assert (out / f"{algo}_{name}" / "checkpoints" / str(ITERATIONS)).is_dir()
  assert not any(np.array_equal(ref[k], 0 * ref[k]) for k in ref if "kernel" in k)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_every_transfer_payload_equals_its_source_bit_for_bit(pod_runs, algo):
  out, _ = pod_runs(algo)
  checked = 0
  for algo in (algo,):
    for name in ("pipelined", "separated"):
      for pid in (0, 1):
        log = json.loads((out / f"{algo}_{name}_transfers_p{pid}.json").read_text())
        assert len(log) >= 4, (algo, name, log)  # params, trajectories, actions, obs, ...
        for entry in log:
          assert entry["bit_exact"] and entry["placed"], (algo, name, entry)
        checked += len(log)
  assert checked >= 16


def test_process_zero_logs_where_everything_runs(pods):
  _, logs = pods
  out0 = logs[0]
  header = re.search(r"component\s+global ids\s+process\s+host\s+local ids\s+device kind",
                     out0)
  assert header, out0[-3000:]
  host = socket.gethostname()
  # separated: env on process 0's devices 0-3, actor on process 1's 0-7 (global 8-15).
  assert re.search(rf"env\s+0-3\s+0\s+{re.escape(host)}\s+0-3\s+cpu", out0), out0[-3000:]
  assert re.search(rf"actor\s+8-15\s+1\s+{re.escape(host)}\s+0-7\s+cpu", out0), out0[-3000:]
  assert "component" not in logs[1]  # only process 0 logs


def test_four_processes_with_groups_across_process_boundaries(pods, tmp_path):
  out, _ = pods
  finish(_start(4, 4, "pod", tmp_path, "ppo", "four"))
  params = [_load(tmp_path / f"ppo_four_p{i}.npz") for i in range(4)]
  for p in params[1:]:
    for k in p:
      np.testing.assert_array_equal(p[k], params[0][k], err_msg=k)
  _assert_params_close(params[0], _load(out / "ppo_single.npz"), "4 x 4 vs collocated")
  for i in range(4):
    log = json.loads((tmp_path / f"ppo_four_transfers_p{i}.json").read_text())
    assert log and all(e["bit_exact"] and e["placed"] for e in log), log


def test_checkpoints_move_between_pods(pods, tmp_path):
  """A 2-process checkpoint restores on one process with another placement, exactly; a
  one-process checkpoint restores on 2 processes with the separated placement, exactly."""
  out, _ = pods
  _run_single(tmp_path, "ppo", restore_from=str(out / "ppo_separated"))
  _assert_equal(_load(tmp_path / "restored.npz"), _load(out / "ppo_separated_p0.npz"))

  finish(_start(2, 8, "resume", tmp_path, out / "ppo_single", ITERATIONS + 1, 1))
  single = _load(out / "ppo_single.npz")
  for pid in (0, 1):
    _assert_equal(_load(tmp_path / f"restored_p{pid}.npz"), single)
  assert (out / "ppo_single" / "checkpoints" / str(ITERATIONS + 1)).is_dir()


def _assert_equal(got, want):
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_sigterm_stops_a_two_process_run_cleanly_and_resume_is_exact(pods, tmp_path):
  out, _ = pods
  run_dir = tmp_path / "run"
  procs = _start(2, 8, "stop", run_dir)
  deadline = time.time() + 300
  while not (run_dir / "config.json").exists() and time.time() < deadline:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # one process told: the pod agrees on the step
  outs = finish(procs, timeout=600)
  stopped = re.search(rf"SIGTERM: stopped after iteration (\d+)/{ITERATIONS} with checkpoint "
                      r"step (\d+)", outs[0])
  assert stopped and stopped.group(1) == stopped.group(2), outs[0][-3000:]
  n = int(stopped.group(1))
  assert 1 <= n < ITERATIONS
  assert all(f"stopped at {n}" in o for o in outs), [o[-500:] for o in outs]
  finish(_start(2, 8, "resume", tmp_path, run_dir, ITERATIONS, 0))
  uninterrupted = _load(out / "ppo_separated_p0.npz")
  for pid in (0, 1):
    _assert_equal(_load(tmp_path / f"resumed_p{pid}.npz"), uninterrupted)


# --------------------------------------------------------------------------------------
# Multi-host errors: a message naming the cause, in bounded time.


def test_unreachable_coordinator_fails_with_a_message_in_bounded_time(tmp_path):
  port = free_port()  # nobody listens: process 1 waits for a coordinator that never comes
  t0 = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "panda_rl.train", f"--config={CONFIGS['ppo']}",
       "--config.cluster.num_nodes=2", "--config.cluster.process_id=1",
       f"--config.cluster.coordinator_address=localhost:{port}",
       "--config.cluster.init_timeout_s=5", f"--config.runner.logger.log_path={tmp_path}"],
      cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=240)
  elapsed = time.time() - t0
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("panda_rl.train: ")]
  assert lines and "the coordinator (process 0) at " in lines[0], (
      proc.stderr[-3000:])
  assert f"localhost:{port}" in lines[0] and "init_timeout_s=5" in lines[0]
  assert elapsed < 120, elapsed


def test_a_process_id_outside_the_pod_is_refused_before_starting():
  from panda_rl.config import PlacementError
  from panda_rl.distributed import initialize_distributed

  with pytest.raises(PlacementError, match=r"process id 2 is outside 0-1 \(cluster.num_nodes=2"):
    initialize_distributed(pod_config(nproc=2, pid=2, port=1))


def test_a_lost_process_ends_the_others_with_a_message_in_bounded_time(tmp_path):
  run_dir = tmp_path / "run"
  procs = _start(2, 8, "stop", run_dir, "lost")
  deadline = time.time() + 300
  while not (run_dir / "config.json").exists() and time.time() < deadline:
    time.sleep(0.2)
  time.sleep(2.0)
  procs[1].kill()  # SIGKILL: no goodbye
  t0 = time.time()
  try:
    out0 = procs[0].communicate(timeout=180)[0]
  except subprocess.TimeoutExpired:
    procs[0].kill()
    raise AssertionError("process 0 hung after process 1 died")
  elapsed = time.time() - t0
  procs[1].communicate()
  assert procs[0].returncode != 0
  # JAX's coordination service names the cause and ends the process (heartbeat timeout).
  assert "tasks are unhealthy (stopped sending heartbeats)" in out0, out0[-4000:]
  assert elapsed < 150, elapsed


if __name__ == "__main__":
  mode, *args = sys.argv[1:]
  if mode == "pod":
    _child_pod(args[3], int(args[0]), int(args[1]), int(args[2]), args[4], args[5])
  elif mode == "single":
    _child_single(args[0], args[1], args[2] if len(args) > 2 else "")
  elif mode == "resume":
    _child_resume(args[3], int(args[0]), int(args[1]), int(args[2]), args[4], args[5],
                  bool(int(args[6])))
  elif mode == "stop":
    _child_stop(args[3], int(args[0]), int(args[1]), int(args[2]), args[4:] == ["lost"])
  else:
    raise SystemExit(f"unknown mode {mode!r}")
