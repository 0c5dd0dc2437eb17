"""Multi-host runs: starting ``jax.distributed`` from ``cluster.*`` (JAX's own runtime).

Every process of a pod runs the same command; device ranges in
``cluster.component_placement`` are global (host 0's devices first).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from panda_rl.config import PlacementError

# Environment variables read when the config leaves multi-host settings unset.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0 (jax reads it too)
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise PlacementError(f"environment variable {name}={value!r} is not an int") from None


def initialize_distributed(config: Any) -> bool:
  """Starts ``jax.distributed`` for ``cluster.num_nodes > 1``; returns whether it is on.

  Settings, first found wins: ``cluster.coordinator_address`` / ``cluster.process_id``,
  then the environment variables ``JAX_COORDINATOR_ADDRESS`` / ``JAX_PROCESS_ID``, then
  JAX's own cluster detection (Slurm, Open MPI, Cloud TPU). ``JAX_NUM_PROCESSES``, if set,
  must equal ``cluster.num_nodes``. Idempotent; must run before any JAX computation.

  Raises:
    PlacementError: inconsistent settings, or JAX already running single-process.
  """
  cluster = config.cluster
  n = cluster.get("num_nodes", 1)
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise PlacementError(f"cluster.num_nodes must be an int >= 1, got {n!r}")
  n = int(n)
  env_n = _env_int(ENV_NUM_PROCESSES)
  if n > 1 and env_n is not None and env_n != n:
    raise PlacementError(f"cluster.num_nodes={n} but {ENV_NUM_PROCESSES}={env_n}")
  if jax.distributed.is_initialized():
    if jax.process_count() != n:
      raise PlacementError(f"jax.distributed runs {jax.process_count()} processes but "
                           f"cluster.num_nodes={n}")
    return True
  if n == 1:
    return False
  address = cluster.get("coordinator_address", "") or os.environ.get(ENV_COORDINATOR) or None
  pid = cluster.get("process_id", -1)
  pid = int(pid) if pid is not None and int(pid) >= 0 else _env_int(ENV_PROCESS_ID)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid)
  except (RuntimeError, ValueError) as e:
    raise PlacementError(
        f"could not start jax.distributed for cluster.num_nodes={n} (coordinator "
        f"{address!r}, process id {pid!r}): {e}\nSet --config.cluster.coordinator_address="
        f"HOST:PORT and --config.cluster.process_id=I (or {ENV_COORDINATOR}, "
        f"{ENV_PROCESS_ID}) on every process, and start it before any JAX computation."
    ) from None
  if jax.process_count() != n:
    raise PlacementError(f"jax.distributed started {jax.process_count()} processes, "
                         f"cluster.num_nodes={n}")
  return True
