"""Seconds from launching a training run to its first evaluation at or above a success rate.

    python scripts/time_to_success.py --config configs/mujoco_ppo_mlp_gpu.py \\
        --threshold 0.9 --max-seconds 180 --json ppo_gpu.json [section.key=value ...]

Starts ``python -m panda_rl.train`` and reads its evaluation lines as they are printed
(``[iter N/M] env steps S  eval/success_once=x ...``). The clock starts when the process is
launched, so interpreter start, imports, compiles and evaluations are all included. When an
evaluation reaches the threshold, or at ``--max-seconds``, the run gets SIGTERM: it finishes
its iteration, writes a checkpoint and exits. Prints the evaluations and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL = re.compile(r"^\[iter (\d+)/\d+\] env steps ([\d,]+)\s+(.*)$")
STARTED = re.compile(r"Started in ([\d.]+)s \(setup ([\d.]+)s(?:, compile ([\d.]+)s)?")
METRIC = "eval/success_once"


def _parse():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=str(REPO / "configs" / "mujoco_ppo_mlp.py"))
  p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
  p.add_argument("--threshold", type=float, default=0.9)
  p.add_argument("--max-seconds", type=float, default=1800.0,
                 help="SIGTERM the run after this many seconds from launch")
  p.add_argument("--grace", type=float, default=120.0,
                 help="seconds a stopped run gets to finish its iteration and checkpoint")
  p.add_argument("--log-path", default="", help="runner.logger.log_path (default: a "
                 "directory beside --json)")
  p.add_argument("--json", default="time_to_success.json")
  return p.parse_args()


def parse_eval(line: str):
  """(iteration, env steps, {metric: value}) of an evaluation line, or None."""
  m = EVAL.match(line.strip())
  if m is None:
    return None
  values = {}
  for item in m.group(3).split():
    key, _, value = item.partition("=")
    try:
      values[key] = float(value)
    except ValueError:
      pass
  return int(m.group(1)), int(m.group(2).replace(",", "")), values


def _reader(stream, lines: "queue.Queue", t0: float):
  for line in stream:
    lines.put((time.perf_counter() - t0, line))
  lines.put(None)


def main():
  args = _parse()
  out_json = Path(args.json)
  log_path = Path(args.log_path) if args.log_path else out_json.with_suffix("") / "runs"
  cmd = [sys.executable, "-m", "panda_rl.train", f"--config={args.config}",
         f"--config.runner.logger.log_path={log_path}"]
  cmd += [o if o.startswith("--") else f"--config.{o}" for o in args.overrides]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  out_json.parent.mkdir(parents=True, exist_ok=True)
  stderr_log = out_json.with_suffix(".stderr.log")
  result = {"config": args.config, "overrides": args.overrides, "threshold": args.threshold,
            "max_seconds": args.max_seconds, "command": cmd, "evals": [], "started": None,
            "reached": None, "stopped_by": "finished"}
  t0 = time.perf_counter()
  with open(stderr_log, "w") as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                            text=True)
    lines: "queue.Queue" = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines, t0), daemon=True).start()
    stop_sent = None
    while True:
      now = time.perf_counter() - t0
      if stop_sent is None and now > args.max_seconds:
        result["stopped_by"] = "time cap"
        proc.send_signal(signal.SIGTERM)
        stop_sent = now
      if (stop_sent is not None and now > stop_sent + args.grace and proc.poll() is None
          and "killed" not in result["stopped_by"]):
        proc.kill()
        result["stopped_by"] += ", killed after the grace period"
      try:
        item = lines.get(timeout=1.0)
      except queue.Empty:
        continue
      if item is None:
        break
      t, line = item
      sys.stdout.write(line)
      sys.stdout.flush()
      m = STARTED.search(line)
      if m:
        result["started"] = {"line_s": round(t, 2), "in_process_s": float(m.group(1)),
                             "setup_s": float(m.group(2)),
                             "compile_s": float(m.group(3)) if m.group(3) else None}
      parsed = parse_eval(line)
      if parsed is None or METRIC not in parsed[2]:
        continue
      it, steps, values = parsed
      row = {"iteration": it, "env_steps": steps, "success": values[METRIC],
             "seconds": round(t, 2)}
      result["evals"].append(row)
      if result["reached"] is None and row["success"] >= args.threshold:
        result["reached"] = row
        if stop_sent is None:
          result["stopped_by"] = "threshold"
          proc.send_signal(signal.SIGTERM)
          stop_sent = t
    proc.wait()
  result["returncode"] = proc.returncode
  result["total_s"] = round(time.perf_counter() - t0, 2)
  out_json.write_text(json.dumps(result, indent=2))
  r = result["reached"]
  print(f"\n{'iter':>5} {'env steps':>12} {'seconds':>8} {'eval success':>13}")
  for e in result["evals"]:
    print(f"{e['iteration']:>5} {e['env_steps']:>12,} {e['seconds']:>8.1f} {e['success']:>13.1%}")
  print(f"first eval >= {args.threshold:.0%}: " +
        (f"iteration {r['iteration']}, {r['env_steps']:,} env steps, {r['seconds']:.1f} s "
         "after launch" if r else "not reached") +
        f"; stopped by {result['stopped_by']} (rc {proc.returncode}); wrote {out_json}")
  if proc.returncode not in (0, -signal.SIGTERM):
    sys.exit(f"the training run failed (rc {proc.returncode}); see {stderr_log}")


if __name__ == "__main__":
  main()
