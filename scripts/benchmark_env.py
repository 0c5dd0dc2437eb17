"""Env throughput benchmark: env (control) steps/s over batch sizes, compile time apart.

    python scripts/benchmark_env.py                       # state env, default batches
    python scripts/benchmark_env.py --batch 512 2048 --steps 50 --json out.json
    python scripts/benchmark_env.py --no-fast-flags       # without panda_rl's CPU fast path
    python scripts/benchmark_env.py --cpu-devices 1       # on one XLA CPU device
    python scripts/benchmark_env.py --env PandaPickCubeVision-v0 --image-size 64 128 \\
        --batch 64 256 1024                               # vision env: physics + rendering

One "env step" is a full control step: the operational-space controller and all physics
substeps (4 by default) for one env, plus, for the vision env, rendering its two camera
images. Actions are uniform random in [-1, 1], generated on device inside the scanned loop,
with auto-reset. For the vision env every (image size, batch) pair is timed, and the
renderer alone (``jit(vmap(renderer.render))`` on the batch's states after the timed
steps: no physics) is timed too, as ms per camera image and its share of the env step.
A watchdog reports a hang (jax 0.10 is known to deadlock on CPU at large batch) instead of
waiting forever; a batch that fails (e.g. out of device memory) is reported and the next one
runs. Prints a table and writes JSON, rewritten after every batch, so a run stopped from
outside keeps what it measured.

The CPU fast path has two parts: XLA:CPU flags (``panda_rl/_xla.py``) and two MJX patches,
an optimization barrier in MJX's quaternion product (``panda_rl/_xla.py``) and the solver's
sums kept fusible (``panda_rl/_mjx_sums.py``). ``--no-fast-flags`` turns off ALL of it (the
regression check: run once with and once without it); ``--no-xla-flags`` and
``--no-mjx-barrier`` turn off the flags or the MJX patches, to see which part a change
affects. The JSON records what was in effect (``xla_status``, ``mjx_patch``,
``mjx_solver_sums``, ``xla_flags``).

The batch is split over every JAX device, as training splits it with the default placement:
on a CPU that is one XLA device per core (``panda_rl/_xla.py``; ``--cpu-devices 1`` measures
the single device JAX gives by default), and each device steps its own envs
(``panda_rl/envs/sharded.py``; ``--partitioned-step`` steps them under jit's partitioner, as
before). The JSON records ``devices``, ``cpu_devices`` and ``step``.
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
  p.add_argument("--image-size", type=int, nargs="+", default=[64, 128],
                 help="vision envs: square image sizes to time (ignored for state envs)")
  p.add_argument("--no-fast-flags", action="store_true",
                 help="turn off panda_rl's whole CPU fast path: its XLA:CPU flags (also\n"
                      "removed from XLA_FLAGS if set there) AND the MJX quaternion\n"
                      "barrier (regression check)")
  p.add_argument("--no-xla-flags", action="store_true",
                 help="turn off only the XLA:CPU flags (PANDA_RL_XLA_FLAGS=0)")
  p.add_argument("--no-mjx-barrier", action="store_true",
                 help="turn off only the MJX patches: the quaternion barrier and the\n"
                      "solver's chunked sums (PANDA_RL_MJX_BARRIER=0,\n"
                      "PANDA_RL_MJX_SOLVER_SUMS=0)")
  p.add_argument("--cpu-devices", default=None,
                 help="XLA CPU devices to split the batch over (PANDA_RL_CPU_DEVICES: 'auto'\n"
                      "= one per core, the library's default; 1 = one device)")
  p.add_argument("--partitioned-step", action="store_true",
                 help="step the split batch under jit's partitioner, as before 2026-12-08,\n"
                      "instead of each device stepping its own envs (ShardedEnv)")
  p.add_argument("--override", nargs="*", default=[], help="env overrides key=value")
  p.add_argument("--json", default="benchmark_env.json")
  return p.parse_args()


def _watch(work, timeout):
  """Runs ``work()`` in a daemon thread; returns False if it did not finish in time."""
  th = threading.Thread(target=work, daemon=True)
  th.start()
  th.join(timeout)
  return not th.is_alive()


def _median(times):
  times = sorted(times)
  return times[len(times) // 2]


def fast_path_off(flags: bool, barrier: bool) -> None:
  """Opts out of panda_rl's XLA:CPU flags and/or MJX barrier; call before importing it."""
  if flags:
    os.environ["PANDA_RL_XLA_FLAGS"] = "0"
    fast = ("--xla_cpu_use_fusion_emitters", "--xla_cpu_experimental_ynn_fusion_type")
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in fast]
    os.environ["XLA_FLAGS"] = " ".join(kept)
  if barrier:
    os.environ["PANDA_RL_MJX_BARRIER"] = "0"
    os.environ["PANDA_RL_MJX_SOLVER_SUMS"] = "0"


