"""Renderer-only benchmark: images/s and ms per frame at several resolutions and batches.

    python scripts/benchmark_render.py --sizes 64 128 --batch 16 32 64 --json render.json
    python scripts/benchmark_render.py --baseline 64   # also time mjx.ray per pixel (slow)

Prints a markdown table and writes the rows as JSON. The function behind it,
``panda_rl.render.benchmark.benchmark_renderer``, is what other benchmarks call. A watchdog
aborts (exit code 3) instead of waiting forever if a run hangs (see PERFORMANCE.md).
"""

import panda_rl  # noqa: F401  (XLA:CPU flags before JAX starts)

import argparse
import faulthandler
import json
import platform
import sys

import jax

from panda_rl.render import benchmark


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=benchmark.PANDA_XML)
  p.add_argument("--cameras", nargs="+", default=["front", "wrist"])
  p.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
  p.add_argument("--batch", nargs="+", type=int, default=[16, 32, 64])
  p.add_argument("--outputs", nargs="+", default=["rgb"])
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--max-candidates", default="auto",
                 help="candidates per tile and geom type: an int, 'none' or 'auto'")
  p.add_argument("--baseline", nargs="*", type=int, default=[],
                 help="also time mjx.ray per pixel at these sizes")
  p.add_argument("--json", default="", help="write the rows here")
  p.add_argument("--timeout", type=float, default=1800, help="watchdog, seconds")
  args = p.parse_args(argv)

  faulthandler.dump_traceback_later(args.timeout, exit=True)  # hang -> traceback, exit
  mc = args.max_candidates
  mc = None if mc == "none" else (mc if mc == "auto" else int(mc))
  rows = benchmark.benchmark_renderer(args.model, args.cameras, args.sizes, args.batch,
                                      args.outputs, args.repeats,
                                      baseline_sizes=args.baseline, max_candidates=mc)
  faulthandler.cancel_dump_traceback_later()
  print(f"# renderer benchmark: {platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, outputs {args.outputs}")
  print(benchmark.format_table(rows))
  if args.json:
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "outputs": args.outputs, "cameras": args.cameras, "max_candidates": mc}
    with open(args.json, "w") as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
