"""Name -> env constructor: ``make("PandaPickCube-v0", **overrides)``."""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict

from panda_rl.envs.base import Env

# name -> "module:factory"; modules are imported lazily so `import panda_rl` stays cheap.
_REGISTRY: Dict[str, str] = {
    "PandaPickCube-v0": "panda_rl.envs.pick_cube:PandaPickCube",
    "PointReach-v0": "panda_rl.envs.probe:PointReach",
}


def register(name: str, target: str) -> None:
  """Registers ``target`` ("module:callable") under ``name``."""
  _REGISTRY[name] = target


def registered_envs() -> list[str]:
  return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., Env]:
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown env {name!r}.{hint} Registered envs: {registered_envs()}")
  module, attr = _REGISTRY[name].split(":")
  return getattr(importlib.import_module(module), attr)


def make(name: str, **overrides) -> Env:
  """Builds a registered env; ``overrides`` replace fields of its ``default_config()``.

  Unknown override keys fail with a message listing the valid ones.
  """
  return _factory(name)(**overrides)
