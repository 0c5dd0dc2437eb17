"""The scanned collection loop: T steps of a batched, auto-resetting env under a policy.

The loop knows nothing about the algorithm: it calls ``act_fn(obs, noise)`` for the action and
its log-probability and value, and ``value_fn(final_obs)`` for the value needed to bootstrap
truncated episodes (see :mod:`panda_rl.agents.gae`).

The exploration noise is drawn here, for the whole batch at once (``normal(step_key, [B, A])``),
so that the actions do not depend on how the batch is cut: into pipeline stages
(``num_stages``, see below and :mod:`panda_rl.placement`) or over devices. Stage ``s`` of
``k`` holds the envs ``i`` with ``(i // block) % k == s`` (:func:`split_stages`), so each
stage spreads evenly over the devices of a batch-sharded env state and keeps blocks of
``block`` neighbouring envs (e.g. GRPO groups) together.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from panda_rl.envs.base import EPISODE_KEYS, Env, EnvState

Array = jax.Array
# obs [B, ...], noise [B, A] (standard normal) -> (action [B, A], log_prob [B], value [B])
ActFn = Callable[[Any, Array], Tuple[Array, Array, Array]]
ValueFn = Callable[[Any], Array]  # obs [B, ...] -> value [B]
TERM_PREFIX = "reward_terms/"  # env metrics holding raw reward terms (logged as env/...)


class Transition(NamedTuple):
  """One env step of B envs; a rollout stacks them to leading axes [T, B].

  Attributes:
    obs: [T, B, ...] raw observation the action was chosen from (before normalisation).
    action: [T, B, A] action as sampled (the env clips it to [-1, 1]).
    log_prob: [T, B] log-probability of ``action`` under the acting policy.
    value: [T, B] V(obs) (zeros when the algorithm has no value net).
    bootstrap_value: [T, B] V(final_obs): value of the observation the step reached, before
      auto-reset (zeros when the algorithm has no value net).
    reward: [T, B] env reward of the step.
    done: [T, B] 1.0 where the step ended the episode (terminated or truncated).
    terminated: [T, B] 1.0 where it ended for a task reason.
    truncated: [T, B] 1.0 where it hit the time limit.
    episode: dict of [T, B] running episode totals (``EPISODE_KEYS`` of AutoResetWrapper),
      the finished episode's totals where ``done == 1``; plus any further per-step
      bookkeeping the env names in its ``episode_keys`` attribute (e.g.
      :class:`~panda_rl.envs.groups.GroupAutoResetWrapper`'s ``step_valid`` and
      ``group_reset``).
    terms: dict of [T, B] raw reward terms of the step, the env's ``metrics`` named
      ``reward_terms/<name>`` (empty for envs that name none).
  """

  obs: Any
  action: Array
  log_prob: Array
  value: Array
  bootstrap_value: Array
  reward: Array
  done: Array
  terminated: Array
  truncated: Array
  episode: Dict[str, Array]
  terms: Dict[str, Array] = {}


def split_stages(tree: Any, num_stages: int, axis: int = 0, block: int = 1) -> list:
  """Cuts the batch axis ``axis`` (size B) of every leaf into ``num_stages`` stages.

  Stage ``s`` holds the envs ``i`` with ``(i // block) % num_stages == s``, in order. With a
  batch sharded contiguously over D devices (B divisible by D * num_stages * block) every
  stage keeps 1/num_stages of each device's envs: cutting needs no communication.

  Returns:
    a list of ``num_stages`` pytrees whose leaves have B / num_stages on ``axis``.
  """
  if num_stages == 1:
    return [tree]

  def cut(x, s):
    b = x.shape[axis]
    shape = x.shape[:axis] + (b // (num_stages * block), num_stages, block) + x.shape[axis + 1:]
    part = jax.lax.index_in_dim(x.reshape(shape), s, axis + 1, keepdims=False)
    return part.reshape(x.shape[:axis] + (b // num_stages,) + x.shape[axis + 1:])

  return [jax.tree.map(lambda x: cut(x, s), tree) for s in range(num_stages)]


def merge_stages(trees: Sequence[Any], axis: int = 0, block: int = 1) -> Any:
  """Inverse of :func:`split_stages`: a list of stage pytrees -> one pytree of B envs."""
  if len(trees) == 1:
    return trees[0]
  k = len(trees)

  def join(*xs):
    x = xs[0]
    sub = x.shape[axis] // block
    parts = [y.reshape(y.shape[:axis] + (sub, block) + y.shape[axis + 1:]) for y in xs]
    joined = jnp.stack(parts, axis=axis + 1)  # [..., sub, k, block, ...]
    return joined.reshape(x.shape[:axis] + (x.shape[axis] * k,) + x.shape[axis + 1:])

  return jax.tree.map(join, *trees)


def step_noise(key: Array, num_envs: int, action_size: int) -> Array:
  """[B, A] standard-normal exploration noise of one rollout step (whole batch)."""
  return jax.random.normal(key, (num_envs, action_size), jnp.float32)


Correlation = Union[float, Tuple[float, ...]]


def is_white(correlation: Correlation) -> bool:
  """Whether a noise correlation (a number, or one per action dimension) is 0 everywhere."""
  return not np.any(np.asarray(correlation, np.float64))


def noise_correlation(rollout_config: Any, action_size: int) -> Correlation:
  """The exploration noise's AR(1) coefficient from a config's ``rollout`` section:
  ``noise_correlation`` (a number), applied to the action dimensions listed in
  ``noise_correlation_dims`` (empty or absent: all of them). Returns the number when it
  applies to every dimension, else a tuple with one coefficient per action dimension
  (``noise_correlation`` at the listed dimensions, 0 -- white noise -- elsewhere)."""
  rho = float(rollout_config.get("noise_correlation", 0.0))
  dims = tuple(int(d) for d in rollout_config.get("noise_correlation_dims", ()) or ())
  if not dims:
    return rho
  return tuple(rho if i in dims else 0.0 for i in range(int(action_size)))


def rollout_noise(key: Array, num_steps: int, num_envs: int, action_size: int,
                  correlation: Correlation = 0.0) -> Array:
  """[T, B, A] exploration noise of a whole rollout, standard normal at every step.

  ``correlation = rho`` in [0, 1): an AR(1) process over the rollout's steps,
  ``n_0 = w_0``, ``n_t = rho n_{t-1} + sqrt(1 - rho^2) w_t`` with ``w_t`` the white noise of
  step t (:func:`step_noise` of ``split(key, T)[t]``), so each step's noise is still N(0, 1)
  (the policy's log-probabilities are unchanged) while consecutive steps push the same way
  for about ``1 / (1 - rho)`` steps. ``rho = 0`` is the white noise itself. A tuple of A
  coefficients gives each action dimension its own (e.g. only the gripper's correlated).
  """
  white = jnp.stack([step_noise(k, num_envs, action_size)
                     for k in jax.random.split(key, num_steps)])
  if is_white(correlation):
    return white
  rho = jnp.asarray(correlation, jnp.float32)  # [] or [A], broadcast over [B, A]
  innovation = jnp.sqrt(1.0 - rho * rho)

  def ar(prev, w):
    n = rho * prev + innovation * w
    return n, n

  _, rest = jax.lax.scan(ar, white[0], white[1:])
  return jnp.concatenate([white[:1], rest])


def stagger_episodes(env_state: EnvState, episode_length: int, phases: int) -> EnvState:
  """Spreads a freshly reset batch's episodes over ``phases`` start times.

  Env i's step counter starts at ``(i % phases) * (episode_length // phases)``: its first
  episode is that much shorter (truncated, so bootstrapped as usual), and from then on the
  batch resets in ``phases`` groups spread over an episode instead of all at once, so every
  rollout mixes early, middle and late steps of episodes. Every episode still starts from
  the env's own reset; ``phases = 1`` returns the state unchanged.
  """
  if phases <= 1:
    return env_state
  step = env_state.info["step"]
  offset = (jnp.arange(step.shape[0]) % phases) * (episode_length // phases)
  return env_state.replace(info=dict(env_state.info, step=offset.astype(step.dtype)))


def env_record(env: Env, state: EnvState, nxt: EnvState) -> Dict[str, Any]:
  """The env's part of a :class:`Transition` for the step ``state -> nxt``."""
  return dict(obs=state.obs, reward=nxt.reward, done=nxt.done, terminated=nxt.terminated,
              truncated=nxt.truncated,
              episode={k: nxt.metrics[k] for k in getattr(env, "episode_keys", EPISODE_KEYS)},
              terms={k: v for k, v in nxt.metrics.items() if k.startswith(TERM_PREFIX)})


def act_and_step(env: Env, state: EnvState, noise: Array, act_fn: ActFn,
                 value_fn: Optional[ValueFn] = None) -> Tuple[EnvState, Transition]:
  """One step of a batch (or stage) of envs: act, step the env, record the transition."""
  action, log_prob, value = act_fn(state.obs, noise)
  nxt = env.step(state, action)
  if value_fn is None:
    bootstrap = jnp.zeros_like(nxt.reward)
  else:
    bootstrap = value_fn(nxt.info["final_obs"])
  record = Transition(action=action, log_prob=log_prob, value=value,
                      bootstrap_value=bootstrap, **env_record(env, state, nxt))
  return nxt, record


def collect(env: Env, env_state: EnvState, key: Array, num_steps: int, act_fn: ActFn,
            value_fn: Optional[ValueFn] = None, num_stages: int = 1, stage_block: int = 1,
            noise_correlation: Correlation = 0.0) -> Tuple[EnvState, Transition]:
  """Runs ``num_steps`` steps of the batched env ``env`` (an AutoResetWrapper).

  Args:
    env: batched env whose ``step`` sets ``info["final_obs"]`` and the episode totals.
    env_state: [B] batched state to continue from.
    key: PRNG key for the policy's sampling; step t uses ``split(key, num_steps)[t]``.
    num_steps: T.
    act_fn: obs [B, ...], noise [B, A] -> (action [B, A], log_prob [B], value [B]).
    value_fn: obs [B, ...] -> [B] for truncation bootstrapping; None -> zeros.
    num_stages: k; the batch is cut into k stages (:func:`split_stages`) and each step runs
      k independent act -> env.step chains, one per stage, which the compiler may overlap
      (one stage's physics with another stage's inference). The result does not depend
      on k (up to float rounding of differently-sized matmuls).
    stage_block: envs kept together within a stage (see :func:`split_stages`).
    noise_correlation: the AR(1) coefficient of the exploration noise between steps, one
      number or one per action dimension (:func:`rollout_noise`); 0 = white noise.

  Returns:
    (env_state after the last step, Transition with leading axes [T, B]).
  """
  num_envs = jax.tree.leaves(env_state.reward)[0].shape[0]

  white = is_white(noise_correlation)

  def step(states, x: Array):  # x: the step's key (white noise) or its noise [B, A]
    noise = step_noise(x, num_envs, env.action_size) if white else x
    noises = split_stages(noise, num_stages, block=stage_block)
    out = [act_and_step(env, st, nz, act_fn, value_fn) for st, nz in zip(states, noises)]
    return [o[0] for o in out], merge_stages([o[1] for o in out], block=stage_block)

  states = split_stages(env_state, num_stages, block=stage_block)
  xs = (jax.random.split(key, num_steps) if white else
        rollout_noise(key, num_steps, num_envs, env.action_size, noise_correlation))
  states, traj = jax.lax.scan(step, states, xs)
  return merge_stages(states, block=stage_block), traj
