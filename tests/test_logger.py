"""The logger backends for real: TensorBoard, W&B in offline mode and SwanLab in offline mode
(no account, no network; every file under the test's tmp directory). A resumed run continues
the same W&B / SwanLab run id and logs no step twice, read back from the backends' own offline
files; a fresh start opens a new run; ``MetricLogger.flush()`` reaches every backend.
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import importlib.util
import logging
import shutil
import struct
from pathlib import Path

import pytest

from panda_rl import metrics as M
from panda_rl.config import load_config
from panda_rl.logger import MetricLogger, make_logger, read_scalars

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
RUN = ("panda_rl", "mujoco_ppo_mlp")
TINY = [
    "env.train.env_id=PointReach-v0", "env.train.overrides={}", "env.train.num_envs=8",
    "env.eval.num_envs=4", "rollout.num_steps=16", "algorithm.num_minibatches=2",
    "algorithm.update_epochs=2", "actor.model.policy_hidden=(16,16)",
    "actor.model.value_hidden=(16,16)", "runner.val_check_interval=2",
    "runner.save_interval=2",
]

needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb not installed (pip install -e '.[test]')")
needs_swanlab = pytest.mark.skipif(importlib.util.find_spec("swanlab") is None,
                                   reason="swanlab not installed (pip install -e '.[test]')")


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """Both backends offline, their caches and settings inside tmp_path."""
  home = tmp_path / "backend_home"
  for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                     "WANDB_DIR": home / "wandb_dir", "WANDB_CACHE_DIR": home / "wandb_cache",
                     "WANDB_CONFIG_DIR": home / "wandb_config",
                     "WANDB_DATA_DIR": home / "wandb_data", "WANDB_DISABLE_GIT": "true",
                     "SWANLAB_MODE": "offline"}.items():
    monkeypatch.setenv(var, str(value))
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
  monkeypatch.delenv("SWANLAB_RUN_ID", raising=False)
  monkeypatch.chdir(tmp_path)  # swanlab reads a .env of the working directory
  return tmp_path


# --------------------------------------------------------------------------------------
# Reading the backends' offline files: both are LevelDB-log files of protobuf records.


def _leveldb_records(path: Path):
  data = path.read_bytes()
  pos, out, buf = 7, [], b""  # after the 7-byte file header
  while pos + 7 <= len(data):
    left = 32768 - pos % 32768
    if left < 7:  # block trailer
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0 and length == 0:  # zero padding to the end of the block
      pos += left
      continue
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 1:
      out.append(chunk)
    elif kind == 2:
      buf = chunk
    elif kind == 3:
      buf += chunk
    elif kind == 4:
      out.append(buf + chunk)
  return out


def wandb_runs(run_dir: Path):
  """[(run id, {step: {key: value}})] per offline run directory, in start order."""
  import json

  from wandb.proto import wandb_internal_pb2 as pb

  runs = []
  for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
    run_id, started, steps = None, None, {}
    for data in _leveldb_records(f):
      rec = pb.Record()
      rec.ParseFromString(data)
      kind = rec.WhichOneof("record_type")
      if kind == "run":
        run_id, started = rec.run.run_id, rec.run.start_time.ToNanoseconds()
      elif kind == "history":
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                 for i in rec.history.item}
        step = int(items.pop("_step"))
        assert step not in steps, f"{f}: step {step} twice"
        steps[step] = {k: v for k, v in items.items() if not k.startswith("_")}
    # The run record carries the start time; the file's mtime orders a file without one.
    runs.append((started if started is not None else f.stat().st_mtime_ns, run_id, steps))
  return [r[1:] for r in sorted(runs, key=lambda r: r[0])]  # dir names resolve only seconds


def swanlab_runs(run_dir: Path):
  """[(run id, resume mode, {step: {key: value}})] per offline run directory."""
  from swanlab.proto.swanlab.record.v1.record_pb2 import Record

  runs = []
  for f in sorted(run_dir.glob("swanlog/run-*/run-*.swanlab")):
    run_id, resume, started, steps = None, None, None, {}
    for data in _leveldb_records(f):
      rec = Record()
      rec.ParseFromString(data)
      kind = rec.WhichOneof("record_type")
      if kind == "start":
        run_id, resume = rec.start.id, rec.start.resume
        started = rec.start.started_at.ToNanoseconds()
      elif kind == "scalar":
        key, step = rec.scalar.key, int(rec.scalar.step)
        assert key not in steps.get(step, {}), f"{f}: {key} at step {step} twice"
        steps.setdefault(step, {})[key] = rec.scalar.value.number
    runs.append((started, run_id, resume, steps))
  return [r[1:] for r in sorted(runs, key=lambda r: r[0])]


# --------------------------------------------------------------------------------------
# make_logger directly: run ids and skipped steps.


def _log_steps(config, log_dir, steps, purge_step=None):
  with make_logger(config, log_dir, purge_step=purge_step, process_index=0) as log:
    for s in steps:
      log.log({"x": float(s), "nan": float("nan")}, step=s)


@needs_wandb
def test_wandb_resume_continues_the_run_without_duplicate_steps(offline):
  config = load_config(CONFIG, ["runner.logger.logger_backends=tensorboard,wandb"])
  log_dir = offline / "run"
  _log_steps(config, log_dir, [1, 2, 3, 4])
  _log_steps(config, log_dir, [3, 4, 5], purge_step=3)  # resumed from a checkpoint at 2
  _log_steps(config, log_dir, [1, 2], purge_step=None)  # a fresh start in the same dir
  (a, first), (b, second), (c, fresh) = wandb_runs(log_dir)
  assert a == b != c
  assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [5] and sorted(fresh) == [1, 2]
  assert first[1] == {"x": 1.0} and second[5] == {"x": 5.0}  # NaN points left out
  # TensorBoard purged and relogged instead: each step once, the resumed run's values.
  assert [s for s, _, _ in read_scalars(log_dir)["x"]][:5] == [1, 2, 3, 4, 5]


@needs_swanlab
def test_swanlab_resume_continues_the_run_without_duplicate_steps(offline):
  from swanlab.proto.swanlab.run.v1.run_pb2 import ResumeMode

  config = load_config(CONFIG, ["runner.logger.logger_backends=swanlab"])
  log_dir = offline / "run"
  _log_steps(config, log_dir, [1, 2, 3, 4])
  _log_steps(config, log_dir, [3, 4, 5], purge_step=3)
  _log_steps(config, log_dir, [1, 2], purge_step=None)
  (a, _, first), (b, mode, second), (c, _, fresh) = swanlab_runs(log_dir)
  assert a == b != c and mode == ResumeMode.RESUME_MODE_ALLOW
  assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [5] and sorted(fresh) == [1, 2]
  assert second[5] == {"x": 5.0}


# --------------------------------------------------------------------------------------
# Through the training loop: train_and_evaluate, interrupted after logging a step whose
# checkpoint never completed, then resumed.


def _train_and_resume(tmp_path, backend):
  from panda_rl.train import train_and_evaluate

  base = TINY + [f"runner.logger.log_path={tmp_path / 'runs'}",
                 f"runner.logger.logger_backends=tensorboard,{backend}"]
  first = train_and_evaluate(load_config(CONFIG, base + ["runner.max_epochs=3"]))
  run_dir = first.workdir
  assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "3"]
  # As if killed while saving step 3: steps 1-3 are logged, the newest checkpoint is 2.
  shutil.rmtree(run_dir / "checkpoints" / "3")
  resumed = train_and_evaluate(load_config(CONFIG, base + ["runner.max_epochs=4",
                                                           "runner.resume=True"]))
  assert int(resumed.state.iteration) == 4
  tb = {s: v for s, v, _ in read_scalars(run_dir)[M.LOSS]}
  assert sorted(tb) == [1, 2, 3, 4]  # TensorBoard: step 3 purged and logged again
  return run_dir, tb


@needs_wandb
def test_wandb_through_train_and_evaluate_resume(offline):
  run_dir, tb = _train_and_resume(offline, "wandb")
  (a, first), (b, second) = wandb_runs(run_dir)
  assert a == b  # the same run continued
  assert sorted(first) == [1, 2, 3] and sorted(second) == [4]
  merged = {**first, **second}
  # Exact resume: the values W&B kept for step 3 are the ones the resumed run computed.
  assert {s: merged[s][M.LOSS] for s in merged} == pytest.approx(tb, rel=1e-6)
  assert M.EVAL_SUCCESS_ONCE in merged[2] and M.EVAL_SUCCESS_ONCE in merged[4]
  assert (run_dir / "wandb-run.json").is_file()


@needs_swanlab
def test_swanlab_through_train_and_evaluate_resume(offline):
  run_dir, tb = _train_and_resume(offline, "swanlab")
  (a, _, first), (b, _, second) = swanlab_runs(run_dir)
  assert a == b
  assert sorted(first) == [1, 2, 3] and sorted(second) == [4]
  merged = {**first, **second}
  assert {s: merged[s][M.LOSS] for s in merged} == pytest.approx(tb, rel=1e-6)
  assert (run_dir / "swanlab-run.json").is_file()


# --------------------------------------------------------------------------------------
# flush / close.


def test_flush_writes_tensorboard_events_before_close(tmp_path):
  config = load_config(CONFIG)
  log = make_logger(config, tmp_path, process_index=0)
  log.log({"x": 1.0}, step=1)
  log.log({"x": 2.0}, step=2)
  log.flush()  # events are otherwise buffered for up to 30 s
  assert [(s, v) for s, v, _ in read_scalars(tmp_path)["x"]] == [(1, 1.0), (2, 2.0)]
  log.log({"x": 3.0}, step=3)  # the writer goes on after a flush
  log.flush()
  assert [s for s, _, _ in read_scalars(tmp_path)["x"]] == [1, 2, 3]
  log.log({"x": 4.0}, step=4)
  log.close()
  assert [s for s, _, _ in read_scalars(tmp_path)["x"]] == [1, 2, 3, 4]


class _Backend:

  def __init__(self, fail=False):
    self.fail, self.flushed, self.closed = fail, 0, 0

  def log(self, metrics, step):
    pass

  def flush(self):
    self.flushed += 1
    if self.fail:
      raise OSError("disk full")

  def close(self):
    self.closed += 1
    if self.fail:
      raise OSError("disk full")


def test_flush_and_close_reach_every_backend_and_only_warn(caplog):
  backends = [_Backend(), _Backend(fail=True), _Backend()]
  log = MetricLogger(backends)
  with caplog.at_level(logging.WARNING, logger="panda_rl"):
    log.flush()
    log.close()
  assert [b.flushed for b in backends] == [1, 1, 1]
  assert [b.closed for b in backends] == [1, 1, 1]
  assert "flushing the _Backend logger failed: OSError: disk full" in caplog.text
  assert "closing the _Backend logger failed: OSError: disk full" in caplog.text
  assert not log.active
