"""The one place that validates an experiment config, reporting every problem at once.

* :func:`config_problems` / :func:`validate_config`: every field that can be checked without
  building anything (runner, logger, sizes, optimiser, model, the algorithm's own fields,
  video settings). ``config.load_config`` runs it.
* :func:`check`: the above, plus what needs the envs (unknown env ids and env keys, the
  algorithm's env requirements, matching train/eval envs) and the devices (the placement),
  before anything compiles. It returns what it built (:class:`Setup`), so the trainer
  builds nothing twice.

Each raises ONE :class:`~panda_rl.config.ConfigError` listing every problem
(a :class:`~panda_rl.config.PlacementError` when all of them are about placement).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax
import ml_collections

import panda_rl
from panda_rl import agents
from panda_rl import placement as placement_lib
from panda_rl.config import LOGGER_BACKENDS, ConfigError, PlacementError, logger_backends
from panda_rl.config import num_seeds
from panda_rl.envs import registry as envs_registry
from panda_rl.networks import CNN_FIELDS, ENCODERS, activation_fn

LR_SCHEDULES = ("constant", "linear", "cosine")
SECTIONS = ("env", "rollout", "actor", "algorithm", "runner")


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _field(config: Any, path: str) -> Any:
  node = config
  for p in path.split("."):
    node = node[p]
  return node


def _runner_problems(config: Any) -> List[str]:
  r, lg = config.runner, config.runner.logger
  checks = [
      (_is_int(r.max_epochs) and r.max_epochs >= 1,
       f"runner.max_epochs must be an int >= 1, got {r.max_epochs!r}"),
      (_is_int(r.val_check_interval) and r.val_check_interval >= 0,
       f"runner.val_check_interval must be an int >= 0 (0 = never), got "
       f"{r.val_check_interval!r}"),
      (_is_int(r.save_interval) and r.save_interval >= 0,
       f"runner.save_interval must be an int >= 0 (0 = only at the end), got "
       f"{r.save_interval!r}"),
      ("max_to_keep" not in r or (_is_int(r.max_to_keep) and r.max_to_keep >= 0),
       f"runner.max_to_keep must be an int >= 0 (0 = keep all), got {r.get('max_to_keep')!r}"),
      (isinstance(r.resume, bool), f"runner.resume must be a bool, got {r.resume!r}"),
      ("num_seeds" not in r or (_is_int(r.num_seeds) and r.num_seeds >= 1),
       f"runner.num_seeds must be an int >= 1 (seeds trained at once), got "
       f"{r.get('num_seeds')!r}"),
  ]
  for name in ("log_path", "project_name", "experiment_name"):
    checks.append((isinstance(lg[name], str) and lg[name] != "",
                   f"runner.logger.{name} must be a non-empty string, got {lg[name]!r}"))
  unknown = [b for b in logger_backends(config) if b not in LOGGER_BACKENDS]
  checks.append((not unknown, f"runner.logger.logger_backends: unknown backend(s) {unknown}; "
                              f"valid: {list(LOGGER_BACKENDS)}"))
  return [msg for ok, msg in checks if not ok]


def _size_problems(config: Any) -> List[str]:
  out = []
  for path in ("env.train.num_envs", "env.eval.num_envs", "rollout.num_steps",
               "algorithm.update_epochs", "algorithm.num_minibatches"):
    value = _field(config, path)
    if not (_is_int(value) and value >= 1):
      out.append(f"{path} must be an int >= 1, got {value!r}")
  if out:
    return out
  num_envs, num_steps = config.env.train.num_envs, config.rollout.num_steps
  minibatches = config.algorithm.num_minibatches
  if (num_envs * num_steps) % minibatches:
    out.append(f"env.train.num_envs * rollout.num_steps = {num_envs} * {num_steps} = "
               f"{num_envs * num_steps} samples per iteration must be divisible by "
               f"algorithm.num_minibatches = {minibatches}")
  rho = config.rollout.get("noise_correlation", 0.0)
  if not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0.0 <= rho < 1.0):
    out.append(f"rollout.noise_correlation must be a number in [0, 1), got {rho!r}")
  dims = config.rollout.get("noise_correlation_dims", ()) or ()
  if (isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__")
      or not all(_is_int(d) and d >= 0 for d in dims) or len(set(dims)) != len(tuple(dims))):
    out.append("rollout.noise_correlation_dims must be distinct action dimensions "
               f"(integers >= 0), got {dims!r}")
  return out


def _learner_problems(config: Any) -> List[str]:
  alg, optim = config.algorithm, config.actor.optim
  checks = [
      (alg.clip_ratio > 0.0, f"algorithm.clip_ratio must be > 0, got {alg.clip_ratio}"),
      (alg.entropy_coef >= 0.0, f"algorithm.entropy_coef must be >= 0, got {alg.entropy_coef}"),
      (optim.lr > 0.0, f"actor.optim.lr must be > 0, got {optim.lr}"),
      (optim.lr_schedule in LR_SCHEDULES,
       f"actor.optim.lr_schedule must be one of {LR_SCHEDULES}, got {optim.lr_schedule!r}"),
  ]
  return [msg for ok, msg in checks if not ok] + agents.config_problems(config)


def _model_problems(model: Any) -> List[str]:
  out = []
  try:
    activation_fn(model.activation)
  except ValueError as e:
    out.append(f"actor.model.activation: {e}")
  encoder = model.get("encoder", "flat")
  if encoder not in ENCODERS:
    out.append(f"actor.model.encoder must be one of {list(ENCODERS)}, got {encoder!r}")
  shared = model.get("shared_encoder", False)
  if not isinstance(shared, bool):
    out.append(f"actor.model.shared_encoder must be True or False, got {shared!r}")
  if encoder != "cnn":
    return out
  missing = [f for f in CNN_FIELDS if f not in model]
  if missing:
    return out + [f"actor.model.encoder='cnn' needs the fields actor.model.{missing} "
                  "(see configs/mujoco_ppo_cnn.py)"]
  lens = {f: len(tuple(model[f])) for f in ("cnn_channels", "cnn_kernels", "cnn_strides")}
  if len(set(lens.values())) != 1 or lens["cnn_channels"] < 1:
    out.append(f"actor.model.cnn_channels / cnn_kernels / cnn_strides must have the same "
               f"length >= 1 (one entry per conv layer), got lengths {lens}")
  return out


def _video_problems(config: Any) -> List[str]:
  vc = config.env.eval.get("video_cfg", None)
  if vc is None or not vc.get("save_video", False):
    return []
  from panda_rl import video

  try:
    video.check_settings(vc.num_videos, vc.resolution, vc.fps)
  except ValueError as e:
    return [f"env.eval.video_cfg: {e}"]
  return []


def config_problems(config: Any) -> List[str]:
  """Every problem found in the fields of ``config`` (nothing is built)."""
  missing = [s for s in SECTIONS if s not in config]
  if missing:
    return [f"config has no {s!r} section" for s in missing]
  out = (_runner_problems(config) + _model_problems(config.actor.model) +
         _video_problems(config))
  sizes = _size_problems(config)
  if sizes:  # the algorithm's checks divide by these sizes
    return out + sizes
  return out + _learner_problems(config)


def _raise(problems: List[str], placement_problems: List[str] = ()) -> None:
  if not problems and not placement_problems:
    return
  if not problems:  # only placement: the placement's own message, as it was
    raise PlacementError("\n".join(placement_problems))
  lines = list(problems) + list(placement_problems)
  raise ConfigError("Invalid config:\n  " + "\n  ".join(lines))


def validate_config(config: Any) -> None:
  """Raises :class:`ConfigError` listing every problem :func:`config_problems` finds."""
  _raise(config_problems(config))


# --------------------------------------------------------------------------------------
# What needs the envs and the devices.


def env_settings(section: ml_collections.ConfigDict,
                 fallback: ml_collections.ConfigDict) -> Tuple[str, Dict[str, Any]]:
  """(env_id, overrides) of an env section; eval falls back to the train env's.

  Falling back drops the train env's training-only keys (reset curricula, see
  ``registry.eval_overrides``), so evaluation measures the task as specified.
  """
  env_id = section.get("env_id", None) or fallback.env_id
  overrides = section.get("overrides", None)
  inherited = overrides is None and section is not fallback
  if overrides is None:
    overrides = fallback.get("overrides", None)
  if isinstance(overrides, ml_collections.ConfigDict):
    overrides = overrides.to_dict()
  overrides = dict(overrides or {})
  if inherited:
    overrides = envs_registry.eval_overrides(env_id, overrides)
  return env_id, overrides


def make_env(config: Any, section: str) -> Any:
  """The unbatched env of ``config.env.<section>`` ("train" or "eval").

  Raises:
    ConfigError: unknown env id or env key, with a hint where the keys came from.
  """
  try:
    env_id, overrides = env_settings(config.env[section], config.env.train)
    return panda_rl.make(env_id, **overrides)
  except ValueError as e:
    hint = ""
    if "unknown config key" in str(e):
      hint = (f"\n(The keys come from config env.{section}.overrides; when switching "
              f"env_id, replace them, e.g. --config.env.{section}.overrides={{}}.)")
    raise ConfigError(f"env.{section}: {e}{hint}") from None


def _obs_spec(env: Any) -> Any:
  return jax.eval_shape(env.unwrapped.reset, jax.random.PRNGKey(0)).obs


def _env_pair_problems(train_env: Any, eval_env: Any, obs_t: Any) -> List[str]:
  eval_obs_t = _obs_spec(eval_env)
  same = (jax.tree.structure(obs_t) == jax.tree.structure(eval_obs_t) and all(
      a.shape == b.shape and a.dtype == b.dtype
      for a, b in zip(jax.tree.leaves(obs_t), jax.tree.leaves(eval_obs_t))))
  if same and train_env.action_size == eval_env.action_size:
    return []
  return ["the evaluation env's observations/actions do not match the training env's: "
          f"obs {eval_obs_t} vs {obs_t}, action size {eval_env.action_size} vs "
          f"{train_env.action_size}"]


def _noise_dim_problems(config: Any, action_size: int) -> List[str]:
  dims = tuple(config.rollout.get("noise_correlation_dims", ()) or ())
  beyond = [d for d in dims if d >= action_size]
  if not beyond:
    return []
  return [f"rollout.noise_correlation_dims={dims} names action dimension(s) {beyond}, but "
          f"the env's actions have {action_size} (dimensions 0-{action_size - 1})"]


def _policy_dim_problems(config: Any, action_size: int) -> List[str]:
  """actor.model's per-dimension settings (mean_bound, min_log_std) against the actions."""
  from panda_rl.networks import mean_bounds, per_dim

  out = []
  for check in (lambda: mean_bounds(config.actor.model, action_size),
                lambda: per_dim(config.actor.model, "min_log_std", action_size)):
    try:
      check()
    except (TypeError, ValueError) as e:
      out.append(str(e))
  return out


