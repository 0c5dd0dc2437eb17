"""Start-up benchmark: seconds to the first training iteration and to an evaluation, with an
empty and with a filled persistent compilation cache.

    python scripts/benchmark_startup.py                    # default config, 256 episodes
    python scripts/benchmark_startup.py --json startup.json --keep
    python scripts/benchmark_startup.py --tiny             # a seconds-long check of the script

Every step is a fresh process with its own cache directory (a new temporary one unless
``--cache-dir``), passed as ``PANDA_RL_COMPILATION_CACHE``:

1. ``python -m panda_rl.train`` for one iteration, no evaluation, with the cache empty;
2. the same again: every program now comes from the cache;
3. ``python -m panda_rl.evaluate --checkpoint <run 1> --episodes N`` (its program is not
   one of training's: compiled and written now);
4. the same again, reading it from the cache;
5. the simulation alone: the same evaluation program called a second time in one process,
   i.e. what ``evaluate`` costs once nothing is compiled, traced or imported.

"Reaches iteration 1" is measured from starting the process (interpreter, imports and
everything) to the start of the first iteration; the train command's own line ("Started in
... (setup ..., compile ...); first iteration ...") gives the split. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = ("panda_rl", "mujoco_ppo_mlp")  # <project>/<experiment> of the default config
STARTED = re.compile(r"Started in ([\d.]+)s \(setup ([\d.]+)s(?:, compile ([\d.]+)s)?; "
                     r"[^)]*\); first iteration ([\d.]+)s")
EVALUATED = re.compile(r"(\d+) episodes in ([\d.]+)s")
# A tiny run of the probe env (the tests' config): checks the script in seconds.
TINY = ["env.train.env_id=PointReach-v0", "env.train.overrides={}", "env.train.num_envs=8",
        "env.eval.num_envs=4", "rollout.num_steps=16", "algorithm.num_minibatches=2",
        "algorithm.update_epochs=2", "actor.model.policy_hidden=(16,16)",
        "actor.model.value_hidden=(16,16)"]

# The simulation alone: one process, the evaluation program called twice (the second call
# is timed).
_SIMULATION = """
import json, sys, time
import panda_rl, jax
from panda_rl.evaluate import eval_env_settings
from panda_rl.evaluation import episodes_program
policy = panda_rl.load_policy(sys.argv[1], deterministic=True)
env_id, overrides = eval_env_settings(policy.config)
n = int(sys.argv[2])
run = episodes_program(panda_rl.make(env_id, **overrides), policy, n)
jax.block_until_ready(run(jax.random.PRNGKey(0)))
t0 = time.perf_counter()
jax.block_until_ready(run(jax.random.PRNGKey(1)))
print("SIMULATION " + json.dumps({"episodes": n, "seconds": time.perf_counter() - t0}))
"""


def _parse():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=str(REPO / "configs" / "mujoco_ppo_mlp.py"))
  p.add_argument("--override", nargs="*", default=[],
                 help="extra config overrides, section.key=value")
  p.add_argument("--episodes", type=int, default=256, help="evaluation episodes")
  p.add_argument("--tiny", action="store_true",
                 help="the tests' tiny probe-env config and 8 episodes (checks the script)")
  p.add_argument("--cache-dir", default="",
                 help="compilation cache to use (must be empty; default: a new temporary one)")
  p.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
  p.add_argument("--json", default="benchmark_startup.json")
  p.add_argument("--keep", action="store_true", help="keep the runs and the cache")
  return p.parse_args()


def _child_env(cache) -> dict:
  """This environment, with ``cache`` as the compilation cache ("0": none)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env["PANDA_RL_COMPILATION_CACHE"] = str(cache)
  env["PYTHONUNBUFFERED"] = "1"  # lines arrive when printed: they are timed
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _entries(cache: Path) -> int:
  """Compiled programs (JAX's ``*-cache`` files) plus traced ones (``exported/``)."""
  return len(list(cache.glob("*-cache"))) + len(list(cache.glob("exported/*.exported")))


def _run(cmd, env, log: Path, timeout: float, watch=None) -> dict:
  """Runs ``cmd`` (killed after ``timeout`` s); returns its wall seconds, its stdout and the
  second at which the first stdout line matching ``watch`` arrived. stderr (the progress
  bar, XLA's own log) goes to ``log``."""
  t0 = time.perf_counter()
  seen, lines = None, []
  with open(log, "w") as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                            text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
      for line in proc.stdout:
        lines.append(line)
        if watch is not None and seen is None and watch.search(line):
          seen = time.perf_counter() - t0
      proc.wait()
    finally:
      watchdog.cancel()
  out = "".join(lines)
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(map(str, cmd[:4]))} ... failed (rc={proc.returncode}"
                     f"{', killed after the timeout' if proc.returncode == -9 else ''}); "
                     f"stdout:\n{out[-2000:]}\nstderr: see {log}")
  return {"wall_s": time.perf_counter() - t0, "stdout": out, "line_s": seen}


