"""The training library: ``Trainer`` (pure init / rollout / learn, their placed programs,
evaluation, policies) and ``train``.

One training iteration, the same for every algorithm (:mod:`panda_rl.agents`)::

    keys = algorithm.iteration_keys(state.key)
    env_state = algorithm.start_rollout(env, state.env_state, keys.reset)
    env_state, traj = rollout(params, normaliser, env_state, keys.rollout)   # lax.scan, T steps
    batch, advantages, metrics = algorithm.make_batch(networks, state, traj, obs)
    normaliser <- the rollout's raw obs; update_epochs x num_minibatches steps of
    algorithm.loss (nested lax.scan); metrics (named in :mod:`panda_rl.metrics`)

Where the pieces run is ``cluster.component_placement``: :mod:`panda_rl.programs` turns the
pure functions of :meth:`Trainer.fns` into the programs of the placement (one program when
collocated). The run loop with logging, evaluation cadence and checkpoints is
:mod:`panda_rl.runner`; notebooks call :func:`train` or :meth:`Trainer.make_train` directly.

Observation normalisation: the rollout acts on obs normalised with the statistics at the
start of the iteration, and the update trains on the same normalised obs, so PPO's ratio is
exactly 1 at the first minibatch. The statistics absorb the iteration's raw obs afterwards
and take effect from the next rollout.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections

from panda_rl import evaluation
from panda_rl import metrics as M
from panda_rl import normalizer as obs_norm
from panda_rl import program_cache
from panda_rl import programs as programs_lib
from panda_rl import rollout as rollout_lib
from panda_rl import seeds as seeds_lib
from panda_rl import validation
from panda_rl.agents import sgd
from panda_rl.config import num_seeds, program_settings
from panda_rl.envs.base import AutoResetWrapper, EnvState
from panda_rl.networks import ActorCritic, gaussian_log_prob, make_networks
from panda_rl.policy import act_fn

Array = jax.Array


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
    ref_params: the algorithm's extra parameters (GRPO: the frozen reference policy);
      None for algorithms without.
  """

  params: Any
  opt_state: Any
  normalizer: Any
  env_state: EnvState
  key: Array
  iteration: Array
  env_steps: Array
  ref_params: Any = None


