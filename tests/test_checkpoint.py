"""Checkpoints: exact round trips, interrupted saves, damaged checkpoints, misfit configs,
and the training loop's save / resume / NaN-guard behaviour (with a tiny fake trainer, so
these run in seconds; tests/test_cli.py repeats the key ones with the real PPO trainer)."""

import panda_rl  # noqa: F401  (first: XLA flags)

import shutil
import types
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panda_rl import training
from panda_rl.checkpoint import (Checkpointer, CheckpointError, resolve_checkpoint_path,
                                 restore_subtree)
from panda_rl.config import load_config
from panda_rl.train import TrainingDivergedError, train_and_evaluate

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mujoco_ppo_mlp.py")


# --------------------------------------------------------------------------------------
# Checkpointer on a small pytree.


@flax.struct.dataclass
class _State:
  params: dict
  key: jax.Array
  iteration: jax.Array


def _state(i: int, width: int = 3) -> _State:
  return _State(params={"w": jnp.full((width, 2), float(i)), "b": jnp.arange(2.0) + i},
                key=jax.random.PRNGKey(i), iteration=jnp.int32(i))


def _abstract(width: int = 3):
  return jax.eval_shape(lambda: _state(0, width))


def _assert_tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved(tmp_path):
  """A checkpoints dir with complete steps 2 and 4."""
  config = load_config(CONFIG)
  with Checkpointer(tmp_path / "ckpt") as ck:
    ck.save(2, _state(2), config, meta={"action_size": 2})
    ck.save(4, _state(4), config)
  return tmp_path / "ckpt", config


def test_round_trip_is_exact_and_keeps_config(saved):
  root, config = saved
  ck = Checkpointer(root)
  assert ck.all_steps() == [2, 4]
  state, saved_config, step = ck.restore(_abstract())
  assert step == 4
  _assert_tree_equal(state, _state(4))
  assert isinstance(state, _State)
  assert saved_config["algorithm"]["gamma"] == config.algorithm.gamma
  assert ck.restore_meta(2)["action_size"] == 2 and ck.restore_meta(4) == {}
  state2, _, _ = ck.restore(_abstract(), step=2)
  _assert_tree_equal(state2, _state(2))
  ck.close()


def test_zero_size_arrays_round_trip(tmp_path):
  # MJX's Data holds zero-size arrays (e.g. `act` when no actuator has activation state).
  state = {"a": jnp.arange(3.0), "act": jnp.zeros((4, 0)), "nested": {"e": jnp.zeros((0,),
                                                                                   jnp.int32)}}
  with Checkpointer(tmp_path) as ck:
    ck.save(1, state, {"x": 1})
  restored, _, _ = Checkpointer(tmp_path).restore(jax.eval_shape(lambda: state))
  _assert_tree_equal(restored, state)
  assert restored["nested"]["e"].dtype == jnp.int32


def test_interrupted_save_is_ignored_and_never_deleted(saved):
  root, config = saved
  # What a save killed mid-way leaves behind: orbax's tmp directory, partly written.
  tmp = root / "6.orbax-checkpoint-tmp-1234567"
  shutil.copytree(root / "4", tmp)
  (tmp / "state" / "manifest.ocdbt").write_bytes(b"\0garbage")
  ck = Checkpointer(root)
  assert ck.latest_step() == 4
  assert ck.incomplete() == [tmp]
  state, _, step = ck.restore(_abstract())
  assert step == 4
  _assert_tree_equal(state, _state(4))
  # A later save of the same step succeeds and the leftover is still there.
  ck.save(6, _state(6), config)
  ck.wait_until_finished()
  assert ck.all_steps() == [2, 4, 6]
  assert tmp.exists()
  ck.close()
  assert tmp.exists()


def _damage(step_dir: Path) -> None:
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "manifest" in f.name:
      f.write_bytes(b"\0" * 7)


def test_damaged_checkpoint_gives_clear_error_and_is_kept(saved):
  root, _ = saved
  _damage(root / "4")
  ck = Checkpointer(root)
  with pytest.raises(CheckpointError) as e:
    ck.restore(_abstract())
  msg = str(e.value)
  assert "damaged" in msg and str(root / "4") in msg and "NOT deleted" in msg
  assert "[2]" in msg  # names the earlier complete step
  assert (root / "4" / "state").is_dir()
  # Moving it aside, as the message suggests, resumes from the earlier checkpoint.
  (root / "4").rename(root / "4.damaged")
  state, _, step = Checkpointer(root).restore(_abstract())
  assert step == 2
  _assert_tree_equal(state, _state(2))
  assert (root / "4.damaged").is_dir()


