"""The summary of ``scripts/benchmark_gpu.sh``: one table and one JSON from its stages.

    python scripts/gpu_report.py OUT_DIR [--smoke]

Reads ``OUT_DIR/{device.json, env_state.json, env_vision.json, ppo_gpu.json}`` (a stage that
did not finish leaves its file partial or missing: reported as such), prints env steps/s per
batch (state env and vision env) and PPO's seconds to 90% evaluation success with the card's
name and the targets, and writes ``OUT_DIR/benchmark_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STATE_TARGET = 500_000  # env steps/s on one H100/H200
PPO_TARGET_S = 120.0  # seconds to 90% evaluation success, compile included


def _load(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def _rows(bench) -> dict:
  """batch -> env steps/s (or a reason) from a benchmark_env.py JSON."""
  out = {}
  for r in (bench or {}).get("results", []):
    if r.get("hang"):
      out[r["batch"]] = "no result (watchdog)"
    elif "error" in r:
      out[r["batch"]] = "failed: " + r["error"].split(":")[0]
    else:
      out[r["batch"]] = r["env_steps_per_s"]
  return out


def _best(rows: dict):
  numbers = {b: v for b, v in rows.items() if isinstance(v, float)}
  if not numbers:
    return None, None
  b = max(numbers, key=numbers.get)
  return b, numbers[b]


def _cell(v) -> str:
  if v is None:
    return "not run"
  return f"{v:,.0f}" if isinstance(v, float) else v


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("out_dir")
  p.add_argument("--smoke", action="store_true", help="the sizes were the smoke test's")
  args = p.parse_args()
  out = Path(args.out_dir)
  device = _load(out / "device.json") or {}
  state, vision = _load(out / "env_state.json"), _load(out / "env_vision.json")
  ppo = _load(out / "ppo_gpu.json")
  state_rows, vision_rows = _rows(state), _rows(vision)

  card = device.get("gpu_name") or device.get("device_kind") or "unknown device"
  print(f"\n{card}: jax {device.get('jax', '?')}, backend {device.get('backend', '?')}"
        f"{' (SMOKE sizes: not a benchmark)' if args.smoke else ''}")
  image = (vision or {}).get("image_sizes") or ["?"]
  head = f"{'batch':>7} | {'state env steps/s':>17} | {f'vision {image[0]}x{image[0]} env steps/s':>26}"
  print(head)
  print("-" * len(head))
  for b in sorted(set(state_rows) | set(vision_rows)):
    print(f"{b:>7,} | {_cell(state_rows.get(b)):>17} | {_cell(vision_rows.get(b)):>26}")
  if not state_rows and not vision_rows:
    print("(no env throughput measured)")

  best_b, best = _best(state_rows)
  reached = (ppo or {}).get("reached")
  started = (ppo or {}).get("started") or {}
  if ppo is None:
    ppo_line = "PPO: not run (or stopped before writing its result)"
  elif reached:
    ppo_line = (f"PPO ({Path(ppo['config']).name}): {ppo['threshold']:.0%} eval success "
                f"{reached['seconds']:.1f} s after launch (iteration {reached['iteration']}, "
                f"{reached['env_steps']:,} env steps)")
  else:
    last = ppo["evals"][-1] if ppo.get("evals") else None
    ppo_line = (f"PPO ({Path(ppo['config']).name}): {ppo['threshold']:.0%} not reached in "
                f"{ppo.get('total_s', 0):.0f} s" +
                (f"; last eval {last['success']:.1%} at iteration {last['iteration']}"
                 if last else "; no evaluation finished"))
  if started.get("compile_s") is not None:
    ppo_line += f"; its iteration compiled in {started['compile_s']:.1f} s"
  print("\n" + ppo_line)
  targets = {
      "state_env_steps_per_s": {"target": STATE_TARGET, "best": best, "at_batch": best_b,
                                "met": best is not None and best >= STATE_TARGET},
      "ppo_seconds_to_90": {"target": PPO_TARGET_S,
                            "seconds": reached["seconds"] if reached else None,
                            "met": bool(reached) and reached["seconds"] <= PPO_TARGET_S},
  }
  if not args.smoke:
    t1, t2 = targets["state_env_steps_per_s"], targets["ppo_seconds_to_90"]
    print(f"targets: >= {STATE_TARGET:,} state env steps/s: "
          f"{'met' if t1['met'] else 'NOT met'} ({_cell(best)} at B={best_b}); "
          f"90% in <= {PPO_TARGET_S:.0f} s: {'met' if t2['met'] else 'NOT met'}")
  summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "smoke": args.smoke, "device": device,
             "state_env_steps_per_s": state_rows, "vision_env_steps_per_s": vision_rows,
             "vision_image_size": image[0], "ppo": ppo, "targets": targets,
             "raw": {"env_state": state, "env_vision": vision}}
  (out / "benchmark_gpu.json").write_text(json.dumps(summary, indent=2, default=str))
  print(f"wrote {out / 'benchmark_gpu.json'}")


if __name__ == "__main__":
  main()