class Trainer:
  """Builds the algorithm, envs, networks and optimiser from a config (validated once, every
  problem reported together, before compiling) and owns the jitted programs.

  Attributes:
    algorithm: the :class:`~panda_rl.agents.base.Algorithm` of ``algorithm.adv_type``.
    env: the batched (``env.train.num_envs``) training env.
    eval_env: the batched (``env.eval.num_envs``) evaluation env.
    networks: :class:`~panda_rl.networks.ActorCritic` (no value net for value-free algos).
    placement: the validated :class:`~panda_rl.placement.Placement`.
    steps_per_iteration: env steps per training iteration (num_envs * num_steps), per seed.
    num_seeds: ``runner.num_seeds`` = S; with S > 1 the programs' state is S stacked
      states (every leaf [S, ...]; :mod:`panda_rl.seeds`), ``init`` takes [S, 2] keys
      (:meth:`initial_key`) and ``train_iteration`` / ``evaluate`` return [S] metrics.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    setup = validation.check(config)
    self.config, self.algorithm, self.placement = config, setup.algorithm, setup.placement
    alg = config.algorithm
    self.num_steps = int(config.rollout.num_steps)
    self.normalize_obs = bool(alg.normalize_obs)
    self.update_epochs = int(alg.update_epochs)
    self.num_minibatches = int(alg.num_minibatches)
    self.updates_per_iteration = self.update_epochs * self.num_minibatches
    # Batched, and on several env devices stepped per device (Placement.sharded_env).
    self.env = self.placement.sharded_env(
        self.algorithm.wrap_env(setup.env, int(config.env.train.num_envs)))
    self.eval_env = AutoResetWrapper(setup.eval_env, int(config.env.eval.num_envs))
    self.steps_per_iteration = self.env.num_envs * self.num_steps
    self.noise_correlation = rollout_lib.noise_correlation(config.rollout,
                                                           self.env.action_size)
    self.reset_phases = int(config.env.train.get("reset_phases", 1))
    self._obs_spec = setup.obs_spec
    self.networks: ActorCritic = make_networks(config.actor.model, self.env.action_size,
                                               with_value=self.algorithm.needs_value)
    self.lr_schedule = sgd.make_lr_schedule(config)
    self.optimizer = sgd.make_optimizer(config, self.lr_schedule)
    self.num_seeds = num_seeds(config)
    # The jitted init and iteration for the placement (one program when collocated; the
    # seeds vmapped in it). The state is donated: its buffers are reused for the new state.
    self.programs = programs_lib.build(self.fns(), self.placement, num_seeds=self.num_seeds)
    evaluate = self._evaluate_impl if self.num_seeds == 1 else jax.vmap(self._evaluate_impl)
    # Collocated, the evaluation's envs are split over the devices as the training envs
    # are (elsewhere it runs where the parameters are, unsplit, as before).
    self._eval_constraint = (self.placement.batch_constraint("env", self.eval_env.num_envs)
                             if self.placement.collocated else None)
    if self.placement.single_process:  # traced once per machine and config
      self._evaluate = program_cache.jit(evaluate, "train_evaluation",
                                         program_settings(config))
    else:
      self._evaluate = jax.jit(evaluate)

  def fns(self) -> programs_lib.IterationFns:
    """The pure functions of an iteration, for :func:`panda_rl.programs.build`."""
    return programs_lib.IterationFns(
        init=self.init_fn, iteration=self.iteration_fn, keys=self.algorithm.iteration_keys,
        start=self.start_fn if self.algorithm.fresh_envs else None,
        rollout=self.rollout_fn, learn=self.learn_fn, act=self.act_fn,
        value=self.value_fn if self.algorithm.needs_value else None, env=self.env,
        num_steps=self.num_steps, settings=program_settings(self.config),
        noise_correlation=self.noise_correlation)

  # -- state ---------------------------------------------------------------------------

  def initial_key(self, seed: int) -> Array:
    """The key :meth:`init` takes for ``runner.seed = seed``: ``PRNGKey(seed)``, or with S
    seeds the [S, 2] keys of seeds ``seed .. seed + S - 1`` (:func:`panda_rl.seeds.per_seed`)."""
    return seeds_lib.per_seed(jax.random.PRNGKey, int(seed), self.num_seeds)

  def init(self, key: Array) -> TrainState:
    """Fresh training state (placed: env state sharded over the env devices, the rest
    replicated on the actor's); with S seeds from [S, 2] keys, stacked."""
    return self.programs.init(key)

  def fetch(self, tree: Any) -> Any:
    """Host values of device arrays, on every process (all processes call it together)."""
    return self.programs.fetch(tree)

  def to_checkpoint(self, state: TrainState) -> TrainState:
    """The state as a checkpoint holds it (every array reaching every process)."""
    return self.programs.to_checkpoint(state)

  def checkpoint_target(self, key: Array) -> Any:
    """Restore target: :meth:`to_checkpoint`'s shardings; then :meth:`from_checkpoint`."""
    return self.programs.checkpoint_target(key)

  def from_checkpoint(self, state: Any) -> TrainState:
    return self.programs.from_checkpoint(state)

  def abstract_state(self, key: Array) -> Any:
    """``jax.ShapeDtypeStruct``s (with shardings) of :meth:`init`'s state: a restore target."""
    return self.programs.abstract_state(key)

  def init_fn(self, key: Array) -> TrainState:
    """Pure: reset envs, initialise parameters, optimiser and normaliser."""
    k_env, k_params, k_next = jax.random.split(key, 3)
    env_state = self.env.reset(k_env)
    if self.reset_phases > 1:
      env_state = rollout_lib.stagger_episodes(
          env_state, int(self.env.unwrapped.config.episode_length), self.reset_phases)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._obs_spec)
    params = self.networks.init(k_params, zeros)
    return TrainState(params=params, opt_state=self.optimizer.init(params),
                      normalizer=obs_norm.init(self._obs_spec), env_state=env_state,
                      key=k_next, iteration=jnp.zeros((), jnp.int32),
                      env_steps=jnp.zeros((), jnp.int32),
                      ref_params=self.algorithm.init_extra(params))

  def checkpoint_meta(self) -> Dict[str, Any]:
    """Sizes saved beside a checkpoint (read by ``load_policy``)."""
    return {"observation_size": self.env.observation_size,
            "action_size": self.env.action_size}

  # -- acting --------------------------------------------------------------------------

  def _prepare_obs(self, normalizer: obs_norm.RunningStats, obs: Any) -> Any:
    return obs_norm.normalize(normalizer, obs) if self.normalize_obs else obs

  def policy_fn(self, params: Any, normalizer: Any,
                deterministic: bool = True) -> Callable[[Any, Optional[Array]], Array]:
    """A pure ``(obs, key) -> action`` function (jittable; any leading batch shape), from
    the one policy factory :func:`panda_rl.policy.act_fn`. Observations are raw env
    observations; actions are clipped to [-1, 1]."""
    apply = act_fn(self.networks, self.normalize_obs, deterministic)
    return lambda obs, key=None: apply(params["policy"], normalizer, obs, key)

  def make_inference_fn(self, state: TrainState, deterministic: bool = True
                        ) -> Callable[[Any, Optional[Array]], Array]:
    """Jitted ``(obs, key) -> action`` from a training state (parameters copied, so the
    function stays valid after ``state`` is donated to further training)."""
    params, normalizer = jax.tree.map(jnp.copy, (state.params, state.normalizer))
    return jax.jit(self.policy_fn(params, normalizer, deterministic))

  def act_fn(self, params: Any, normalizer: Any, obs: Any, noise: Array):
    """Pure: (action [B, A], log_prob [B], value [B]) with noise [B, A] drawn by the rollout."""
    x = self._prepare_obs(normalizer, obs)
    if self.algorithm.needs_value:  # one pass: a shared encoder runs once for both heads
      mean, log_std, value = self.networks.forward(params, x)
    else:
      mean, log_std = self.networks.policy_apply(params["policy"], x)
    action = mean + jnp.exp(log_std) * noise  # = gaussian_sample, noise drawn outside
    log_prob = gaussian_log_prob(mean, log_std, action)
    if not self.algorithm.needs_value:
      value = jnp.zeros(log_prob.shape, jnp.float32)
    return action, log_prob, value

  def value_fn(self, params: Any, normalizer: Any, obs: Any) -> Array:
    """Pure: V(obs) [B] (algorithms with a value network)."""
    return self.networks.value_fn(params, self._prepare_obs(normalizer, obs))

  # -- the training iteration ----------------------------------------------------------

  def start_fn(self, env_state: EnvState, key: Optional[Array]) -> EnvState:
    """Pure: the env state a rollout starts from (the algorithm's choice)."""
    return self.algorithm.start_rollout(self.env, env_state, key)

  def rollout_fn(self, params: Any, normalizer: Any, env_state: EnvState, key: Array
                 ) -> Tuple[EnvState, rollout_lib.Transition]:
    """Pure: (env state after T steps, Transition [T, B]); k pipeline stages if placed so
    (the result does not depend on k)."""
    act = lambda obs, noise: self.act_fn(params, normalizer, obs, noise)
    value = None
    if self.algorithm.needs_value:
      value = lambda obs: self.value_fn(params, normalizer, obs)
    return rollout_lib.collect(self.env, env_state, key, self.num_steps, act, value,
                               num_stages=self.placement.pipeline_stages,
                               stage_block=self.placement.stage_block,
                               noise_correlation=self.noise_correlation)

  def iteration_fn(self, state: TrainState) -> Tuple[TrainState, Dict[str, Array]]:
    """Pure, unjitted training iteration (see :meth:`train_iteration`)."""
    keys = self.algorithm.iteration_keys(state.key)
    env_state = self.start_fn(state.env_state, keys.reset)
    env_state, traj = self.rollout_fn(state.params, state.normalizer, env_state,
                                      keys.rollout)
    new_state, metrics = self.learn_fn(state, traj, keys.next, keys.update)
    return new_state.replace(env_state=env_state), metrics

  def learn_fn(self, state: TrainState, traj: rollout_lib.Transition, key: Array,
               k_update: Array) -> Tuple[TrainState, Dict[str, Array]]:
    """Pure: batch, normaliser update and the update epochs of one iteration.

    Args:
      state: the state at the start of the iteration (``env_state`` passed through).
      traj: the rollout's Transition [T, B].
      key: the next iteration's key; k_update: the key of this update.
    """
    alg = self.algorithm
    obs = self._prepare_obs(state.normalizer, traj.obs)
    batch, advantages, rollout_metrics = alg.make_batch(self.networks, state, traj, obs)
    normalizer = (obs_norm.update(state.normalizer, traj.obs) if self.normalize_obs
                  else state.normalizer)
    params, opt_state, metrics = sgd.minibatch_epochs(
        lambda p, b, k: alg.loss(p, self.networks, b, k), self.optimizer, self.lr_schedule,
        state.params, state.opt_state, batch, k_update, num_epochs=self.update_epochs,
        num_minibatches=self.num_minibatches,
        first_update=state.iteration * self.updates_per_iteration,
        constrain=self.placement.minibatch_constraint)
    metrics = dict(metrics)
    metrics.update(rollout_metrics)
    metrics.update(M.episode_metrics(traj.done, traj.episode))
    metrics.update(M.reward_term_metrics(traj.terms, alg.valid_steps(traj)))
    new_state = state.replace(params=params, opt_state=opt_state, normalizer=normalizer,
                              key=key, iteration=state.iteration + 1,
                              env_steps=state.env_steps + self.steps_per_iteration)
    return new_state, metrics

  def train_iteration(self, state: TrainState) -> Tuple[TrainState, Dict[str, Array]]:
    """One iteration under the placement: rollout, batch, all epochs x minibatches, metrics.

    ``state`` is donated: do not use it after the call (use the returned state).
    Returns (new state, dict of [] metrics: ``algorithm.iteration_metrics`` plus one
    ``env/reward_terms/<name>`` per reward term of the env).
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
      state = self.init_fn(key)
      return jax.lax.scan(lambda s, _: self.iteration_fn(s), state, None,
                          length=num_iterations)

    return run

  # -- evaluation ----------------------------------------------------------------------

  def evaluate(self, state: TrainState, key: Array) -> Dict[str, Array]:
    """One deterministic (mean-action) episode on each of the ``env.eval.num_envs`` envs
    (:func:`panda_rl.evaluation.run_episodes`).

    Returns ``{"eval/success_once", "eval/return", "eval/episode_len"}``, means over the
    episodes ([] arrays). Jitted; ``state`` is only read. With S seeds: the stacked state,
    [S, 2] keys (seed k's evaluation key at k) and [S] results, vmapped in one program.
    """
    return self._evaluate(state.params, state.normalizer, key)

  def compile_evaluation(self, state: Any, key: Any) -> float:
    """Compiles :meth:`evaluate` ahead of time for a state and key like these (arrays or
    ``jax.ShapeDtypeStruct``s with the same shapes and placements, e.g.
    :meth:`abstract_state`); a later :meth:`evaluate` with such arguments runs that
    program instead of tracing and compiling its own. Nothing is evaluated. Returns the
    seconds it took."""
    t0 = time.perf_counter()
    args = (state.params, state.normalizer, key)
    if isinstance(self._evaluate, program_cache.CachedJit):
      self._evaluate.compile(*args)
    else:
      self._evaluate.lower(*args).compile()
    return time.perf_counter() - t0

  def _evaluate_impl(self, params: Any, normalizer: Any, key: Array) -> Dict[str, Array]:
    policy = self.policy_fn(params, normalizer, deterministic=True)
    episodes, _, _ = evaluation.run_episodes(self.eval_env, policy, key,
                                             self.eval_env.num_envs,
                                             constrain=self._eval_constraint)
    return evaluation.summary(episodes)


def train(config: ml_collections.ConfigDict, num_iterations: Optional[int] = None
          ) -> Tuple[TrainState, List[Dict[str, float]]]:
  """Trains ``num_iterations`` (default ``runner.max_epochs``) iterations; no logging.

  Returns:
    (final TrainState, per-iteration metrics as dicts of Python floats). With
    ``runner.num_seeds = S > 1``: the stacked state and, per metric, a list of S floats.
  """
  trainer = Trainer(config)
  state = trainer.init(trainer.initial_key(config.runner.seed))
  n = config.runner.max_epochs if num_iterations is None else int(num_iterations)
  history = []
  for _ in range(n):
    state, metrics = trainer.train_iteration(state)
    history.append({k: float(v) if trainer.num_seeds == 1 else [float(x) for x in v]
                    for k, v in jax.device_get(metrics).items()})
  return state, history
