"""Placement (issue 6): parsing and validation of cluster.component_placement, the same
results for every placement and pipeline depth on 16 virtual CPU devices (GRPO's:
tests/test_grpo.py), and a two-process multi-host run on localhost
(equal to one process on the same 4 devices, resumed or not; placements whose groups
span processes: tests/test_pods.py).

The device count is fixed when JAX starts, so the multi-device checks run this file as a
subprocess (``python tests/test_placement.py equivalence|multihost ...``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""

import os
import sys

if __name__ == "__main__":  # a subprocess: the repo importable before panda_rl is imported
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import panda_rl  # noqa: F401,E402  (first: XLA flags)

import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from panda_rl import metrics as M  # noqa: E402
from panda_rl import placement as pl  # noqa: E402
from panda_rl.checkpoint import Checkpointer  # noqa: E402
from panda_rl.config import load_config  # noqa: E402
from processes import finish, free_port, with_cpu_devices  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")

# The placements of the issue (16 devices) plus references; (component_placement, stages).
PLACEMENTS = {
    "one_device": ("env,rollout,actor:0", 1),
    "collocated": ("env,rollout,actor:all", 1),
    "collocated_pipelined": ("env,rollout,actor:all", 2),
    "disaggregated": ("env:0-3;rollout:4-7;actor:8-15", 1),
    "hybrid_pipelined": ("env:0-7;rollout:8-15;actor:0-15", 2),
}
# Correlated exploration noise (rollout.noise_correlation) through the step-by-step rollout
# of a pipelined hybrid placement, against the fused scan on one device.
CORRELATED = ("hybrid_pipelined_correlated", "env:0-7;rollout:8-15;actor:0-15", 2, 0.9)

TINY = {
    "env.train.env_id": "PointReach-v0",
    "env.train.overrides": {},
    "env.train.num_envs": 32,
    "env.eval.num_envs": 8,
    "rollout.num_steps": 16,
    "actor.model.policy_hidden": (16, 16),
    "actor.model.value_hidden": (16, 16),
    "actor.optim.lr": 3e-3,
    "algorithm.update_epochs": 2,
    "algorithm.num_minibatches": 4,
    "runner.max_epochs": 2,
}


def tiny_config(**overrides):
  return load_config(CONFIG, {**TINY, **overrides})


# --------------------------------------------------------------------------------------
# Parsing and validation (no devices needed: validation takes a device list).


@pytest.mark.parametrize("spec,groups", [
    ("env,rollout,actor:all", {"env": range(16), "rollout": range(16), "actor": range(16)}),
    ("env:0-3;rollout:4-7;actor:8-15",
     {"env": range(0, 4), "rollout": range(4, 8), "actor": range(8, 16)}),
    ("env: 0-7, rollout: 8-15, actor: 0-15",  # ARCHITECTURE.md's comma style
     {"env": range(0, 8), "rollout": range(8, 16), "actor": range(16)}),
    ("env,rollout:0-7;actor:3", {"env": range(8), "rollout": range(8), "actor": [3]}),
    ({"env": "0-3", "rollout": (4, 7), "actor": range(8, 16)},
     {"env": range(0, 4), "rollout": range(4, 8), "actor": range(8, 16)}),
    ({"env,rollout,actor": "all"}, {"env": range(16), "rollout": range(16), "actor": range(16)}),
])
def test_parse(spec, groups):
  got = pl.parse_component_placement(spec, 16)
  assert got == {k: tuple(v) for k, v in groups.items()}


@pytest.mark.parametrize("spec,match", [
    ("env:0-3;rollout:4-7;actor:8-15",
     r"(?s)8 devices available.*range 8-15 is outside the devices \(ids 0-7\)"),
    ("env:0-3;rollout:4-7", r"(?s)8 devices available.*'actor' not placed"),
    ("env,rollout,actor,learner:all", r"unknown component 'learner'"),
    ("env:0-3;env,rollout:4-7;actor:all", r"component 'env' is placed twice"),
    ("env:3-1;rollout,actor:all", r"range 3-1 is empty"),
    ("env=0-3", r"cannot parse"),
    ("", r"expected a string"),
])
def test_parse_errors(spec, match):
  with pytest.raises(pl.PlacementError, match=match):
    pl.parse_component_placement(spec, 8)


def _placement(spec, stages=1, devices=16, **overrides):
  config = tiny_config(**{"cluster.component_placement": spec,
                          "rollout.pipeline_stage_num": stages, **overrides})
  return pl.from_config(config, devices=[object()] * devices)


def test_the_issue_placements_validate():
  coll = _placement("env,rollout,actor:all")
  assert coll.collocated and coll.fused_rollout and coll.size("env") == 16
  dis = _placement("env:0-3;rollout:4-7;actor:8-15")
  assert not dis.collocated and not dis.fused_rollout
  assert (dis.size("env"), dis.size("rollout"), dis.size("actor")) == (4, 4, 8)
  hyb = _placement("env:0-7;rollout:8-15;actor:0-15", stages=2)
  assert hyb.pipeline_stages == 2 and hyb.groups["actor"] == tuple(range(16))


@pytest.mark.parametrize("spec,stages,overrides,match", [
    ("env:0-3;rollout:4-7;actor:8-15", 1, {"env.train.num_envs": 34},
     r"num_envs=34 does not divide over 4 env devices x 1 pipeline stages"),
    ("env,rollout,actor:all", 3, {}, r"num_envs=32 does not divide over 16 env devices x 3"),
    ("env:0-7;rollout:8-15;actor:0-15", 2, {"env.train.num_envs": 24},
     r"does not divide over 8 env devices x 2 pipeline stages = 16"),
    ("env,rollout:0-7;actor:0-11", 1, {},
     r"num_envs=32 does not divide over the 12 actor devices"),
    ("env,rollout,actor:all", 1, {"algorithm.num_minibatches": 64},
     r"minibatch of 8 samples .* does not divide over the 16 actor devices"),
    ("env:0-5;rollout:4-7;actor:all", 1, {}, r"partly overlap"),
    ("env,rollout,actor:all", 0, {}, r"pipeline_stage_num must be an int >= 1"),
])
def test_bad_placements_fail_before_compiling(spec, stages, overrides, match):
  with pytest.raises(pl.PlacementError, match=match) as err:
    _placement(spec, stages, **overrides)
  if stages >= 1:
    assert "16 devices available" in str(err.value)


def test_trainer_rejects_a_bad_placement_with_the_device_count():
  from panda_rl import training

  config = tiny_config(**{"cluster.component_placement": "env:0-3;rollout:4-7;actor:8-15"})
  with pytest.raises(pl.PlacementError, match=f"{jax.device_count()} device"):
    training.Trainer(config)


def test_stage_split_and_merge_round_trip():
  from panda_rl import rollout as rollout_lib

  x = {"a": np.arange(24).reshape(24), "b": np.arange(48).reshape(24, 2)}
  for k, block in [(1, 1), (2, 1), (3, 2), (4, 3)]:
    stages = rollout_lib.split_stages(x, k, block=block)
    assert all(s["a"].shape == (24 // k,) for s in stages)
    if k > 1:  # env i is in stage (i // block) % k
      np.testing.assert_array_equal(np.asarray(stages[1]["a"]) // block % k, 1)
    back = rollout_lib.merge_stages(stages, block=block)
    jax.tree.map(np.testing.assert_array_equal, back, x)
  traj = np.arange(5 * 24).reshape(5, 24)  # [T, B], stages along axis 1
  back = rollout_lib.merge_stages(rollout_lib.split_stages(traj, 2, axis=1), axis=1)
  np.testing.assert_array_equal(back, traj)


# --------------------------------------------------------------------------------------
# Subprocesses.


@pytest.fixture(scope="module")
def sub_env():
  e = dict(os.environ)
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_PLATFORMS"] = "cpu"
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    e.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  return e


def _with_devices(env, n):
  e = dict(env)
  e["XLA_FLAGS"] = (e.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}")
  return e


def _flat_params(state):
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _train(config, iterations):
  from panda_rl import training

  trainer = training.Trainer(config)
  state = trainer.init(jax.random.PRNGKey(config.runner.seed))
  history = []
  for _ in range(iterations):
    state, metrics = trainer.train_iteration(state)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return trainer, state, history


def _child_equivalence(out_dir: str) -> None:
  """Trains 2 iterations under every placement; writes params and metrics per placement."""
  assert jax.device_count() == 16, jax.devices()
  runs = {name: (spec, stages, 0.0) for name, (spec, stages) in PLACEMENTS.items()}
  runs[CORRELATED[0]] = CORRELATED[1:]
  for name, (spec, stages, rho) in runs.items():
    config = tiny_config(**{"cluster.component_placement": spec,
                            "rollout.pipeline_stage_num": stages,
                            "rollout.noise_correlation": rho})
    trainer, state, history = _train(config, 2)
    env_devices = {d.id for d in state.env_state.obs.sharding.device_set}
    assert env_devices == {trainer.placement.devices[i].id
                           for i in trainer.placement.groups["env"]}, name
    np.savez(os.path.join(out_dir, f"{name}.npz"), **_flat_params(state))
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
      json.dump(history, f)
    print(f"{name}: {trainer.placement.describe()}", flush=True)
    if name == "one_device":
      saved = jax.device_get(state)
      with Checkpointer(os.path.join(out_dir, "ckpt")) as ckpt:
        ckpt.save(2, state, config)
  _check_restore_across_placements(os.path.join(out_dir, "ckpt"), saved)


def _check_restore_across_placements(directory: str, saved) -> None:
  """A checkpoint written under one placement restores onto another one's devices."""
  from panda_rl import training

  config = tiny_config(**{"cluster.component_placement": PLACEMENTS["disaggregated"][0]})
  trainer = training.Trainer(config)
  target = trainer.abstract_state(jax.random.PRNGKey(0))
  with Checkpointer(directory) as ckpt:
    state, _, step = ckpt.restore(target)
  assert step == 2
  env_ids = {trainer.placement.devices[i].id for i in trainer.placement.groups["env"]}
  actor_ids = {trainer.placement.devices[i].id for i in trainer.placement.groups["actor"]}
  assert {d.id for d in state.env_state.obs.sharding.device_set} == env_ids
  assert {d.id for d in jax.tree.leaves(state.params)[0].sharding.device_set} == actor_ids
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), saved)
  state, _ = trainer.train_iteration(state)  # and trains on from there
  assert int(state.iteration) == 3


