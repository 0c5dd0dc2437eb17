"""The functional environment interface every panda_rl env implements.

An env is an object with pure methods ``reset(key) -> EnvState`` and
``step(state, action) -> EnvState`` that operate on ONE environment; batching is done by
``jax.vmap`` (see :class:`AutoResetWrapper`, which also vmaps). Nothing here keeps hidden
state: the same key and the same actions give the same trajectory.
"""

from __future__ import annotations

import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
Obs = Any  # a flat float32 array for state envs, a dict of arrays for vision envs


@struct.dataclass
class EnvState:
  """State of one environment (add a leading batch axis [B] when vmapped).

  Attributes:
    data: the simulator state (``mjx.Data`` for MJX envs; any pytree for probe envs).
    obs: observation after the last step (or reset).
    reward: [] float32 reward of the last step.
    done: [] float32, 1.0 when the last step ended the episode (terminated or truncated).
    terminated: [] float32, 1.0 when the episode ended for a task reason (no bootstrap).
    truncated: [] float32, 1.0 when the episode hit the time limit (bootstrap the value).
    info: env-carried values (step counter, controller target, ...), a dict of arrays.
    metrics: per-step scalars for logging (reward terms, success, ...), a dict of arrays.
  """

  data: Any
  obs: Obs
  reward: Array
  done: Array
  terminated: Array
  truncated: Array
  info: Dict[str, Any] = struct.field(default_factory=dict)
  metrics: Dict[str, Array] = struct.field(default_factory=dict)


REWARD_TERMS_PREFIX = "reward_terms/"  # metrics key prefix of the raw reward terms


def scaled_reward_sum(terms: Dict[str, Array], scales: Dict[str, float]) -> Array:
  """The reward as ``sum(scales[n] * terms[n])``, in the order of ``scales``.

  Written as ``s0 * t0 + s1 * t1 + ...`` (no leading ``0 +``), so that it is bit-identical
  to the hand-written sum of the same products in the same order.

  Args:
    terms: name -> raw (unscaled) reward term, any shape (all the same).
    scales: name -> scale; every name must be in ``terms``.
  Returns:
    the scaled sum, the terms' shape.
  """
  total = None
  for name, scale in scales.items():
    scaled = scale * terms[name]
    total = scaled if total is None else total + scaled
  return total


class Env:
  """Base class: subclasses implement ``reset``, ``step`` and the size properties."""

  def reset(self, key: Array) -> EnvState:
    raise NotImplementedError

  def step(self, state: EnvState, action: Array) -> EnvState:
    raise NotImplementedError

  @property
  def observation_size(self) -> Any:
    """int for flat observations, or a dict name -> shape for dict observations."""
    raise NotImplementedError

  @property
  def action_size(self) -> int:
    raise NotImplementedError

  @property
  def unwrapped(self) -> "Env":
    return self

  def check_action(self, action: Any) -> None:
    """Fails with a clear message, before anything compiles, on a wrongly shaped action.

    Accepts ``[action_size]`` or any ``[..., action_size]`` batch.
    """
    shape = tuple(getattr(action, "shape", ()))
    if not shape or shape[-1] != self.action_size:
      raise ValueError(
          f"{type(self.unwrapped).__name__}: action must have shape [..., {self.action_size}] "
          f"(the last axis holds the {self.action_size} action components), got shape {shape}")


class Wrapper(Env):
  """Forwards everything to the wrapped env."""

  def __init__(self, env: Env):
    self.env = env

  def reset(self, key: Array) -> EnvState:
    return self.env.reset(key)

  def step(self, state: EnvState, action: Array) -> EnvState:
    return self.env.step(state, action)

  @property
  def observation_size(self):
    return self.env.observation_size

  @property
  def action_size(self) -> int:
    return self.env.action_size

  @property
  def unwrapped(self) -> Env:
    return self.env.unwrapped

  def __getattr__(self, name):
    if name == "env":
      raise AttributeError(name)
    return getattr(self.env, name)


EPISODE_KEYS = ("episode_return", "episode_length", "episode_success_once")


