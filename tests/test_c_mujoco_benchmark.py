"""scripts/benchmark_c_mujoco.py: the ceiling is measured on the env's own scene settings."""

import json

import numpy as np
from script_modules import load_script


def _script():
  return load_script("benchmark_c_mujoco")


def test_ceiling_steps_the_envs_scene_and_counts_control_steps(tmp_path):
  bench = _script()
  out = tmp_path / "c.json"
  bench.main(["--batch", "4", "--steps", "3", "--repeats", "1", "--threads", "1", "2",
              "--override", "sim_dt=0.01", "grasp_friction=1.5", "--json", str(out)])
  report = json.loads(out.read_text())
  assert report["substeps"] == 2 and report["overrides"] == {"sim_dt": 0.01,
                                                             "grasp_friction": 1.5}
  assert [r["threads"] for r in report["rows"]] == [1, 2]
  for row in report["rows"]:
    assert row["control_steps_per_s"] > 0
    assert abs(row["physics_steps_per_s"] - 2 * row["control_steps_per_s"]) <= 2  # rounding


def test_states_start_at_home_with_the_cube_on_the_floor_and_controls_are_held():
  import mujoco

  from panda_rl.envs import pick_cube
  from panda_rl.envs.panda import scene_model

  bench = _script()
  model = scene_model(pick_cube.default_config())
  rng = np.random.default_rng(0)
  states = bench.initial_states(model, 3, rng)
  data = mujoco.MjData(model)
  cube = int(model.jnt_qposadr[model.joint("cube_joint").id])
  for state in states:
    mujoco.mj_setState(model, data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    np.testing.assert_allclose(data.qpos[:7], model.key("home").qpos[:7])
    assert 0.25 <= data.qpos[cube] <= 0.55 and -0.25 <= data.qpos[cube + 1] <= 0.25
  controls = bench.random_controls(model, 3, 5, 4, rng)
  assert controls.shape == (3, 20, model.nu)
  np.testing.assert_array_equal(controls[:, 0], controls[:, 3])  # held for 4 substeps
  assert np.all(np.abs(controls) <= np.abs(model.actuator_ctrlrange).max(axis=1) + 1e-9)


def test_vs_c_mujoco_alternates_both_and_reports_the_median_ratio(tmp_path):
  """scripts/benchmark_vs_c_mujoco.py: one MJX call and one C MuJoCo call per round; each
  round's ratio is its env steps/s over its C MuJoCo control steps/s; the JSON keeps them."""
  out = tmp_path / "vs.json"
  report = load_script("benchmark_vs_c_mujoco").main(
      ["--batch", "8", "--steps", "2", "--c-batch", "2", "--c-steps", "3", "--threads", "1",
       "--rounds", "3", "--override", "sim_dt=0.01", "--json", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  assert report["overrides"] == {"sim_dt": 0.01} and len(report["rounds"]) == 3
  for row in report["rounds"]:
    assert row["env_steps_per_s"] > 0 and row["c_control_steps_per_s"] > 0
    np.testing.assert_allclose(row["ratio"],
                               row["env_steps_per_s"] / row["c_control_steps_per_s"],
                               rtol=1e-2)  # the speeds are stored rounded to a step
  assert report["median"]["ratio"] == np.median([r["ratio"] for r in report["rounds"]])
