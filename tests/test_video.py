"""Evaluation videos: the recorder (one episode per file, side-by-side cameras, overlay), mp4
encoding, the training loop's hook (default directory, failures are warnings) and the
``train`` / ``evaluate`` command lines on a tiny PandaPickCube-v0 run at 32 x 32 pixels."""

import panda_rl  # noqa: F401  (first: XLA flags)

import subprocess
import sys
import types
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl import eval_videos, runner
from panda_rl import train as train_lib
from panda_rl import training
from panda_rl import video
from panda_rl.envs import base
from panda_rl.checkpoint import Checkpointer
from panda_rl.config import ConfigError, load_config
from panda_rl.logger import read_scalars
from fake_trainer import RunLoopTrainer

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
RUN = ("panda_rl", "mujoco_ppo_mlp")  # default project / experiment sub-directories
RES = 32


# --------------------------------------------------------------------------------------
# The recorder, in process.


class _EndsEarly(base.Wrapper):
  """Also ends each episode (``done``) at a step of its own, drawn from its reset key in
  [3, 16): episodes of different lengths, some cut short before the env's time limit."""

  def reset(self, key):
    state = self.env.reset(key)
    end = jax.random.randint(jax.random.fold_in(key, 7), (), 3, 16)
    return state.replace(info=dict(state.info, t=jnp.int32(0), end=end))

  def step(self, state, action):
    state = self.env.step(state, action)
    t = state.info["t"] + 1
    done = jnp.maximum(state.done, (t >= state.info["end"]).astype(jnp.float32))
    return state.replace(done=done, info=dict(state.info, t=t))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """Two episodes of a zero-action policy, 12 steps simulated. Episode 0 ends at the env's
  time limit (10 steps), episode 1 early, at step 7 (its end drawn by _EndsEarly from its
  reset key, PRNGKey(1) split in 2): the recorder must cut each video at its own episode's end."""
  env = _EndsEarly(panda_rl.make("PandaPickCube-v0", episode_length=10))
  policy = lambda params, obs: jnp.zeros(obs.shape[:-1] + (env.action_size,)) + params
  recorder = video.VideoRecorder(env, policy, num_videos=2, resolution=RES, fps=10,
                                 max_steps=12)
  episodes = recorder.rollout(jnp.float32(0.0), jax.random.PRNGKey(1))
  directory = tmp_path_factory.mktemp("videos")
  paths = recorder.write(episodes, directory, "iter_000020")
  return recorder, episodes, paths


def test_video_is_one_episode_of_side_by_side_views(recorded):
  recorder, episodes, paths = recorded
  assert [p.name for p in paths] == ["iter_000020_ep0.mp4", "iter_000020_ep1.mp4"]
  np.testing.assert_array_equal(episodes.lengths, [10, 7])
  for path, frames, success, length in zip(paths, episodes.frames, episodes.success,
                                           episodes.lengths):
    # The reset frame + one per step up to the one that ended the episode, front | wrist.
    assert frames.shape == (length + 1, RES, 2 * RES, 3) and frames.dtype == np.uint8
    assert success.shape == (length + 1,)
    back = video.read_mp4(path)
    assert back.shape == (length + 1, RES, 2 * RES, 3)
    # Lossy, but the same picture: the scene, not noise or black.
    assert np.abs(back[5, :RES - 4].astype(float) - frames[5, :RES - 4]).mean() < 12
    assert frames[5].std() > 10
  assert not list(paths[0].parent.glob(".*"))  # no partial files left behind
  # Different initial states (the cube), and the two camera views differ.
  assert not np.array_equal(episodes.frames[0][0], episodes.frames[1][0])
  assert not np.array_equal(episodes.frames[0][0][:, :RES], episodes.frames[0][0][:, RES:])


def test_first_frame_shows_the_reset_state(recorded):
  # The reset moves the cube without kinematics; the recorder recomputes them, so with a
  # zero action the first two frames differ only by a few pixels of arm motion.
  _, episodes, _ = recorded
  frames = episodes.frames[0].astype(float)
  assert np.abs(frames[0] - frames[1]).mean() < 2.0



def test_annotate_draws_step_number_and_success_bar():
  frames = np.full((12, 64, 128, 3), 128, np.uint8)
  success = np.array([0, 1, 0] + [0] * 9, bool)
  out = video.annotate(frames, success)
  assert out.shape == frames.shape and frames.max() == 128  # input untouched
  bar = out[:, -1, 0]
  np.testing.assert_array_equal(bar[0], video.NO_SUCCESS_RGB)
  np.testing.assert_array_equal(bar[1], video.SUCCESS_RGB)
  np.testing.assert_array_equal(bar[2], video.SUCCEEDED_RGB)  # succeeded earlier
  corner = (out[:, :12, :16] == 255).all(-1)  # white digit dots, top left
  assert corner[0].sum() == 12 and corner[1].sum() == 8  # "0" and "1" in the 3x5 font
  assert corner[11].sum() == 16  # "11"
  assert (out[:, 20:-4] == 128).all()  # the rest of the picture is untouched