@pytest.fixture(scope="module")
def equivalence(sub_env, tmp_path_factory):
  """The 16-device child: every placement trained 2 iterations (GRPO in every placement:
  tests/test_grpo.py)."""
  out = tmp_path_factory.mktemp("equivalence")
  proc = subprocess.run([sys.executable, __file__, "equivalence", str(out)], cwd=REPO,
                        env=_with_devices(sub_env, 16), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return out


def _assert_same_as_one_device(tmp_path, names, **overrides):
  # The reference: this process's default single-device trainer, the unsharded program.
  _, state, ref_history = _train(tiny_config(**overrides), 2)
  ref = _flat_params(state)
  for name in names:
    params = dict(np.load(tmp_path / f"{name}.npz"))
    history = json.loads((tmp_path / f"{name}.json").read_text())
    assert params.keys() == ref.keys()
    for k in ref:
      np.testing.assert_allclose(params[k], ref[k], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{name}: {k}")
    for it, (got, want) in enumerate(zip(history, ref_history)):
      assert got.keys() == want.keys()
      for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: iteration {it + 1} {k}")
  assert ref_history[1][M.NUM_EPISODES] == 32  # the runs did something


def test_same_results_for_every_placement(equivalence):
  _assert_same_as_one_device(equivalence, PLACEMENTS)


def test_correlated_noise_same_in_stepped_and_fused_rollouts(equivalence):
  """The stepped rollout draws a rollout's AR(1) noise once and acts on step t's slice of
  it, per pipeline stage: the same noise as the fused scan."""
  name, _, _, rho = CORRELATED
  _assert_same_as_one_device(equivalence, [name], **{"rollout.noise_correlation": rho})


def _child_multihost(workdir: str, process_id: int, port: int, epochs: int,
                     resume: bool) -> None:
  """One process of a 2-process run: trains with train_and_evaluate, dumps its params."""
  from panda_rl.train import train_and_evaluate

  config = tiny_config(**{
      "cluster.num_nodes": 2, "cluster.process_id": process_id,
      "cluster.coordinator_address": f"localhost:{port}",
      "cluster.component_placement": "env,rollout,actor:all",
      "runner.max_epochs": epochs, "runner.save_interval": 2,
      "runner.val_check_interval": 2, "runner.resume": resume})
  result = train_and_evaluate(config, workdir)
  assert jax.process_count() == 2 and jax.device_count() == 4
  assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(result.state.params))
  np.savez(os.path.join(workdir, f"params_{epochs}_p{process_id}.npz"),
           **_flat_params(result.state))
  jax.distributed.shutdown()


CROSS_PROCESS = "env:0-1;rollout:2-3;actor:0-3"  # groups on either process (tests/test_pods.py)


def _child_single(workdir: str, epochs: int) -> None:
  """The multihost config on ONE process with the same 4 devices (no jax.distributed)."""
  from panda_rl.train import train_and_evaluate

  config = tiny_config(**{
      "cluster.component_placement": "env,rollout,actor:all", "runner.max_epochs": epochs,
      "runner.save_interval": 2, "runner.val_check_interval": 2})
  result = train_and_evaluate(config, workdir)
  assert jax.process_count() == 1 and jax.device_count() == 4
  assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(result.state.params))
  np.savez(os.path.join(workdir, f"params_{epochs}.npz"), **_flat_params(result.state))
  with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
    tree = ckpt.saved_tree(2)
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree,
                            is_leaf=lambda x: hasattr(x, "dtype"))
    state, _, _ = ckpt.restore(abstract, step=2)
  np.savez(os.path.join(workdir, "params_2.npz"),
           **{jax.tree_util.keystr(p): np.asarray(v) for p, v in
              jax.tree_util.tree_leaves_with_path(state["params"])})


