"""``python -m panda_rl.export``: the ONNX file (run with onnxruntime) computes the JAX policy's
actions, normaliser included, and its JSON sidecar describes what the policy reads and writes.

The checkpoints are written without training (tests/policy_checkpoints.py: random networks
with a mean head scaled so that actions spread over [-1, 1], a non-trivial normaliser), in a
run directory's layout, and loaded through ``panda_rl.load_policy`` like a trained one.
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import json
import subprocess
import sys

import numpy as np
import pytest

from panda_rl import export
from panda_rl.evaluate import eval_env_settings
from panda_rl.envs.pick_cube import OBS_LAYOUT
from policy_checkpoints import REPO, write_policy_checkpoint

N_OBS = 1000
TOL = 1e-5


def _cli(cli_env, *args):
  return subprocess.run([sys.executable, "-m", "panda_rl.export", *args], cwd=REPO,
                        env=cli_env, capture_output=True, text=True, timeout=600)


def _matches_jax(run_dir, onnx_path, seed):
  policy = panda_rl.load_policy(run_dir)
  env_id, overrides = eval_env_settings(policy.config)
  spec = export.observation_spec(panda_rl.make(env_id, **overrides))
  feeds = export.random_observations(spec, N_OBS, np.random.default_rng(seed),
                                     policy.normalizer)
  obs = feeds["obs"] if list(feeds) == ["obs"] else feeds
  want = np.asarray(policy(obs))
  got = export.onnx_actions(onnx_path, feeds)
  assert got.shape == want.shape == (N_OBS, 4) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  return want


@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
  return write_policy_checkpoint(tmp_path_factory.mktemp("mlp") / "run")[0]


def test_the_cli_writes_an_onnx_policy_that_matches_jax(cli_env, state_run):
  proc = _cli(cli_env, f"--checkpoint={state_run}", "--format=onnx")
  assert proc.returncode == 0, proc.stderr
  assert f"policy: {state_run / 'policy.onnx'}" in proc.stdout
  assert "max |action difference|" in proc.stdout
  actions = _matches_jax(state_run, state_run / "policy.onnx", seed=1)
  # A meaningful comparison: actions spread over the range, some clipped.
  assert (np.abs(actions) == 1.0).mean() > 0.01 and (np.abs(actions) < 0.9).mean() > 0.2


def test_the_sidecar_describes_inputs_outputs_control_and_config(state_run):
  side = json.loads((state_run / "policy.json").read_text())
  assert side["model"] == "policy.onnx" and side["normalizer_folded"] is True
  (obs,) = side["inputs"]
  assert obs["name"] == "obs" and obs["shape"] == ["batch", 10] and obs["dtype"] == "float32"
  starts = np.cumsum([0] + [n for _, n in OBS_LAYOUT])[:-1]
  assert obs["layout"] == [{"name": name, "start": int(s), "size": n}
                           for (name, n), s in zip(OBS_LAYOUT, starts)]
  out = side["output"]
  assert out["shape"] == ["batch", 4] and out["low"] == [-1.0] * 4 and out["high"] == [1.0] * 4
  assert out["components"] == ["dx", "dy", "dz", "grip"]
  assert side["control"]["rate_hz"] == pytest.approx(50.0)
  assert side["control"]["action_scale_xyz"] == 0.1 and side["control"]["target_mode"] == "tcp"
  assert side["env_id"] == "PandaPickCube-v0" and side["env_overrides"] == {}  # no curriculum
  assert side["checkpoint_step"] == 3
  assert side["config"]["actor"]["model"]["policy_hidden"] == [256, 256]
  assert side["check"]["max_abs_diff"] < TOL


def test_a_vision_policy_exports_with_one_input_per_observation_key(tmp_path):
  run, config = write_policy_checkpoint(tmp_path / "run", "mujoco_ppo_cnn.py")
  size = [config.env.train.overrides.image_height, config.env.train.overrides.image_width]
  out = tmp_path / "deploy" / "cnn.onnx"
  result = export.export(str(run / "checkpoints" / "3"), out=str(out))
  assert result.model == out and result.sidecar == tmp_path / "deploy" / "cnn.json"
  side = json.loads(result.sidecar.read_text())
  shapes = {i["name"]: (i["shape"], i["dtype"]) for i in side["inputs"]}
  assert size == [64, 64]  # the config's images: the env's default
  assert shapes == {"front": (["batch", *size, 3], "uint8"),
                    "wrist": (["batch", *size, 3], "uint8"),
                    "gripper_pos": (["batch", 1], "float32"),
                    "instruction": (["batch", 8], "int32"),
                    "tcp_pos": (["batch", 3], "float32"), "tcp_vel": (["batch", 3], "float32")}
  _matches_jax(run, out, seed=2)


def test_user_errors_exit_2_with_one_line(cli_env, tmp_path, state_run):
  proc = _cli(cli_env, f"--checkpoint={tmp_path / 'nothing'}")
  assert proc.returncode == 2 and "panda_rl.export: CheckpointError" in proc.stderr
  assert "Traceback" not in proc.stderr
  # A missing optional package: the message names the pip command.
  fake = tmp_path / "no_jax2onnx"
  fake.mkdir()
  (fake / "jax2onnx.py").write_text("raise ImportError('not installed')\n")
  env = dict(cli_env, PYTHONPATH=f"{fake}:{cli_env['PYTHONPATH']}")
  proc = _cli(env, f"--checkpoint={state_run}", f"--out={tmp_path / 'x.onnx'}")
  assert proc.returncode == 2, proc.stderr
  assert "MissingDependencyError" in proc.stderr and "pip install 'panda_rl[export]'" in proc.stderr
  assert not (tmp_path / "x.onnx").exists()
