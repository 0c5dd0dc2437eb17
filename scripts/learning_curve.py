"""Prints a run's learning curve (eval success vs env steps and wall-clock) and writes JSON.

    python scripts/learning_curve.py runs/panda_rl/mujoco_ppo_mlp [--json curve.json]
        [--thresholds 0.5 0.8 0.9]

Wall-clock is ``time/wall_s`` as logged by the trainer: seconds since the run started, so
the first compile and every evaluation are included.
"""

import argparse
import json

from panda_rl.logger import read_scalars


def curve(run_dir: str) -> list:
  scalars = read_scalars(run_dir)
  if "eval/success_once" not in scalars:
    raise SystemExit(f"{run_dir}: no eval/success_once scalars (was evaluation enabled?)")
  steps = {s: v for s, v, _ in scalars.get("time/env_steps", [])}
  wall = {s: v for s, v, _ in scalars.get("time/wall_s", [])}
  train_success = {s: v for s, v, _ in scalars.get("env/success_once", [])}
  rows = []
  for it, success, _ in scalars["eval/success_once"]:
    rows.append({"iteration": int(it), "env_steps": int(steps.get(it, 0)),
                 "wall_s": round(wall.get(it, float("nan")), 1),
                 "eval_success": round(float(success), 4),
                 "train_success_once": round(float(train_success.get(it, float("nan"))), 4)})
  return rows


def first_reaching(rows: list, threshold: float):
  for r in rows:
    if r["eval_success"] >= threshold:
      return r
  return None


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("run_dir")
  p.add_argument("--json", default="")
  p.add_argument("--thresholds", type=float, nargs="*", default=[0.5, 0.8, 0.9])
  args = p.parse_args()
  rows = curve(args.run_dir)
  print(f"{'iter':>5} {'env steps':>11} {'wall (s)':>9} {'eval success':>13} "
        f"{'train success_once':>19}")
  for r in rows:
    print(f"{r['iteration']:>5} {r['env_steps']:>11,} {r['wall_s']:>9.0f} "
          f"{r['eval_success']:>13.1%} {r['train_success_once']:>19.1%}")
  reached = {}
  for t in args.thresholds:
    r = first_reaching(rows, t)
    reached[str(t)] = r
    print(f"first eval >= {t:.0%}: " + (f"iteration {r['iteration']}, {r['env_steps']:,} env "
                                        f"steps, {r['wall_s']:.0f} s" if r else "not reached"))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"run_dir": args.run_dir, "curve": rows, "first_reaching": reached}, f,
                indent=1)


if __name__ == "__main__":
  main()
