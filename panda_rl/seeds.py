"""Several seeds in one program: ``runner.num_seeds = S``.

S independent training runs share one jitted iteration. The whole ``TrainState`` gets a
leading seed axis (every leaf [S, ...]) and :func:`panda_rl.programs.build` ``jax.vmap``s
the trainer's per-seed pure functions over it; evaluation is vmapped alike. With S = 1
nothing is vmapped and nothing here changes a program, a directory or a metric name.

Key derivation: seed k trains from ``PRNGKey(runner.seed + k)`` and evaluates with the
evaluation keys of ``runner.seed + k`` (:func:`per_seed`), exactly the keys of a 1-seed run
with ``runner.seed = runner.seed + k``; so seed k of an S-seed run IS that run, to float
rounding (vmap may order a reduction differently).

On the host (:class:`RunLoggers`, with S > 1):

* seed k logs every metric under its usual name to its own run ``<run_dir>/seed_<k>/``
  (TensorBoard overlays them);
* the run directory gets the aggregate (:func:`aggregate`): for each scalar the mean over
  the seeds under its own name, the min and max under ``<name>_min`` and ``<name>_max``
  (e.g. ``eval/success_once``, ``eval/success_once_min``, ``eval/success_once_max``), over
  the seeds with a finite value. ``time/*`` are the run's clock, the same for every seed,
  and are logged once, unchanged.

The single checkpoint in ``<run_dir>/checkpoints/`` holds the stacked state of all seeds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MIN_SUFFIX, MAX_SUFFIX = "_min", "_max"
SHARED_PREFIX = "time/"  # the run's clock: the same for every seed
_SEED_DIR = re.compile(r"^seed_(\d+)$")


def per_seed(make: Callable[[int], jax.Array], seed: int, num_seeds: int) -> jax.Array:
  """``make(seed)`` for one seed; ``[make(seed + k) for k < S]`` stacked for S > 1.

  E.g. ``per_seed(jax.random.PRNGKey, 3, 2)``: the [2, 2] initial keys of seeds 3 and 4.
  """
  if num_seeds == 1:
    return make(seed)
  return jnp.stack([make(seed + k) for k in range(num_seeds)])


def select(tree: Any, k: int) -> Any:
  """Seed ``k``'s slice of a stacked pytree (e.g. its ``TrainState``)."""
  return jax.tree.map(lambda x: x[k], tree)


def split(metrics: Mapping[str, Any], num_seeds: int) -> List[Dict[str, float]]:
  """Host metrics ([] values, or [S] with S > 1) -> one dict of floats per seed."""
  if num_seeds == 1:
    return [{k: float(v) for k, v in metrics.items()}]
  arrays = {k: np.asarray(v).reshape(num_seeds) for k, v in metrics.items()}
  return [{k: float(v[i]) for k, v in arrays.items()} for i in range(num_seeds)]


def aggregate(seeds: Sequence[Mapping[str, float]]) -> Dict[str, float]:
  """The run's summary of per-seed scalars: mean, ``_min`` and ``_max`` over the seeds
  with a finite value (NaN where none has one); ``time/*`` as they are."""
  names = list(dict.fromkeys(name for m in seeds for name in m))
  out: Dict[str, float] = {}
  for name in names:
    values = [float(m[name]) for m in seeds if name in m]
    if name.startswith(SHARED_PREFIX):
      out[name] = values[0]
      continue
    finite = [v for v in values if math.isfinite(v)]
    nan = float("nan")
    out[name] = float(np.mean(finite)) if finite else nan
    out[name + MIN_SUFFIX] = min(finite) if finite else nan
    out[name + MAX_SUFFIX] = max(finite) if finite else nan
  return out


# --------------------------------------------------------------------------------------
# Directories.


def seed_dir(run_dir: str | Path, k: int) -> Path:
  """Where seed ``k`` of a multi-seed run logs: ``<run_dir>/seed_<k>``."""
  return Path(run_dir) / f"seed_{int(k)}"


def seed_dirs(run_dir: str | Path) -> List[Path]:
  """The ``seed_<k>`` sub-directories of a run, by k; [] for a 1-seed run."""
  run_dir = Path(run_dir)
  if not run_dir.is_dir():
    return []
  found = [(int(m.group(1)), p) for p in run_dir.iterdir()
           if p.is_dir() and (m := _SEED_DIR.match(p.name))]
  return [p for _, p in sorted(found)]


def is_seed_dir(name: str) -> bool:
  return _SEED_DIR.match(name) is not None


# --------------------------------------------------------------------------------------
# Logging.


class RunLoggers:
  """The loggers of a run: one :class:`~panda_rl.logger.MetricLogger` in the run directory
  and, with S > 1, one per seed (``<run_dir>/seed_<k>/``, W&B / SwanLab runs named
  ``<experiment_name>/seed_<k>``)."""

  def __init__(self, top: Any, seeds: Sequence[Any] = ()):
    self.top, self.seeds = top, list(seeds)

  @classmethod
  def open(cls, config: Any, run_dir: Path, num_seeds: int,
           purge_step: Optional[int] = None) -> "RunLoggers":
    from panda_rl.logger import make_logger

    opened = cls(make_logger(config, run_dir, purge_step=purge_step))
    if num_seeds == 1:
      return opened
    name = config.runner.logger.experiment_name
    try:
      for k in range(num_seeds):
        opened.seeds.append(make_logger(config, seed_dir(run_dir, k), purge_step=purge_step,
                                        run_name=f"{name}/seed_{k}"))
    except BaseException:
      opened.close()
      raise
    return opened

  def log(self, seeds: Sequence[Mapping[str, float]], step: int) -> Dict[str, float]:
    """Logs one iteration's per-seed metrics; returns the run's (the one seed's for S = 1,
    else :func:`aggregate`'s)."""
    if len(seeds) == 1:
      run = dict(seeds[0])
    else:
      for logger, metrics in zip(self.seeds, seeds):
        logger.log(metrics, step)
      run = aggregate(seeds)
    self.top.log(run, step)
    return run

  def flush(self) -> None:
    for logger in [self.top] + self.seeds:
      logger.flush()

  def close(self) -> None:
    for logger in [self.top] + self.seeds:
      logger.close()
