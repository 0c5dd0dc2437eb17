"""What a PandaPickCube policy does at the cube: the numbers that tell a run that is about to
learn the grasp from one stuck in the open-gripper hover (BENCHMARKS.md, "Plain resets").

    python scripts/grasp_probe.py runs/panda_rl/mujoco_ppo_mlp_plain [--step 100 200]
        [--episodes 256] [--seed 0] [--policy-seed K] [--json probe.json]

For each checkpoint (default: every one of the run) it plays ``--episodes`` episodes of the
config's evaluation env with the *stochastic* policy (what training sees) and reports, over
the steps with the TCP within 3 cm of the cube centre: how many such steps an episode has,
the deterministic policy's mean action there (clipped to [-1, 1]), the gripper command (0
open .. 1 closed) and the share of those steps it is closed (> 0.9), the TCP's height over
the cube centre; and over the episodes, the share in which the cube rose more than 1 cm and
3 cm. The policy's log std per action dimension (as the policy applies it, bounds included)
comes with each row. Runs that learned kept the command wandering at the cube (mean a[3]
near 0, closed a few % of the time, the cube rising > 1 cm in a few % of episodes); the
hover pins a[3] near -1, the command at 0 and the lifts at 0 by iteration ~100.
"""

import argparse
import json
import sys
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

import panda_rl
from panda_rl import networks
from panda_rl.checkpoint import Checkpointer, resolve_checkpoint_path
from panda_rl.evaluate import eval_env_settings
from panda_rl.policy import make_policy_apply

NEAR = 0.03  # metres from the cube centre that count as "at the cube"


def probe(env, mean_policy, sample_policy, episodes: int, key) -> Dict[str, float]:
  """Plays ``episodes`` episodes of ``env`` (a PandaPickCube) with ``sample_policy(obs, key)``
  and returns the statistics above; ``mean_policy(obs)`` gives the mean action."""
  k_reset, k_act = jax.random.split(key)

  def step(state, k):
    obs = state.obs
    parts = env.obs_dict(obs)
    rel = parts["tcp_pos"] - parts["cube_pos"]
    record = {"near": jnp.linalg.norm(rel, axis=-1) < NEAR, "mean": mean_policy(obs),
              "grip": state.info["grip_cmd"], "dz": rel[:, 2],
              "cube_z": parts["cube_pos"][:, 2]}
    return jax.vmap(env.step)(state, sample_policy(obs, k)), record

  @jax.jit
  def play(k_reset, k_act):
    state = jax.vmap(env.reset)(jax.random.split(k_reset, episodes))
    length = int(env.config.episode_length)
    _, rec = jax.lax.scan(step, state, jax.random.split(k_act, length))
    return rec

  rec = jax.tree.map(np.asarray, play(k_reset, k_act))
  near = rec["near"]
  steps = max(int(near.sum()), 1)
  rise = rec["cube_z"].max(axis=0) - rec["cube_z"][0]
  out = {"near_steps_per_episode": float(near.sum()) / episodes,
         "grip_command": float(rec["grip"][near].sum()) / steps,
         "closed_share": float((rec["grip"][near] > 0.9).sum()) / steps,
         "tcp_over_cube_cm": 100.0 * float(rec["dz"][near].sum()) / steps,
         "lifted_1cm_share": float((rise > 0.01).mean()),
         "lifted_3cm_share": float((rise > 0.03).mean())}
  for i in range(rec["mean"].shape[-1]):
    out[f"mean_a{i}"] = float(rec["mean"][..., i][near].sum()) / steps
  return out


def probe_checkpoint(run_dir, step: int, episodes: int, seed: int = 0,
                     policy_seed: int = 0) -> Dict[str, float]:
  """:func:`probe` of one checkpoint on its config's evaluation env, plus the log stds."""
  sample_policy = panda_rl.load_policy(run_dir, step=step, deterministic=False,
                                       seed=policy_seed)
  config, params, stats = sample_policy.config, sample_policy.params, sample_policy.normalizer
  mean_apply = make_policy_apply(config, sample_policy.action_size, deterministic=True)

  def mean_policy(obs):  # the same restored parameters: one read of the checkpoint
    return mean_apply(params, stats, obs)

  env_id, overrides = eval_env_settings(config)
  if env_id != "PandaPickCube-v0":
    raise SystemExit(f"grasp_probe: the run's env is {env_id}; this probe reads "
                     "PandaPickCube-v0's flat observation")
  env = panda_rl.make(env_id, **overrides)
  out = {"step": int(step)}
  out.update(probe(env, mean_policy, sample_policy, episodes, jax.random.PRNGKey(seed)))
  obs = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs
  nets = networks.make_networks(config.actor.model, sample_policy.action_size,
                                with_value=False)
  _, log_std = nets.policy_apply(params, jnp.zeros(obs.shape, obs.dtype))
  out["log_std"] = [round(float(x), 3) for x in np.asarray(log_std).reshape(-1)]
  return out


def _steps(run_dir) -> list:
  root, named = resolve_checkpoint_path(run_dir)
  if named is not None:
    return [named]
  ckpt = Checkpointer(root, read_only=True)
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()


def _row(r: Dict) -> str:
  means = " ".join(f"{r[k]:+.2f}" for k in sorted(r) if k.startswith("mean_a"))
  stds = " ".join(f"{x:+.2f}" for x in r["log_std"])
  return (f"{r['step']:>6}  {r['near_steps_per_episode']:5.1f}  {means}  "
          f"{r['grip_command']:5.2f}  {100 * r['closed_share']:6.1f}%  "
          f"{r['tcp_over_cube_cm']:+5.1f}  {100 * r['lifted_1cm_share']:6.1f}%  "
          f"{100 * r['lifted_3cm_share']:6.1f}%  {stds}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("run", help="run directory, its checkpoints/ or one checkpoints/<step>")
  p.add_argument("--step", type=int, nargs="*", help="checkpoint steps (default: all)")
  p.add_argument("--episodes", type=int, default=256)
  p.add_argument("--seed", type=int, default=0, help="PRNG seed of the episodes")
  p.add_argument("--policy-seed", type=int, default=0,
                 help="which seed of a multi-seed checkpoint")
  p.add_argument("--json", help="write the rows here")
  args = p.parse_args(argv)
  steps = args.step or _steps(args.run)
  print("  step  at-cube steps/ep  mean a (at the cube)  grip cmd  closed  "
        "TCP-cube z (cm)  lifted >1cm  >3cm  log std")
  rows = []
  for step in steps:
    rows.append(probe_checkpoint(args.run, step, args.episodes, args.seed, args.policy_seed))
    print(_row(rows[-1]), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"run": str(args.run), "episodes": args.episodes, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
