"""Training-iteration time per placement (cluster.component_placement x pipeline stages).

    # 16 virtual CPU devices: the issue's placements (correctness and overheads only: the
    # virtual devices share the host's cores, so CPU times say nothing about speed-up)
    python scripts/benchmark_placement.py --cpu-devices 16 --env PointReach-v0

    # one GPU: collocated, with 1, 2 and 4 pipeline stages, on the pick-cube task
    python scripts/benchmark_placement.py --placements collocated collocated_k2 collocated_k4

    # a pod stand-in: 2 localhost processes x 8 virtual CPU devices (jax.distributed, gloo),
    # the three placement examples of the README
    python scripts/benchmark_placement.py --processes 2 --cpu-devices 8 \
        --placements hybrid_k2 collocated disaggregated

Each placement builds a Trainer from ``--config`` (+ ``--override``s), compiles, runs
``--warmup`` iterations, then times ``--iterations`` iterations (median of per-iteration
wall times, each ending with the metrics on the host), then runs ``--iterations`` more with
every transfer between device groups made blocking and timed: their sum per iteration is
the transfer cost, and its share of that pass's iteration time is reported. Also records
the parameters' largest difference from the first placement's after the same iterations
(same seed: the placements must agree to float tolerance). Prints a table and writes JSON
(process 0 of a multi-process run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# name -> (component_placement, pipeline_stage_num); "{n}" is the device count.
PLACEMENTS = {
    "collocated": ("env,rollout,actor:all", 1),
    "collocated_k2": ("env,rollout,actor:all", 2),
    "collocated_k4": ("env,rollout,actor:all", 4),
    "disaggregated": ("env:0-3;rollout:4-7;actor:8-15", 1),
    "disaggregated_k2": ("env:0-3;rollout:4-7;actor:8-15", 2),
    "hybrid_k2": ("env:0-7;rollout:8-15;actor:0-15", 2),
    "hybrid": ("env:0-7;rollout:8-15;actor:0-15", 1),
}
DEFAULT_CPU = ["collocated", "collocated_k2", "disaggregated", "hybrid", "hybrid_k2"]
DEFAULT_ONE_DEVICE = ["collocated", "collocated_k2", "collocated_k4"]


def _parse():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                  "mujoco_ppo_mlp.py"))
  p.add_argument("--env", default=None, help="env.train.env_id (default: the config's)")
  p.add_argument("--placements", nargs="+", default=None,
                 help=f"names from {sorted(PLACEMENTS)} or 'SPEC@K' (e.g. 'env:0-1;"
                      "rollout:2-3;actor:all@2')")
  p.add_argument("--cpu-devices", type=int, default=0,
                 help="run on N virtual CPU devices (sets XLA_FLAGS before JAX starts)")
  p.add_argument("--iterations", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--override", nargs="*", default=[],
                 help="config overrides like env.train.num_envs=256")
  p.add_argument("--json", default="benchmark_placement.json")
  p.add_argument("--processes", type=int, default=1,
                 help="run as N localhost processes (jax.distributed; --cpu-devices each)")
  p.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
  p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  return p.parse_args()


def _launch(args) -> int:
  """Starts this script as ``--processes`` workers on localhost; returns worker 0's code."""
  import socket
  import subprocess

  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  argv = [a for a in sys.argv[1:]]
  env = dict(os.environ, PANDA_RL_COMPILATION_CACHE="0")  # no shared cache between workers
  procs = [subprocess.Popen([sys.executable, __file__, *argv, "--worker", str(i),
                             "--port", str(port)], env=env) for i in range(args.processes)]
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


def _placements(args, num_devices):
  names = args.placements or (DEFAULT_CPU if num_devices >= 16 else DEFAULT_ONE_DEVICE)
  out = []
  for name in names:
    if name in PLACEMENTS:
      out.append((name, *PLACEMENTS[name]))
    elif "@" in name or ":" in name:
      spec, _, k = name.partition("@")
      out.append((name, spec, int(k or 1)))
    else:
      raise SystemExit(f"unknown placement {name!r}; known: {sorted(PLACEMENTS)}")
  return out


def _timed(trainer, step, state, iterations):
  """Iterations with every transfer blocking and timed: (transfer s, iteration s) medians."""
  mover = getattr(trainer.programs, "move", None)
  if mover is None:
    return 0.0, None, state
  transfer_s, iteration_s = [], []
  for _ in range(iterations):
    mover.timings = []
    t0 = time.perf_counter()
    state, metrics = step(state)
    trainer.fetch(metrics)
    iteration_s.append(time.perf_counter() - t0)
    transfer_s.append(sum(mover.timings))
  mover.timings = None
  return statistics.median(transfer_s), statistics.median(iteration_s), state


