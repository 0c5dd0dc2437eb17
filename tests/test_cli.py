"""The training experience end to end, through the real command lines and PPO on the probe env
PointReach-v0 with a tiny config: event files with every metric, checkpoints, exact resume,
clear failures, ``load_policy`` and ``python -m panda_rl.evaluate``; plus the logger backends.
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl import train as train_lib
from panda_rl import validation
from panda_rl.checkpoint import Checkpointer, CheckpointError
from panda_rl.config import ConfigError, load_config
from panda_rl.logger import MissingBackendError, check_backends, make_logger, read_scalars

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
RUN = ("panda_rl", "mujoco_ppo_mlp")  # default project / experiment sub-directories

TINY = [
    "--config.env.train.env_id=PointReach-v0",
    "--config.env.train.overrides={}",
    "--config.env.train.num_envs=8",
    "--config.env.eval.num_envs=4",
    "--config.rollout.num_steps=16",  # episodes last 25 steps: some end in iterations 2 and 4
    "--config.algorithm.num_minibatches=2",
    "--config.algorithm.update_epochs=2",
    "--config.actor.model.policy_hidden=(16,16)",
    "--config.actor.model.value_hidden=(16,16)",
    "--config.runner.val_check_interval=2",
    "--config.runner.save_interval=2",
]


def _run(cli_env, module, *args, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env,
                        capture_output=True, text=True, timeout=timeout)


def _train(cli_env, log_path, *args):
  return _run(cli_env, "panda_rl.train", f"--config={CONFIG}", *TINY,
              f"--config.runner.logger.log_path={log_path}", *args)


def _ok(proc):
  assert proc.returncode == 0, (f"rc={proc.returncode}\nstdout:\n{proc.stdout}\n"
                                f"stderr:\n{proc.stderr}")
  return proc


@pytest.fixture(scope="module")
def smoke(cli_env, tmp_path_factory):
  """One CLI run: 4 iterations, evaluation every 2, checkpoints at 2 and 4."""
  log_path = tmp_path_factory.mktemp("smoke")
  proc = _ok(_train(cli_env, log_path, "--config.runner.max_epochs=4"))
  return log_path, log_path.joinpath(*RUN), proc


def test_smoke_run_writes_every_metric_and_checkpoints(smoke):
  log_path, run_dir, proc = smoke
  events = list(run_dir.glob("events.out.tfevents.*"))
  assert events, f"no event file in {run_dir}"
  scalars = read_scalars(run_dir)
  expected = set(M.ITERATION_METRICS) | set(M.EVAL_METRICS) | {
      M.COMPILE_S, M.ITERATION_S, M.ENV_STEPS_PER_S,
      M.ENV_STEPS, M.EVAL_S}
  missing = sorted(expected - set(scalars))
  assert not missing, f"metrics missing from the event file: {missing}"
  assert [s for s, _, _ in scalars[M.LOSS]] == [1, 2, 3, 4]
  assert [s for s, _, _ in scalars[M.EVAL_SUCCESS_ONCE]] == [2, 4]
  assert len(scalars[M.COMPILE_S]) == 1 and scalars[M.COMPILE_S][0][1] > 0
  assert [v for _, v, _ in scalars[M.ENV_STEPS]] == [128.0, 256.0, 384.0, 512.0]
  assert Checkpointer(run_dir / "checkpoints").all_steps() == [2, 4]
  assert (run_dir / "config.json").is_file()
  assert "steps=" in proc.stderr and "success=" in proc.stderr  # the progress bar
  assert "eval/success_once=" in proc.stdout


def _saved_state(run_dir, step):
  ck = Checkpointer(run_dir / "checkpoints", read_only=True)
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                          ck.saved_tree(step), is_leaf=lambda x: hasattr(x, "dtype"))
  state, _, _ = ck.restore(abstract, step=step)
  ck.close()
  return state


def test_resume_gives_the_same_parameters_as_a_straight_run(cli_env, smoke, tmp_path):
  _, straight_dir, _ = smoke
  _ok(_train(cli_env, tmp_path, "--config.runner.max_epochs=2"))
  proc = _ok(_train(cli_env, tmp_path, "--config.runner.max_epochs=4",
                    "--config.runner.resume=True"))
  assert "Resumed from checkpoint step 2" in proc.stdout
  resumed_dir = tmp_path.joinpath(*RUN)
  # Step 4: the claim. Step 2: the straight run donated the state's buffers to iteration 3
  # right after starting that (asynchronous) save; the checkpoint must still be exact.
  for step in (4, 2):
    a, b = _saved_state(straight_dir, step), _saved_state(resumed_dir, step)
    paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree.leaves(b)
    assert len(paths_a) == len(leaves_b) and len(leaves_b) > 10
    for (path, x), y in zip(paths_a, leaves_b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                    err_msg=f"step {step}: {jax.tree_util.keystr(path)}")
  # The resumed run's curves continue the first part's and match the straight run's.
  sa, sb = read_scalars(straight_dir), read_scalars(resumed_dir)
  assert [(s, v) for s, v, _ in sa[M.LOSS]] == [(s, v) for s, v, _ in sb[M.LOSS]]


def _endless_args(log_path):
  """A training run that goes on until it is stopped: no checkpoints, no evaluations."""
  return [sys.executable, "-m", "panda_rl.train", f"--config={CONFIG}", *TINY,
          f"--config.runner.logger.log_path={log_path}", "--config.runner.max_epochs=100000",
          "--config.runner.save_interval=0", "--config.runner.val_check_interval=0"]


def _signal_mid_training(proc, run_dir, signum, before_signal=lambda: None):
  """Waits until ``proc`` is iterating (its run directory written, then 3 s), calls
  ``before_signal``, sends ``signum`` and waits for the process to exit."""
  import time

  try:
    deadline = time.time() + 300
    while not (run_dir / "config.json").exists() and time.time() < deadline:
      time.sleep(0.2)
    time.sleep(3.0)  # mid-training: compiled, iterating
    before_signal()
    proc.send_signal(signum)
    proc.wait(timeout=120)
  finally:
    proc.kill()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_current_iteration_and_resume_is_exact(cli_env, tmp_path,
                                                                        signame):
  """SIGTERM / SIGINT mid-run: the iteration finishes, a checkpoint is written, exit 0;
  resuming to N + 3 iterations gives the parameters of a straight N + 3 run."""
  import signal

  stopped = tmp_path / "stopped"
  # Files, not pipes: nothing reads a pipe while the test waits for the run to start.
  out_log, err_log = tmp_path / "stdout.log", tmp_path / "stderr.log"
  with open(out_log, "w") as out_sink, open(err_log, "w") as err_sink:
    proc = subprocess.Popen(_endless_args(stopped), cwd=REPO, env=cli_env, stdout=out_sink,
                            stderr=err_sink, text=True)
  run_dir = stopped.joinpath(*RUN)
  _signal_mid_training(proc, run_dir, getattr(signal, signame))
  out, err = out_log.read_text(), err_log.read_text()
  assert proc.returncode == 0, err[-3000:]
  match = re.search(rf"{signame}: stopped after iteration (\d+)/100000 with checkpoint step "
                    r"(\d+)", out)
  assert match and match.group(1) == match.group(2), out[-2000:]
  n = int(match.group(1))
  assert 1 <= n < 100000 and Checkpointer(run_dir / "checkpoints").all_steps() == [n]
  _ok(_train(cli_env, stopped, f"--config.runner.max_epochs={n + 3}",
             "--config.runner.resume=True", "--config.runner.save_interval=0"))
  _ok(_train(cli_env, tmp_path / "straight", f"--config.runner.max_epochs={n + 3}",
             "--config.runner.save_interval=0"))
  a = _saved_state(tmp_path.joinpath("straight", *RUN), n + 3)
  b = _saved_state(run_dir, n + 3)
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def test_a_stop_after_stdouts_reader_is_gone_still_checkpoints(cli_env, tmp_path):
  """The run's stdout is a pipe whose reader exits (a closed terminal, ``| head``, a killed
  supervisor), then SIGTERM: the stop's message can no longer go to stdout, and the run
  must still finish its iteration, write its checkpoint and exit 0 (seen: a
  BrokenPipeError from the stop message, before the checkpoint)."""
  import signal

  stopped = tmp_path / "stopped"
  err_log = tmp_path / "stderr.log"
  with open(err_log, "w") as err_sink:
    proc = subprocess.Popen(_endless_args(stopped), cwd=REPO, env=cli_env,
                            stdout=subprocess.PIPE, stderr=err_sink)
  run_dir = stopped.joinpath(*RUN)
  # The reader is gone before the signal: the stop's message breaks the pipe.
  _signal_mid_training(proc, run_dir, signal.SIGTERM, before_signal=proc.stdout.close)
  err = err_log.read_text()
  assert proc.returncode == 0, err[-3000:]
  match = re.search(r"SIGTERM: stopped after iteration (\d+)/100000 with checkpoint step "
                    r"(\d+)", err)
  assert match and match.group(1) == match.group(2), err[-2000:]
  assert Checkpointer(run_dir / "checkpoints").all_steps() == [int(match.group(1))]


def test_config_overrides_are_split_from_the_other_flags():
  rest, overrides = train_lib.split_overrides(
      ["train", "--config", "c.py", "--config.algorithm.gamma", "0.9", "--workdir=w",
       "--config.env.train.overrides.sim_dt=0.01"])
  assert rest == ["train", "--config", "c.py", "--workdir=w"]
  assert overrides == ["--config.algorithm.gamma=0.9",
                       "--config.env.train.overrides.sim_dt=0.01"]


def test_existing_run_without_resume_fails_clearly(cli_env, smoke):
  log_path, run_dir, _ = smoke
  proc = _train(cli_env, log_path, "--config.runner.max_epochs=4")
  assert proc.returncode == 2
  assert "already holds checkpoints" in proc.stderr and "runner.resume=True" in proc.stderr
  assert Checkpointer(run_dir / "checkpoints").all_steps() == [2, 4]


@pytest.mark.parametrize("override, expected", [
    ("--config.algorithm.nope=1", "Unknown config field 'algorithm.nope'"),
    ("--config.algorithm.gamma=abc", "could not convert string to float"),
    ("--config.env.train.overrides.goal_radus=0.1", "env 'PointReach-v0' has no setting "
     "'goal_radus'. Did you mean 'env.train.overrides.goal_radius'?"),
    ("--config.algorithm.gamma", "Missing value for flag --config.algorithm.gamma"),
])
def test_bad_overrides_fail_clearly(cli_env, tmp_path, override, expected):
  proc = _train(cli_env, tmp_path, override)
  assert proc.returncode == 2
  assert expected in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr
  assert not list(tmp_path.rglob("*tfevents*"))


@pytest.mark.parametrize("override, expected", [
    ("--config.env.train.env_id=PointRech-v0", "Unknown env 'PointRech-v0'. Did you mean "
     "'PointReach-v0'?"),
    ("--config.cluster.component_placement=env:0-3;rollout:4-7;actor:8-15",
     "PlacementError: cluster.component_placement="),
    ("--config.env.train.overrides={'reset_pregrasp_prob': 0.4}",
     "unknown config key(s) ['reset_pregrasp_prob']"),
])
def test_library_errors_end_with_one_message_and_exit_2(cli_env, tmp_path, override,
                                                        expected):
  proc = _train(cli_env, tmp_path, override)
  assert proc.returncode == 2, proc.stderr
  ours = [line for line in proc.stderr.splitlines() if line.startswith("panda_rl.train: ")]
  assert len(ours) == 1 and expected in proc.stderr[proc.stderr.index(ours[0]):], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not list(tmp_path.rglob("*tfevents*"))


def test_every_problem_is_reported_at_once(tmp_path):
  base = [a[len("--config."):] for a in TINY] + [f"runner.logger.log_path={tmp_path}"]
  config = load_config(CONFIG, base)
  config.unlock()
  config.runner.save_interval = -1
  config.actor.optim.lr = 0.0
  config.actor.model.activation = "sigmoidish"
  with pytest.raises(ConfigError) as err:
    validation.validate_config(config)
  for expected in ("runner.save_interval must be an int >= 0", "actor.optim.lr must be > 0",
                   "actor.model.activation"):
    assert expected in str(err.value)
  config.actor.optim.lr, config.actor.model.activation = 1e-3, "swish"
  config.runner.save_interval = 2
  config.env.train.env_id = "NoSuchEnv-v0"
  config.env.eval.env_id = "NoSuchEnvEither-v0"
  with pytest.raises(ConfigError) as err:
    validation.check(config)
  assert "'NoSuchEnv-v0'" in str(err.value) and "'NoSuchEnvEither-v0'" in str(err.value)


@pytest.mark.parametrize("override, expected", [
    ("runner.max_epochs=0", "runner.max_epochs must be an int >= 1"),
    ("runner.logger.logger_backends=tensorboard,mlflow", "mlflow"),
    ("algorithm.num_minibatches=3", "must be divisible by"),  # the trainer's own checks
])
def test_invalid_settings_fail_before_anything_runs(tmp_path, override, expected):
  base = [a[len("--config."):] for a in TINY] + [f"runner.logger.log_path={tmp_path}"]
  with pytest.raises(ConfigError, match=expected):
    train_lib.train_and_evaluate(load_config(CONFIG, base + [override]))
  assert not list(tmp_path.rglob("*"))


def test_run_embodiment_launcher(cli_env, tmp_path):
  sh = str(REPO / "scripts" / "run_embodiment.sh")
  proc = subprocess.run(["bash", sh, "no_such_config"], env=cli_env, capture_output=True,
                        text=True)
  assert proc.returncode == 2 and "mujoco_ppo_mlp" in proc.stderr
  # Both override spellings pass through to python -m panda_rl.train.
  proc = subprocess.run(["bash", sh, "mujoco_ppo_mlp", "algorithm.gama=0.9",
                         f"--config.runner.logger.log_path={tmp_path}"], env=cli_env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "--config.algorithm.gama=0.9" in proc.stderr
  assert "Did you mean 'algorithm.gamma'?" in proc.stderr


# --------------------------------------------------------------------------------------
# Using a trained policy.


def test_load_policy_matches_the_trainer(smoke):
  _, run_dir, _ = smoke
  policy = panda_rl.load_policy(run_dir)
  assert policy.step == 4 and policy.action_size == 2
  obs = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32)
  action = np.asarray(policy(obs))
  assert action.shape == (5, 2) and action.dtype == np.float32
  assert np.all(np.abs(action) <= 1.0)
  assert np.asarray(policy(obs[0])).shape == (2,)
  np.testing.assert_array_equal(np.asarray(policy(obs)), action)  # deterministic

  from panda_rl.training import Trainer

  trainer = Trainer(policy.config)
  state, _, _ = Checkpointer(run_dir / "checkpoints").restore(
      jax.eval_shape(trainer.init, jax.random.PRNGKey(0)))
  expected = trainer.policy_fn(state.params, state.normalizer)(obs)
  np.testing.assert_allclose(action, np.asarray(expected), rtol=1e-5, atol=1e-6)

  earlier = panda_rl.load_policy(run_dir / "checkpoints" / "2")
  assert earlier.step == 2
  stochastic = panda_rl.load_policy(run_dir, deterministic=False)
  a1 = stochastic(obs, jax.random.PRNGKey(1))
  assert a1.shape == (5, 2) and not np.allclose(a1, action)


def test_evaluate_cli_prints_success_rate(cli_env, smoke):
  _, run_dir, _ = smoke
  proc = _ok(_run(cli_env, "panda_rl.evaluate", "--checkpoint", str(run_dir), "--episodes", "6"))
  m = re.search(r"success rate: (\d\.\d+) \((\d+)/6\)", proc.stdout)
  assert m, proc.stdout
  assert 0.0 <= float(m.group(1)) <= 1.0
  assert "checkpoint step 4 on PointReach-v0" in proc.stdout


def test_evaluate_missing_checkpoint(tmp_path):
  from panda_rl.evaluate import evaluate_checkpoint

  with pytest.raises(CheckpointError, match="does not exist"):
    evaluate_checkpoint(str(tmp_path / "nope"))


# --------------------------------------------------------------------------------------
# Logger backends (in-process, no training).


def test_unknown_backend():
  with pytest.raises(ValueError, match="Unknown logger backend 'mlflow'.*tensorboard"):
    check_backends(["mlflow"])


def test_missing_backend_package(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name in ("wandb", "swanlab") else real(name, *a))
  for name in ("wandb", "swanlab"):
    with pytest.raises(MissingBackendError, match=f"pip install {name}"):
      check_backends(["tensorboard", name])
  check_backends(["tensorboard"])


def test_only_process_zero_writes(tmp_path):
  config = load_config(CONFIG)
  with make_logger(config, tmp_path / "p1", process_index=1) as log:
    log.log({"a": 1.0}, step=1)
  assert not (tmp_path / "p1").exists()
  with make_logger(config, tmp_path / "p0", process_index=0) as log:
    log.log({"a": 1.0, "nan": float("nan"), "not_scalar": "x"}, step=1)
  assert set(read_scalars(tmp_path / "p0")) == {"a"}  # NaN points are left out (a gap)


def test_read_scalars_honours_resume_purge(tmp_path):
  config = load_config(CONFIG)
  with make_logger(config, tmp_path, process_index=0) as log:
    for step in range(1, 6):
      log.log({"x": float(step)}, step=step)
  # A resumed run that restarts at step 3 (its checkpoint was at 2) purges steps >= 3.
  with make_logger(config, tmp_path, purge_step=3, process_index=0) as log:
    for step in range(3, 5):
      log.log({"x": 10.0 * step}, step=step)
  assert [(s, v) for s, v, _ in read_scalars(tmp_path)["x"]] == [
      (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
