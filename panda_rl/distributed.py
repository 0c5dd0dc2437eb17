"""Multi-host runs: starting ``jax.distributed`` from ``cluster.*`` (JAX's own runtime).

Every process of a pod runs the same command; device ranges in
``cluster.component_placement`` are global (host 0's devices first).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, Optional

import jax
import numpy as np

from panda_rl.config import PlacementError

# Environment variables read when the config leaves multi-host settings unset.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0 (jax reads it too)
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# process index -> host name, filled by initialize_distributed (one exchange at start).
HOSTS: Dict[int, str] = {}


def host_name(process_index: int) -> str:
  """The host name of a process of the run ("?" if unknown)."""
  if not HOSTS and jax.process_count() == 1:
    HOSTS[0] = socket.gethostname()
  return HOSTS.get(process_index, "?")


def _positive_int(cluster, name: str, default: int) -> int:
  value = cluster.get(name, default)
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise PlacementError(f"cluster.{name} must be an int >= 1 (seconds), got {value!r}")
  return int(value)


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
  """A process other than 0: waits until process 0's coordinator accepts connections (XLA
  aborts the process without a Python error when it cannot connect)."""
  import time

  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise PlacementError(f"cluster.coordinator_address={address!r} is not HOST:PORT")
  deadline, last = time.monotonic() + timeout_s, None
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
        return
    except OSError as e:
      last = e
      time.sleep(0.5)
  raise PlacementError(
      f"the coordinator (process 0) at {address} did not answer within "
      f"cluster.init_timeout_s={timeout_s} s ({last}). Start process 0 with "
      f"--config.cluster.process_id=0 on that host, check the address and that the port is "
      "reachable from this host, or raise cluster.init_timeout_s.")


def _exchange_host_names() -> None:
  """Every process learns every process's host name (for the placement table)."""
  from jax.experimental import multihost_utils

  name = socket.gethostname().encode()[:64].ljust(64, b"\0")
  names = multihost_utils.process_allgather(np.frombuffer(name, np.uint8))
  for i, row in enumerate(np.asarray(names).reshape(jax.process_count(), 64)):
    HOSTS[i] = bytes(row).rstrip(b"\0").decode(errors="replace")


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
  if pid is not None and not 0 <= pid < n:
    raise PlacementError(f"process id {pid} is outside 0-{n - 1} (cluster.num_nodes={n}): "
                         "give every process its own id from 0 to num_nodes - 1")
  init_s = _positive_int(cluster, "init_timeout_s", 300)
  beat_s = _positive_int(cluster, "heartbeat_timeout_s", 100)
  if address and pid not in (None, 0):
    _wait_for_coordinator(address, init_s)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid,
                               initialization_timeout=init_s,
                               heartbeat_timeout_seconds=beat_s)
  except (RuntimeError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise PlacementError(
        f"could not start jax.distributed for cluster.num_nodes={n} (coordinator "
        f"{address!r}, process id {pid!r}, waited up to cluster.init_timeout_s={init_s}): "
        f"{first}\nEvery one of the {n} processes must be started with the same "
        f"--config.cluster.coordinator_address=HOST:PORT (process 0's host) and its own "
        f"--config.cluster.process_id=I (or {ENV_COORDINATOR}, {ENV_PROCESS_ID}), before "
        "any JAX computation.") from None
  if jax.process_count() != n:
    raise PlacementError(f"jax.distributed started {jax.process_count()} processes, "
                         f"cluster.num_nodes={n}")
  _exchange_host_names()
  return True
