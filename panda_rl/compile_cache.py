"""JAX's persistent compilation cache, on by default for panda_rl's programs.

Compiling the default training iteration takes tens of seconds on a 2-core CPU; reading it
back from JAX's persistent compilation cache takes about a second. So ``import panda_rl``
points JAX's cache at a per-user directory, unless the user decided otherwise:

* default: ``$XDG_CACHE_HOME/panda_rl/jax``, i.e. ``~/.cache/panda_rl/jax`` when
  ``XDG_CACHE_HOME`` is unset;
* ``PANDA_RL_COMPILATION_CACHE=DIR``: that directory instead;
* ``PANDA_RL_COMPILATION_CACHE=0`` (or ``off``, ``false``, ``no``): panda_rl sets nothing;
* a cache directory the user gave JAX itself (``JAX_COMPILATION_CACHE_DIR``, or
  ``jax.config.update("jax_compilation_cache_dir", ...)`` before ``import panda_rl``), or
  JAX's cache turned off (``JAX_ENABLE_COMPILATION_CACHE=false``): left as it is.

Programs that compile in under ``jax_persistent_cache_min_compile_time_secs`` (JAX's
default, 1 s) are not written: a cache read costs about as much as such a compile. JAX keys
every entry by the program, the jaxlib version, the devices and the XLA flags (the fast
XLA:CPU flags of :mod:`panda_rl._xla` included), so a changed program or flag compiles
afresh, and entries are never stale. The directory grows by a few MB per new program and
may be deleted at any time.

It reports once, through ``logging`` (logger ``"panda_rl"``), where the cache is;
:data:`STATUS` holds the same sentence and :func:`cache_dir` the directory in effect. The
library's large programs are also kept *traced*, in the same directory
(:mod:`panda_rl.program_cache`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

_log = logging.getLogger("panda_rl")

ENV_VAR = "PANDA_RL_COMPILATION_CACHE"
OFF_VALUES = ("0", "off", "false", "no")

STATUS: str = "not configured"


def default_dir() -> Path:
  """``$XDG_CACHE_HOME/panda_rl/jax``, or ``~/.cache/panda_rl/jax``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "panda_rl" / "jax"


def requested_dir(value: Optional[str]) -> Optional[Path]:
  """The directory ``PANDA_RL_COMPILATION_CACHE=value`` asks for; None means off.

  Unset, empty or ``1``: :func:`default_dir`; ``0``/``off``/``false``/``no``: off; else a
  path (``~`` expanded).
  """
  value = (value or "").strip()
  if value.lower() in OFF_VALUES:
    return None
  if value in ("", "1"):
    return default_dir()
  return Path(value).expanduser()


def cache_dir() -> Optional[str]:
  """The persistent cache directory JAX uses now (None: no persistent cache)."""
  import jax

  if not jax.config.jax_enable_compilation_cache:
    return None
  return jax.config.jax_compilation_cache_dir or None


def configure() -> str:
  """Turns JAX's persistent compilation cache on unless the user chose; returns what it did.

  Call before the first compile (``import panda_rl`` does): JAX opens its cache once, at
  the first compile of the process.
  """
  global STATUS
  import jax

  setting = os.environ.get(ENV_VAR)
  if not jax.config.jax_enable_compilation_cache:
    STATUS = "JAX's compilation cache is turned off (jax_enable_compilation_cache=False)"
  elif jax.config.jax_compilation_cache_dir:
    STATUS = (f"persistent compilation cache: {jax.config.jax_compilation_cache_dir} "
              "(set for JAX by the user)")
  else:
    target = requested_dir(setting)
    if target is None:
      STATUS = f"persistent compilation cache off ({ENV_VAR}={setting})"
    else:
      jax.config.update("jax_compilation_cache_dir", str(target))
      how = f"{ENV_VAR}={setting}" if setting not in (None, "", "1") else (
          f"default; {ENV_VAR}=DIR moves it, {ENV_VAR}=0 turns it off")
      STATUS = f"persistent compilation cache: {target} ({how})"
  _log.info("panda_rl: %s", STATUS)
  return STATUS
