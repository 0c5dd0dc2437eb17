"""Where a PandaPickCube-v0 step spends its time: one row per piece of a physics substep.

    python scripts/profile_env.py                          # B=2048, default env
    python scripts/profile_env.py --batch 1024 --override sim_dt=0.01 --json out.json

Every piece of MJX's ``step`` (kinematics, com, mass matrix, collision, constraint rows,
velocity terms, actuation, the constraint solver, the integrator) and the controller is
compiled alone as ``jit(vmap(piece))`` and timed on the same batch of states: states a
scripted pick policy reaches after ``--warm-steps`` control steps from random resets, so
the contacts a grasp makes are there. Then the whole substep (``mjx.step``), the whole
control step (controller + all substeps + observation + reward) and the auto-resetting
control step are timed the same way. Each call's cost includes returning the whole
``mjx.Data``; the "identity" row (a program that only copies the state) is that floor,
subtracted in the "net" column. XLA's cost analysis gives each program's flops.

Pieces timed alone do not add up exactly to the fused step (XLA fuses across them); the
table says which pieces are worth changing, the env benchmark says what a change bought.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=2048)
  p.add_argument("--warm-steps", type=int, default=40,
                 help="scripted control steps before the states are taken")
  p.add_argument("--repeats", type=int, default=7, help="timed calls per piece (median)")
  p.add_argument("--override", nargs="*", default=[], help="env overrides key=value")
  p.add_argument("--json", default="profile_env.json")
  return p.parse_args()


def pieces(env):
  """(name, fn(data) -> output) for every piece of one substep and the whole steps."""
  from mujoco.mjx._src import (collision_driver, constraint, forward, passive, smooth,
                               solver)
  m = env.mjx_model
  ctrl = env.controller
  target = env._home_tcp

  def mass(d):
    return smooth.factor_m(m, smooth.crb(m, d))

  def velocity(d):
    return smooth.rne(m, passive.passive(m, smooth.com_vel(m, d)))

  def actuation(d):
    return forward.fwd_acceleration(m, forward.fwd_actuation(m, d))

  def controller(d):
    return d.replace(ctrl=d.ctrl.at[:7].set(ctrl.torque(d, target)))

  return [
      ("identity", lambda d: d),
      ("kinematics", lambda d: smooth.kinematics(m, d)),
      ("com_pos", lambda d: smooth.com_pos(m, d)),
      ("mass matrix (crb + factor_m)", mass),
      ("collision", lambda d: collision_driver.collision(m, d)),
      ("constraint rows (make_constraint)", lambda d: constraint.make_constraint(m, d)),
      ("transmission", lambda d: smooth.transmission(m, d)),
      ("velocity terms (com_vel, passive, rne)", velocity),
      ("actuation + smooth acceleration", actuation),
      ("constraint solver (solve)", lambda d: solver.solve(m, d)),
      ("integrator (implicitfast)", lambda d: forward.implicit(m, d)),
      ("controller (osc torque)", controller),
      ("one physics substep (mjx.step)", lambda d: forward.step(m, d)),
  ]


def main():
  args = _parse()
  import panda_rl  # XLA flags before the backend starts, MJX patch
  from panda_rl import _xla
  import jax
  from panda_rl.envs.base import AutoResetWrapper
  from panda_rl.envs.registry import parse_overrides
  from panda_rl.envs.scripted import scripted_action

  overrides = parse_overrides(args.override)
  env = panda_rl.make("PandaPickCube-v0", **overrides)
  batched = AutoResetWrapper(env, args.batch)

  @jax.jit
  def warm(key):
    state = batched.reset(key)

    def body(s, _):
      return batched.step(s, jax.vmap(scripted_action)(s.obs)), None
    return jax.lax.scan(body, state, None, length=args.warm_steps)[0]

  state = jax.block_until_ready(warm(jax.random.PRNGKey(0)))
  action = jax.vmap(scripted_action)(state.obs)
  rows = []

  def timed(name, fn, *inputs):
    rows.append(time_piece(name, fn, inputs, args.batch, args.repeats))

  for name, fn in pieces(env):
    timed(name, jax.vmap(fn), state.data)
  n = env.n_substeps
  timed(f"control step ({n} substeps + obs + reward)", jax.vmap(env.step), state, action)
  timed("auto-resetting control step", batched.step, state, action)

  base = rows[0]["us_per_env"]
  for r in rows:
    r["net_us_per_env"] = r["us_per_env"] - base
  control = rows[-2]["us_per_env"]
  out = {"batch": args.batch, "n_substeps": n, "overrides": overrides,
         "warm_steps": args.warm_steps, "rows": rows,
         "env_steps_per_s_control_step": 1e6 / control,
         "xla_status": _xla.STATUS, "mjx_patch": _xla.MJX_PATCH,
         "jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
         "cpu_count": os.cpu_count(), "machine": platform.platform(),
         "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}
  with open(args.json, "w") as f:
    json.dump(out, f, indent=2)
  print_table(rows)
  print(f"\ncontrol step alone: {1e6 / control:,.0f} env steps/s at B={args.batch}; "
        f"JSON: {args.json}")


def time_piece(name, fn, inputs, batch: int, repeats: int) -> dict:
  """Compiles ``fn(*inputs)`` alone, times ``repeats`` calls (median); one table row."""
  import jax
  compiled = jax.jit(fn).lower(*inputs).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  jax.block_until_ready(compiled(*inputs))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    times.append(time.perf_counter() - t0)
  med = sorted(times)[len(times) // 2]
  row = {"piece": name, "ms_per_call": med * 1e3, "us_per_env": med * 1e6 / batch,
         "gflops_per_call": float((cost or {}).get("flops", float("nan"))) / 1e9}
  print(f"{name:42s} {row['ms_per_call']:9.2f} ms  {row['us_per_env']:7.2f} us/env  "
        f"{row['gflops_per_call']:8.3f} GFLOP", flush=True)
  return row


def print_table(rows) -> None:
  """The markdown table; shares are of the ``mjx.step`` row (the third from the end)."""
  print("\n| piece | us per env | net of copy | share of a substep | GFLOP per call |")
  print("|---|---:|---:|---:|---:|")
  sub = rows[-3]["net_us_per_env"]
  for r in rows:
    share = r["net_us_per_env"] / sub if sub > 0 else float("nan")
    print(f"| {r['piece']} | {r['us_per_env']:.2f} | {r['net_us_per_env']:.2f} | "
          f"{share:.0%} | {r['gflops_per_call']:.3f} |")

if __name__ == "__main__":
  main()