def _measure(trainer, config, args, ref):
  """Compile, warm up, time; then the blocking pass for the transfers' share."""
  import jax
  import numpy as np

  state = trainer.init(jax.random.PRNGKey(config.runner.seed))
  t0 = time.perf_counter()
  step, compile_s = trainer.compile_iteration(state)
  times = []
  for i in range(args.warmup + args.iterations):
    t1 = time.perf_counter()
    state, metrics = step(state)
    trainer.fetch(metrics)
    dt = time.perf_counter() - t1
    if i == 0 and compile_s is None:
      compile_s = time.perf_counter() - t0  # compiled on first use
    if i >= args.warmup:
      times.append(dt)
  transfer_s, timed_s, state = _timed(trainer, step, state, args.iterations)
  params = [np.asarray(x) for x in jax.tree.leaves(trainer.fetch(state.params))]
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params, ref or params))
  it_s = statistics.median(times)
  return dict(describe=trainer.placement.describe(), compile_s=compile_s, iteration_s=it_s,
              env_steps_per_s=trainer.steps_per_iteration / it_s, transfer_s=transfer_s,
              blocking_iteration_s=timed_s,
              transfer_share=(transfer_s / timed_s) if timed_s else 0.0,
              max_param_diff_vs_first=diff, params=params)


def main():
  args = _parse()
  if args.processes > 1 and args.worker < 0:
    raise SystemExit(_launch(args))
  if args.cpu_devices:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}")
  import panda_rl  # noqa: F401  (first: XLA flags)
  import jax

  from panda_rl import training
  from panda_rl.config import load_config
  from panda_rl.placement import PlacementError

  overrides = list(args.override)
  if args.worker >= 0:
    overrides += [f"cluster.num_nodes={args.processes}", f"cluster.process_id={args.worker}",
                  f"cluster.coordinator_address=localhost:{args.port}"]
  if args.env:
    overrides.append(f"env.train.env_id={args.env}")
  if args.worker >= 0:  # start jax.distributed before jax.devices()
    from panda_rl.distributed import initialize_distributed
    initialize_distributed(load_config(args.config, overrides))
  devices = jax.devices()
  rows, ref = [], None
  for name, spec, stages in _placements(args, len(devices)):
    row = dict(name=name, placement=spec, pipeline_stage_num=stages)
    try:
      config = load_config(args.config, overrides + [
          f"cluster.component_placement={spec}", f"rollout.pipeline_stage_num={stages}"])
      trainer = training.Trainer(config)
    except PlacementError as e:
      row["error"] = str(e).splitlines()[-1].strip()
      rows.append(row)
      print(f"{name}: skipped: {row['error']}", flush=True)
      continue
    row.update(_measure(trainer, config, args, ref))
    params = row.pop("params")
    ref = params if ref is None else ref
    rows.append(row)
    _say(f"{name}: {row['iteration_s'] * 1e3:.1f} ms/iteration, transfers "
         f"{row['transfer_s'] * 1e3:.1f} ms, max |param diff| "
         f"{row['max_param_diff_vs_first']:.2e}")
  if jax.process_index() == 0:
    _table(rows)
  _write(args, rows, overrides, devices)


def _say(msg):
  import jax

  if jax.process_index() == 0:
    print(msg, flush=True)


def _table(rows):
  print(f"\n{'placement':<22}{'k':>3}{'compile s':>11}{'iter ms':>10}{'env steps/s':>13}"
        f"{'transfer ms':>13}{'share':>8}{'max |dparam|':>14}")
  for r in rows:
    if "error" in r:
      print(f"{r['name']:<22}{r['pipeline_stage_num']:>3}  skipped: {r['error']}")
      continue
    print(f"{r['name']:<22}{r['pipeline_stage_num']:>3}{r['compile_s']:>11.1f}"
          f"{r['iteration_s'] * 1e3:>10.1f}{r['env_steps_per_s']:>13,.0f}"
          f"{r['transfer_s'] * 1e3:>13.1f}{r['transfer_share']:>8.0%}"
          f"{r['max_param_diff_vs_first']:>14.2e}")


def _write(args, rows, overrides, devices):
  import jax

  if jax.process_index() != 0:
    return
  out = dict(devices=f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
             processes=jax.process_count(),
             jax=jax.__version__, host=platform.node(), python=sys.version.split()[0],
             config=os.path.basename(args.config), overrides=overrides,
             iterations=args.iterations, rows=rows)
  with open(args.json, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
