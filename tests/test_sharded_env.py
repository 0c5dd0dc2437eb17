"""Envs stepped per device (panda_rl/envs/sharded.py): the same states bit for bit as the
env stepped under jit's partitioner, and no collective left inside a step.

The device checks run in a subprocess with 2 XLA CPU devices (``python
tests/test_sharded_env.py``), whatever this machine's cores.
"""

import os
import sys

if __name__ == "__main__":  # a subprocess: the repo importable before panda_rl is imported
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import panda_rl  # noqa: E402
from panda_rl.envs.base import AutoResetWrapper  # noqa: E402
from panda_rl.envs.groups import GroupAutoResetWrapper  # noqa: E402
from panda_rl.envs.sharded import ShardedEnv, shard_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# One worker runs this module, so its device checks (one subprocess) run once.
pytestmark = pytest.mark.xdist_group("sharded_env")


def _mesh(n):
  return jax.make_mesh((n,), ("batch",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def _place(tree, mesh, batch):
  if batch % mesh.size:  # as the placement does: a batch that does not divide stays whole
    return tree
  split, rep = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.device_put(x, split if x.ndim and x.shape[0] == batch
                                               else rep), tree)


def _steps(env, num_steps):
  """A jitted ``state -> states after each of num_steps steps`` under fixed actions."""
  def run(state):
    actions = jax.random.uniform(jax.random.PRNGKey(7), (num_steps, env.num_envs,
                                                         env.action_size), minval=-1.0,
                                 maxval=1.0)
    return jax.lax.scan(lambda s, a: (env.step(s, a),) * 2, state, actions)[1]
  return jax.jit(run)


def _compare(plain, sharded, num_steps, mesh):
  """Runs both envs from the same placed state: (bitwise equal, all-reduces plain / sharded,
  envs that finished an episode)."""
  state = _place(plain.reset(jax.random.PRNGKey(0)), mesh, plain.num_envs)
  fa, fb = _steps(plain, num_steps), _steps(sharded, num_steps)
  a, b = fa(state), fb(state)
  same = all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  count = lambda f: f.lower(state).compile().as_text().count("all-reduce(")
  return same, count(fa), count(fb), int(np.asarray(a.done).sum())


def _device_checks():
  """Run in the subprocess: every check's numbers, as JSON."""
  assert jax.device_count() == 2, jax.devices()
  mesh = _mesh(2)
  out = {}
  # The pick-cube physics: solver loops, contacts, auto-resets (episodes of 4 steps).
  pick = AutoResetWrapper(panda_rl.make("PandaPickCube-v0", episode_length=4), 8)
  out["pick"] = _compare(pick, ShardedEnv(pick, mesh), 9, mesh)
  # GRPO's group wrapper (groups of 2 consecutive envs must stay on one device).
  point = panda_rl.make("PointReach-v0")
  group = GroupAutoResetWrapper(point, 8, 2)
  out["groups"] = _compare(group, ShardedEnv(group, mesh), 30, mesh)
  # A batch that does not divide over the devices steps unsplit, with the same result.
  odd = AutoResetWrapper(point, 5)
  out["odd"] = _compare(odd, ShardedEnv(odd, mesh), 30, mesh)
  # What the trainer gets from its placement (Trainer.env = placement.sharded_env(...)).
  from panda_rl import placement as pl

  batched = AutoResetWrapper(point, 8)
  kinds = {}
  for name, ids in (("one device", (0,)), ("two devices", (0, 1))):
    placement = pl.Placement(devices=tuple(jax.devices()), num_envs=8,
                             groups={c: ids for c in pl.COMPONENTS})
    kinds[name] = type(placement.sharded_env(batched)).__name__
  kinds["num_envs"] = pl.Placement(devices=tuple(jax.devices()), num_envs=8, groups={
      c: (0, 1) for c in pl.COMPONENTS}).sharded_env(batched).num_envs
  out["placement"] = kinds
  return out


@pytest.fixture(scope="module")
def device_checks(cli_env):
  from tests.processes import with_cpu_devices

  env = with_cpu_devices(dict(cli_env, JAX_PLATFORMS="cpu"), 2)
  proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_pick_cube_steps_per_device_bit_for_bit_with_no_collective(device_checks):
  same, plain, sharded, finished = device_checks["pick"]
  assert finished > 0  # auto-resets happened inside the compared steps
  assert same
  # Under jit's partitioner, the solver's loop and the reset's cond meet across devices;
  # per device, nothing does.
  assert plain > 0 and sharded == 0, (plain, sharded)


def test_grpo_groups_step_per_device_bit_for_bit(device_checks):
  same, _, sharded, finished = device_checks["groups"]
  assert finished > 0 and same and sharded == 0


def test_a_batch_that_does_not_divide_steps_unsplit(device_checks):
  same, plain, sharded, finished = device_checks["odd"]
  assert finished > 0 and same and sharded == plain


def test_a_state_with_a_leaf_not_per_env_steps_unsplit():
  """Splitting such a leaf would make it per device; the step runs as given instead."""
  calls = []

  def step(state, action):
    calls.append(jax.tree.map(jnp.shape, state))
    return {"x": state["x"] + action, "count": state["count"] + 1}

  stepped = shard_step(step, _mesh(1) if jax.device_count() == 1 else _mesh(2))
  state = {"x": jnp.zeros((4, 2)), "count": jnp.zeros(())}
  new = stepped(state, jnp.ones((4, 2)))
  assert calls == [{"x": (4, 2), "count": ()}]  # called once, on the whole batch
  np.testing.assert_array_equal(new["x"], np.ones((4, 2)))
  assert float(new["count"]) == 1.0


def test_the_placement_steps_envs_per_device_only_on_several_env_devices(device_checks):
  assert device_checks["placement"] == {"one device": "AutoResetWrapper",
                                        "two devices": "ShardedEnv", "num_envs": 8}


if __name__ == "__main__":
  print("RESULT " + json.dumps(_device_checks()), flush=True)
