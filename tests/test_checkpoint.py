"""Checkpoints: exact round trips, interrupted saves, damaged checkpoints, misfit configs,
and the training loop's save / resume / NaN-guard behaviour, first with a tiny fake trainer
(seconds), then against the real thing: PPO on PointReach-v0 through ``python -m
panda_rl.train`` / ``panda_rl.evaluate`` and ``panda_rl.load_policy`` (runner.max_to_keep,
damaged files inside ``checkpoints/<step>/state``, a misfit config, a real NaN divergence):
non-zero exit, one message naming the checkpoint, no traceback, nothing deleted. Real
interruptions (SIGKILL) are in tests/test_interrupt.py."""

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
from fake_trainer import RunLoopTrainer

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


class _FakeTrainer(RunLoopTrainer):
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


# --------------------------------------------------------------------------------------
# The real thing: PPO on PointReach-v0 through `python -m panda_rl.train / evaluate`.

REPO = Path(__file__).resolve().parents[1]
RUN = ("panda_rl", "mujoco_ppo_mlp")  # default project / experiment sub-directories
TINY_CLI = [
    "--config.env.train.env_id=PointReach-v0", "--config.env.train.overrides={}",
    "--config.env.train.num_envs=8", "--config.env.eval.num_envs=4",
    "--config.rollout.num_steps=16", "--config.algorithm.num_minibatches=2",
    "--config.algorithm.update_epochs=2", "--config.actor.model.policy_hidden=(16,16)",
    "--config.actor.model.value_hidden=(16,16)", "--config.runner.val_check_interval=0",
    "--config.runner.save_interval=1", "--config.runner.max_to_keep=2",
]


def _cli(cli_env, module, *args):
  import subprocess
  import sys

  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env,
                        capture_output=True, text=True, timeout=600)


def _train_cli(cli_env, log_path, *args):
  return _cli(cli_env, "panda_rl.train", f"--config={CONFIG}", *TINY_CLI,
              f"--config.runner.logger.log_path={log_path}", *args)


def _ok(proc):
  assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
  return proc


def _listing(root: Path):
  """Every file and directory under root with its size: what 'deletes nothing' compares."""
  return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                for p in root.rglob("*"))


def _messages(stderr: str, prefix: str):
  """stderr without absl's log lines (``W1201 21:48:10.1 ...``): what the user reads."""
  import re

  lines = [x for x in stderr.splitlines() if x.strip() and not re.match(r"^[IWE]\d{4} ", x)]
  return lines, [x for x in lines if x.startswith(prefix)]


@pytest.fixture(scope="module")
def real_run(cli_env, tmp_path_factory):
  """4 iterations, a checkpoint every iteration, runner.max_to_keep=2."""
  log_path = tmp_path_factory.mktemp("real")
  _ok(_train_cli(cli_env, log_path, "--config.runner.max_epochs=4"))
  return log_path


def _copy(real_run, tmp_path) -> Path:
  shutil.copytree(real_run, tmp_path / "copy")
  return tmp_path.joinpath("copy", *RUN)


def test_max_to_keep_retires_old_checkpoints_through_the_cli(cli_env, real_run, tmp_path):
  run_dir = real_run.joinpath(*RUN)
  ckdir = run_dir / "checkpoints"
  assert sorted(p.name for p in ckdir.iterdir()) == ["3", "4"]  # 1 and 2 retired
  assert Checkpointer(ckdir).all_steps() == [3, 4]
  # Resuming keeps retiring (a save is retired only after a newer one completed), and
  # never touches the leftover of an interrupted save.
  run_dir = _copy(real_run, tmp_path)
  ckdir = run_dir / "checkpoints"
  leftover = ckdir / "9.orbax-checkpoint-tmp-1234"
  shutil.copytree(ckdir / "3", leftover)
  proc = _ok(_train_cli(cli_env, run_dir.parents[1], "--config.runner.max_epochs=6",
                        "--config.runner.resume=True"))
  assert "Resumed from checkpoint step 4" in proc.stdout
  assert sorted(p.name for p in ckdir.iterdir()) == ["5", "6", leftover.name]
  assert Checkpointer(ckdir).all_steps() == [5, 6]


def _damage_state(step_dir: Path, what: str) -> None:
  state = step_dir / "state"
  if what == "data":  # the arrays' OCDBT data files: truncated, as by a full disk
    files = [p for p in (state / "d").iterdir() if p.is_file()]
  else:  # the tree metadata
    files = [state / "_METADATA"]
  assert files and all(f.stat().st_size > 16 for f in files)
  for f in files:
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


