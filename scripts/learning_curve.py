"""Prints a run's learning curve (eval success vs env steps and wall-clock), writes JSON and a
plot.

    python scripts/learning_curve.py runs/panda_rl/mujoco_ppo_mlp [--json curve.json]
        [--thresholds 0.5 0.8 0.9] [--plot [PNG]]
    python scripts/learning_curve.py RUN_A RUN_B ...   # the seeds of several runs together
    python scripts/learning_curve.py RUN_A earlier.json --plot   # with a saved report's seeds
    python scripts/learning_curve.py seed0.json seed1.json --plot x.png  # time_to_success.py's

Wall-clock is ``time/wall_s`` as logged by the trainer: seconds since the run started, so
the first compile and every evaluation are included.

A run of several seeds (``runner.num_seeds``; ``seed_<k>/`` sub-directories, seed_<k> being
PRNG seed ``runner.seed`` + k) prints the mean over the seeds (with their min and max), when
each seed first reached each threshold, and its JSON holds every seed's curve under
``"seeds"``. Several run directories (or multi-seed reports this script wrote with
``--json``, or ``scripts/time_to_success.py --json`` reports, one seed each) merge their
seeds (each seed once) and average them at the iterations all of
them evaluated; each seed's wall-clock is its own run's. ``--plot`` writes a PNG (default
``<run dir>/learning_curve.png``): eval success against env steps and against wall-clock,
one line per seed plus their mean (one line for a 1-seed run); it needs matplotlib
(``pip install matplotlib``, or ``pip install -e '.[plot]'``).
"""

import argparse
import json
import sys
from pathlib import Path

from panda_rl.config import load_config_file, split_override
from panda_rl.logger import read_scalars
from panda_rl.seeds import MAX_SUFFIX, MIN_SUFFIX, aggregate, seed_dirs

SUCCESS = "eval/success_once"


def _round(x: float, digits: int) -> float:
  return round(float(x), digits)


def curve(run_dir: str) -> list:
  """One row per evaluation of the run (of a multi-seed run: the mean over its seeds, with
  ``eval_success_min`` / ``eval_success_max``)."""
  scalars = read_scalars(run_dir)
  if SUCCESS not in scalars:
    raise SystemExit(f"{run_dir}: no {SUCCESS} scalars (was evaluation enabled?)")
  steps = {s: v for s, v, _ in scalars.get("time/env_steps", [])}
  wall = {s: v for s, v, _ in scalars.get("time/wall_s", [])}
  train_success = {s: v for s, v, _ in scalars.get("env/success_once", [])}
  spread = {suffix: {s: v for s, v, _ in scalars.get(SUCCESS + suffix, [])}
            for suffix in (MIN_SUFFIX, MAX_SUFFIX)}
  rows = []
  for it, success, _ in scalars[SUCCESS]:
    row = {"iteration": int(it), "env_steps": int(steps.get(it, 0)),
           "wall_s": _round(wall.get(it, float("nan")), 1),
           "eval_success": _round(success, 4),
           "train_success_once": _round(train_success.get(it, float("nan")), 4)}
    for suffix, values in spread.items():
      if it in values:
        row["eval_success" + suffix] = _round(values[it], 4)
    rows.append(row)
  return rows


def _first_seed(run_dir: str) -> int:
  """The run's ``runner.seed`` (its config.json), 0 if it has none."""
  path = Path(run_dir) / "config.json"
  if not path.exists():
    return 0
  return int(json.loads(path.read_text()).get("runner", {}).get("seed", 0))


def seed_curves(run_dir: str) -> dict:
  """{PRNG seed: :func:`curve`} of a multi-seed run's ``seed_<k>/`` runs (seed k of a run is
  its ``runner.seed`` + k); {} for a 1-seed run."""
  first = _first_seed(run_dir)
  return {first + int(p.name.split("_")[1]): curve(str(p)) for p in seed_dirs(run_dir)}


def _is_report(path) -> bool:
  """A saved JSON report (this script's ``--json`` or ``time_to_success.py``'s), not a run."""
  return str(path).endswith(".json")


