"""Puts JAX on the fast XLA:CPU path for MJX before any backend starts.

MJX's body-tree kinematics (chained quaternion products) is ~30x slower on CPU with
jax >= 0.7 than with jax 0.6 because XLA:CPU's fusion emitters recompute the chain for
every output element (jax-ml/jax#33761). Two flags restore the old speed:

* ``--xla_cpu_use_fusion_emitters=false``
* ``--xla_cpu_experimental_ynn_fusion_type=-reduce``

XLA reads ``XLA_FLAGS`` once, when the first backend is created, and aborts on flags it
does not know. So this module (imported first by ``panda_rl/__init__``) adds the flags
only when (a) no JAX backend exists yet, (b) the installed jaxlib is a version we measured
to know them, and (c) the user has not opted out with ``PANDA_RL_XLA_FLAGS=0``. It reports
once, through ``logging``, what it did or why it could not.

It also splits the host CPU into one XLA device per core (:func:`configure_cpu_devices`):
XLA:CPU runs one device's program on about 1.5 of 2 cores, and the library's default
placement (``env,rollout,actor:all``) shards the env batch over every device, so two CPU
devices step the pick-cube env ~1.5x as fast on a 2-core machine (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import sys

_log = logging.getLogger("panda_rl")

FAST_CPU_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_experimental_ynn_fusion_type=-reduce",
)
# jaxlib versions (major, minor) on which both flags were measured to exist and help.
_KNOWN_MINOR = {(0, 7), (0, 8), (0, 9), (0, 10)}

STATUS: str = "not configured"

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
CPU_DEVICES_VAR = "PANDA_RL_CPU_DEVICES"
MAX_AUTO_CPU_DEVICES = 8  # measured on 2 cores only; more devices are the user's choice
CPU_DEVICES: str = "not configured"


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    from importlib.metadata import version

    parts = version("jaxlib").split(".")
    return int(parts[0]), int(parts[1])
  except Exception:  # pragma: no cover - jaxlib missing or odd version string
    return None


def _backend_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", {}))
  except Exception:  # pragma: no cover - private API moved
    return True


def configure() -> str:
  """Adds the fast-CPU flags to ``XLA_FLAGS`` if it is safe; returns what happened."""
  global STATUS
  current = os.environ.get("XLA_FLAGS", "")
  if os.environ.get("PANDA_RL_XLA_FLAGS", "1") == "0":
    STATUS = "disabled by PANDA_RL_XLA_FLAGS=0"
  elif all(f.split("=")[0] in current for f in FAST_CPU_FLAGS):
    STATUS = "fast-CPU XLA flags already present in XLA_FLAGS"
  else:
    ver = _jaxlib_version()
    if ver is None:
      STATUS = "jaxlib not found; XLA flags untouched"
    elif ver < (0, 7):
      STATUS = f"jaxlib {ver[0]}.{ver[1]} needs no fast-CPU flags"
    elif ver not in _KNOWN_MINOR:
      STATUS = (f"jaxlib {ver[0]}.{ver[1]} is newer than the versions whose XLA:CPU flags "
                "we measured; flags NOT set (MJX on CPU may be slow; see BENCHMARKS.md)")
    elif _backend_started():
      STATUS = ("a JAX backend was started before `import panda_rl`; fast-CPU XLA flags "
                "could NOT be applied (import panda_rl first, or export XLA_FLAGS="
                + " ".join(FAST_CPU_FLAGS) + ")")
    else:
      missing = [f for f in FAST_CPU_FLAGS if f.split("=")[0] not in current]
      os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
      STATUS = "set fast-CPU XLA flags: " + " ".join(missing)
  level = logging.WARNING if "NOT" in STATUS or "could NOT" in STATUS else logging.INFO
  _log.log(level, "panda_rl: %s", STATUS)
  return STATUS


def available_cores() -> int:
  """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - macOS / Windows
    return os.cpu_count() or 1


def auto_cpu_devices(cores: int) -> int:
  """CPU devices for ``cores`` cores: the largest power of two <= cores, at most
  :data:`MAX_AUTO_CPU_DEVICES` (powers of two divide the configs' batch sizes)."""
  n = 1
  while n * 2 <= min(cores, MAX_AUTO_CPU_DEVICES):
    n *= 2
  return n


