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