def test_write_mp4_pads_odd_sizes(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (3, 33, 47, 3), np.uint8)
  path = video.write_mp4(tmp_path / "odd.mp4", frames, fps=5)
  assert video.read_mp4(path).shape == (3, 34, 48, 3)
  with pytest.raises(ValueError, match="frames must be"):
    video.write_mp4(tmp_path / "bad.mp4", frames[..., 0], fps=5)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def test_bad_settings_and_unrenderable_envs_fail_clearly():
  with pytest.raises(ValueError, match="num_videos"):
    video.check_settings(0, 32, 25)
  with pytest.raises(ValueError, match="resolution"):
    video.check_settings(1, 4, 25)
  assert video.check_settings(2, (48, 64), 30) == (2, 48, 64, 30.0)
  with pytest.raises(ValueError, match="no mj_model"):
    video.VideoRecorder(panda_rl.make("PointReach-v0"), lambda p, o: o, resolution=RES)
  with pytest.raises(ConfigError, match="env.eval.video_cfg: num_videos"):  # at load time
    load_config(CONFIG, ["env.eval.video_cfg.save_video=True",
                         "env.eval.video_cfg.num_videos=0"])
  config = load_config(CONFIG, ["env.eval.video_cfg.save_video=True"])
  config.unlock()
  config.env.eval.video_cfg.resolution = 4
  with pytest.raises(ConfigError, match="env.eval.video_cfg: resolution"):
    eval_videos.video_recorder(config)


# --------------------------------------------------------------------------------------
# The training loop's hook.


def _tiny_config(tmp_path, *extra):
  return load_config(CONFIG, [
      f"runner.logger.log_path={tmp_path}", "env.train.env_id=PointReach-v0",
      "env.train.overrides={}",
      "env.train.num_envs=4", "env.eval.num_envs=2", "rollout.num_steps=4",
      "algorithm.num_minibatches=1", "algorithm.update_epochs=1",
      "actor.model.policy_hidden=(4,4)", "actor.model.value_hidden=(4,4)",
      "runner.max_epochs=2", "runner.val_check_interval=1", "runner.save_interval=2",
      "env.eval.video_cfg.save_video=True", *extra])


def test_video_dir_defaults_to_log_path_video_eval(tmp_path):
  config = _tiny_config(tmp_path)
  assert eval_videos.video_dir(config) == tmp_path.joinpath(
      "video", "eval", *RUN)
  config = _tiny_config(tmp_path, f"env.eval.video_cfg.video_base_dir={tmp_path}/v")
  assert eval_videos.video_dir(config) == tmp_path / "v"


def test_unrenderable_eval_env_fails_before_training(tmp_path):
  with pytest.raises(ConfigError, match="save_video=True, but PointReach has no mj_model"):
    train_lib.train_and_evaluate(_tiny_config(tmp_path))
  assert not list(tmp_path.rglob("checkpoints"))


@flax.struct.dataclass
class _State:
  params: dict
  normalizer: dict
  iteration: jax.Array
  env_steps: jax.Array


class _FakeTrainer(RunLoopTrainer):
  """Counts iterations; no env, no compile worth the name."""

  def __init__(self, config):
    self.env = types.SimpleNamespace(observation_size=3, action_size=2)

  def init(self, key):
    return _State(params={"policy": jnp.zeros(2)}, normalizer={"count": jnp.zeros(())}, iteration=jnp.int32(0),
                  env_steps=jnp.int32(0))

  def iteration_fn(self, state):
    metrics = {name: jnp.float32(0.5) for name in M.ITERATION_METRICS}
    return state.replace(iteration=state.iteration + 1, env_steps=state.env_steps + 8,
                         params={"policy": state.params["policy"] + 1.0}), metrics

  def train_iteration(self, state):
    return jax.jit(self.iteration_fn)(state)

  def evaluate(self, state, key):
    return {name: jnp.float32(1.0) for name in M.EVAL_METRICS}