def test_misfit_shapes_name_the_leaves_and_config_fields(saved):
  root, config = saved
  other = load_config(CONFIG, ["actor.model.policy_hidden=(7,7)"])
  with pytest.raises(CheckpointError) as e:
    Checkpointer(root).restore(_abstract(width=5), current_config=other)
  msg = str(e.value)
  assert "params.w" in msg and "(3, 2)" in msg and "(5, 2)" in msg
  assert "actor.model.policy_hidden" in msg


def test_missing_checkpoint_messages(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    resolve_checkpoint_path(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="No checkpoints"):
    resolve_checkpoint_path(tmp_path / "empty")
  with pytest.raises(CheckpointError, match="No complete checkpoint"):
    Checkpointer(tmp_path / "empty").restore(_abstract())


def test_resolve_paths_and_partial_restore(saved):
  root, _ = saved
  run = root.parent
  (run / "checkpoints").symlink_to(root)
  assert resolve_checkpoint_path(run) == ((run / "checkpoints").absolute(), None)
  assert resolve_checkpoint_path(root) == (root.absolute(), None)
  assert resolve_checkpoint_path(root / "2") == (root.absolute(), 2)
  tree = Checkpointer(root).saved_tree(2)
  target = {"params": {"w": jax.ShapeDtypeStruct(tree["params"]["w"].shape, np.float32)}}
  out = restore_subtree(root, 2, target)
  assert set(out) == {"params"} and set(out["params"]) == {"w"}
  np.testing.assert_array_equal(out["params"]["w"], np.full((3, 2), 2.0))


# --------------------------------------------------------------------------------------
# The training loop, with a fake trainer (same interface as panda_rl.training.Trainer).


@flax.struct.dataclass
class _TrainState:
  params: dict
  opt_state: dict
  normalizer: dict
  env_state: dict
  key: jax.Array
  iteration: jax.Array
  env_steps: jax.Array


class _FakeTrainer:
  """A deterministic random walk with PPO-shaped metrics; the loss is NaN at ``NAN_AT``."""

  NAN_AT = None
  STEPS = 10

  def __init__(self, config):
    self.width = int(config.actor.model.policy_hidden[0])
    self.env = types.SimpleNamespace(observation_size=3, action_size=2)

  def init(self, key):
    return _TrainState(params={"policy": jnp.zeros((self.width,))},
                       opt_state={"mu": jnp.zeros((self.width,))},
                       normalizer={"count": jnp.zeros(())},
                       env_state={"x": jnp.zeros((4,))}, key=key,
                       iteration=jnp.zeros((), jnp.int32), env_steps=jnp.zeros((), jnp.int32))

  def iteration_fn(self, state):
    key, sub = jax.random.split(state.key)
    noise = jax.random.normal(sub, (self.width,))
    params = {"policy": state.params["policy"] * 0.9 + noise}
    it = state.iteration + 1
    bad = jnp.float32(self.NAN_AT if self.NAN_AT is not None else -1) == it
    loss = jnp.where(bad, jnp.nan, jnp.sum(params["policy"] ** 2))
    new = state.replace(params=params, opt_state={"mu": state.opt_state["mu"] + noise},
                        env_state={"x": state.env_state["x"] + 1.0}, key=key, iteration=it,
                        env_steps=state.env_steps + self.STEPS)
    from panda_rl import metrics as M

    metrics = {name: jnp.float32(0.5) for name in M.ITERATION_METRICS}
    metrics[M.LOSS] = loss
    return new, metrics

  def train_iteration(self, state):
    return jax.jit(self.iteration_fn)(state)

  def evaluate(self, state, key):
    from panda_rl import metrics as M

    return {name: jnp.float32(1.0) for name in M.EVAL_METRICS}


@pytest.fixture
def fake_trainer(monkeypatch):
  monkeypatch.setattr(training, "Trainer", _FakeTrainer)
  monkeypatch.setattr(_FakeTrainer, "NAN_AT", None)
  return _FakeTrainer


def _config(tmp_path, *extra):
  return load_config(CONFIG, [f"runner.logger.log_path={tmp_path}", "runner.max_epochs=6",
                              "runner.save_interval=2", "runner.val_check_interval=3",
                              "actor.model.policy_hidden=(4,4)", *extra])


def test_loop_saves_every_interval_and_at_end(fake_trainer, tmp_path, capsys):
  result = train_and_evaluate(_config(tmp_path, "runner.max_epochs=7"))
  assert result.checkpoint_step == 7
  assert Checkpointer(result.workdir / "checkpoints").all_steps() == [2, 4, 6, 7]
  assert int(result.state.iteration) == 7 and int(result.state.env_steps) == 70
  assert result.eval_metrics["eval/success_once"] == 1.0
  assert (result.workdir / "config.json").is_file()


def test_loop_resume_is_exact(fake_trainer, tmp_path):
  straight = train_and_evaluate(_config(tmp_path / "a"))
  train_and_evaluate(_config(tmp_path / "b", "runner.max_epochs=3"))
  resumed = train_and_evaluate(_config(tmp_path / "b", "runner.resume=True"))
  _assert_tree_equal(straight.state, resumed.state)


def test_existing_run_needs_resume_flag(fake_trainer, tmp_path):
  train_and_evaluate(_config(tmp_path, "runner.max_epochs=2"))
  with pytest.raises(CheckpointError, match="runner.resume=True"):
    train_and_evaluate(_config(tmp_path, "runner.max_epochs=2"))


def test_resume_skips_interrupted_save(fake_trainer, tmp_path):
  first = train_and_evaluate(_config(tmp_path, "runner.max_epochs=4"))
  ckdir = first.workdir / "checkpoints"
  tmp = ckdir / "6.orbax-checkpoint-tmp-99"
  shutil.copytree(ckdir / "4", tmp)
  shutil.rmtree(tmp / "state")
  result = train_and_evaluate(_config(tmp_path, "runner.resume=True"))
  assert int(result.state.iteration) == 6
  assert tmp.is_dir()
  assert Checkpointer(ckdir).all_steps() == [2, 4, 6]


def test_resume_from_damaged_checkpoint_fails_clearly(fake_trainer, tmp_path):
  first = train_and_evaluate(_config(tmp_path, "runner.max_epochs=4"))
  ckdir = first.workdir / "checkpoints"
  _damage(ckdir / "4")
  with pytest.raises(CheckpointError, match="damaged"):
    train_and_evaluate(_config(tmp_path, "runner.resume=True"))
  assert sorted(p.name for p in ckdir.iterdir()) == ["2", "4"]


def test_resume_with_misfit_config_fails_clearly(fake_trainer, tmp_path):
  train_and_evaluate(_config(tmp_path, "runner.max_epochs=2"))
  with pytest.raises(CheckpointError) as e:
    train_and_evaluate(_config(tmp_path, "runner.resume=True",
                               "actor.model.policy_hidden=(8,8)"))
  assert "params.policy" in str(e.value) and "actor.model.policy_hidden" in str(e.value)


def test_nan_loss_stops_without_saving(fake_trainer, tmp_path, monkeypatch):
  monkeypatch.setattr(_FakeTrainer, "NAN_AT", 5)
  with pytest.raises(TrainingDivergedError) as e:
    train_and_evaluate(_config(tmp_path))
  msg = str(e.value)
  assert "iteration 5" in msg and "train/loss" in msg and "step 4" in msg
  ckdir = tmp_path / "panda_rl" / "mujoco_ppo_mlp" / "checkpoints"
  assert Checkpointer(ckdir).all_steps() == [2, 4]
  # The last good checkpoint restores and is the state after 4 iterations.
  state, _, step = Checkpointer(ckdir).restore(
      jax.eval_shape(_FakeTrainer(_config(tmp_path)).init, jax.random.PRNGKey(0)))
  assert step == 4 and int(state.iteration) == 4


def test_video_hook_needs_a_renderable_eval_env(fake_trainer, tmp_path):
  """The fake trainer's eval env has no MuJoCo model: a clear error before training."""
  from panda_rl.config import ConfigError
  with pytest.raises(ConfigError, match="save_video"):
    train_and_evaluate(_config(tmp_path, "env.eval.video_cfg.save_video=True"))