def train(args, overrides, cache: Path, log_path: Path, log: Path) -> dict:
  cmd = [sys.executable, "-m", "panda_rl.train", f"--config={args.config}"]
  cmd += [f"--config.{o}" for o in overrides]
  cmd += ["--config.runner.max_epochs=1", "--config.runner.val_check_interval=0",
          f"--config.runner.logger.log_path={log_path}"]
  before = _entries(cache) if cache.exists() else 0
  r = _run(cmd, _child_env(cache), log, args.timeout, watch=STARTED)
  m = STARTED.search(r["stdout"])
  if m is None or r["line_s"] is None:
    raise SystemExit(f"no 'Started in' line in the train output:\n{r['stdout'][-2000:]}")
  started, setup, compile_s, iteration = (float(x) if x else None for x in m.groups())
  return {"to_first_iteration_s": r["line_s"] - iteration,  # process start -> iteration 1
          "first_iteration_done_s": r["line_s"], "process_s": r["wall_s"],
          "in_process_started_s": started, "setup_s": setup, "compile_s": compile_s,
          "first_iteration_s": iteration, "new_cache_entries": _entries(cache) - before}


def evaluate(args, checkpoint: Path, cache: Path, log: Path) -> dict:
  cmd = [sys.executable, "-m", "panda_rl.evaluate", f"--checkpoint={checkpoint}",
         f"--episodes={args.episodes}"]
  before = _entries(cache)
  r = _run(cmd, _child_env(cache), log, args.timeout)
  m = EVALUATED.search(r["stdout"])
  return {"process_s": r["wall_s"], "in_process_s": float(m.group(2)) if m else None,
          "new_cache_entries": _entries(cache) - before}


def simulation(args, checkpoint: Path, cache: Path, log: Path) -> dict:
  cmd = [sys.executable, "-c", _SIMULATION, str(checkpoint), str(args.episodes)]
  r = _run(cmd, _child_env(cache), log, args.timeout)
  line = [x for x in r["stdout"].splitlines() if x.startswith("SIMULATION ")][-1]
  return json.loads(line[len("SIMULATION "):])


def _device() -> dict:
  out = subprocess.run([sys.executable, "-c", "import panda_rl, jax; d = jax.devices()[0]; "
                        "print(jax.__version__, jax.default_backend(), d.device_kind, sep='|')"],
                       cwd=REPO, env=_child_env("0"),
                       capture_output=True, text=True, timeout=300).stdout.strip().splitlines()
  jax_version, backend, kind = (out[-1].split("|") + ["?", "?", "?"])[:3] if out else ("?",) * 3
  return {"jax": jax_version, "backend": backend, "device": kind}


def main():
  args = _parse()
  overrides = (TINY if args.tiny else []) + list(args.override)
  if args.tiny:
    args.episodes = min(args.episodes, 8)
  work = Path(tempfile.mkdtemp(prefix="panda_rl_startup_"))
  cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
  if cache.exists() and any(cache.iterdir()):
    raise SystemExit(f"--cache-dir {cache} is not empty: the first run must compile")
  print(f"cache {cache}; runs and logs under {work}", flush=True)
  rows = {}
  try:
    for name in ("cold", "warm"):
      rows[f"train_{name}"] = r = train(args, overrides, cache, work / name,
                                        work / f"train_{name}.log")
      print(f"train ({name} cache): iteration 1 after {r['to_first_iteration_s']:.1f}s "
            f"(in process: setup {r['setup_s']:.1f}s, compile {r['compile_s'] or 0:.1f}s), "
            f"{r['new_cache_entries']} new cache entries", flush=True)
    checkpoint = work / "cold" / Path(*RUN)
    for name in ("cold", "warm"):
      rows[f"evaluate_{name}"] = r = evaluate(args, checkpoint, cache,
                                              work / f"evaluate_{name}.log")
      print(f"evaluate ({name} cache): {r['process_s']:.1f}s, "
            f"{r['new_cache_entries']} new cache entries", flush=True)
    rows["simulation"] = simulation(args, checkpoint, cache, work / "simulation.log")
  finally:
    entries = _entries(cache) if cache.exists() else 0
    size_mb = (sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6
               if cache.exists() else 0)
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)

  tc, tw = rows["train_cold"], rows["train_warm"]
  ec, ew, sim = rows["evaluate_cold"], rows["evaluate_warm"], rows["simulation"]
  print()
  w = 44
  print(f"{'seconds':{w}} | {'empty cache':>11} | {'filled cache':>12}")
  print("-" * (w + 30))
  table = [
      ("train: process start -> iteration 1", tc["to_first_iteration_s"],
       tw["to_first_iteration_s"]),
      ("  in train_and_evaluate: setup", tc["setup_s"], tw["setup_s"]),
      ("  in train_and_evaluate: iteration program", tc["compile_s"] or 0, tw["compile_s"] or 0),
      ("  before train_and_evaluate (imports, flags)",
       tc["to_first_iteration_s"] - tc["in_process_started_s"],
       tw["to_first_iteration_s"] - tw["in_process_started_s"]),
      ("train: first iteration itself", tc["first_iteration_s"], tw["first_iteration_s"]),
      (f"evaluate --episodes {args.episodes}: process", ec["process_s"], ew["process_s"]),
  ]
  for name, cold, warm in table:
    print(f"{name:{w}} | {cold:>11.1f} | {warm:>12.1f}")
  print(f"\nthe evaluation's simulation alone (compiled, in one process): "
        f"{sim['seconds']:.1f}s for {sim['episodes']} episodes")
  print(f"cache: {entries} entries, {size_mb:.1f} MB")
  out = {"config": args.config, "overrides": overrides, "episodes": args.episodes,
         **_device(), "cpu_count": os.cpu_count(), "machine": platform.platform(),
         "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d"),
         "cache_entries": entries, "cache_mb": round(size_mb, 2), "results": rows}
  with open(args.json, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
