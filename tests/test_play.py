"""``python -m panda_rl.play``: policies in C MuJoCo, headless, with videos; a tiny trained
PPO checkpoint (the real training command line), a vision checkpoint (written without
training, tests/policy_checkpoints.py) and the scripted policy; user errors exit 2."""

import panda_rl  # noqa: F401  (first: XLA flags)

import json
import subprocess
import sys

import pytest

from panda_rl import play
from panda_rl.video import read_mp4
from policy_checkpoints import REPO, write_policy_checkpoint

CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
TINY_PICK = [  # one short PPO iteration on PandaPickCube-v0: a real checkpoint, quickly
    "--config.env.train.num_envs=8", "--config.env.eval.num_envs=4",
    "--config.rollout.num_steps=8", "--config.algorithm.num_minibatches=2",
    "--config.algorithm.update_epochs=1", "--config.actor.model.policy_hidden=(16,16)",
    "--config.actor.model.value_hidden=(16,16)", "--config.runner.val_check_interval=0",
    "--config.runner.max_epochs=1", "--config.runner.save_interval=1",
]


def _run(cli_env, module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env,
                        capture_output=True, text=True, timeout=900)


def _ok(proc):
  assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
  return proc


def _result(proc):
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_scripted_policy_headless_with_videos(cli_env, tmp_path):
  proc = _ok(_run(cli_env, "panda_rl.play", "--policy=scripted", "--episodes=2", "--video",
                  f"--video_dir={tmp_path}", "--json"))
  out = _result(proc)
  assert out["episodes"] == 2 and out["env_id"] == "PandaPickCube-v0"
  assert "success rate: " in proc.stdout and out["success_rate"] == 1.0
  assert len(out["videos"]) == 2
  frames = read_mp4(tmp_path / "play_scripted_ep0.mp4")
  assert frames.shape == (101, 128, 256, 3)  # reset + 100 steps, front | wrist


def test_a_trained_checkpoint_plays_in_c_mujoco(cli_env, tmp_path):
  _ok(_run(cli_env, "panda_rl.train", f"--config={CONFIG}", *TINY_PICK,
           f"--config.runner.logger.log_path={tmp_path}"))
  run = tmp_path / "panda_rl" / "mujoco_ppo_mlp"
  proc = _ok(_run(cli_env, "panda_rl.play", f"--checkpoint={run}", "--episodes=2",
                  "--video", "--num_videos=1", "--video_resolution=32", "--json"))
  out = _result(proc)
  assert out["policy"] == "iter_000001" and out["episodes"] == 2
  assert 0.0 <= out["success_rate"] <= 1.0 and 1 <= out["mean_length"] <= 100
  video = run / "video" / "play" / "play_iter_000001_ep0.mp4"
  assert out["videos"] == [str(video)] and read_mp4(video).shape[1:] == (32, 64, 3)


def test_a_vision_checkpoint_plays_on_rendered_images(cli_env, tmp_path):
  run, _ = write_policy_checkpoint(tmp_path / "run", "mujoco_ppo_cnn.py")
  out = _result(_ok(_run(cli_env, "panda_rl.play", f"--checkpoint={run}", "--episodes=2",
                         "--headless", "--json")))
  assert out["env_id"] == "PandaPickCubeVision-v0" and out["episodes"] == 2


def test_user_errors_exit_2_with_one_line(cli_env, tmp_path):
  for args, message in [([], "give --checkpoint DIR"),
                        ([f"--checkpoint={tmp_path / 'missing'}"], "CheckpointError")]:
    proc = _run(cli_env, "panda_rl.play", "--headless", *args)
    assert proc.returncode == 2, (args, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_what_cannot_be_played_is_refused_before_running(tmp_path):
  reach, _ = write_policy_checkpoint(
      tmp_path / "reach", overrides=["env.train.env_id=PointReach-v0",
                                     "env.train.overrides={}"])
  with pytest.raises(ValueError, match="no C MuJoCo version"):
    play.setup("checkpoint", str(reach), None, "PandaPickCube-v0")
  with pytest.raises(ValueError, match="reads the cube position"):
    play.setup("scripted", None, None, "PandaPickCubeVision-v0")
  scripted = play.setup("scripted", None, None, "PandaPickCube-v0")
  with pytest.raises(ValueError, match="--episodes must be >= 1"):
    play.run_headless(scripted, 0, 0, False, 2, None, None)
  with pytest.raises(ValueError, match="--num_videos must be >= 1"):
    play.run_headless(scripted, 1, 0, True, 0, None, None)


@pytest.mark.parametrize("platform,env,expected", [
    ("linux", {}, False), ("linux", {"DISPLAY": ":0"}, True),
    ("linux", {"WAYLAND_DISPLAY": "wayland-0"}, True), ("darwin", {}, True)])
def test_the_viewer_opens_only_with_a_display(monkeypatch, platform, env, expected):
  monkeypatch.delenv("DISPLAY", raising=False)
  monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(sys, "platform", platform)
  assert play.has_display() is expected
