"""Name -> env constructor: ``make("PandaPickCube-v0", **overrides)``."""

from __future__ import annotations

import difflib
import importlib
import json
from typing import Callable, Dict, Iterable

from panda_rl.envs.base import Env

# name -> "module:factory"; modules are imported lazily so `import panda_rl` stays cheap.
_REGISTRY: Dict[str, str] = {
    "PandaPickCube-v0": "panda_rl.envs.pick_cube:PandaPickCube",
    "PandaPickCubeVision-v0": "panda_rl.envs.pick_cube_vision:PandaPickCubeVision",
    "PointReach-v0": "panda_rl.envs.probe:PointReach",
    # Graded probes with closed-form values / best actions (panda_rl/envs/probes.py).
    "ProbeConstant-v0": "panda_rl.envs.probes:ProbeConstant",
    "ProbeObsReward-v0": "panda_rl.envs.probes:ProbeObsReward",
    "ProbeDiscount-v0": "panda_rl.envs.probes:ProbeDiscount",
    "ProbeAction-v0": "panda_rl.envs.probes:ProbeAction",
    "ProbeActionObs-v0": "panda_rl.envs.probes:ProbeActionObs",
}


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


def default_settings(name: str) -> Dict:
  """The settings ``make(name, **overrides)`` accepts, with their default values (the env
  module's ``default_config()``; ``{}`` for an env without settings)."""
  _factory(name)  # an unknown name fails here, listing the registered ones
  module = importlib.import_module(_REGISTRY[name].split(":")[0])
  defaults = getattr(module, "default_config", None)
  return dict(defaults()) if defaults is not None else {}


def parse_overrides(pairs: Iterable[str]) -> Dict:
  """``["sim_dt=0.01", "controller_rate=control"]`` -> ``make`` overrides (the scripts'
  ``--override key=value``): a value is JSON where it parses as JSON (numbers, true /
  false, lists), else the string itself."""
  out = {}
  for pair in pairs:
    key, sep, text = pair.partition("=")
    if not sep or not key:
      raise ValueError(f"env override {pair!r}: expected key=value")
    try:
      out[key] = json.loads(text)
    except json.JSONDecodeError:
      out[key] = text
  return out


def eval_overrides(name: str, train_overrides: Dict) -> Dict:
  """The train env's overrides minus its training-only keys (reset curricula).

  An env class lists such keys in ``TRAIN_ONLY_KEYS``; evaluation built from the training
  settings then measures the task as specified, not the curriculum.
  """
  train_only = set(getattr(_factory(name), "TRAIN_ONLY_KEYS", ()))
  return {k: v for k, v in dict(train_overrides).items() if k not in train_only}