def _report_seed(report: dict, path: str) -> int:
  """The PRNG seed a ``time_to_success.py`` report trained: its ``runner.seed=K`` override,
  else its config's ``runner.seed``."""
  overrides = dict(map(split_override, report.get("overrides", [])))
  if "runner.seed" in overrides:
    return int(overrides["runner.seed"])
  config = Path(report.get("config", ""))
  if not config.is_file():
    raise SystemExit(f"{path}: no runner.seed override and its config {str(config)!r} is "
                     "not here to read the seed from")
  return int(load_config_file(str(config)).runner.seed)


def _time_to_success_curve(report: dict) -> list:
  """A ``time_to_success.py`` report's evaluations as :func:`curve` rows (its clock is the
  launch's, like ``time/wall_s``; it logs no training success)."""
  return [{"iteration": int(e["iteration"]), "env_steps": int(e["env_steps"]),
           "wall_s": _round(e["seconds"], 1), "eval_success": _round(e["success"], 4),
           "train_success_once": float("nan")} for e in report["evals"]]


def _saved_seeds(path: str) -> dict:
  """{PRNG seed: curve} of a multi-seed report that ``--json`` wrote, or of the one seed a
  ``scripts/time_to_success.py`` report trained."""
  report = json.loads(Path(path).read_text())
  if "evals" in report:
    return {_report_seed(report, path): _time_to_success_curve(report)}
  if "seeds" not in report:
    raise SystemExit(f"{path}: neither a multi-seed report of this script (no \"seeds\") nor "
                     "a time_to_success.py report (no \"evals\")")
  return {int(s["seed"]): s["curve"] for s in report["seeds"]}


def merged_seeds(run_dirs: list) -> dict:
  """{PRNG seed: curve} over several runs (a 1-seed run counts as its ``runner.seed``; a
  ``.json`` path is a multi-seed report written by ``--json`` or a ``time_to_success.py``
  report)."""
  seeds = {}
  for run_dir in run_dirs:
    if _is_report(run_dir):
      found = _saved_seeds(run_dir)
    else:
      found = seed_curves(run_dir) or {_first_seed(run_dir): curve(run_dir)}
    for seed, rows in found.items():
      if seed in seeds:
        raise SystemExit(f"seed {seed} appears in more than one of the runs {run_dirs}")
      seeds[seed] = rows
  return seeds


def mean_curve(seeds: dict) -> list:
  """Per iteration that every seed evaluated: the mean row over the seeds, with the min and
  max eval success. Its wall-clock is NaN: the seeds' runs have their own clocks (and may
  have run on other machines)."""
  by_iter = [{r["iteration"]: r for r in rows} for rows in seeds.values()]
  common = sorted(set.intersection(*(set(b) for b in by_iter)))
  out = []
  for it in common:
    rows = [b[it] for b in by_iter]
    # Means, min and max over the seeds with a finite value, as the run loop logs them
    # (train success is NaN where no episode ended).
    agg = aggregate([{"eval_success": r["eval_success"],
                      "train_success_once": r["train_success_once"]} for r in rows])
    out.append({"iteration": it, "env_steps": rows[0]["env_steps"], "wall_s": float("nan"),
                "eval_success": _round(agg["eval_success"], 4),
                "train_success_once": _round(agg["train_success_once"], 4),
                "eval_success" + MIN_SUFFIX: agg["eval_success" + MIN_SUFFIX],
                "eval_success" + MAX_SUFFIX: agg["eval_success" + MAX_SUFFIX]})
  return out


def first_reaching(rows: list, threshold: float):
  for r in rows:
    if r["eval_success"] >= threshold:
      return r
  return None


def _reached(r) -> str:
  if r is None:
    return "not reached"
  return f"iteration {r['iteration']}, {r['env_steps']:,} env steps, {r['wall_s']:.0f} s"