def _reset_phase_problems(config: Any, env: Any, algorithm: agents.Algorithm) -> List[str]:
  phases = config.env.train.get("reset_phases", 1)
  if phases == 1:
    return []
  if not _is_int(phases) or phases < 1:
    return [f"env.train.reset_phases must be an integer >= 1, got {phases!r}"]
  if algorithm.fresh_envs:
    return [f"env.train.reset_phases={phases}: {config.algorithm.adv_type} starts every "
            "rollout from freshly reset envs, so there are no episodes to stagger; use 1"]
  length = env.unwrapped.config.get("episode_length", None)
  if length is None or phases > length:
    return [f"env.train.reset_phases={phases} must be at most the env's episode_length "
            f"({length})"]
  return []


def _seed_problems(config: Any, placement: placement_lib.Placement) -> List[str]:
  """Several seeds are one vmapped program: the collocated placement only."""
  seeds = num_seeds(config)
  if seeds == 1 or placement.single_device or placement.collocated:
    return []
  return [f"runner.num_seeds={seeds} trains the seeds in one program and needs the "
          "collocated placement (env, rollout and actor on the same devices, e.g. "
          "cluster.component_placement='env,rollout,actor:all'), got "
          f"cluster.component_placement={placement.spec!r}; use runner.num_seeds=1 or a "
          "collocated placement"]


