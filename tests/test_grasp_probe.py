"""scripts/grasp_probe.py: what a policy does at the cube, read from a checkpoint."""

import panda_rl  # noqa: F401  (first: XLA flags)

import json

import jax
import numpy as np
import pytest

from panda_rl.envs.scripted import scripted_action
from policy_checkpoints import write_policy_checkpoint
from script_modules import load_script


def test_the_scripted_grasp_reads_as_closed_at_the_cube_and_lifted(pick_env):
  """The approach-descend-close-lift policy: every episode lifts the cube > 3 cm, the command
  is closed for part of the steps at the cube, and the mean action there is the policy's."""
  probe = load_script("grasp_probe").probe
  policy = jax.vmap(scripted_action)
  out = probe(pick_env, policy, lambda obs, key: policy(obs), 16, jax.random.PRNGKey(0))
  assert out["near_steps_per_episode"] > 5
  assert out["lifted_1cm_share"] >= out["lifted_3cm_share"] >= 0.9
  assert 0.2 < out["closed_share"] < 1.0 and 0.2 < out["grip_command"] <= 1.0
  # At the cube the script closes (a[3] = +1) once it is low enough, opens (-1) above it.
  assert -1.0 < out["mean_a3"] <= 1.0


def test_the_command_line_probes_each_checkpoint_with_the_bounds_applied(tmp_path, capsys):
  """From a run directory: one row per step, the log std as the policy applies it (floor
  included), the bounded gripper mean inside its bound, JSON rows."""
  run, _ = write_policy_checkpoint(
      tmp_path / "run", "mujoco_ppo_mlp_plain.py",
      ["actor.model.mean_bound=(None,None,None,0.3)",
       "actor.model.min_log_std=(None,None,None,0.0)"])
  script = load_script("grasp_probe")
  assert script.main([str(run), "--episodes", "4", "--json", str(tmp_path / "p.json")]) == 0
  rows = json.loads((tmp_path / "p.json").read_text())["rows"]
  assert [r["step"] for r in rows] == [3]
  assert rows[0]["log_std"] == pytest.approx([-0.5, -0.5, -0.5, 0.0])
  assert abs(rows[0]["mean_a3"]) <= 0.3 + 1e-6
  # A random policy is rarely at the cube: the statistics stay finite (no 0 / 0).
  assert all(np.isfinite(v) for k, v in rows[0].items() if k != "log_std")
  assert "     3" in capsys.readouterr().out


def test_other_envs_are_refused(tmp_path):
  run, _ = write_policy_checkpoint(tmp_path / "run", "mujoco_ppo_cnn.py")
  with pytest.raises(SystemExit, match="PandaPickCubeVision-v0.*flat observation"):
    load_script("grasp_probe").main([str(run), "--episodes", "2"])