def requested_cpu_devices(value: str | None, cores: int) -> int:
  """The CPU device count ``PANDA_RL_CPU_DEVICES=value`` asks for: unset, empty or ``auto``:
  :func:`auto_cpu_devices`; a positive integer: that many.

  Raises:
    ValueError: anything else, naming the variable and what it accepts.
  """
  value = (value or "").strip().lower()
  if value in ("", "auto"):
    return auto_cpu_devices(cores)
  if value.isdigit() and int(value) >= 1:
    return int(value)
  raise ValueError(f"{CPU_DEVICES_VAR}={value!r}: expected 'auto' or a positive integer "
                   "(the number of XLA CPU devices; 1 = one device, as JAX's default)")


def configure_cpu_devices() -> str:
  """Gives XLA:CPU one device per core (``--xla_force_host_platform_device_count``) unless
  the user chose a count (in ``XLA_FLAGS`` or ``PANDA_RL_CPU_DEVICES``) or a backend has
  started; returns what happened (also in :data:`CPU_DEVICES`, reported through logging).

  Only the CPU platform is split: on a GPU/TPU host ``jax.devices()`` is still the
  accelerators. ``PANDA_RL_CPU_DEVICES=1`` keeps JAX's single CPU device.
  """
  global CPU_DEVICES
  current = os.environ.get("XLA_FLAGS", "")
  cores = available_cores()
  if DEVICE_COUNT_FLAG in current:
    CPU_DEVICES = f"CPU device count set by the user's XLA_FLAGS ({DEVICE_COUNT_FLAG})"
  else:
    count = requested_cpu_devices(os.environ.get(CPU_DEVICES_VAR), cores)
    how = (f"{CPU_DEVICES_VAR}={os.environ[CPU_DEVICES_VAR].strip()}"
           if os.environ.get(CPU_DEVICES_VAR, "").strip().lower() not in ("", "auto")
           else f"one per core, {cores} core(s)")
    if count == 1:
      CPU_DEVICES = f"1 CPU device ({how})"
    elif _backend_started():
      CPU_DEVICES = (f"a JAX backend was started before `import panda_rl`: the CPU could NOT "
                     f"be split into {count} devices (export XLA_FLAGS={DEVICE_COUNT_FLAG}="
                     f"{count})")
    else:
      os.environ["XLA_FLAGS"] = f"{current} {DEVICE_COUNT_FLAG}={count}".strip()
      CPU_DEVICES = f"{count} CPU devices ({how})"
  level = logging.WARNING if "NOT" in CPU_DEVICES else logging.INFO
  _log.log(level, "panda_rl: %s", CPU_DEVICES)
  return CPU_DEVICES


def patch_mjx() -> str:
  """Imports ``mujoco.mjx`` (without its 'Failed to import warp' print: warp is optional,
  panda_rl uses MJX's JAX implementation) and puts an ``optimization_barrier`` on the
  left operand of MJX's quaternion product when tracing for CPU.

  The barrier stops XLA:CPU from fusing the body tree's chain of quaternion products into
  one kernel that recomputes the whole chain per output element. Measured on our Panda
  scene (jax 0.9.2 + the flags above, B=256): ``mjx.step`` 9.9k -> 26.7k physics steps/s,
  numerics unchanged (a barrier is an identity). Unlike the flags, it does not depend on
  XLA flag names that may disappear. On GPU/TPU the original function is used.
  """
  global MJX_PATCH
  import contextlib
  import io

  with contextlib.redirect_stdout(io.StringIO()):
    import mujoco.mjx  # noqa: F401
  import jax
  from mujoco.mjx._src import math as mjx_math

  original = getattr(mjx_math.quat_mul, "__wrapped__", mjx_math.quat_mul)
  if os.environ.get("PANDA_RL_MJX_BARRIER", "1") == "0":
    mjx_math.quat_mul = original
    MJX_PATCH = "quaternion barrier disabled by PANDA_RL_MJX_BARRIER=0"
    return MJX_PATCH

  def quat_mul(u, v):
    if jax.default_backend() == "cpu":
      u = jax.lax.optimization_barrier(u)
    return original(u, v)

  quat_mul.__wrapped__ = original
  quat_mul.__doc__ = original.__doc__
  mjx_math.quat_mul = quat_mul
  MJX_PATCH = "MJX quaternion product wrapped in an optimization barrier on CPU"
  return MJX_PATCH


MJX_PATCH: str = "not applied"