class Setup(NamedTuple):
  """What :func:`check` built: the algorithm, the unbatched envs, the placement."""

  algorithm: agents.Algorithm
  env: Any
  eval_env: Any
  placement: placement_lib.Placement
  obs_spec: Any


def check(config: Any, devices: Optional[Any] = None) -> Setup:
  """Validates everything about ``config`` before anything compiles.

  Starts ``jax.distributed`` for ``cluster.num_nodes > 1`` (placement ranges are global).

  Raises:
    ConfigError (PlacementError when only the placement is wrong), listing every problem.
  """
  problems = config_problems(config)
  if any("section" in p for p in problems):
    _raise(problems)
  # Before anything touches a JAX backend (building an env does): jax.distributed must start
  # first, and placement ranges are global device ids.
  placement_lib.initialize_distributed(config)
  envs = {}
  for section in ("train", "eval"):
    try:
      envs[section] = make_env(config, section)
    except ConfigError as e:
      problems.append(str(e))
  if "train" in envs and "eval" in envs:
    obs_spec = _obs_spec(envs["train"])  # traced once: the pair check and the trainer
    problems += _env_pair_problems(envs["train"], envs["eval"], obs_spec)
  _raise(problems)  # the algorithm and placement checks below read these fields
  algorithm = agents.make(config)
  problems += algorithm.env_problems(config, envs["train"])
  problems += _noise_dim_problems(config, envs["train"].action_size)
  problems += _policy_dim_problems(config, envs["train"].action_size)
  problems += _reset_phase_problems(config, envs["train"], algorithm)
  try:
    placement = placement_lib.from_config(config, devices, stage_block=algorithm.stage_block)
    placement_problems = []
    problems += _seed_problems(config, placement)
  except PlacementError as e:
    placement_problems = [str(e)]
  _raise(problems, placement_problems)
  return Setup(algorithm, envs["train"], envs["eval"], placement, obs_spec)
