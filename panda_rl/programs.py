"""Compiled programs of a training iteration for a placement, built from pure functions.

:func:`build` receives the trainer's pure functions (:class:`IterationFns`) and a
:class:`~panda_rl.placement.Placement`, and returns an object with ``init(key)``,
``abstract_state(key)``, ``iteration(state)`` and ``compile(state)``. It knows nothing of
the trainer or the algorithm beyond those functions.

Programs per iteration:

* env == rollout == actor (collocated): ``fns.iteration`` as ONE jitted program with
  ``in_shardings``/``out_shardings`` (on one device exactly the unsharded program).
* env == rollout != actor: a key program, (an env-restart program for algorithms that start
  every rollout from fresh envs,) one jitted rollout program (scanned over T) on the env
  devices, trajectories ``device_put`` to the actor devices, one jitted update program there.
* env != rollout: the rollout is a Python loop over T steps that dispatches an inference
  program on the rollout devices and an env-step program on the env devices per stage;
  JAX's asynchronous dispatch lets them run concurrently.

Pipelining (``rollout.pipeline_stage_num = k > 1``): the env batch is cut into k stages
(:func:`panda_rl.rollout.split_stages`) so that one stage's physics overlaps another's
inference:

* env and rollout on DIFFERENT devices (disaggregated, hybrid): stage s's ``env.step`` on
  the env devices runs while stage s+1's policy forward runs on the rollout devices (no
  data dependence, separate devices, async dispatch), and the device-to-device copies of
  actions/observations overlap both; the step time tends to max(physics, inference).
* env and rollout on the SAME devices (collocated): each scanned step holds k independent
  act -> step chains in one program. XLA:CPU runs independent operations concurrently on
  the host's cores; XLA:GPU/TPU issue them in one stream, so overlap there is limited to
  what the scheduler interleaves (measure it with ``scripts/benchmark_placement.py``).

Results do not depend on the placement or on k (to float rounding): the exploration noise
is drawn for the whole batch, per-env computations are independent, and only the order of
floating-point reductions (loss means, gradient all-reduce) changes. A test checks it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from panda_rl import program_cache
from panda_rl import rollout as rollout_lib
from panda_rl.placement import Placement
from panda_rl import transfer

Array = jax.Array


class IterationFns(NamedTuple):
  """The pure pieces of a training iteration (what placement needs, nothing more).

  Attributes:
    init: key -> TrainState.
    iteration: TrainState -> (TrainState, metrics): the whole iteration.
    keys: key -> IterationKeys (next, reset or None, rollout, update).
    start: (env_state, reset key) -> env_state at the start of a rollout; None when the
      rollout continues from where the last one stopped.
    rollout: (params, normalizer, env_state, key) -> (env_state, Transition [T, B]).
    learn: (state, traj, next key, update key) -> (state, metrics); ``state.env_state`` is
      passed through untouched (None when it lives on other devices).
    act: (params, normalizer, obs, noise) -> (action, log_prob, value) for one stage.
    value: (params, normalizer, obs) -> V [B]; None for value-free algorithms.
    env: the batched training env (``step``, ``action_size``, ``episode_keys``).
    num_steps: T.
    noise_correlation: the exploration noise's AR(1) coefficient between steps, one number
      or one per action dimension (:func:`panda_rl.rollout.rollout_noise`; 0 = white).
    settings: what the functions are built from (JSON-able, e.g. the config's
      :func:`~panda_rl.config.program_settings`): the one-device iteration is then kept
      traced across processes (:mod:`panda_rl.program_cache`); None: plain ``jax.jit``.
  """

  init: Callable
  iteration: Callable
  keys: Callable
  start: Optional[Callable]
  rollout: Callable
  learn: Callable
  act: Callable
  value: Optional[Callable]
  env: Any
  num_steps: int
  settings: Any = None
  noise_correlation: Any = 0.0


def _with_seed_axis(shardings: Any) -> Any:
  """Per-seed shardings -> those of the stacked state: the seed axis leads, unsharded (a
  replicated leaf stays ``P()``, the sharding an iteration's output has, so that programs
  compiled for the initial state serve every later one)."""
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec) if s.spec else P()),
                      shardings)


class SingleProgram:
  """env == rollout == actor: ``fns.iteration`` as one jitted program.

  ``num_seeds = S > 1``: ``fns.init`` and ``fns.iteration`` ``jax.vmap``ped over a leading
  seed axis of the whole state (init takes [S, 2] keys; :mod:`panda_rl.seeds`); on several
  devices the env batch of every seed is sharded as for one seed.
  """

  def __init__(self, fns: IterationFns, placement: Placement, num_seeds: int = 1):
    self.placement = placement
    init, iteration = fns.init, fns.iteration
    if num_seeds > 1:
      init, iteration = jax.vmap(init), jax.vmap(iteration)
    if placement.single_device:
      self._init = jax.jit(init)
      # The state is donated: its buffers are reused for the new state. The traced
      # program's key holds the state's shapes, so S seeds ([S, ...] leaves) never share
      # one seed's program.
      if fns.settings is not None:
        self._iteration = program_cache.jit(iteration, "iteration", fns.settings,
                                            donate_argnums=(0,))
      else:
        self._iteration = jax.jit(iteration, donate_argnums=0)
      return
    abstract = jax.eval_shape(fns.init, jax.random.PRNGKey(0))  # one seed's state
    self.state_shardings = placement.state_shardings(abstract)
    if num_seeds > 1:
      self.state_shardings = _with_seed_axis(self.state_shardings)
    metrics = placement.replicated("actor")
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    if fns.settings is not None and placement.single_process:
      # Kept traced like the one-device program. The exported program takes its input
      # shardings from the (abstract or concrete) state it is built for; its outputs are
      # pinned here, so every iteration's state comes back placed as the next one expects.
      out_shardings = (self.state_shardings, metrics)

      def placed_iteration(state):
        return jax.lax.with_sharding_constraint(iteration(state), out_shardings)

      self._iteration = program_cache.jit(placed_iteration, "iteration", fns.settings,
                                          donate_argnums=(0,))
      return
    self._iteration = jax.jit(iteration, in_shardings=(self.state_shardings,),
                              out_shardings=(self.state_shardings, metrics), donate_argnums=0)

  def init(self, key: Array) -> Any:
    return self._init(key)

  def abstract_state(self, key: Array) -> Any:
    return jax.eval_shape(self._init, key)

  def iteration(self, state: Any) -> Tuple[Any, Dict[str, Array]]:
    return self._iteration(state)

  def fetch(self, tree: Any) -> Any:
    """Host (numpy) values of ``tree``, on every process (all of them call it)."""
    return jax.device_get(tree)

  def to_checkpoint(self, state: Any) -> Any:
    return state

  def checkpoint_target(self, key: Array) -> Any:
    return self.abstract_state(key)

  def from_checkpoint(self, state: Any) -> Any:
    return state

  def compile(self, state: Any) -> Tuple[Callable, Optional[float]]:
    t0 = time.perf_counter()
    if isinstance(self._iteration, program_cache.CachedJit):
      compiled = self._iteration.compile(state)
    else:
      compiled = self._iteration.lower(state).compile()
    return compiled, time.perf_counter() - t0


class StagedPrograms:
  """Groups on different devices: rollout and update are separate programs joined by
  transfers (:class:`panda_rl.transfer.Mover`: ``jax.device_put`` on one process,
  collective programs across processes; see the module docstring)."""

  def __init__(self, fns: IterationFns, placement: Placement,
               transfer_method: str = "auto"):
    self.fns, self.placement = fns, placement
    self.move = transfer.Mover(transfer_method)
    pl = placement
    abstract = jax.eval_shape(fns.init, jax.random.PRNGKey(0))
    # Init runs wholly on the actor devices (env batch sharded there too), then the env
    # state moves to the env devices; the values do not depend on where they were computed.
    init_sh = pl.state_shardings(abstract, env_component="actor")
    self.state_shardings = pl.state_shardings(abstract)
    self._init_actor = jax.jit(fns.init, out_shardings=init_sh)
    self.rep_a, self.rep_r = pl.replicated("actor"), pl.replicated("rollout")
    self.rep_e = pl.replicated("env")
    self.env_batch, self.roll_batch = pl.batch_sharding("env"), pl.batch_sharding("rollout")
    self.traj_env = pl.batch_sharding("env", axis=1)
    self.traj_actor = pl.batch_sharding("actor", axis=1)
    learner = self.state_shardings.replace(env_state=None)
    env_sh = self.state_shardings.env_state

    self._keys = jax.jit(fns.keys, out_shardings=self.rep_a)
    self._learn = jax.jit(fns.learn, in_shardings=(learner, self.traj_actor, self.rep_a,
                                                   self.rep_a),
                          out_shardings=(learner, self.rep_a), donate_argnums=0)
    self._start = None
    if fns.start is not None:
      self._start = jax.jit(fns.start, in_shardings=(env_sh, self.rep_e),
                            out_shardings=env_sh, donate_argnums=0)
    if pl.fused_rollout:
      self._rollout = jax.jit(fns.rollout,
                              in_shardings=(self.rep_r, self.rep_r, env_sh, self.rep_r),
                              out_shardings=(env_sh, self.traj_env), donate_argnums=2)
    else:
      self._build_stepped()

  def _build_stepped(self) -> None:
    """The per-step programs of a rollout whose env and policy live on different devices."""
    fns, pl = self.fns, self.placement
    k, blk, env = pl.pipeline_stages, pl.stage_block, fns.env
    num_envs, num_steps, action_size = pl.num_envs, fns.num_steps, env.action_size

    def noises(k_rollout):  # [T, B, A], once per rollout (the fused scan's noise exactly)
      return rollout_lib.rollout_noise(k_rollout, num_steps, num_envs, action_size,
                                       fns.noise_correlation)

    def act(params, normalizer, obs, noise, t, stage):
      noise = rollout_lib.split_stages(noise[t], k, block=blk)[stage]
      return fns.act(params, normalizer, obs, noise)

    def bootstrap(params, normalizer, final_obs):
      if fns.value is None:
        return jnp.zeros(jax.tree.leaves(final_obs)[0].shape[:1], jnp.float32)
      return fns.value(params, normalizer, final_obs)

    def env_step(state, action):
      nxt = env.step(state, action)
      return nxt, rollout_lib.env_record(env, state, nxt), (nxt.obs, nxt.info["final_obs"])

    def assemble(records):  # [T][k] of stage records -> [T, B]
      per_step = [rollout_lib.merge_stages(r, block=blk) for r in records]
      return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)

    roll_b, env_b, rep_r = self.roll_batch, self.env_batch, self.rep_r
    self._noises = jax.jit(noises, in_shardings=rep_r, out_shardings=rep_r)
    self._act = jax.jit(act, static_argnums=5, in_shardings=(rep_r, rep_r, roll_b, rep_r, rep_r),
                        out_shardings=roll_b)
    self._bootstrap = jax.jit(bootstrap, in_shardings=(rep_r, rep_r, roll_b),
                              out_shardings=roll_b)
    self._env_step = jax.jit(env_step, in_shardings=(env_b, env_b),
                             out_shardings=env_b, donate_argnums=0)
    self._split_env = jax.jit(lambda s: rollout_lib.split_stages(s, k, block=blk),
                              in_shardings=env_b, out_shardings=env_b)
    self._merge_env = jax.jit(lambda s: rollout_lib.merge_stages(s, block=blk),
                              in_shardings=env_b, out_shardings=env_b)
    self._assemble_env = jax.jit(assemble, in_shardings=env_b, out_shardings=self.traj_env)
    self._assemble_roll = jax.jit(assemble, in_shardings=roll_b,
                                  out_shardings=pl.batch_sharding("rollout", axis=1))

  # -- state ---------------------------------------------------------------------------

  def init(self, key: Array) -> Any:
    state = self._init_actor(key)
    return state.replace(env_state=self.move(state.env_state, self.state_shardings.env_state))

  def abstract_state(self, key: Array) -> Any:
    abstract = jax.eval_shape(self._init_actor, key)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, self.state_shardings)

  def fetch(self, tree: Any) -> Any:
    """Host (numpy) values of ``tree`` on every process (all of them call it)."""
    return transfer.fetch(tree, self.move)

  # Checkpoints hold arrays that reach every process (orbax writes each process's shards):
  # leaves of a group that lives on some processes only are copied out for the save and
  # back after the restore. On one process these are no-ops.

  def to_checkpoint(self, state: Any) -> Any:
    return self.move(state, jax.tree.map(transfer.global_sharding, state))

  def checkpoint_target(self, key: Array) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=transfer.global_sharding(x)),
        self.abstract_state(key))

  def from_checkpoint(self, state: Any) -> Any:
    return self.move(state, self.state_shardings)

  def compile(self, state: Any) -> Tuple[Callable, Optional[float]]:
    # Several programs, compiled on first use: the first iteration's time includes them.
    return self.iteration, None

  # -- the iteration -------------------------------------------------------------------

  def iteration(self, state: Any) -> Tuple[Any, Dict[str, Array]]:
    keys = self._keys(state.key)
    env_state = state.env_state
    if self._start is not None:
      env_state = self._start(env_state, self.move(keys.reset, self.rep_e))
    # params -> rollout devices (a no-op when rollout and actor share their devices).
    params, normalizer, k_rollout = self.move(
        (state.params, state.normalizer, keys.rollout), self.rep_r)
    if self.placement.fused_rollout:
      env_state, traj = self._rollout(params, normalizer, env_state, k_rollout)
    else:
      env_state, traj = self._stepped_rollout(params, normalizer, env_state, k_rollout)
    traj = self.move(traj, self.traj_actor)  # trajectories -> actor devices
    learner, metrics = self._learn(state.replace(env_state=None), traj, keys.next,
                                   keys.update)
    return learner.replace(env_state=env_state), metrics

  def _stepped_rollout(self, params, normalizer, env_state, k_rollout):
    """T steps as a Python loop over (step, stage): inference on the rollout devices, physics
    on the env devices. Dispatch is asynchronous, so stage s's physics runs while stage
    s+1's inference does (pipelining)."""
    k = self.placement.pipeline_stages
    states = list(self._split_env(env_state))
    obs = [self.move(s.obs, self.roll_batch) for s in states]
    noise = self._noises(k_rollout)
    env_records, roll_records = [], []
    for t in range(self.fns.num_steps):
      env_t, roll_t = [], []
      for s in range(k):
        action, log_prob, value = self._act(params, normalizer, obs[s], noise, t, s)
        states[s], record, to_rollout = self._env_step(states[s],
                                                       self.move(action, self.env_batch))
        obs[s], final_obs = self.move(to_rollout, self.roll_batch)
        boot = self._bootstrap(params, normalizer, final_obs)
        env_t.append(record)
        roll_t.append(dict(action=action, log_prob=log_prob, value=value,
                           bootstrap_value=boot))
      env_records.append(env_t)
      roll_records.append(roll_t)
    env_part = self._assemble_env(env_records)
    roll_part = self.move(self._assemble_roll(roll_records), self.traj_env)
    traj = rollout_lib.Transition(**env_part, **roll_part)
    return self._merge_env(states), traj


def build(fns: IterationFns, placement: Placement, transfer_method: str = "auto",
          num_seeds: int = 1) -> Any:
  """The programs that run iterations of ``fns`` under ``placement``; ``transfer_method`` is the
  :class:`panda_rl.transfer.Mover` method between groups ("auto", "device_put",
  "collective"); ``num_seeds > 1``: the seeds vmapped in one program (collocated only)."""
  if placement.single_device or placement.collocated:
    return SingleProgram(fns, placement, num_seeds)
  if num_seeds > 1:
    raise ValueError(f"num_seeds={num_seeds} needs the collocated placement, got "
                     f"{placement.spec!r}")
  return StagedPrograms(fns, placement, transfer_method)