def print_table(rows: list) -> None:
  spread = any("eval_success" + MIN_SUFFIX in r for r in rows)
  extra = f" {'min':>7} {'max':>7}" if spread else ""
  print(f"{'iter':>5} {'env steps':>11} {'wall (s)':>9} {'eval success':>13}{extra} "
        f"{'train success_once':>19}")
  for r in rows:
    extra = ""
    if spread:
      extra = "".join(f" {r.get('eval_success' + s, float('nan')):>7.1%}"
                      for s in (MIN_SUFFIX, MAX_SUFFIX))
    print(f"{r['iteration']:>5} {r['env_steps']:>11,} {r['wall_s']:>9.0f} "
          f"{r['eval_success']:>13.1%}{extra} {r['train_success_once']:>19.1%}")


def plot(rows: list, seeds: dict, path: str, title: str = "") -> None:
  """Eval success against env steps and against wall-clock: each seed's line and the mean
  (thick) for a multi-seed run, else the run's one line."""
  try:
    import matplotlib
  except ImportError:
    raise SystemExit("--plot needs matplotlib, which is not installed: pip install "
                     "matplotlib (or pip install -e '.[plot]')") from None
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  panels = ((axes[0], "env_steps", "env steps"), (axes[1], "wall_s", "wall-clock (s)"))
  for ax, x, label in panels:
    for k, seed_rows in sorted(seeds.items()):
      ax.plot([r[x] for r in seed_rows], [r["eval_success"] for r in seed_rows],
              lw=1, alpha=0.7, marker="o", ms=3, label=f"seed {k}")
    ax.plot([r[x] for r in rows], [r["eval_success"] for r in rows], lw=2.5, color="black",
            marker="o", ms=4, label=f"mean of {len(seeds)} seeds" if seeds else "eval success")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("eval success (share of episodes)")
  axes[0].set_ylim(-0.02, 1.02)
  axes[1].legend(loc="lower right", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report(run_dirs: list, thresholds: list) -> dict:
  """Prints the table and the thresholds; returns what ``--json`` writes."""
  if len(run_dirs) == 1 and not _is_report(run_dirs[0]):
    # the mean is the run's own aggregate
    rows, seeds = curve(run_dirs[0]), seed_curves(run_dirs[0])
  else:
    seeds = merged_seeds(run_dirs)
    rows = mean_curve(seeds)
  if seeds:
    print(f"mean over {len(seeds)} seeds ({', '.join(map(str, sorted(seeds)))}), "
          "min and max:")
  print_table(rows)
  out = {"run_dir": run_dirs[0] if len(run_dirs) == 1 else run_dirs, "curve": rows,
         "first_reaching": {}}
  for t in thresholds:
    r = first_reaching(rows, t)
    out["first_reaching"][str(t)] = r
    print(f"first eval >= {t:.0%}{' (mean)' if seeds else ''}: {_reached(r)}")
    for k, seed_rows in sorted(seeds.items()):
      print(f"  seed {k}: {_reached(first_reaching(seed_rows, t))}")
  if seeds:
    out["seeds"] = [{"seed": k, "curve": seed_rows,
                     "first_reaching": {str(t): first_reaching(seed_rows, t)
                                        for t in thresholds}}
                    for k, seed_rows in sorted(seeds.items())]
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("run_dir", nargs="+", help="one run, or several whose seeds are merged")
  p.add_argument("--json", default="")
  p.add_argument("--thresholds", type=float, nargs="*", default=[0.5, 0.8, 0.9])
  p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                 help="write a PNG (default <run_dir>/learning_curve.png)")
  p.add_argument("--title", default=None,
                 help="the plot's title (default: the names of the runs)")
  args = p.parse_args(argv)
  out = report(args.run_dir, args.thresholds)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  if args.plot is not None:
    path = args.plot or str(Path(args.run_dir[0]) / "learning_curve.png")
    seeds = {s["seed"]: s["curve"] for s in out.get("seeds", [])}
    title = args.title
    if title is None:
      title = " + ".join(Path(r).name if _is_report(r) else str(r)
                         for r in args.run_dir)
    plot(out["curve"], seeds, path, title=title)
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
  main()
