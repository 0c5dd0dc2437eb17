"""The env's share of C MuJoCo's ceiling, both timed in one process, turn about.

    python scripts/benchmark_vs_c_mujoco.py                     # B = 2048, 7 rounds
    python scripts/benchmark_vs_c_mujoco.py --batch 4096 --rounds 9 --json vs_c.json

Issue 13's first target is a ratio: ``PandaPickCube-v0``'s env steps/s at half of what C
MuJoCo does with the same scene. Measured by two scripts minutes apart
(``benchmark_env.py``, ``benchmark_c_mujoco.py``), that ratio moves with whatever else the
machine's host runs at the time: on a shared 2-core VM the same script has read 36,415 and
47,321 C MuJoCo control steps/s five minutes apart. So here each round times one call of
each, back to back, in the same process:

* the env: ``benchmark_env.py``'s program (``--steps`` control steps of ``--batch`` envs,
  random actions, auto-reset, the batch split over every JAX device and each device
  stepping its own envs, as training does);
* C MuJoCo: ``benchmark_c_mujoco.py``'s ``mujoco.rollout`` of the same scene
  (``--c-batch`` rollouts of ``--c-steps`` control steps, physics only, ``--threads``).

Each round gives a ratio of the two speeds; the report is the median ratio over
``--rounds`` rounds (and both speeds' medians), as a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_c_mujoco as c_bench  # noqa: E402  (scripts/ is not a package)
import benchmark_env as env_bench  # noqa: E402


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=2048, help="MJX envs")
  p.add_argument("--steps", type=int, default=40, help="MJX control steps per timed call")
  p.add_argument("--c-batch", type=int, default=512, help="C MuJoCo rollouts")
  p.add_argument("--c-steps", type=int, default=100, help="C MuJoCo control steps per rollout")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                 help="C MuJoCo threads (default: every core)")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--override", nargs="*", default=[], help="env settings key=value")
  p.add_argument("--json", default="vs_c_mujoco.json")
  return p.parse_args(argv)


def _mjx_call(env_id, overrides, batch, steps):
  """A zero-argument function that runs (and waits for) one timed MJX call, compiled and
  warmed up here."""
  import jax

  import panda_rl

  env = env_bench.batched(panda_rl.make(env_id, **overrides), batch)
  fn = jax.jit(env_bench.make_rollout(env, steps), donate_argnums=0)
  carry = [env_bench.placer(batch)(env.reset(jax.random.PRNGKey(0))), jax.random.PRNGKey(1)]

  def call():
    state, key, r = fn(*carry)
    jax.block_until_ready(r)
    carry[:] = [state, key]

  for _ in range(2):  # compile, then the slow first call after compiling (benchmark_env.py)
    call()
  return call


def _c_call(overrides, batch, steps, threads):
  """A zero-argument function that runs one C MuJoCo rollout call, and a closer."""
  import mujoco
  from mujoco import rollout

  model, states, controls, _ = c_bench.workload(overrides, batch, steps)
  datas = [mujoco.MjData(model) for _ in range(threads)]
  pool = rollout.Rollout(nthread=threads)

  def call():
    pool.rollout(model, datas, states, controls)

  call()  # warm-up
  return call, pool.close


def _time(call) -> float:
  t0 = time.perf_counter()
  call()
  return time.perf_counter() - t0


def main(argv=None):
  args = _parse(argv)
  import jax

  from panda_rl.envs.registry import parse_overrides

  overrides = parse_overrides(args.override)
  mjx_call = _mjx_call("PandaPickCube-v0", overrides, args.batch, args.steps)
  c_call, close = _c_call(overrides, args.c_batch, args.c_steps, args.threads)
  rows = []
  print(f"{'round':>5} {'env steps/s':>12} {'C MuJoCo':>10} {'ratio':>7}", flush=True)
  try:
    for i in range(args.rounds):
      env_sps = args.batch * args.steps / _time(mjx_call)
      c_sps = args.c_batch * args.c_steps / _time(c_call)
      rows.append({"env_steps_per_s": round(env_sps), "c_control_steps_per_s": round(c_sps),
                   "ratio": env_sps / c_sps})
      print(f"{i:>5} {env_sps:>12,.0f} {c_sps:>10,.0f} {env_sps / c_sps:>7.1%}", flush=True)
  finally:
    close()
  med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
  print(f"{'median':>5} {med['env_steps_per_s']:>12,.0f} {med['c_control_steps_per_s']:>10,.0f}"
        f" {med['ratio']:>7.1%}")
  out = {"env": "PandaPickCube-v0", "overrides": overrides, "batch": args.batch,
         "steps": args.steps, "c_batch": args.c_batch, "c_steps": args.c_steps,
         "threads": args.threads, "devices": jax.device_count(), "jax": jax.__version__,
         "cpu": c_bench.cpu_name(), "cpu_count": os.cpu_count(),
         "date": time.strftime("%Y-%m-%d"), "rounds": rows, "median": med}
  with open(args.json, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {args.json}")
  return out


if __name__ == "__main__":
  main()
