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
"""

from __future__ import annotations

import importlib.util
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
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class _WandB:

  def __init__(self, log_dir: Path, project: str, name: str, config: dict):
    import wandb

    self.wandb = wandb
    self.run = wandb.init(project=project, name=name, dir=str(log_dir), config=config)

  def log(self, metrics: Dict[str, float], step: int) -> None:
    self.run.log(metrics, step=step)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.run.finish()


class _SwanLab:

  def __init__(self, log_dir: Path, project: str, name: str, config: dict):
    import swanlab

    self.swanlab = swanlab
    self.run = swanlab.init(project=project, experiment_name=name, logdir=str(log_dir),
                            config=config)

  def log(self, metrics: Dict[str, float], step: int) -> None:
    self.swanlab.log(metrics, step=step)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.swanlab.finish()


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
    for b in self._backends:
      b.flush()

  def close(self) -> None:
    for b in self._backends:
      b.close()
    self._backends = []

  def __enter__(self) -> "MetricLogger":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def make_logger(config, log_dir: str | Path, *, purge_step: Optional[int] = None,
                process_index: Optional[int] = None) -> MetricLogger:
  """Builds the backends named in ``config.runner.logger.logger_backends``.

  Args:
    config: the experiment config (its JSON goes to the backends as hyperparameters).
    log_dir: directory of this run's event files (created if missing).
    purge_step: on resume, the first step that will be logged again; TensorBoard drops
      events at or after it written by the interrupted run, so curves do not double back.
    process_index: defaults to ``jax.process_index()``; only process 0 logs.
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
  for name in names:
    if name == "tensorboard":
      backends.append(_TensorBoard(log_dir, purge_step, config.to_json(indent=2)
                                   if hasattr(config, "to_json") else ""))
    elif name == "wandb":
      backends.append(_WandB(log_dir, lg.project_name, lg.experiment_name, cfg))
    elif name == "swanlab":
      backends.append(_SwanLab(log_dir, lg.project_name, lg.experiment_name, cfg))
  return MetricLogger(backends)


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
  points at or after it, as TensorBoard does.
  """
  from tensorboardX.proto import event_pb2

  files = []
  for path in Path(log_dir).rglob("*tfevents*"):
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