def placer(batch):
  """Places a batched env state as training does with the default placement: the batch
  split over every device (when it divides), everything else replicated; the jitted steps
  then run on all devices."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = _mesh(batch)
  if mesh is None:
    return lambda tree: tree
  split, rep = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  return lambda tree: jax.tree.map(
      lambda x: jax.device_put(x, split if x.ndim and x.shape[0] == batch else rep),
      tree)


def _mesh(batch):
  """Every device in a 1-D ``("batch",)`` mesh, or None on one device or when ``batch``
  does not divide over them."""
  import jax
  from jax.sharding import AxisType

  devices = jax.devices()
  if len(devices) == 1 or batch % len(devices):
    return None
  return jax.make_mesh((len(devices),), ("batch",), axis_types=(AxisType.Auto,),
                       devices=devices)


def batched(env, batch: int, per_device: bool = True):
  """``env`` batched as training batches it with the default placement: auto-resetting, and
  where the batch is split over several devices (:func:`placer`), each device stepping its
  own envs (``ShardedEnv``, as ``Placement.sharded_env`` gives the trainer).
  ``per_device=False`` steps the split batch under jit's partitioner instead (the way
  before 2026-12-08, for comparison)."""
  from panda_rl.envs.base import AutoResetWrapper
  from panda_rl.envs.sharded import ShardedEnv

  env = AutoResetWrapper(env, batch)
  mesh = _mesh(batch)
  return ShardedEnv(env, mesh) if per_device and mesh is not None else env


def make_rollout(env, steps: int):
  """``(state, key) -> (state, key, mean reward)``: ``steps`` control steps of the batched,
  auto-resetting ``env`` under uniform random actions drawn on device (the timed program).

  The reward is summed per env in the loop and averaged once at the end: a mean over the
  batch at every step would make the devices meet at every step, which training's rollout
  does not do (measured: 4% of the env's speed on 2 CPU devices)."""
  import jax
  import jax.numpy as jnp

  def rollout(state, key):
    def body(carry, _):
      s, k, total = carry
      k, sub = jax.random.split(k)
      a = jax.random.uniform(sub, (env.num_envs, env.action_size), minval=-1.0, maxval=1.0)
      s = env.step(s, a)
      return (s, k, total + s.reward), None
    total = jnp.zeros_like(state.reward)
    (state, key, total), _ = jax.lax.scan(body, (state, key, total), None, length=steps)
    return state, key, total.mean() / steps

  return rollout


def main():
  args = _parse()
  if args.cpu_devices is not None:
    os.environ["PANDA_RL_CPU_DEVICES"] = str(args.cpu_devices)
  fast_path_off(flags=args.no_fast_flags or args.no_xla_flags,
                barrier=args.no_fast_flags or args.no_mjx_barrier)
  import panda_rl  # sets XLA flags before the backend starts, patches MJX
  from panda_rl import _mjx_sums, _xla
  import jax
  from panda_rl.envs.registry import parse_overrides

  overrides = parse_overrides(args.override)
  vision = hasattr(panda_rl.make(args.env, **overrides), "renderer")
  sizes = args.image_size if vision else [None]

  def measure(batch, size):
    """Times the env (and, for vision envs, the renderer alone); one row, or None on hang."""
    extra = {} if size is None else {"image_height": size, "image_width": size}
    env = batched(panda_rl.make(args.env, **overrides, **extra), batch,
                  per_device=not args.partitioned_step)
    fn = jax.jit(make_rollout(env, args.steps), donate_argnums=0)
    place = placer(batch)
    result = {}

    def work():
      try:
        timed()
      except Exception as e:  # e.g. out of device memory: reported, the next batch runs
        result["error"] = f"{type(e).__name__}: {str(e)[:300]}"

    def timed():
      state = place(env.reset(jax.random.PRNGKey(0)))
      key = jax.random.PRNGKey(1)
      t0 = time.perf_counter()
      state, key, r = fn(state, key)
      jax.block_until_ready(r)
      result["compile_s"] = time.perf_counter() - t0  # compile + first call
      # One more untimed call: the first call after compiling can take several times a
      # later one (measured: 10 s instead of 0.85 s, vision env at B = 256 on 2 devices),
      # which a median of 2 calls would report as the speed.
      state, key, r = fn(state, key)
      jax.block_until_ready(r)
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, key, r = fn(state, key)
        jax.block_until_ready(r)
        times.append(time.perf_counter() - t0)
      result["times"] = times
      if size is not None:  # the renderer alone, on the states the steps reached
        render = jax.jit(jax.vmap(env.unwrapped.renderer.render))
        t0 = time.perf_counter()
        jax.block_until_ready(render(state.data))
        result["render_compile_s"] = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
          t0 = time.perf_counter()
          jax.block_until_ready(render(state.data))
          times.append(time.perf_counter() - t0)
        result["render_times"] = times

    if not _watch(work, args.timeout):
      return None
    if "error" in result:
      return {"batch": batch, "hang": False, "error": result["error"],
              **({} if size is None else {"image_size": size})}
    med = _median(result["times"])
    sps = batch * args.steps / med
    row = {"batch": batch, "env_steps_per_s": sps,
           "physics_steps_per_s": sps * getattr(env.unwrapped, "n_substeps", 1),
           "compile_s": result["compile_s"], "median_call_s": med, "hang": False}
    if size is not None:
      ncam = len(env.unwrapped.renderer.camera_names)
      render_s = _median(result["render_times"])
      row.update(image_size=size, cameras=ncam,
                 render_ms_per_image=render_s * 1e3 / (batch * ncam),
                 render_ms_per_env=render_s * 1e3 / batch,
                 # rendering's share of one env step (physics + controller + rendering)
                 render_share=(render_s / batch) / (med / (batch * args.steps)),
                 render_compile_s=result["render_compile_s"])
    return row

  out = {
      "env": args.env, "overrides": overrides, "steps_per_call": args.steps,
      "image_sizes": sizes if vision else None,
      "xla_status": _xla.STATUS, "mjx_patch": _xla.MJX_PATCH,
      "mjx_solver_sums": _mjx_sums.STATUS,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
      "devices": jax.device_count(), "cpu_devices": _xla.CPU_DEVICES,
      "step": "partitioned" if args.partitioned_step else "per device",
      "machine": platform.platform(), "python": sys.version.split()[0],
      "date": time.strftime("%Y-%m-%d"), "results": [],
  }
  rows = out["results"]

  def write():  # after every batch: a run stopped from outside keeps what it measured
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)

  for size, batch in [(s, b) for s in sizes for b in args.batch]:
    what = f"batch {batch:6d}" + ("" if size is None else f" @ {size}x{size}")
    row = measure(batch, size)
    if row is None:
      rows.append({"batch": batch, "hang": True, **({} if size is None else
                                                     {"image_size": size})})
      print(f"{what}: NO RESULT after {args.timeout:.0f}s (hung, or slower than the "
            "watchdog allows)", flush=True)
      write()
      break  # a hung thread still holds the CPU: later timings would mean nothing
    rows.append(row)
    write()
    if "error" in row:
      print(f"{what}: FAILED: {row['error']}", flush=True)
      continue
    msg = f"{what}: {row['env_steps_per_s']:10.0f} env steps/s  (compile+first " \
          f"{row['compile_s']:.1f}s)"
    if size is not None:
      msg += f"; renderer {row['render_ms_per_image']:.3f} ms/image"
    print(msg, flush=True)

  print()
  if vision:
    head = (f"{'image':>7} | {'batch':>7} | {'env steps/s':>12} | {'render ms/image':>15} | "
            f"{'render share':>12} | {'compile s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
      size = f"{r['image_size']}x{r['image_size']}"
      if r["hang"] or "error" in r:
        print(f"{size:>7} | {r['batch']:>7} | {'NO RESULT':>12} |")
      else:
        print(f"{size:>7} | {r['batch']:>7} | {r['env_steps_per_s']:>12.0f} | "
              f"{r['render_ms_per_image']:>15.3f} | {r['render_share']:>12.0%} | "
              f"{r['compile_s']:>9.1f}")
  else:
    print(f"{'batch':>7} | {'env steps/s':>12} | {'physics steps/s':>15} | {'compile s':>9}")
    print("-" * 54)
    for r in rows:
      if r["hang"] or "error" in r:
        print(f"{r['batch']:>7} | {'NO RESULT':>12} |")
      else:
        print(f"{r['batch']:>7} | {r['env_steps_per_s']:>12.0f} | "
              f"{r['physics_steps_per_s']:>15.0f} | {r['compile_s']:>9.1f}")
  write()
  print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
