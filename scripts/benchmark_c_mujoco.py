"""C MuJoCo's ceiling on this machine: the pick-cube scene stepped by ``mujoco.rollout``.

    python scripts/benchmark_c_mujoco.py [--batch 512] [--steps 100] [--threads 1 2]
        [--override sim_dt=0.01 ...] [--json c_mujoco.json]

The physics alone, as the speed issue measures its ceiling: the scene that
``PandaPickCube-v0`` steps (:func:`panda_rl.envs.panda.scene_model`, so the same timestep,
solver iterations and grasp contact), ``--batch`` independent rollouts from the home pose with
the cube at random positions, and random torques held for each control step of
``ctrl_dt / sim_dt`` physics substeps (no controller, no observation, no reward).
``mujoco.rollout`` runs the batch on ``--threads`` threads. Prints control steps/s (physics
steps/s divided by the substeps) per thread count: the number to compare with
``scripts/benchmark_env.py`` on the same machine. Medians of ``--repeats`` timed calls after
one warm-up call.
"""

import argparse
import json
import os
import platform
import time

import mujoco
import numpy as np
from mujoco import rollout

from panda_rl.envs import pick_cube
from panda_rl.envs.panda import scene_model
from panda_rl.envs.registry import parse_overrides


def cpu_name() -> str:
  """The CPU's model name (Linux), else the platform's machine type."""
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def initial_states(model: mujoco.MjModel, batch: int, rng: np.random.Generator) -> np.ndarray:
  """[batch, nstate] full physics states: home keyframe, cube at a random floor position."""
  data = mujoco.MjData(model)
  mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
  cube = int(model.jnt_qposadr[model.joint("cube_joint").id])
  spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
  states = np.empty((batch, mujoco.mj_stateSize(model, spec)))
  for i in range(batch):
    data.qpos[cube:cube + 2] = rng.uniform((0.25, -0.25), (0.55, 0.25))
    mujoco.mj_forward(model, data)
    mujoco.mj_getState(model, data, states[i], spec)
  return states


def random_controls(model: mujoco.MjModel, batch: int, steps: int, substeps: int,
                    rng: np.random.Generator) -> np.ndarray:
  """[batch, steps * substeps, nu]: a random command in 10% of each actuator's range, held
  for every substep of a control step."""
  low, high = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
  mid, half = (low + high) / 2, (high - low) / 2
  ctrl = mid + 0.1 * half * rng.uniform(-1, 1, (batch, steps, model.nu))
  return np.repeat(ctrl, substeps, axis=1)


def workload(overrides, batch: int, steps: int, seed: int = 0):
  """(model, states, controls, substeps): the env's scene as ``overrides`` set it,
  ``batch`` initial states and ``steps`` control steps of held random controls."""
  cfg = pick_cube.default_config()
  cfg.update(overrides)
  substeps = int(round(cfg.ctrl_dt / cfg.sim_dt))
  model = scene_model(cfg)
  rng = np.random.default_rng(seed)
  states = initial_states(model, batch, rng)
  controls = random_controls(model, batch, steps, substeps, rng)
  return model, states, controls, substeps


def measure(model, states, controls, threads: int, repeats: int) -> float:
  """Median seconds of one ``rollout`` call over the whole batch."""
  datas = [mujoco.MjData(model) for _ in range(threads)]
  times = []
  with rollout.Rollout(nthread=threads) as pool:
    for i in range(repeats + 1):  # the first call warms up
      t0 = time.perf_counter()
      pool.rollout(model, datas, states, controls)
      if i:
        times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--steps", type=int, default=100, help="control steps per rollout")
  p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--override", nargs="*", default=[], help="env settings key=value")
  p.add_argument("--json", default="c_mujoco.json")
  args = p.parse_args(argv)

  model, states, controls, substeps = workload(parse_overrides(args.override), args.batch,
                                               args.steps)
  rows = []
  print(f"{'threads':>7} {'control steps/s':>16} {'physics steps/s':>16}")
  for threads in args.threads:
    seconds = measure(model, states, controls, threads, args.repeats)
    steps = args.batch * args.steps
    rows.append({"threads": threads, "control_steps_per_s": round(steps / seconds),
                 "physics_steps_per_s": round(steps * substeps / seconds),
                 "seconds": round(seconds, 3)})
    print(f"{threads:>7} {rows[-1]['control_steps_per_s']:>16,} "
          f"{rows[-1]['physics_steps_per_s']:>16,}")
  out = {"mujoco": mujoco.__version__, "cpu": cpu_name(),
         "cpu_count": os.cpu_count(), "batch": args.batch, "steps": args.steps,
         "substeps": substeps, "overrides": parse_overrides(args.override), "rows": rows}
  with open(args.json, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
