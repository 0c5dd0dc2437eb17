"""Batched envs in groups that share their initial state (GRPO's groups).

:class:`GroupAutoResetWrapper` vmaps an env over ``num_envs`` envs split into
``num_envs // group_size`` groups of ``group_size`` (G) consecutive envs: env ``b`` belongs to
group ``b // G``. Every member of a group starts from exactly the same initial state (one
reset, copied G times) and then acts independently. Groups stay aligned:

* a member whose episode ends (terminated or truncated) *waits*: its state is frozen, its
  steps report ``reward = done = 0`` and ``metrics["step_valid"] = 0`` (the learner leaves
  them out of the loss), and its episode totals keep the finished episode's values;
* when every member of a group has finished, the whole group is reset together from one
  fresh shared state (one reset key per group), and ``metrics["group_reset"] = 1`` on all
  its members for that step.

A *round* of a group is the span from one group reset to the next: each member plays exactly
one episode in it (then waits). At a step with ``group_reset == 1``, every member's
``metrics["episode_return"]`` is the return of its episode of the round that just ended,
which is all that group-relative advantages need (see :mod:`panda_rl.agents.grpo`).

The conventions of :class:`~panda_rl.envs.base.AutoResetWrapper` otherwise hold:
``info["final_obs"]`` is the observation the step reached, ``metrics["episode_return" |
"episode_length" | "episode_success_once"]`` are the episode's running totals (the finished
episode's where ``done == 1``), and resets happen inside one batch-level ``lax.cond``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from panda_rl.envs.base import EPISODE_KEYS, Env, EnvState, Wrapper

Array = jax.Array

STEP_VALID = "step_valid"  # 1.0 where the env really stepped (0 while it waits for its group)
GROUP_RESET = "group_reset"  # 1.0 where the env's group was reset after this step
GROUP_KEYS = (STEP_VALID, GROUP_RESET)
# Wrapper-owned info entries, hidden from the wrapped env's step.
_INFO_KEYS = ("rng", "final_obs", "waiting")


class GroupAutoResetWrapper(Wrapper):
  """Batched env whose envs reset in groups of ``group_size`` sharing one initial state.

  See the module docstring. ``reset(key)`` takes ONE key; reset keys for later group resets
  are split from a key carried in ``state.info["rng"]`` (identical within a group), so the
  whole thing stays pure. ``step`` works on any batch of whole groups (consecutive blocks of
  G envs), e.g. one pipeline stage cut with ``rollout.split_stages(..., block=G)``.

  Attributes:
    num_envs: B.
    group_size: G (B must be divisible by it).
    num_groups: B // G.
    episode_keys: the metrics a rollout records per step (:func:`panda_rl.rollout.collect`):
      the episode totals plus ``step_valid`` and ``group_reset``.
  """

  episode_keys = EPISODE_KEYS + GROUP_KEYS

  def __init__(self, env: Env, num_envs: int, group_size: int):
    super().__init__(env)
    self.num_envs, self.group_size = int(num_envs), int(group_size)
    if self.num_envs < 1 or self.group_size < 1:
      raise ValueError(f"num_envs and group_size must be >= 1, got num_envs={num_envs}, "
                       f"group_size={group_size}")
    if self.num_envs % self.group_size:
      raise ValueError(f"num_envs={num_envs} is not divisible by group_size={group_size}: "
                       "the envs are reset in groups of group_size sharing one initial state")
    self.num_groups = self.num_envs // self.group_size

  # -- helpers ---------------------------------------------------------------------------

  def _expand(self, tree: Any) -> Any:
    """[groups, ...] -> [groups * G, ...]: each group's entry copied to its G members."""
    return jax.tree.map(lambda x: jnp.repeat(x, self.group_size, axis=0), tree)

  def _group_all(self, x: Array) -> Array:
    """[b] bool -> [b] bool: True where every member of the env's group is True."""
    return self._expand(jnp.all(x.reshape(-1, self.group_size), axis=1))

  def _fresh_group(self, rng: Array):
    """One group's fresh state from its carried key: (EnvState, next key)."""
    rng, reset_key = jax.random.split(rng)
    return self.env.reset(reset_key), rng

  # -- reset -----------------------------------------------------------------------------

  def reset(self, key: Array) -> EnvState:
    """Fresh groups: one reset per group (keys split from ``key``), copied to its members."""
    return self._reset_jit(key)

  @functools.partial(jax.jit, static_argnums=0)
  def _reset_jit(self, key: Array) -> EnvState:
    # Jitted, so that every leaf is its own buffer (see AutoResetWrapper.reset_batch).
    state, rng = jax.vmap(self._fresh_group)(jax.random.split(key, self.num_groups))
    state, rng = self._expand((state, rng))
    zeros = jnp.zeros_like(state.reward)
    info = dict(state.info, rng=rng, final_obs=state.obs, waiting=zeros)
    metrics = dict(state.metrics, episode_return=zeros, episode_length=zeros,
                   episode_success_once=zeros, step_valid=zeros,
                   group_reset=jnp.ones_like(zeros))
    return state.replace(info=info, metrics=metrics)

  # -- step ------------------------------------------------------------------------------

  def step(self, state: EnvState, action: Array) -> EnvState:
    self.check_action(action)
    nxt = jax.vmap(self._step_one)(state, action)
    waiting = state.info["waiting"] > 0.5
    nxt = jax.vmap(self._hold_waiting)(waiting, state, nxt)
    finished = waiting | (nxt.done > 0.5)
    nxt = nxt.replace(info=dict(nxt.info, waiting=finished.astype(nxt.reward.dtype)))
    group_done = self._group_all(finished)
    # As in AutoResetWrapper: a batch-level cond, so steps where no group finished pay
    # nothing for resets.
    return jax.lax.cond(jnp.any(group_done), self._reset_groups, lambda s, _: s, nxt,
                        group_done)

  def _step_one(self, state: EnvState, action: Array) -> EnvState:
    inner = state.replace(info={k: v for k, v in state.info.items() if k not in _INFO_KEYS},
                          metrics={k: v for k, v in state.metrics.items()
                                   if k not in self.episode_keys})
    nxt = self.env.step(inner, action)
    keep = 1.0 - state.metrics[GROUP_RESET]  # totals restart after the group was reset
    success = nxt.metrics.get("success", jnp.zeros_like(nxt.reward))
    metrics = dict(nxt.metrics,
                   episode_return=state.metrics["episode_return"] * keep + nxt.reward,
                   episode_length=state.metrics["episode_length"] * keep + 1.0,
                   episode_success_once=jnp.maximum(
                       state.metrics["episode_success_once"] * keep, success),
                   step_valid=jnp.ones_like(nxt.reward), group_reset=jnp.zeros_like(nxt.reward))
    info = dict(nxt.info, rng=state.info["rng"], final_obs=nxt.obs,
                waiting=state.info["waiting"])
    return nxt.replace(info=info, metrics=metrics)

  @staticmethod
  def _hold_waiting(waiting: Array, old: EnvState, new: EnvState) -> EnvState:
    """One env: a waiting env keeps its state and reports an empty, invalid step."""
    zero = jnp.zeros_like(old.reward)
    held = old.replace(reward=zero, done=zero, terminated=zero, truncated=zero,
                       metrics=dict(old.metrics, step_valid=zero, group_reset=zero))
    return jax.tree.map(lambda h, n: jnp.where(waiting, h, n), held, new)

  def _reset_groups(self, state: EnvState, group_done: Array) -> EnvState:
    """Resets every group whose members have all finished; [B] batch, [B] bool mask."""
    # The carried key is identical within a group: reset once per group, then copy.
    first = jax.tree.map(lambda x: x[::self.group_size], state.info["rng"])
    fresh, rng = self._expand(jax.vmap(self._fresh_group)(first))

    def one(s: EnvState, f: EnvState, r: Array, done: Array) -> EnvState:
      pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)
      info = dict(pick(f.info, {k: s.info[k] for k in f.info}), rng=pick(r, s.info["rng"]),
                  final_obs=s.info["final_obs"],
                  waiting=jnp.where(done, 0.0, s.info["waiting"]).astype(s.reward.dtype))
      metrics = dict(s.metrics, group_reset=done.astype(s.reward.dtype))
      # reward, flags and the other metrics stay those of the step that was taken.
      return s.replace(data=pick(f.data, s.data), obs=pick(f.obs, s.obs), info=info,
                       metrics=metrics)

    return jax.vmap(one)(state, fresh, rng, group_done)
