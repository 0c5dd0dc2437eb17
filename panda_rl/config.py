"""Loading, overriding, validating and (de)serialising experiment configs.

A config is an ``ml_collections.ConfigDict`` returned by ``get_config()`` in a file under
``configs/``. The command line overrides fields with ``--config.section.key=value``; the
same overrides work from Python::

    config = load_config("configs/mujoco_ppo_mlp.py", ["algorithm.gamma=0.98"])

Unknown fields fail loudly, with the valid names and a close match when there is one.
Overrides are parsed by ``ml_collections.config_flags`` (the parser the CLI uses), so a
notebook and the command line read ``--config.x=...`` identically.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Tuple

import ml_collections

LOGGER_BACKENDS = ("tensorboard", "wandb", "swanlab")

# Fields that may change between a run and its resumption without any effect on what the
# saved state means: bookkeeping, logging and evaluation cadence. Differences elsewhere are
# reported (and are errors where the saved arrays cannot fit the new config).
RESUME_FREE_FIELDS = (
    "runner.max_epochs",
    "runner.resume",
    "runner.val_check_interval",
    "runner.save_interval",
    "runner.max_to_keep",
    "runner.logger",
    "env.eval",
    "cluster",
    "rollout.pipeline_stage_num",  # placement and stages change where, not what, is computed
)

# Fields that change no compiled program (logging, bookkeeping, cadence, videos): left out of
# the settings that name the programs kept traced (:func:`program_settings`).
PROGRAM_FREE_FIELDS = (
    "runner.logger",
    "runner.resume",
    "runner.val_check_interval",
    "runner.save_interval",
    "runner.max_to_keep",
    "env.eval.video_cfg",
)


class ConfigError(ValueError):
  """A config field is unknown, mistyped or out of range."""


class PlacementError(ConfigError):
  """``cluster.*`` / ``rollout.pipeline_stage_num`` cannot work; raised before compiling."""


# --------------------------------------------------------------------------------------
# Field paths.


def flatten(config: Mapping[str, Any] | ml_collections.ConfigDict,
            prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``. Empty sub-dicts appear as ``{}`` leaves."""
  items = config.items() if hasattr(config, "items") else []
  out: dict[str, Any] = {}
  for k, v in items:
    path = f"{prefix}{k}"
    if isinstance(v, (ml_collections.ConfigDict, dict)) and len(v):
      out.update(flatten(v, path + "."))
    elif isinstance(v, (ml_collections.ConfigDict, dict)):
      out[path] = {}
    else:
      out[path] = v
  return out


