"""Sim-to-sim gap: each policy on the same initial states in MJX and in C MuJoCo.

    python scripts/sim2sim.py --checkpoint runs/panda_rl/mujoco_ppo_mlp \
        --checkpoint runs/panda_rl/mujoco_ppo_cnn --episodes 256 --json sim2sim.json
    python scripts/sim2sim.py --scripted --episodes 256

For every policy (a checkpoint's deterministic policy on its config's evaluation env, or the
scripted pick policy on PandaPickCube-v0), ``--episodes`` MJX episodes run through the one
evaluation loop; their initial ``qpos`` are then loaded into C MuJoCo envs
(:mod:`panda_rl.envs.pick_cube_c`) and the same policy plays from there
(:func:`panda_rl.sim2sim.compare`). Prints a markdown table (success in MJX and C, their
ratio, the mean |TCP_mjx - TCP_c| over the steps both episodes run, over the first 20
steps, and each simulator's mean |target - TCP| tracking error) and writes the numbers as
JSON.
"""

import panda_rl  # noqa: F401  (first: sets XLA:CPU flags before any JAX backend starts)

import argparse
import json
import time

from panda_rl import sim2sim


def _policies(args):
  if args.scripted:
    yield "scripted", "PandaPickCube-v0", {}, sim2sim.scripted_policy(), 128
  from panda_rl.evaluate import eval_env_settings

  for ckpt in args.checkpoint:
    policy = panda_rl.load_policy(ckpt, deterministic=True)
    env_id, overrides = eval_env_settings(policy.config)
    batch = args.batch or int(policy.config.env.eval.num_envs)
    name = f"{policy.config.runner.logger.experiment_name} (step {policy.step})"
    yield name, env_id, dict(overrides), policy, batch


def table(rows) -> str:
  head = ("| policy | env | episodes | MJX success | C success | C / MJX | both succeed | "
          "TCP gap, mean (mm) | TCP gap, first 20 steps (mm) | tracking MJX / C (mm) |")
  lines = [head, "|" + "---|" * 10]
  for r in rows:
    lines.append(
        f"| {r['policy']} | {r['env_id']} | {r['episodes']} | {r['success_mjx']:.3f} | "
        f"{r['success_c']:.3f} | {r['success_ratio']:.3f} | {r['both_succeed']:.3f} | "
        f"{1e3 * r['tcp_gap_mean_m']:.2f} | {1e3 * r['tcp_gap_first20_mean_m']:.4f} | "
        f"{1e3 * r['tracking_mjx_m']:.1f} / {1e3 * r['tracking_c_m']:.1f} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", action="append", default=[], help="a run directory "
                 "(repeat for several)")
  p.add_argument("--scripted", action="store_true", help="also the scripted policy")
  p.add_argument("--episodes", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch", type=int, default=None, help="envs per batch (default: the "
                 "config's env.eval.num_envs)")
  p.add_argument("--json", default=None, help="write the results here")
  args = p.parse_args()
  if not args.checkpoint and not args.scripted:
    p.error("give --checkpoint DIR and/or --scripted")
  rows = []
  for name, env_id, overrides, policy, batch in _policies(args):
    t0 = time.perf_counter()
    row = sim2sim.compare(env_id, overrides, policy, args.episodes, args.seed, batch)
    row.update(policy=name, env_id=env_id, seconds=time.perf_counter() - t0)
    rows.append(row)
    print(f"{name}: MJX {row['success_mjx']:.3f}, C {row['success_c']:.3f} "
          f"({row['seconds']:.0f}s)", flush=True)
  print(table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
