"""Env throughput benchmark: env (control) steps/s over batch sizes, compile time apart.

    python scripts/benchmark_env.py                       # state env, default batches
    python scripts/benchmark_env.py --batch 512 2048 --steps 50 --json out.json
    python scripts/benchmark_env.py --no-fast-flags       # measure without panda_rl's XLA flags

One "env step" is a full control step: the operational-space controller and all physics
substeps (4 by default) for one env. Actions are uniform random in [-1, 1], generated on
device inside the scanned loop, with auto-reset. A watchdog reports a hang (jax 0.10 is
known to deadlock on CPU at large batch) instead of waiting forever. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time


def _parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--env", default="PandaPickCube-v0")
  p.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 2048, 4096])
  p.add_argument("--steps", type=int, default=40, help="control steps per timed call")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per batch (median)")
  p.add_argument("--timeout", type=float, default=600.0, help="watchdog seconds per batch")
  p.add_argument("--no-fast-flags", action="store_true",
                 help="do not let panda_rl set its XLA:CPU flags (regression check)")
  p.add_argument("--override", nargs="*", default=[], help="env overrides key=value")
  p.add_argument("--json", default="benchmark_env.json")
  return p.parse_args()


def _value(text):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def main():
  args = _parse()
  if args.no_fast_flags:
    os.environ["PANDA_RL_XLA_FLAGS"] = "0"
  import panda_rl  # sets XLA flags before the backend starts
  from panda_rl import _xla
  import jax
  import jax.numpy as jnp
  from panda_rl.envs.base import AutoResetWrapper

  overrides = dict(kv.split("=", 1) for kv in args.override)
  overrides = {k: _value(v) for k, v in overrides.items()}
  rows = []
  for batch in args.batch:
    env = AutoResetWrapper(panda_rl.make(args.env, **overrides), batch)
    n_act = env.action_size

    def rollout(state, key):
      def body(carry, _):
        s, k = carry
        k, sub = jax.random.split(k)
        a = jax.random.uniform(sub, (batch, n_act), minval=-1.0, maxval=1.0)
        s = env.step(s, a)
        return (s, k), s.reward.mean()
      (state, key), rew = jax.lax.scan(body, (state, key), None, length=args.steps)
      return state, key, rew.mean()

    fn = jax.jit(rollout, donate_argnums=0)
    result = {}

    def work():
      state = env.reset(jax.random.PRNGKey(0))
      key = jax.random.PRNGKey(1)
      t0 = time.perf_counter()
      state, key, r = fn(state, key)
      jax.block_until_ready(r)
      result["compile_s"] = time.perf_counter() - t0  # compile + first call
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, key, r = fn(state, key)
        jax.block_until_ready(r)
        times.append(time.perf_counter() - t0)
      result["times"] = times

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(args.timeout)
    if th.is_alive():
      rows.append({"batch": batch, "hang": True})
      print(f"batch {batch}: NO RESULT after {args.timeout:.0f}s (hung, or slower than the "
            "watchdog allows)", flush=True)
      break
    times = sorted(result["times"])
    med = times[len(times) // 2]
    sps = batch * args.steps / med
    rows.append({"batch": batch, "env_steps_per_s": sps,
                 "physics_steps_per_s": sps * env.unwrapped.n_substeps,
                 "compile_s": result["compile_s"], "median_call_s": med, "hang": False})
    print(f"batch {batch:6d}: {sps:10.0f} env steps/s  (compile+first {result['compile_s']:.1f}s)",
          flush=True)

  print()
  print(f"{'batch':>7} | {'env steps/s':>12} | {'physics steps/s':>15} | {'compile s':>9}")
  print("-" * 54)
  for r in rows:
    if r["hang"]:
      print(f"{r['batch']:>7} | {'NO RESULT':>12} |")
    else:
      print(f"{r['batch']:>7} | {r['env_steps_per_s']:>12.0f} | {r['physics_steps_per_s']:>15.0f} | "
            f"{r['compile_s']:>9.1f}")
  out = {
      "env": args.env, "overrides": overrides, "steps_per_call": args.steps,
      "xla_status": _xla.STATUS, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
      "machine": platform.platform(), "python": sys.version.split()[0],
      "date": time.strftime("%Y-%m-%d"), "results": rows,
  }
  with open(args.json, "w") as f:
    json.dump(out, f, indent=2)
  print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
