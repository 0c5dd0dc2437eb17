"""Transfers between device groups (panda_rl.transfer): the collective path on one process
with 16 virtual devices, every layout the placements use, bit for bit; the round schedule.
Across processes: tests/test_pods.py (every transfer of real runs checked bit for bit)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(HERE))

import panda_rl  # noqa: F401,E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from panda_rl import transfer  # noqa: E402

REPO = Path(HERE).parent
# (source devices, destination devices, source split axis or None, destination's, shape)
CASES = [
    ((0, 7), (8, 15), 0, 0, (64, 5)),          # env -> rollout: actions / observations
    ((0, 15), (0, 7), 0, 0, (64,)),            # actor (all) -> env subset, overlapping
    ((0, 3), (4, 15), None, None, (3, 4)),     # replicated params to a larger group
    ((0, 7), (8, 15), 1, 1, (4, 48, 3)),       # trajectories [T, B, ...] split along B
    ((8, 15), (0, 15), None, 0, (32,)),        # replicated -> split
    ((0, 3), (4, 7), 0, None, (16, 2)),        # split -> replicated (gather)
    ((0, 15), (8, 15), None, None, ()),        # a scalar counter
    ((2, 5), (6, 13), 0, 0, (24, 2)),          # 4 -> 8 devices, unequal shard sizes
    ((6, 13), (2, 5), 0, 0, (24, 2)),          # and back
    ((0, 7), (8, 15), 0, 0, (64, 0)),          # an empty leaf (MJX has some)
]


def _child(out):
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  devices = jax.devices()
  assert len(devices) == 16

  def sharding(ids, axis):
    mesh = Mesh(np.array(devices[ids[0]:ids[1] + 1]), ("batch",))
    return NamedSharding(mesh, P() if axis is None else P(*([None] * axis), "batch"))

  rng = np.random.default_rng(0)
  mover = transfer.Mover(method="collective")
  results = []
  for src, dst, a, b, shape in CASES:
    x = rng.standard_normal(shape).astype(np.float32)
    if x.size:
      x.flat[0] = -0.0  # the sign of zero survives (no arithmetic on the payload)
    y = mover(jax.device_put(x, sharding(src, a)), sharding(dst, b))
    shards_ok = all(np.asarray(s.data).tobytes() == x[s.index].tobytes()
                    for s in y.addressable_shards)
    results.append({"case": repr((src, dst, a, b, shape)), "placed": y.sharding == sharding(dst, b),
                    "bit_exact": np.asarray(y).tobytes() == x.tobytes(), "shards": shards_ok})
  tree = {"i": jax.device_put(np.arange(64, dtype=np.int32), sharding((0, 7), 0)),
          "b": jax.device_put(np.array([True, False]), sharding((0, 7), None)),
          "k": jax.device_put(np.array([7, 9], np.uint32), sharding((0, 7), None))}
  moved = mover(tree, {"i": sharding((8, 15), 0), "b": sharding((8, 15), None),
                       "k": sharding((8, 15), None)})
  results.append({"case": "tree of int32, bool, uint32", "placed": True, "shards": True,
                  "bit_exact": all(np.array_equal(np.asarray(moved[k]), np.asarray(tree[k]))
                                   and moved[k].dtype == tree[k].dtype for k in tree)})
  mover.wait()
  Path(out).write_text(json.dumps(results))


def test_collective_transfers_are_exact_copies(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=16"
  out = tmp_path / "results.json"
  proc = subprocess.run([sys.executable, __file__, str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads(out.read_text())
  assert len(results) == len(CASES) + 1
  for r in results:
    assert r["placed"] and r["bit_exact"] and r["shards"], r


def test_rounds_are_permutations_covering_every_edge():
  rng = random.Random(0)
  for _ in range(50):
    n = rng.randint(1, 12)
    edges = list({(rng.randrange(n), rng.randrange(n), rng.randrange(4), rng.randrange(4))
                  for _ in range(rng.randint(1, 40))})
    rounds = transfer._schedule(edges)
    assert sorted(e for r in rounds for e in r) == sorted(edges)
    for r in rounds:
      senders, receivers = [e[0] for e in r], [e[1] for e in r]
      assert len(set(senders)) == len(senders) and len(set(receivers)) == len(receivers)


def test_bad_method_is_refused():
  import pytest

  with pytest.raises(transfer.TransferError, match="method must be one of"):
    transfer.Mover(method="rdma")


if __name__ == "__main__":
  _child(sys.argv[1])