def test_cross_process_placement_is_fine_on_one_process():
  placement = _placement(CROSS_PROCESS, devices=4)
  assert placement.groups["env"] == (0, 1) and placement.groups["rollout"] == (2, 3)


def _two_processes(env, workdir, epochs, resume):
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, __file__, "multihost", str(workdir), str(i), str(port), str(epochs),
       str(int(resume))], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  return finish(procs, timeout=600)


# 2 processes x 2 devices against 1 process x 4 devices: the same global program, but the
# cross-device reductions differ (gloo between processes), so not bit-identical. Measured:
# max |difference| 6.0e-8 of parameters up to ~1.0, after 2 and after 2 + 1 resumed iterations.
SINGLE_RTOL, SINGLE_ATOL = 1e-5, 1e-6


def test_two_processes_train_identically_and_resume(sub_env, tmp_path):
  env = _with_devices(sub_env, 2)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # two writers of one cache: keep them apart
  env["PANDA_RL_COMPILATION_CACHE"] = "0"
  _two_processes(env, tmp_path, epochs=2, resume=False)
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert list(tmp_path.glob("events.out.tfevents.*"))  # process 0 logged
  p0, p1 = (dict(np.load(tmp_path / f"params_2_p{i}.npz")) for i in range(2))
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)

  # A second launch restores the 2-process checkpoint and trains one more iteration.
  _two_processes(env, tmp_path, epochs=3, resume=True)
  assert (tmp_path / "checkpoints" / "3").is_dir()
  q0, q1 = (dict(np.load(tmp_path / f"params_3_p{i}.npz")) for i in range(2))
  for k in q0:
    np.testing.assert_array_equal(q0[k], q1[k], err_msg=k)
    assert not np.array_equal(q0[k], p0[k]) or "log_std" in k

  # The same config on ONE process with the same 4 devices, straight to 3 iterations: the
  # 2-process run after 2 iterations and the resumed one after 3 agree with it.
  single = tmp_path / "single"
  proc = subprocess.run([sys.executable, __file__, "single", str(single), "3"], cwd=REPO,
                        env=_with_devices(sub_env, 4), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  for two_proc, step in ((p0, 2), (q0, 3)):
    ref = dict(np.load(single / f"params_{step}.npz"))
    assert ref.keys() == two_proc.keys()
    for k in ref:
      np.testing.assert_allclose(two_proc[k], ref[k], rtol=SINGLE_RTOL, atol=SINGLE_ATOL,
                                 err_msg=f"step {step}: {k}")


if __name__ == "__main__":
  mode, *args = sys.argv[1:]
  if mode == "equivalence":
    _child_equivalence(args[0])
  elif mode == "multihost":
    _child_multihost(args[0], int(args[1]), int(args[2]), int(args[3]), bool(int(args[4])))
  elif mode == "single":
    _child_single(args[0], int(args[1]))
  else:
    raise SystemExit(f"unknown mode {mode!r}")


_SPLIT_EVAL = """
import json, os
import panda_rl, jax, jax.numpy as jnp, numpy as np
from panda_rl import evaluation
env = panda_rl.make("PointReach-v0")

class Policy:  # a fixed linear policy, given as load_policy's are (params, normalizer, apply)
  params = {"w": jnp.asarray(np.linspace(-1.0, 1.0, env.observation_size * env.action_size)
                             .reshape(env.observation_size, env.action_size), jnp.float32)}
  normalizer = jnp.zeros(())
  @staticmethod
  def apply(params, normalizer, obs):
    return jnp.tanh(obs @ params["w"])

  def __call__(self, obs):
    return self.apply(self.params, self.normalizer, obs)

constrain, _ = evaluation.local_split(8)
run = evaluation.episodes_program(env, Policy(), 8)
out = run(jax.random.PRNGKey(3))
print("RESULT " + json.dumps({
    "devices": jax.device_count(), "split": constrain is not None,
    "on_devices": len(out.ret.sharding.device_set),
    "ret": np.asarray(out.ret).tolist(), "length": np.asarray(out.length).tolist()}))
"""


def _split_eval(cli_env, devices):
  env = with_cpu_devices(dict(cli_env, JAX_PLATFORMS="cpu"), devices)
  proc = subprocess.run([sys.executable, "-c", _SPLIT_EVAL], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_evaluate_splits_its_episodes_over_the_cpu_devices_with_the_same_results(cli_env):
  """``evaluate``'s episodes (``episodes_program``) run on every local device, each playing
  its share of the envs, and give the episodes of a one-device run."""
  one, two = _split_eval(cli_env, 1), _split_eval(cli_env, 2)
  assert (one["devices"], one["split"], one["on_devices"]) == (1, False, 1)
  assert (two["devices"], two["split"], two["on_devices"]) == (2, True, 2)
  assert len(set(one["ret"])) > 1  # episodes differ: a real comparison, env by env
  np.testing.assert_allclose(two["ret"], one["ret"], rtol=1e-5, atol=1e-5)
  assert two["length"] == one["length"]
