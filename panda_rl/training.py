"""The training library: ``Trainer`` (init / train_iteration / evaluate / policy_fn) and ``train``.

One training iteration is one jitted program (:meth:`Trainer.train_iteration`):

    rollout (lax.scan over T steps of B auto-resetting envs)
    -> advantages (selected by ``algorithm.adv_type``: GAE over [T, B] for PPO, group-relative
       episode returns for GRPO, see :mod:`panda_rl.agents.grpo`)
    -> observation-normaliser update
    -> update_epochs x num_minibatches gradient steps (nested lax.scan)
    -> metrics (dict of scalars named in :mod:`panda_rl.metrics`)

Where the pieces run is ``cluster.component_placement`` (:mod:`panda_rl.placement`): the
collocated default keeps the iteration one program (sharded over the devices); other
placements split it into rollout and update programs joined by device-to-device transfers.

The CLI (``python -m panda_rl.train``) adds logging, evaluation cadence and checkpoints on
top; notebooks call :func:`train` or :meth:`Trainer.make_train` directly.

Observation normalisation: the rollout acts on obs normalised with the statistics at the
start of the iteration, and the update trains on the same normalised obs, so PPO's ratio is
exactly 1 at the first minibatch. The statistics absorb the iteration's raw obs afterwards
and take effect from the next rollout.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import panda_rl
from panda_rl import metrics as M
from panda_rl import normalizer as obs_norm
from panda_rl import placement as placement_lib
from panda_rl import rollout as rollout_lib
from panda_rl.agents import gae as gae_lib
from panda_rl.agents import grpo as grpo_lib
from panda_rl.agents import ppo as ppo_lib
from panda_rl.agents import sgd
from panda_rl.config import ConfigError
from panda_rl.envs import registry as envs_registry
from panda_rl.envs.base import AutoResetWrapper, EnvState
from panda_rl.envs.groups import GROUP_RESET, STEP_VALID, GroupAutoResetWrapper
from panda_rl.networks import (CNN_FIELDS, ENCODERS, ActorCritic, activation_fn,
                               gaussian_log_prob, gaussian_sample, make_networks)

Array = jax.Array
ADV_TYPES = ("gae", "grpo")
LR_SCHEDULES = ("constant", "linear", "cosine")
# A safety cap for evaluation's while_loop, in env steps, should an env never end.
MAX_EVAL_STEPS = 100_000


@flax.struct.dataclass
class TrainState:
  """The whole training state; a pytree orbax can save and restore.

  Attributes:
    params: ``{"policy": ..., "value": ...}`` (no "value" for value-free algorithms).
    opt_state: optax state of the optimiser over ``params``.
    normalizer: :class:`panda_rl.normalizer.RunningStats` of the observations.
    env_state: [B] batched training env state (auto-resetting).
    key: PRNG key for the next iteration.
    iteration: [] int32, training iterations done.
    env_steps: [] int32, env steps collected so far (B * T per iteration; int32 because
      JAX runs without 64-bit types by default: exact up to 2.1e9 steps). GRPO counts the
      steps of envs waiting for their group too (they are simulated all the same).
    ref_params: GRPO's frozen reference policy parameters (the initial policy); None for
      algorithms without one.
  """

  params: Any
  opt_state: Any
  normalizer: Any
  env_state: EnvState
  key: Array
  iteration: Array
  env_steps: Array
  ref_params: Any = None


# --- configuration ------------------------------------------------------------------------

def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the fields the training library consumes; raises ValueError listing problems.

  For GRPO, ``rollout.num_steps`` against the env's episode length is checked by
  :class:`Trainer` (it needs the env); ``algorithm.group_size`` must divide
  ``env.train.num_envs``.
  """
  errors: List[str] = []

  def need(ok: bool, msg: str) -> None:
    if not ok:
      errors.append(msg)

  def pos_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1

  alg, optim, model = config.algorithm, config.actor.optim, config.actor.model
  num_envs, num_steps = config.env.train.num_envs, config.rollout.num_steps
  need(alg.adv_type in ADV_TYPES,
       f"algorithm.adv_type must be one of {ADV_TYPES}, got {alg.adv_type!r}")
  for name, value in (("env.train.num_envs", num_envs), ("rollout.num_steps", num_steps),
                      ("env.eval.num_envs", config.env.eval.num_envs),
                      ("algorithm.update_epochs", alg.update_epochs),
                      ("algorithm.num_minibatches", alg.num_minibatches)):
    need(pos_int(value), f"{name} must be an int >= 1, got {value!r}")
  if pos_int(num_envs) and pos_int(num_steps) and pos_int(alg.num_minibatches):
    need((num_envs * num_steps) % alg.num_minibatches == 0,
         f"env.train.num_envs * rollout.num_steps = {num_envs} * {num_steps} = "
         f"{num_envs * num_steps} samples per iteration must be divisible by "
         f"algorithm.num_minibatches = {alg.num_minibatches}")
  need(0.0 < alg.gamma <= 1.0, f"algorithm.gamma must be in (0, 1], got {alg.gamma}")
  need(0.0 <= alg.gae_lambda <= 1.0,
       f"algorithm.gae_lambda must be in [0, 1], got {alg.gae_lambda}")
  need(alg.clip_ratio > 0.0, f"algorithm.clip_ratio must be > 0, got {alg.clip_ratio}")
  need(alg.entropy_coef >= 0.0, f"algorithm.entropy_coef must be >= 0, got {alg.entropy_coef}")
  need(alg.value_coef >= 0.0, f"algorithm.value_coef must be >= 0, got {alg.value_coef}")
  need(optim.lr > 0.0, f"actor.optim.lr must be > 0, got {optim.lr}")
  need(optim.lr_schedule in LR_SCHEDULES,
       f"actor.optim.lr_schedule must be one of {LR_SCHEDULES}, got {optim.lr_schedule!r}")
  need(pos_int(config.runner.max_epochs),
       f"runner.max_epochs must be an int >= 1, got {config.runner.max_epochs!r}")
  try:
    activation_fn(model.activation)
  except ValueError as e:
    errors.append(f"actor.model.activation: {e}")
  encoder = model.get("encoder", "flat")
  need(encoder in ENCODERS,
       f"actor.model.encoder must be one of {list(ENCODERS)}, got {encoder!r}")
  shared = model.get("shared_encoder", False)
  need(isinstance(shared, bool),
       f"actor.model.shared_encoder must be True or False, got {shared!r}")
  if encoder == "cnn":
    missing = [f for f in CNN_FIELDS if f not in model]
    need(not missing, f"actor.model.encoder='cnn' needs the fields actor.model.{missing} "
         "(see configs/mujoco_ppo_cnn.py)")
    if not missing:
      lens = {f: len(tuple(model[f])) for f in ("cnn_channels", "cnn_kernels", "cnn_strides")}
      need(len(set(lens.values())) == 1 and lens["cnn_channels"] >= 1,
           f"actor.model.cnn_channels / cnn_kernels / cnn_strides must have the same length "
           f">= 1 (one entry per conv layer), got lengths {lens}")
  if alg.adv_type == "grpo":
    group_size = alg.get("group_size", None)
    if not pos_int(group_size) or group_size < 2:
      errors.append(f"algorithm.group_size must be an int >= 2 for GRPO (advantages compare "
                    f"the members of a group), got {group_size!r}")
    elif pos_int(num_envs) and num_envs % group_size:
      errors.append(f"env.train.num_envs = {num_envs} must be divisible by "
                    f"algorithm.group_size = {group_size}: GRPO resets the envs in groups of "
                    "group_size that share one initial state")
    kl_beta = alg.get("kl_beta", 0.0)
    need(kl_beta >= 0.0, f"algorithm.kl_beta must be >= 0, got {kl_beta}")
  if errors:
    raise ValueError("Invalid training config:\n  " + "\n  ".join(errors))