def _unknown_field_message(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Returns an error message if ``path`` ("a.b.c") is not a field of ``config``."""
  node: Any = config
  parts = path.split(".")
  for i, part in enumerate(parts):
    where = ".".join(parts[:i]) or "<top level>"
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"Unknown config field {path!r}: {where!r} is a value "
              f"({type(node).__name__}), not a section.")
    if part not in node:
      valid = sorted(node.keys())
      close = difflib.get_close_matches(part, valid, n=1)
      hint = f" Did you mean {'.'.join(parts[:i] + [close[0]])!r}?" if close else ""
      return (f"Unknown config field {path!r}: section {where!r} has no field {part!r}."
              f"{hint} Valid fields of {where!r}: {', '.join(valid) or '(none)'}.")
    node = node[part]
  return None


def check_override_paths(config: ml_collections.ConfigDict, paths: Iterable[str]) -> None:
  """Raises :class:`ConfigError` naming every path that is not a field of ``config``."""
  errors = [m for m in (_unknown_field_message(config, p) for p in paths) if m]
  if errors:
    raise ConfigError("\n".join(errors))


def add_env_settings(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Makes ``env.<train|eval>.overrides.<key>`` overridable for every setting of the env.

  A config file lists only the env settings it changes; any other setting of the env's
  ``default_config()`` named in ``overrides`` (path -> value; a command-line value is a
  string) is added to ``config`` (unlocked) with the env's default, whose type then parses
  the new value. A key the env does not have raises :class:`ConfigError` listing its settings.
  """
  from panda_rl.envs import registry

  errors = []
  for path in overrides:
    parts = path.split(".")
    if len(parts) != 4 or parts[0] != "env" or parts[2] != "overrides":
      continue
    section = config.env.get(parts[1])
    if (not isinstance(section, ml_collections.ConfigDict) or "overrides" not in section
        or parts[3] in section.overrides):
      continue  # an existing field, or a path check_override_paths reports
    env_id = str(overrides.get(f"env.{parts[1]}.env_id", section.get("env_id") or
                               overrides.get("env.train.env_id", config.env.train.env_id)))
    try:
      defaults = registry.default_settings(env_id)
    except ValueError as e:
      raise ConfigError(f"config field {path!r}: {e}") from None
    if parts[3] in defaults:
      section.overrides[parts[3]] = defaults[parts[3]]
      continue
    close = difflib.get_close_matches(parts[3], defaults, n=1)
    hint = f" Did you mean {'.'.join(parts[:3] + close)!r}?" if close else ""
    errors.append(f"Unknown config field {path!r}: env {env_id!r} has no setting "
                  f"{parts[3]!r}.{hint} Its settings: {', '.join(sorted(defaults)) or '(none)'}.")
  if errors:
    raise ConfigError("\n".join(errors))


# --------------------------------------------------------------------------------------
# Loading.


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` of a config file (optionally ``file.py:arg``), no overrides."""
  import importlib.util

  path = str(path)
  arg = None
  if ":" in path and not Path(path).exists():
    path, arg = path.split(":", 1)
  if not Path(path).exists():
    raise ConfigError(f"Config file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location(f"_panda_rl_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def split_override(override: str) -> Tuple[str, str | None]:
  """A command-line override, ``"a.b=v"`` or ``"--config.a.b=v"``, as (field path ``"a.b"``,
  its value string ``"v"``; None when it has no ``=``)."""
  flag = override if override.startswith("--") else f"--config.{override}"
  name, sep, value = flag.partition("=")
  return name[len("--config."):], (value if sep else None)


def load_config(path: str | os.PathLike,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
  """Loads ``path`` and applies overrides exactly as the command line would.

  Args:
    path: a config file with ``get_config()``, e.g. ``"configs/mujoco_ppo_mlp.py"``.
    overrides: ``["algorithm.gamma=0.98", "--config.runner.max_epochs=3"]`` (strings are
      parsed like command-line values) or a mapping ``{"algorithm.gamma": 0.98}`` (values
      assigned as they are, type-checked by the locked ConfigDict).

  Returns:
    The locked, validated config.

  Raises:
    ConfigError: an unknown field, a value of the wrong type, or an invalid config.
  """
  from absl import flags
  from ml_collections import config_flags

  config = load_config_file(path)
  if isinstance(overrides, Mapping):
    add_env_settings(config, overrides)
    check_override_paths(config, overrides)
    config = ml_collections.ConfigDict(config)  # unlocked copy
    for key, value in overrides.items():
      _assign(config, key, value)
    config.lock()
    validate_config(config)
    return config

  # Later overrides of the same field win (absl would concatenate repeated tuple flags).
  latest: dict[str, str] = {}
  for o in overrides:
    o = o if o.startswith("--") else f"--config.{o}"
    latest[o.split("=", 1)[0]] = o
  argv = ["panda_rl", *latest.values()]
  values = dict(map(split_override, latest.values()))  # field path -> its command-line string
  add_env_settings(config, values)
  check_override_paths(config, values)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=fv, sys_argv=argv)
  try:
    fv(argv)
  except flags.Error as e:
    raise ConfigError(str(e)) from None
  except KeyError as e:  # a field set after an earlier flag replaced its whole section
    raise ConfigError(f"{e.args[0]}: an earlier flag replaced its section; set the field "
                      "inside that flag's value instead, e.g. --config.env.train.overrides="
                      "\"{'key': value}\"") from None
  config = fv.config
  validate_config(config)
  return config


def _assign(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f"config field {path!r}: {e}") from None


# --------------------------------------------------------------------------------------
# Validation: panda_rl.validation is the one place; load_config runs its field checks.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field that needs nothing built (see :mod:`panda_rl.validation`).

  Raises:
    ConfigError: listing every problem found.
  """
  from panda_rl import validation  # heavy (jax, the algorithms): imported when needed

  validation.validate_config(config)


def logger_backends(config: ml_collections.ConfigDict) -> Tuple[str, ...]:
  """``runner.logger.logger_backends`` as a tuple of lower-case backend names."""
  b = config.runner.logger.logger_backends
  b = (b,) if isinstance(b, str) else tuple(b)
  # The command line may deliver "tensorboard,wandb" or "(tensorboard,wandb)" as ONE string.
  names = []
  for item in b:
    for part in str(item).split(","):
      part = part.strip().strip("()[]'\" ").lower()
      if part:
        names.append(part)
  return tuple(names)


def num_seeds(config: Any) -> int:
  """``runner.num_seeds`` (1 for configs saved before it existed)."""
  runner = config["runner"] if "runner" in config else {}
  return int(runner.get("num_seeds", 1))


# --------------------------------------------------------------------------------------
# Run directories.


def run_dir(config: ml_collections.ConfigDict) -> Path:
  """``<runner.logger.log_path>/<project_name>/<experiment_name>``: logs + checkpoints."""
  lg = config.runner.logger
  return Path(lg.log_path) / lg.project_name / lg.experiment_name


# --------------------------------------------------------------------------------------
# JSON round trip (checkpoints store the config as JSON; JSON has no tuples).


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON-serialisable plain dict (tuples become lists)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _tuplify(x):
  if isinstance(x, dict):
    return {k: _tuplify(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuplify(v) for v in x)
  return x


def config_from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of :func:`config_to_dict`: lists come back as tuples; the result is locked."""
  config = ml_collections.ConfigDict(_tuplify(dict(d)))
  config.lock()
  return config


def program_settings(config: ml_collections.ConfigDict) -> dict:
  """``config`` as flat ``{"a.b": value}`` without :data:`PROGRAM_FREE_FIELDS`: what the
  training and evaluation programs are built from (:mod:`panda_rl.program_cache`)."""
  skip = lambda p: any(p == f or p.startswith(f + ".") for f in PROGRAM_FREE_FIELDS)
  return {k: v for k, v in flatten(config_to_dict(config)).items() if not skip(k)}


def config_diff(old: Mapping[str, Any] | ml_collections.ConfigDict,
                new: Mapping[str, Any] | ml_collections.ConfigDict,
                ignore: Sequence[str] = ()) -> List[str]:
  """Human-readable differences ``"path: old -> new"`` between two configs.

  Sequences compare equal whether they are lists or tuples. Paths equal to or under an
  entry of ``ignore`` are skipped.
  """
  norm = lambda c: _tuplify(config_to_dict(c) if isinstance(c, ml_collections.ConfigDict)
                            else json.loads(json.dumps(c)))
  a, b = flatten(norm(old)), flatten(norm(new))
  skip = lambda p: any(p == i or p.startswith(i + ".") for i in ignore)
  missing = object()
  out = []
  for path in sorted(set(a) | set(b)):
    if skip(path):
      continue
    va, vb = a.get(path, missing), b.get(path, missing)
    if va != vb:
      fmt = lambda v: "(absent)" if v is missing else repr(v)
      out.append(f"{path}: {fmt(va)} -> {fmt(vb)}")
  return out