@pytest.mark.parametrize("what", ["data", "metadata"])
def test_damaged_checkpoint_real_evaluate_and_load_policy(cli_env, real_run, tmp_path, what):
  run_dir = _copy(real_run, tmp_path)
  step_dir = run_dir / "checkpoints" / "4"
  _damage_state(step_dir, what)
  before = _listing(run_dir)

  proc = _cli(cli_env, "panda_rl.evaluate", "--checkpoint", str(run_dir), "--episodes", "2")
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  lines, errors = _messages(proc.stderr, "panda_rl.evaluate:")
  assert len(lines) == 1 and len(errors) == 1, proc.stderr[-4000:]
  assert f"Checkpoint '{step_dir}' is damaged" in errors[0]
  assert "NOT deleted" in errors[0] and "(complete steps: [3])" in errors[0]
  assert "success rate" not in proc.stdout
  assert _listing(run_dir) == before

  with pytest.raises(CheckpointError) as e:
    panda_rl.load_policy(run_dir)
  assert f"Checkpoint '{step_dir}' is damaged" in str(e.value) and "NOT deleted" in str(e.value)
  assert _listing(run_dir) == before
  # The earlier checkpoint is still usable, as the message says.
  assert panda_rl.load_policy(run_dir / "checkpoints" / "3").step == 3


def test_damaged_checkpoint_real_resume_fails_clearly(cli_env, real_run, tmp_path):
  run_dir = _copy(real_run, tmp_path)
  step_dir = run_dir / "checkpoints" / "4"
  _damage_state(step_dir, "data")
  before = _listing(run_dir)
  proc = _train_cli(cli_env, run_dir.parents[1], "--config.runner.max_epochs=6",
                    "--config.runner.resume=True")
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  _, errors = _messages(proc.stderr, "panda_rl.train:")
  assert len(errors) == 1 and f"Checkpoint '{step_dir}' is damaged" in errors[0], proc.stderr
  assert "NOT deleted" in errors[0]
  assert _listing(run_dir) == before  # nothing retired, nothing written


def test_misfit_config_real_resume_fails_before_compiling(cli_env, real_run, tmp_path):
  run_dir = _copy(real_run, tmp_path)
  before = _listing(run_dir)
  proc = _train_cli(cli_env, run_dir.parents[1], "--config.runner.max_epochs=6",
                    "--config.runner.resume=True", "--config.actor.model.policy_hidden=(8,8)")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
  _, errors = _messages(proc.stderr, "panda_rl.train:")
  assert len(errors) == 1 and "does not fit the current config" in errors[0]
  assert "params.policy" in proc.stderr and "actor.model.policy_hidden" in proc.stderr
  assert _listing(run_dir) == before


def test_nan_guard_real_training(cli_env, real_run, tmp_path):
  """A real divergence (resumed with an absurd learning rate): the CLI stops at the first NaN
  loss and keeps the last good checkpoints untouched; none of the diverged state is saved."""
  run_dir = _copy(real_run, tmp_path)
  ckdir = run_dir / "checkpoints"
  before = _listing(ckdir)
  proc = _train_cli(cli_env, run_dir.parents[1], "--config.runner.max_epochs=6",
                    "--config.runner.resume=True", "--config.actor.optim.lr=1e30",
                    "--config.actor.optim.max_grad_norm=1e30")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
  _, errors = _messages(proc.stderr, "panda_rl.train:")
  assert len(errors) == 1 and "TrainingDivergedError" in errors[0], proc.stderr[-4000:]
  assert "diverged at iteration 5" in errors[0] and "last good checkpoint is step 4" in errors[0]
  assert _listing(ckdir) == before
  assert Checkpointer(ckdir).all_steps() == [3, 4]


@pytest.mark.parametrize("kind", ["Task", "Future"])
def test_orphaned_tensorstore_read_errors_are_not_logged_other_task_errors_are(kind):
  """After one failed read, orbax's other reads end in errors nobody awaits; asyncio would log
  each with a traceback (as a Task or, seen in CI, a bare Future). Only those (tensorstore
  errors) are dropped."""
  import logging
  from panda_rl.checkpoint import _drop_orphaned_read_errors

  def record(exc):
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                             f"{kind} exception was never retrieved\nfuture: <{kind} ...>", None,
                             (type(exc), exc, None))

  read = ValueError('OUT_OF_RANGE: Error reading "x" [tensorstore_spec=\'{"driver":"zarr"}\']')
  assert not _drop_orphaned_read_errors(record(read))
  assert _drop_orphaned_read_errors(record(ValueError("a bug in user code")))
  other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Executing <Task> took 1 s",
                            None, None)
  assert _drop_orphaned_read_errors(other)
