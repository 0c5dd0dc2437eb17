"""Scalar metric logging to TensorBoard (tensorboardX), Weights & Biases or SwanLab.

Named ``logger`` rather than ``logging`` so that ``import logging`` inside the package
always means the standard library.

Usage::

    log = make_logger(config, run_dir)        # backends from runner.logger.logger_backends
    log.log({"train/loss": 0.3, "env/success_once": 0.5}, step=12)
    log.close()

Only process 0 (``jax.process_index() == 0``) writes; on other processes the logger is a
no-op, so multi-host code can call it unconditionally. Event files land in ``run_dir``
(``<log_path>/<project_name>/<experiment_name>/`` for the CLI), so
``tensorboard --logdir <log_path>`` shows every run.

Resuming (``runner.resume=True``) continues the same run in every backend. The training
loop passes ``purge_step``, the first step it will log again (the iteration after the
restored checkpoint); the interrupted run may have logged steps after that checkpoint.

* TensorBoard: a purge marker at ``purge_step`` drops the interrupted run's points from
  there on (TensorBoard and :func:`read_scalars` honour it).
* W&B and SwanLab cannot delete logged points. Each backend keeps its run id and the last
  step it logged in ``<run_dir>/<backend>-run.json`` (rewritten after every logged step, so
  it survives a kill); a resumed run re-opens that id (``resume="allow"``) and does not log
  the steps the run already has: with exact resume they are the same numbers. (A resume
  that changed a setting, e.g. the learning rate, therefore shows the interrupted run's
  values up to its last logged step.) A fresh start (no ``purge_step``) opens a new run id.

Offline use: W&B honours ``WANDB_MODE=offline`` (files under ``<run_dir>/wandb/``), SwanLab
``SWANLAB_MODE=offline`` or ``local`` (files under ``<run_dir>/swanlog/``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import struct
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


# backend name -> (module to import, package to pip install)
BACKEND_PACKAGES: Dict[str, Tuple[str, str]] = {
    "tensorboard": ("tensorboardX", "tensorboardX"),
    "wandb": ("wandb", "wandb"),
    "swanlab": ("swanlab", "swanlab"),
}


_log = logging.getLogger("panda_rl")


class MissingBackendError(ImportError):
  """A logger backend was requested whose Python package is not installed."""


def check_backends(names: Sequence[str]) -> None:
  """Fails fast (before anything compiles) on unknown or uninstalled backends.

  Raises:
    ValueError: a name that is not a known backend.
    MissingBackendError: a known backend whose package is not installed; the message
      names the ``pip install`` command.
  """
  for name in names:
    if name not in BACKEND_PACKAGES:
      raise ValueError(f"Unknown logger backend {name!r} in runner.logger.logger_backends; "
                       f"valid backends: {sorted(BACKEND_PACKAGES)}")
    module, package = BACKEND_PACKAGES[name]
    if importlib.util.find_spec(module) is None:
      raise MissingBackendError(
          f"Logger backend {name!r} needs the {package!r} package, which is not installed. "
          f"Run `pip install {package}`, or drop {name!r} from "
          f"runner.logger.logger_backends (e.g. --config.runner.logger.logger_backends="
          f"tensorboard).")


def _scalars(metrics: Mapping[str, Any]) -> Dict[str, float]:
  """Finite Python floats only: a NaN metric (e.g. ``env/*`` of an iteration in which no
  episode completed, see :mod:`panda_rl.metrics`) is left out, leaving a gap in the curve."""
  out = {}
  for k, v in metrics.items():
    try:
      x = float(v)
    except (TypeError, ValueError):
      continue  # non-scalars (arrays, strings) are not scalar metrics
    if math.isfinite(x):
      out[k] = x
  return out


class _TensorBoard:

  def __init__(self, log_dir: Path, purge_step: Optional[int], hparams_text: str):
    from tensorboardX import SummaryWriter

    # A unique suffix: a resumed run started within the same second as the previous one
    # must not overwrite its event file (the names otherwise differ only by the second).
    self.writer = SummaryWriter(logdir=str(log_dir), purge_step=purge_step, flush_secs=30,
                                filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
    if hparams_text:
      self.writer.add_text("config", f"```\n{hparams_text}\n```", global_step=purge_step or 0)

  def log(self, metrics: Dict[str, float], step: int) -> None:
    for k, v in metrics.items():
      self.writer.add_scalar(k, v, global_step=step)

  def flush(self) -> None:
    """Writes every event logged so far to disk.

    tensorboardX's own ``flush()`` flushes the file but not the queue in front of it: events
    still queued for its writer thread (the ones just logged) reach the disk only at the
    next ``flush_secs`` tick. So first let the writer thread drain the queue: stop it (its
    stop signal queues behind every pending event, and it writes them all before it exits)
    and start a fresh one on the same queue and file.
    """
    for file_writer in (self.writer.all_writers or {}).values():
      events = getattr(file_writer, "event_writer", None)
      worker = getattr(events, "_worker", None)
      if events is None or worker is None or events._closed:
        continue
      worker.stop()
      events._worker = type(worker)(events._event_queue, events._ev_writer, events._flush_secs)
      events._worker.start()
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class _RunRecord:
  """The run id a backend logs to from one run directory, and the last step it logged.

  Stored as JSON in ``<log_dir>/<backend>-run.json``. ``resume=False`` starts a new run
  (new id); ``resume=True`` continues the stored one (a new id if there is none).
  """

  def __init__(self, log_dir: Path, backend: str, resume: bool):
    self.path = Path(log_dir) / f"{backend}-run.json"
    saved = {}
    if resume and self.path.is_file():
      try:
        saved = json.loads(self.path.read_text())
      except (OSError, ValueError):
        _log.warning("panda_rl: %s is unreadable; logging to a new %s run", self.path,
                     backend)
    self.resumed = bool(saved.get("id"))
    self.id = str(saved["id"]) if self.resumed else uuid.uuid4().hex[:16]
    self.last_step = int(saved.get("last_step", 0)) if self.resumed else 0
    self._write()

  def _write(self) -> None:
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text(json.dumps({"id": self.id, "last_step": self.last_step}))
    os.replace(tmp, self.path)  # atomic: a kill leaves the old or the new record

  def is_new(self, step: int) -> bool:
    """False for steps this run already has (logged before an interruption)."""
    return step > self.last_step

  def logged(self, step: int) -> None:
    if step > self.last_step:
      self.last_step = step
      self._write()


class _WandB:
  """Weights & Biases; one run per run directory (see the module docstring)."""

  def __init__(self, log_dir: Path, project: str, name: str, config: dict, resume: bool):
    import wandb

    self.record = _RunRecord(log_dir, "wandb", resume)
    self.wandb = wandb
    self.run = wandb.init(project=project, name=name, dir=str(log_dir), config=config,
                          id=self.record.id, resume="allow")
    if getattr(self.run, "resumed", False):  # online: the server knows the run's last step
      self.record.last_step = max(self.record.last_step, int(self.run.step) - 1)

  def log(self, metrics: Dict[str, float], step: int) -> None:
    if not self.record.is_new(step):
      return
    self.run.log(metrics, step=step)
    self.record.logged(step)

  def flush(self) -> None:
    # wandb has no public flush: every log() is handed to its service process at once, and
    # finish() (close) waits for it. The run record is already on disk.
    pass

  def close(self) -> None:
    self.run.finish()


class _SwanLab:
  """SwanLab; one run per run directory (see the module docstring)."""

  def __init__(self, log_dir: Path, project: str, name: str, config: dict, resume: bool):
    import swanlab

    self.record = _RunRecord(log_dir, "swanlab", resume)
    self.swanlab = swanlab
    self.run = swanlab.init(project=project, experiment_name=name,
                            logdir=str(Path(log_dir) / "swanlog"), config=config,
                            id=self.record.id, resume="allow")

  def log(self, metrics: Dict[str, float], step: int) -> None:
    if not self.record.is_new(step):
      return
    self.run.log(metrics, step=step)
    self.record.logged(step)

  def flush(self) -> None:
    # swanlab has no public flush: log() hands the data to its writer at once, and finish()
    # (close) waits for it. The run record is already on disk.
    pass

  def close(self) -> None:
    self.run.finish()


class MetricLogger:
  """Fans scalar metrics out to the configured backends (a no-op with no backends)."""

  def __init__(self, backends: Sequence[Any] = ()):
    self._backends = list(backends)

  @property
  def active(self) -> bool:
    return bool(self._backends)

  def log(self, metrics: Mapping[str, Any], step: int) -> None:
    """Logs every scalar in ``metrics`` (host floats or 0-d arrays) at ``step``."""
    if not self._backends:
      return
    scalars = _scalars(metrics)
    for b in self._backends:
      b.log(scalars, int(step))

  def flush(self) -> None:
    """Flushes every backend (TensorBoard's event file; each backend's run record). Never
    raises: a logging failure is a warning, not a lost checkpoint (call it at checkpoints
    and on exit)."""
    for b in self._backends:
      try:
        b.flush()
      except Exception as e:  # noqa: BLE001
        _log.warning("panda_rl: flushing the %s logger failed: %s: %s", type(b).__name__,
                     type(e).__name__, e)

  def close(self) -> None:
    """Flushes and closes every backend, even when one of them fails (then warns)."""
    backends, self._backends = self._backends, []
    for b in backends:
      try:
        b.close()
      except Exception as e:  # noqa: BLE001
        _log.warning("panda_rl: closing the %s logger failed: %s: %s", type(b).__name__,
                     type(e).__name__, e)

  def __enter__(self) -> "MetricLogger":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def make_logger(config, log_dir: str | Path, *, purge_step: Optional[int] = None,
                process_index: Optional[int] = None,
                run_name: Optional[str] = None) -> MetricLogger:
  """Builds the backends named in ``config.runner.logger.logger_backends``.

  Args:
    config: the experiment config (its JSON goes to the backends as hyperparameters).
    log_dir: directory of this run's event files (created if missing).
    purge_step: on resume, the first step that will be logged again; TensorBoard drops
      events at or after it written by the interrupted run, so curves do not double back;
      W&B and SwanLab continue the run directory's run and skip the steps it already has.
      ``None``: a fresh start (new W&B / SwanLab run).
    process_index: defaults to ``jax.process_index()``; only process 0 logs.
    run_name: the W&B / SwanLab run name (default ``runner.logger.experiment_name``; one
      seed of a multi-seed run: ``<experiment_name>/seed_<k>``).
  """
  from panda_rl.config import config_to_dict, logger_backends

  names = logger_backends(config)
  check_backends(names)
  if process_index is None:
    import jax

    process_index = jax.process_index()
  if process_index != 0 or not names:
    return MetricLogger()
  log_dir = Path(log_dir)
  log_dir.mkdir(parents=True, exist_ok=True)
  lg = config.runner.logger
  cfg = config_to_dict(config)
  backends = []
  try:
    _open_backends(names, backends, log_dir, purge_step, config,
                   run_name or lg.experiment_name, lg.project_name, cfg)
  except BaseException:
    MetricLogger(backends).close()  # the ones already open
    raise
  return MetricLogger(backends)


def _open_backends(names, backends, log_dir, purge_step, config, name, project, cfg) -> None:
  for name in names:
    if name == "tensorboard":
      backends.append(_TensorBoard(log_dir, purge_step, config.to_json(indent=2)
                                   if hasattr(config, "to_json") else ""))
    elif name == "wandb":
      backends.append(_WandB(log_dir, project, name, cfg,
                             resume=purge_step is not None))
    elif name == "swanlab":
      backends.append(_SwanLab(log_dir, project, name, cfg,
                               resume=purge_step is not None))


# --------------------------------------------------------------------------------------
# Reading event files back (tests, BENCHMARKS.md curves) without TensorFlow/TensorBoard.


def _records(path: Path):
  """Yields the payloads of a TFRecord file (length, crc, data, crc)."""
  with open(path, "rb") as f:
    while True:
      header = f.read(8)
      if len(header) < 8:
        return
      (length,) = struct.unpack("<Q", header)
      f.read(4)  # length crc
      data = f.read(length)
      f.read(4)  # data crc
      if len(data) < length:
        return  # truncated tail of a file still being written
      yield data


def read_scalars(log_dir: str | Path) -> Dict[str, List[Tuple[int, float, float]]]:
  """All scalars in the event files under ``log_dir``: tag -> [(step, value, wall_time)].

  Honours the purge markers written on resume: a later ``purge_step`` drops the earlier
  points at or after it, as TensorBoard does. The ``seed_<k>/`` runs inside a multi-seed
  run directory are other runs (:mod:`panda_rl.seeds`) and are not read: read them with
  ``read_scalars(<run_dir>/seed_<k>)``.
  """
  from tensorboardX.proto import event_pb2

  from panda_rl.seeds import is_seed_dir

  files = []
  root = Path(log_dir)
  for path in root.rglob("*tfevents*"):
    if any(is_seed_dir(part) for part in path.relative_to(root).parts[:-1]):
      continue
    events = [event_pb2.Event.FromString(data) for data in _records(path)]
    if events:
      files.append((events[0].wall_time, str(path), events))
  out: Dict[str, List[Tuple[int, float, float]]] = {}
  for _, _, events in sorted(files):  # in the order the files were started
    for ev in events:
      if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
        for tag in out:
          out[tag] = [p for p in out[tag] if p[0] < ev.step]
      if not ev.HasField("summary"):
        continue
      for v in ev.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value),
                                            float(ev.wall_time)))
  return out

