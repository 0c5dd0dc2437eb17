"""Where the env's compiled program spends its time, from a ``jax.profiler`` trace.

    python scripts/profile_trace.py                        # PandaPickCube-v0, B=2048
    python scripts/profile_trace.py --batch 1024 --depth 4 --json out.json
    python scripts/profile_trace.py --partitioned-step     # the env as stepped before

``profile_env.py`` times each piece of a substep compiled alone; the pieces do not add up to
the fused step. This script looks inside the fused program instead: it traces a few calls of
``benchmark_env.py``'s timed program (random actions, auto-reset, the batch split over every
device as training does) with ``jax.profiler``, reads the trace back with
``jax.profiler.ProfileData`` (no viewer needed) and charges every XLA op's *self* time (its
time minus the ops nested in it, e.g. a loop's body) to the part of the env it came from,
read from the op's ``op_name`` metadata in the compiled HLO (``solve/while/body`` ...).
Time with no HLO op (the thread pool waiting for the other device, the executor between
ops) is reported as such. Times are summed over every thread, per call; tracing slows the
program, so the shares, not the milliseconds, are the result. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import platform
import re
import sys
import tempfile
import time

# Path components that say how a function was traced, not which part of the env it is.
_NOISE = re.compile(r"^(jit\(.*\)|closed_call|vmap\(.*\)|shard_map|while|body|cond|"
                    r"transpose\(.*\)|jvp\(.*\)|checkpoint)$")


def _parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--env", default="PandaPickCube-v0")
  p.add_argument("--batch", type=int, default=2048)
  p.add_argument("--steps", type=int, default=8, help="control steps per traced call")
  p.add_argument("--calls", type=int, default=2, help="traced calls (times are per call)")
  p.add_argument("--depth", type=int, default=3,
                 help="path components of an op's origin kept (e.g. 3: forward/solve/...)")
  p.add_argument("--top", type=int, default=25, help="rows printed")
  p.add_argument("--partitioned-step", action="store_true",
                 help="step the split batch under jit's partitioner (benchmark_env.py)")
  p.add_argument("--override", nargs="*", default=[], help="env overrides key=value")
  p.add_argument("--json", default="profile_trace.json")
  return p.parse_args()


def op_origins(hlo_text: str) -> dict:
  """{HLO op name: its op_name metadata} of a compiled module's text. An op the compiler
  made without metadata (e.g. a copy, or a reduce-window split off a reduction) gets its
  first operand's that has some."""
  out, operands = {}, {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = ([^\n]*)$", hlo_text, re.MULTILINE):
    name, rest = m.group(1), m.group(2)
    meta = re.search(r'op_name="([^"]*)"', rest)
    if meta:
      out[name] = meta.group(1)
    else:
      operands[name] = re.findall(r"%([\w.\-]+)", rest.split("metadata=")[0])
  for _ in range(3):  # chains of metadata-less ops, a few deep
    for name, ops in operands.items():
      if name not in out:
        found = next((out[o] for o in ops if o in out), None)
        if found is not None:
          out[name] = found
  return out


def origin(op_name: str, depth: int) -> str:
  """``jit(rollout)/while/body/.../step/forward/solve/while/body/dot_general`` -> the first
  ``depth`` meaningful components after the env's ``step`` (``forward/solve/dot_general``)."""
  parts = [p for p in op_name.split("/") if p and not _NOISE.match(p)]
  if "step" in parts:
    parts = parts[len(parts) - parts[::-1].index("step"):]
  return "/".join(parts[:depth]) or "(the loops themselves)"


def self_times(profile, origins: dict) -> collections.Counter:
  """{(origin op or runtime event name): self time in ns} over the threads that run XLA's
  ops.

  Events nest in time on a thread (a while loop holds its body's ops); an event's self
  time is its duration minus its children's. Events that are not HLO ops (e.g. the
  ``Transpose`` chunks a copy runs) are charged to the HLO op they run in."""
  out = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # the threads that run XLA's ops
        continue
      events = sorted((e for e in line.events if e.duration_ns > 0
                       and not e.name.startswith(("end:", "ThreadpoolListener"))),
                      key=lambda e: (e.start_ns, -e.duration_ns))
      stack = []  # (charged name, end time)
      for e in events:
        while stack and stack[-1][1] <= e.start_ns:
          stack.pop()
        name = e.name
        if name not in origins and stack and stack[-1][0] in origins:
          name = stack[-1][0]  # a chunk of the enclosing op's work
        if stack:
          out[stack[-1][0]] -= e.duration_ns
        out[name] += e.duration_ns
        stack.append((name, e.start_ns + e.duration_ns))
  return out


def kind(op: str) -> str:
  """An HLO op's kind from its name (``dot.2001`` -> ``dot``; fusions by their root)."""
  return re.sub(r"\.\d+$", "", op)


def table(times: collections.Counter, origins: dict, depth: int, calls: int):
  """Rows {origin, ms_per_call, share, kinds: {kind: ms}}, largest first."""
  rows = collections.defaultdict(lambda: collections.Counter())
  for op, ns in times.items():
    where = origin(origins[op], depth) if op in origins else f"(runtime) {kind(op)}"
    rows[where][kind(op)] += ns
  total = sum(sum(c.values()) for c in rows.values())
  out = []
  for where, kinds in rows.items():
    ns = sum(kinds.values())
    out.append({"origin": where, "ms_per_call": ns / calls / 1e6, "share": ns / total,
                "kinds": {k: v / calls / 1e6 for k, v in kinds.most_common(3)}})
  out.sort(key=lambda r: -r["ms_per_call"])
  return out, total / calls / 1e6


def main():
  args = _parse()
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import panda_rl  # XLA flags before the backend starts, MJX patch
  import jax
  from jax.profiler import ProfileData

  from benchmark_env import batched, make_rollout, placer
  from panda_rl.envs.registry import parse_overrides

  overrides = parse_overrides(args.override)
  env = batched(panda_rl.make(args.env, **overrides), args.batch,
                per_device=not args.partitioned_step)
  fn = jax.jit(make_rollout(env, args.steps), donate_argnums=0)
  carry = [placer(args.batch)(env.reset(jax.random.PRNGKey(0))), jax.random.PRNGKey(1)]
  origins = op_origins(fn.lower(*carry).compile().as_text())

  def call():
    state, key, r = fn(*carry)
    jax.block_until_ready(r)
    carry[:] = [state, key]

  for _ in range(2):  # compile, then the slow first call after compiling
    call()
  t0 = time.perf_counter()
  for _ in range(args.calls):
    call()
  wall = (time.perf_counter() - t0) / args.calls
  with tempfile.TemporaryDirectory() as where:
    jax.profiler.start_trace(where)
    for _ in range(args.calls):
      call()
    jax.profiler.stop_trace()
    profile = ProfileData.from_file(glob.glob(f"{where}/**/*.xplane.pb", recursive=True)[0])
    times = self_times(profile, origins)
  rows, total = table(times, origins, args.depth, args.calls)
  out = {"env": args.env, "batch": args.batch, "steps_per_call": args.steps,
         "calls": args.calls, "depth": args.depth, "overrides": overrides,
         "step": "partitioned" if args.partitioned_step else "per device",
         "untraced_ms_per_call": wall * 1e3,
         "untraced_env_steps_per_s": args.batch * args.steps / wall,
         "traced_thread_ms_per_call": total, "rows": rows,
         "jax": jax.__version__, "devices": jax.device_count(),
         "cpu_count": os.cpu_count(), "machine": platform.platform(),
         "date": time.strftime("%Y-%m-%d")}
  with open(args.json, "w") as f:
    json.dump(out, f, indent=2)
  print(f"untraced: {wall * 1e3:.0f} ms per call, {out['untraced_env_steps_per_s']:,.0f} env "
        f"steps/s; traced: {total:.0f} ms of thread time per call, "
        f"{jax.device_count()} device(s)\n")
  print("| where (op_name after the env's step) | ms per call | share | largest op kinds |")
  print("|---|---:|---:|---|")
  for r in rows[:args.top]:
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in r["kinds"].items())
    print(f"| {r['origin']} | {r['ms_per_call']:.1f} | {r['share']:.1%} | {kinds} |")
  print(f"\nJSON: {args.json}")


if __name__ == "__main__":
  main()