class AutoResetWrapper(Wrapper):
  """Batched env: vmaps ``reset``/``step`` over a leading axis and resets finished envs.

  ``reset(key)`` takes ONE key and a ``num_envs`` given at construction; ``reset_batch``
  takes a [B] array of keys. After ``step``:

  * ``state.obs`` is the observation to act on next: the reset observation for envs whose
    episode just ended (``done == 1``), the ordinary next observation otherwise;
  * ``state.info["final_obs"]`` is the observation reached by the step (before any reset),
    which is what value bootstrapping at truncation needs;
  * ``state.reward / done / terminated / truncated`` describe the step just taken;
  * ``state.metrics["episode_return" | "episode_length" | "episode_success_once"]`` are the
    episode's running totals including this step, i.e. the finished episode's totals where
    ``done == 1``. Average them with ``done`` as weight to log completed episodes.

  Only the envs with ``done == 1`` are reset; every other env's state passes through
  untouched (a test checks this). Reset keys are split from a key carried in
  ``state.info["rng"]``, so the whole thing stays pure.
  """

  def __init__(self, env: Env, num_envs: int):
    super().__init__(env)
    self.num_envs = int(num_envs)
    if self.num_envs < 1:
      raise ValueError(f"num_envs must be >= 1, got {num_envs}")

  def _init_episode(self, state: EnvState, rng: Array) -> EnvState:
    zeros = jnp.zeros_like(state.reward)
    info = dict(state.info, rng=rng, final_obs=state.obs)
    metrics = dict(state.metrics, episode_return=zeros, episode_length=zeros,
                   episode_success_once=zeros)
    return state.replace(info=info, metrics=metrics)

  def reset_batch(self, keys: Array) -> EnvState:
    """Resets one env per key: keys [B, 2] -> EnvState with leading axis [B].

    Jitted, so every leaf is its own buffer (eager vmap can hand back one array for two
    leaves, which breaks buffer donation downstream).
    """
    return self._reset_batch_jit(keys)

  @functools.partial(jax.jit, static_argnums=0)
  def _reset_batch_jit(self, keys: Array) -> EnvState:
    def one(key):
      key, sub = jax.random.split(key)
      return self._init_episode(self.env.reset(sub), key)

    return jax.vmap(one)(keys)

  def reset(self, key: Array) -> EnvState:
    return self.reset_batch(jax.random.split(key, self.num_envs))

  def step(self, state: EnvState, action: Array) -> EnvState:
    self.check_action(action)
    nxt = jax.vmap(self._step_one)(state, action)
    # Reset only when some env finished: at the batch level `cond` runs one branch, so the
    # common no-episode-ended step pays nothing for resets (under an outer vmap it becomes
    # a select, which is still correct).
    return jax.lax.cond(jnp.any(nxt.done > 0.5), self._reset_done, lambda s: s, nxt)

  def _step_one(self, state: EnvState, action: Array) -> EnvState:
    prev_done = state.done
    inner = state.replace(info={k: v for k, v in state.info.items()
                                if k not in ("rng", "final_obs")},
                          metrics={k: v for k, v in state.metrics.items()
                                   if k not in EPISODE_KEYS})
    nxt = self.env.step(inner, action)
    keep = 1.0 - prev_done  # totals restart after the previous step ended an episode
    success = nxt.metrics.get("success", jnp.zeros_like(nxt.reward))
    metrics = dict(nxt.metrics,
                   episode_return=state.metrics["episode_return"] * keep + nxt.reward,
                   episode_length=state.metrics["episode_length"] * keep + 1.0,
                   episode_success_once=jnp.maximum(
                       state.metrics["episode_success_once"] * keep, success))
    info = dict(nxt.info, rng=state.info["rng"], final_obs=nxt.obs)
    return nxt.replace(info=info, metrics=metrics)

  def _reset_done(self, state: EnvState) -> EnvState:
    """Replaces data/obs/info of the envs with done == 1 by a fresh reset; [B] batch."""

    def one(s):
      rng, reset_key = jax.random.split(s.info["rng"])
      fresh = self.env.reset(reset_key)
      done = s.done > 0.5
      pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)
      info = dict(pick(fresh.info, {k: s.info[k] for k in fresh.info}), rng=rng,
                  final_obs=s.info["final_obs"])
      # reward, flags and metrics stay those of the step that was taken.
      return s.replace(data=pick(fresh.data, s.data), obs=pick(fresh.obs, s.obs), info=info)

    return jax.vmap(one)(state)