def episode_length(env: Any) -> Optional[int]:
  """The env's fixed maximum episode length (time limit), or None if it declares none."""
  env = env.unwrapped
  n = getattr(env, "episode_length", None)
  if n is None and hasattr(env, "config"):
    n = env.config.get("episode_length", None)
  return None if n is None else int(n)


def make_lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate per optimiser update, decaying to 0 over ``runner.max_epochs`` iterations."""
  optim, alg = config.actor.optim, config.algorithm
  total = max(1, config.runner.max_epochs * alg.update_epochs * alg.num_minibatches)
  if optim.lr_schedule == "constant":
    return optax.constant_schedule(optim.lr)
  if optim.lr_schedule == "linear":
    return optax.linear_schedule(optim.lr, 0.0, total)
  if optim.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(optim.lr, total)
  raise ValueError(f"unknown actor.optim.lr_schedule {optim.lr_schedule!r}")


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """Global-norm clip (if ``max_grad_norm > 0``) then Adam with the schedule."""
  optim = config.actor.optim
  adam = optax.adam(schedule, eps=optim.adam_eps)
  if optim.max_grad_norm and optim.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm), adam)
  return adam


def _make_env(env_id: str, overrides: Dict[str, Any], section: str):
  """``panda_rl.make`` with a hint on where unknown env keys came from."""
  try:
    return panda_rl.make(env_id, **overrides)
  except ValueError as e:
    if "unknown config key" not in str(e):
      raise
    raise ConfigError(f"{e}\n(The keys come from config {section}.overrides; when switching "
                      f"env_id, replace them, e.g. --config.{section}.overrides={{}}.)") from None


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


# --- the trainer --------------------------------------------------------------------------

class Trainer:
  """Builds envs, networks and optimiser from a config; owns the jitted programs.

  Attributes:
    env: the batched (``env.train.num_envs``) auto-resetting training env.
    eval_env: the batched (``env.eval.num_envs``) evaluation env.
    networks: :class:`~panda_rl.networks.ActorCritic` (no value net for value-free algos).
    optimizer, lr_schedule: optax objects.
    steps_per_iteration: env steps per training iteration (num_envs * num_steps).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    validate_config(config)
    # cluster.component_placement -> devices, meshes, pipeline stages (validated here, before
    # anything compiles; starts jax.distributed for cluster.num_nodes > 1).
    self.placement = placement_lib.from_config(config)
    self.config = config
    alg = config.algorithm
    self.adv_type = alg.adv_type
    self.num_steps = int(config.rollout.num_steps)
    self.normalize_obs = bool(alg.normalize_obs)
    self.update_epochs = int(alg.update_epochs)
    self.num_minibatches = int(alg.num_minibatches)
    self.updates_per_iteration = self.update_epochs * self.num_minibatches

    train_id, train_over = env_settings(config.env.train, config.env.train)
    eval_id, eval_over = env_settings(config.env.eval, config.env.train)
    if self.adv_type == "grpo":
      self.group_size = int(alg.group_size)
      self.env = GroupAutoResetWrapper(_make_env(train_id, train_over, "env.train"),
                                       int(config.env.train.num_envs), self.group_size)
      self._check_grpo_rollout(train_id)
    else:
      self.env = AutoResetWrapper(_make_env(train_id, train_over, "env.train"),
                                  int(config.env.train.num_envs))
    self.eval_env = AutoResetWrapper(_make_env(eval_id, eval_over, "env.eval"),
                                     int(config.env.eval.num_envs))
    self.steps_per_iteration = self.env.num_envs * self.num_steps
    self._check_envs()

    # The value net exists only for algorithms whose advantages need it.
    self.networks: ActorCritic = make_networks(config.actor.model, self.env.action_size,
                                               with_value=self.adv_type == "gae")
    self.lr_schedule = make_lr_schedule(config)
    self.optimizer = make_optimizer(config, self.lr_schedule)
    if self.adv_type == "grpo":
      self._loss_hparams = dict(clip_ratio=float(alg.clip_ratio),
                                entropy_coef=float(alg.entropy_coef),
                                kl_beta=float(alg.kl_beta),
                                normalize_advantages=bool(alg.normalize_advantages))
      self._group_std_norm = bool(alg.group_std_norm)
    else:
      self._loss_hparams = dict(clip_ratio=float(alg.clip_ratio),
                                value_clip=float(alg.value_clip),
                                value_coef=float(alg.value_coef),
                                entropy_coef=float(alg.entropy_coef),
                                normalize_advantages=bool(alg.normalize_advantages))
    # Read once here, so that later edits of the (mutable) config cannot desynchronise
    # the traced programs from the values they were compiled with.
    self._gae_hparams = dict(gamma=float(alg.gamma), gae_lambda=float(alg.gae_lambda))
    self._reward_scale = float(alg.reward_scale)

    # The jitted init and iteration for the placement (one program when collocated). The
    # state is donated: its buffers (env state, params, optimiser state) are reused for the
    # new state, so a caller must not use the old state after the call.
    self.programs = placement_lib.build_programs(self, self.placement)
    self._evaluate = jax.jit(self._evaluate_impl)

  def _check_grpo_rollout(self, env_id: str) -> None:
    """GRPO needs whole episodes in every rollout (see :mod:`panda_rl.agents.grpo`)."""
    length = episode_length(self.env)
    if length is None:
      raise ConfigError(f"GRPO needs an env with a fixed time limit (an `episode_length`), so "
                        f"that every episode ends within an iteration; {env_id} declares none")
    if self.num_steps < length:
      raise ConfigError(
          f"rollout.num_steps = {self.num_steps} is shorter than {env_id}'s episode_length = "
          f"{length}: GRPO needs whole episodes (each iteration starts fresh groups and only "
          f"episodes that end within it have a return). Set "
          f"--config.rollout.num_steps={length} (or a multiple, for several rounds per "
          f"iteration).")

  def _check_envs(self) -> None:
    obs_t = jax.eval_shape(self.env.unwrapped.reset, jax.random.PRNGKey(0)).obs
    eval_obs_t = jax.eval_shape(self.eval_env.unwrapped.reset, jax.random.PRNGKey(0)).obs
    same = (jax.tree.structure(obs_t) == jax.tree.structure(eval_obs_t) and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree.leaves(obs_t), jax.tree.leaves(eval_obs_t))))
    if not same or self.env.action_size != self.eval_env.action_size:
      raise ValueError("the evaluation env's observations/actions do not match the "
                       f"training env's: obs {eval_obs_t} vs {obs_t}, action size "
                       f"{self.eval_env.action_size} vs {self.env.action_size}")
    self._obs_spec = obs_t

  # -- state ---------------------------------------------------------------------------

  def init(self, key: Array) -> TrainState:
    """Fresh training state: reset envs, initialise parameters, optimiser and normaliser
    (placed: env state sharded over the env devices, the rest replicated on the actor's)."""
    return self.programs.init(key)

  def abstract_state(self, key: Array) -> Any:
    """``jax.ShapeDtypeStruct``s (with shardings) of :meth:`init`'s state: a restore target."""
    return self.programs.abstract_state(key)

  def _init_impl(self, key: Array) -> TrainState:
    k_env, k_params, k_next = jax.random.split(key, 3)
    env_state = self.env.reset(k_env)
    params = self.networks.init(k_params, self._obs_spec_zeros())
    # GRPO's frozen reference policy: the initial policy (a copy, its own buffers).
    ref_params = (jax.tree.map(jnp.copy, params["policy"]) if self.adv_type == "grpo"
                  else None)
    return TrainState(params=params, opt_state=self.optimizer.init(params),
                      normalizer=obs_norm.init(self._obs_spec), env_state=env_state,
                      key=k_next, iteration=jnp.zeros((), jnp.int32),
                      env_steps=jnp.zeros((), jnp.int32), ref_params=ref_params)

  def _obs_spec_zeros(self) -> Any:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._obs_spec)

  # -- acting --------------------------------------------------------------------------

  def _prepare_obs(self, normalizer: obs_norm.RunningStats, obs: Any) -> Any:
    return obs_norm.normalize(normalizer, obs) if self.normalize_obs else obs

  def policy_fn(self, params: Any, normalizer: Any,
                deterministic: bool = True) -> Callable[[Any, Optional[Array]], Array]:
    """A pure ``(obs, key) -> action`` function (jittable; any leading batch shape).

    Observations are raw env observations; actions are clipped to [-1, 1]. With
    ``deterministic`` the Gaussian's mean is returned and ``key`` may be None.
    """

    def act(obs: Any, key: Optional[Array] = None) -> Array:
      mean, log_std = self.networks.policy_apply(params["policy"],
                                                 self._prepare_obs(normalizer, obs))
      action = mean if deterministic else gaussian_sample(key, mean, log_std)
      return jnp.clip(action, -1.0, 1.0)

    return act

  def make_inference_fn(self, state: TrainState, deterministic: bool = True
                        ) -> Callable[[Any, Optional[Array]], Array]:
    """Jitted ``(obs, key) -> action`` from a training state (parameters copied, so the
    function stays valid after ``state`` is donated to further training)."""
    params, normalizer = jax.tree.map(jnp.copy, (state.params, state.normalizer))
    return jax.jit(self.policy_fn(params, normalizer, deterministic))

  def _rollout_fns(self, params: Any, normalizer: Any):
    """act_fn and value_fn for :func:`panda_rl.rollout.collect`."""
    has_value = self.networks.value is not None

    def act(obs, noise):  # noise: [B, A] standard normal, drawn by the rollout
      x = self._prepare_obs(normalizer, obs)
      if has_value:  # one pass: a shared encoder runs once for both heads
        mean, log_std, value = self.networks.forward(params, x)
      else:
        mean, log_std = self.networks.policy_apply(params["policy"], x)
      action = mean + jnp.exp(log_std) * noise  # = gaussian_sample, noise drawn outside
      log_prob = gaussian_log_prob(mean, log_std, action)
      if not has_value:
        value = jnp.zeros(log_prob.shape, jnp.float32)
      return action, log_prob, value

    def value(obs):
      return self.networks.value_fn(params, self._prepare_obs(normalizer, obs))

    return act, (value if has_value else None)

  # -- the training iteration ----------------------------------------------------------

  def _advantages(self, traj: rollout_lib.Transition) -> Tuple[Array, Array]:
    """(advantages [T, B], returns [T, B]) by ``algorithm.adv_type``."""
    if self.adv_type == "gae":
      return gae_lib.compute_gae(traj.reward * self._reward_scale, traj.value,
                                 traj.bootstrap_value, traj.terminated, traj.truncated,
                                 **self._gae_hparams)
    raise NotImplementedError(f"advantages for adv_type={self.adv_type!r}")

  def _loss_fn(self, params, batch, key):
    if self.adv_type == "gae":
      return ppo_lib.ppo_loss(params, self.networks, batch, key, **self._loss_hparams)
    if self.adv_type == "grpo":
      return grpo_lib.grpo_loss(params, self.networks, batch, key, **self._loss_hparams)
    raise NotImplementedError(f"loss for adv_type={self.adv_type!r}")

  def iteration_fn(self, state: TrainState) -> Tuple[TrainState, Dict[str, Array]]:
    """The pure, unjitted training iteration (see :meth:`train_iteration`)."""
    if self.adv_type == "grpo":
      return self._grpo_iteration(state)
    key, k_rollout, k_update = jax.random.split(state.key, 3)
    env_state, traj = self.rollout_fn(state.params, state.normalizer, state.env_state,
                                      k_rollout)
    return self.learn_fn(state, env_state, traj, key, k_update)

  def rollout_fn(self, params: Any, normalizer: Any, env_state: EnvState, key: Array
                 ) -> Tuple[EnvState, rollout_lib.Transition]:
    """The rollout of one iteration: (env state after T steps, Transition [T, B]).

    With ``rollout.pipeline_stage_num = k`` the batch runs as k stages (see
    :mod:`panda_rl.placement`); the result does not depend on k.
    """
    act_fn, value_fn = self._rollout_fns(params, normalizer)
    return rollout_lib.collect(self.env, env_state, key, self.num_steps, act_fn, value_fn,
                               num_stages=self.placement.pipeline_stages,
                               stage_block=self.placement.stage_block)

  def learn_fn(self, state: TrainState, env_state: Optional[EnvState],
               traj: rollout_lib.Transition, key: Array, k_update: Array
               ) -> Tuple[TrainState, Dict[str, Array]]:
    """Advantages, normaliser update and the update epochs of one iteration.

    Args:
      state: the state at the start of the iteration (its env_state is not read).
      env_state: the env state after the rollout, stored in the new state (None when the
        env state lives on other devices, see :class:`panda_rl.placement.StagedPrograms`).
      traj: the rollout's Transition [T, B].
      key: the next iteration's key; k_update: the key of this update.
    """
    advantages, returns = self._advantages(traj)

    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [T, B, ...] -> [T * B, ...]
    batch = ppo_lib.PPOBatch(
        obs=jax.tree.map(flat, self._prepare_obs(state.normalizer, traj.obs)),
        actions=flat(traj.action), old_log_prob=flat(traj.log_prob),
        old_values=flat(traj.value), advantages=flat(advantages), returns=flat(returns))
    normalizer, params, opt_state, train_metrics = self._update(state, traj.obs, batch,
                                                                k_update)

    metrics = dict(train_metrics)
    metrics.update(M.rollout_metrics(traj.reward, advantages))
    metrics.update(M.episode_metrics(traj.done, traj.episode))
    new_state = TrainState(params=params, opt_state=opt_state, normalizer=normalizer,
                           env_state=env_state, key=key, iteration=state.iteration + 1,
                           env_steps=state.env_steps + self.steps_per_iteration)
    return new_state, metrics

  def _update(self, state: TrainState, raw_obs: Any, batch: Any, k_update: Array):
    """Shared by PPO and GRPO: the normaliser absorbs the rollout's raw obs [T, B, ...]
    (effective next iteration), and epochs x minibatches of ``self._loss_fn`` on ``batch``.

    Returns (normalizer, params, opt_state, train_metrics).
    """
    normalizer = (obs_norm.update(state.normalizer, raw_obs) if self.normalize_obs
                  else state.normalizer)
    params, opt_state, train_metrics = sgd.minibatch_epochs(
        self._loss_fn, self.optimizer, self.lr_schedule, state.params, state.opt_state,
        batch, k_update, num_epochs=self.update_epochs, num_minibatches=self.num_minibatches,
        first_update=state.iteration * self.updates_per_iteration,
        constrain=self.placement.minibatch_constraint)
    return normalizer, params, opt_state, train_metrics

  def _grpo_iteration(self, state: TrainState) -> Tuple[TrainState, Dict[str, Array]]:
    """GRPO: fresh groups, whole-episode rollout, group advantages, critic-free update."""
    key, k_reset, k_rollout, k_update = jax.random.split(state.key, 4)
    # Every iteration starts from freshly reset groups, so that each group's round (one
    # episode per member) starts and ends inside this rollout (agents/grpo.py).
    env_state = self.env.reset(k_reset)
    act_fn, _ = self._rollout_fns(state.params, state.normalizer)
    env_state, traj = rollout_lib.collect(self.env, env_state, k_rollout, self.num_steps,
                                          act_fn, None,
                                          num_stages=self.placement.pipeline_stages,
                                          stage_block=self.placement.stage_block)
    advantages, mask, group_stats = grpo_lib.group_advantages(
        traj.episode["episode_return"], traj.episode[GROUP_RESET], traj.episode[STEP_VALID],
        self.group_size, std_norm=self._group_std_norm, reward_scale=self._reward_scale)

    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # [T, B, ...] -> [T * B, ...]
    obs = jax.tree.map(flat, self._prepare_obs(state.normalizer, traj.obs))
    ref_mean, ref_log_std = self.networks.policy_apply(state.ref_params, obs)
    batch = grpo_lib.GRPOBatch(obs=obs, actions=flat(traj.action),
                               old_log_prob=flat(traj.log_prob),
                               advantages=flat(advantages), mask=flat(mask),
                               ref_mean=ref_mean, ref_log_std=ref_log_std)
    # (Waiting steps repeat a frozen final observation; they are rare enough, episodes that
    # end before the time limit, that the statistics take every step's obs, as PPO's do.)
    valid_steps = traj.episode[STEP_VALID]
    normalizer, params, opt_state, train_metrics = self._update(state, traj.obs, batch,
                                                                k_update)

    metrics = dict(train_metrics)
    metrics.update(M.rollout_metrics(traj.reward, advantages, reward_mask=valid_steps,
                                     advantage_mask=mask))
    metrics.update(group_stats)
    metrics.update(M.episode_metrics(traj.done, traj.episode))
    new_state = state.replace(params=params, opt_state=opt_state, normalizer=normalizer,
                              env_state=env_state, key=key, iteration=state.iteration + 1,
                              env_steps=state.env_steps + self.steps_per_iteration)
    return new_state, metrics

  def train_iteration(self, state: TrainState) -> Tuple[TrainState, Dict[str, Array]]:
    """One jitted iteration: rollout, advantages, all epochs x minibatches, metrics.

    ``state`` is donated: do not use it after the call (use the returned state).
    Returns (new state, dict of [] metrics named in
    :func:`panda_rl.metrics.iteration_metrics` of ``algorithm.adv_type``).
    """
    return self.programs.iteration(state)

  def compile_iteration(self, state: TrainState) -> Tuple[Callable, Optional[float]]:
    """Compiles the iteration for ``state`` ahead of time: (callable like
    :meth:`train_iteration`, compile seconds, or None when the placement's programs compile
    on first use)."""
    return self.programs.compile(state)

  def make_train(self, num_iterations: int) -> Callable[[Array], Tuple[TrainState, Any]]:
    """A pure ``key -> (final state, metrics stacked over iterations)`` for the whole run.

    purejaxrl-style: ``jax.jit(trainer.make_train(n))(key)``, or ``jax.vmap`` it over keys
    to train several seeds at once. The placement's shardings are not applied here (jit
    places it); its pipeline stages are.
    """

    def run(key):
      state = self._init_impl(key)
      return jax.lax.scan(lambda s, _: self.iteration_fn(s), state, None,
                          length=num_iterations)

    return run

  # -- evaluation ----------------------------------------------------------------------

  def evaluate(self, state: TrainState, key: Array) -> Dict[str, Array]:
    """One deterministic (mean-action) episode on each of the ``env.eval.num_envs`` envs.

    Returns ``{"eval/success_once", "eval/return", "eval/episode_len"}``, means over the
    episodes ([] arrays). Jitted; ``state`` is only read.
    """
    return self._evaluate(state.params, state.normalizer, key)

  def _evaluate_impl(self, params: Any, normalizer: Any, key: Array) -> Dict[str, Array]:
    policy = self.policy_fn(params, normalizer, deterministic=True)
    # The unwrapped batch is stepped directly: one episode per env needs no auto-reset,
    # which keeps a reset out of every step (compile time and run time).
    env, num_envs = self.eval_env.env, self.eval_env.num_envs
    step = jax.vmap(env.step)
    env_state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    zeros = jnp.zeros((num_envs,), jnp.float32)
    init = (env_state, jnp.ones((num_envs,), bool), zeros, zeros, zeros,
            jnp.zeros((), jnp.int32))

    def cond(carry):
      _, active, _, _, _, t = carry
      return jnp.any(active) & (t < MAX_EVAL_STEPS)

    def body(carry):
      env_state, active, ret, length, success, t = carry
      env_state = step(env_state, policy(env_state.obs))
      # Envs whose episode already ended keep stepping (a batch steps together) but no
      # longer count.
      live = active.astype(jnp.float32)
      ret = ret + live * env_state.reward
      length = length + live
      ok = env_state.metrics.get("success", zeros)
      success = jnp.maximum(success, live * (ok > 0).astype(jnp.float32))
      return env_state, active & (env_state.done < 0.5), ret, length, success, t + 1

    _, _, ret, length, success, _ = jax.lax.while_loop(cond, body, init)
    return {M.EVAL_SUCCESS_ONCE: jnp.mean(success), M.EVAL_RETURN: jnp.mean(ret),
            M.EVAL_EPISODE_LEN: jnp.mean(length)}


def train(config: ml_collections.ConfigDict, num_iterations: Optional[int] = None
          ) -> Tuple[TrainState, List[Dict[str, float]]]:
  """Trains ``num_iterations`` (default ``runner.max_epochs``) iterations; no logging.

  Returns:
    (final TrainState, per-iteration metrics as dicts of Python floats).
  """
  trainer = Trainer(config)
  state = trainer.init(jax.random.PRNGKey(config.runner.seed))
  n = config.runner.max_epochs if num_iterations is None else int(num_iterations)
  history = []
  for _ in range(n):
    state, metrics = trainer.train_iteration(state)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return state, history