def test_video_failure_is_a_warning_and_keeps_logs_and_checkpoints(tmp_path, monkeypatch,
                                                                   caplog):
  calls = []

  class Broken(eval_videos.EvalVideos):
    def __init__(self):  # no recorder: nothing to render
      pass

    def prepare(self, trainer):
      pass

    def __call__(self, trainer, state, key, step):
      calls.append(step)
      raise OSError("disk full")

  monkeypatch.setattr(training, "Trainer", _FakeTrainer)
  monkeypatch.setattr(runner, "video_recorder", lambda config: Broken())
  result = train_lib.train_and_evaluate(_tiny_config(tmp_path))
  assert calls == [1, 2]
  assert "Evaluation videos of iteration 2 were not written: OSError: disk full" in caplog.text
  assert Checkpointer(result.workdir / "checkpoints").all_steps() == [2]
  scalars = read_scalars(result.workdir)
  assert [s for s, _, _ in scalars[M.EVAL_SUCCESS_ONCE]] == [1, 2]
  assert M.VIDEO_S not in scalars


def test_multi_seed_run_records_seed_0(tmp_path, monkeypatch):
  """With runner.num_seeds = 2 the videos show seed 0: its unstacked state and its
  evaluation key, not the stacked [2, ...] ones."""
  seen = []

  class Capture(eval_videos.EvalVideos):
    def __init__(self):
      pass

    def prepare(self, trainer):
      pass

    def __call__(self, trainer, state, key, step):
      seen.append((step, jax.device_get(state.params), np.asarray(key)))
      return []

  monkeypatch.setattr(runner, "video_recorder", lambda config: Capture())
  result = train_lib.train_and_evaluate(_tiny_config(tmp_path, "runner.num_seeds=2",
                                                     "runner.seed=3"))
  assert [step for step, _, _ in seen] == [1, 2]
  _, params, key = seen[-1]
  want = jax.device_get(result.seed_state(0).params)
  other = jax.device_get(result.seed_state(1).params)
  jax.tree.map(np.testing.assert_array_equal, params, want)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(params), jax.tree.leaves(other)))
  np.testing.assert_array_equal(key, np.asarray(runner._eval_keys(3, 2, 2))[0])


# --------------------------------------------------------------------------------------
# Command lines: a 1-iteration PandaPickCube-v0 run (100-step episodes), then evaluate.

TINY_PICK = [
    "--config.env.train.num_envs=4",
    "--config.env.eval.num_envs=2",
    "--config.rollout.num_steps=4",
    "--config.algorithm.num_minibatches=1",
    "--config.algorithm.update_epochs=1",
    "--config.actor.model.policy_hidden=(8,8)",
    "--config.actor.model.value_hidden=(8,8)",
    "--config.runner.max_epochs=1",
    "--config.runner.val_check_interval=1",
    "--config.env.eval.video_cfg.save_video=True",
    "--config.env.eval.video_cfg.num_videos=1",
    f"--config.env.eval.video_cfg.resolution={RES}",
    "--config.env.eval.video_cfg.fps=10",
]


def _run(env, module, *args):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (f"rc={proc.returncode}\nstdout:\n{proc.stdout}\n"
                                f"stderr:\n{proc.stderr}")
  return proc


@pytest.fixture(scope="module")
def pick_run(cli_env, tmp_path_factory):
  log_path = tmp_path_factory.mktemp("pick")
  proc = _run(cli_env, "panda_rl.train", f"--config={CONFIG}", *TINY_PICK,
              f"--config.runner.logger.log_path={log_path}")
  return log_path.joinpath(*RUN), proc


def _check_video(path, max_frames=101):
  frames = video.read_mp4(path)
  assert 2 <= len(frames) <= max_frames and frames.shape[1:] == (RES, 2 * RES, 3)
  return frames


def test_train_cli_writes_eval_videos_under_log_path(pick_run):
  run_dir, proc = pick_run
  log_path = run_dir.parents[len(RUN) - 1]
  videos = sorted(log_path.joinpath("video", "eval", *RUN).iterdir())
  assert [p.name for p in videos] == ["iter_000001_ep0.mp4"]
  _check_video(videos[0])
  assert "time/video_s=" in proc.stdout
  assert Checkpointer(run_dir / "checkpoints").all_steps() == [1]
  assert M.VIDEO_S in read_scalars(run_dir)


def test_evaluate_cli_writes_videos(cli_env, pick_run):
  run_dir, _ = pick_run
  proc = _run(cli_env, "panda_rl.evaluate", "--checkpoint", str(run_dir), "--episodes", "2",
              "--num_envs", "2", "--video", "--num_videos", "2")
  assert "success rate:" in proc.stdout and "2 videos in" in proc.stdout
  directory = run_dir / "video" / "evaluate"
  names = sorted(p.name for p in directory.iterdir())
  assert names == ["iter_000001_ep0.mp4", "iter_000001_ep1.mp4"]
  for name in names:
    assert str(directory / name) in proc.stdout
    _check_video(directory / name)
