"""PointReach-v0: a point in [-1, 1]^dim must move to a random goal (pure JAX, no physics).

A probe env for testing the learning code in seconds: if PPO cannot solve this, the bug is
in the algorithm, not in the physics. It has the same interface and conventions as
PandaPickCube-v0 (flat float32 obs, action in [-1, 1]^k, dense reward, ``metrics["success"]``,
time-limit truncation), so everything that trains here runs unchanged on the real task.

Dynamics: ``pos <- clip(pos + action_scale * clip(action, -1, 1), -1, 1)``.
Observation (flat float32 [2 * dim]): ``pos`` (dim), ``goal - pos`` (dim).
Reward: ``sum(reward_scales[n] * term_n)`` over the terms ``distance = -|goal - pos|``
(scale ``distance_weight``) and ``success`` (scale ``success_weight``), i.e.
``distance_weight * (-|goal - pos|) + success_weight * success``; the raw terms are in
``metrics["reward_terms/distance" | "reward_terms/success"]`` (as PandaPickCube-v0's are).
Success at a step: ``|goal - pos| < goal_radius``.
Episode: ``episode_length`` steps, then truncation; with ``terminate_on_success`` the
episode instead terminates (no bootstrap) at the first success, which exercises the
terminated path of the learning code.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from panda_rl.envs.base import REWARD_TERMS_PREFIX, Env, EnvState, scaled_reward_sum


def default_config() -> ml_collections.ConfigDict:
  """All task parameters; ``make("PointReach-v0", key=value)`` overrides them."""
  c = ml_collections.ConfigDict()
  c.dim = 2  # dimension of the point's space (obs is 2 * dim, action is dim)
  c.episode_length = 25  # steps before truncation
  c.action_scale = 0.2  # distance moved per step per unit action, per axis
  c.goal_radius = 0.1  # success when the point is this close to the goal
  c.goal_range = 0.8  # goal uniform in [-goal_range, goal_range]^dim
  c.distance_weight = 1.0  # reward: weight of -|goal - pos|
  c.success_weight = 0.0  # reward: weight of the success indicator
  c.terminate_on_success = False  # end the episode (terminated, not truncated) on success
  return c


class PointReach(Env):
  """A kinematic point that must reach a random goal. See the module docstring."""

  def __init__(self, **overrides: Any):
    cfg = default_config()
    unknown = sorted(set(overrides) - set(cfg.keys()))
    if unknown:
      raise ValueError(f"PointReach: unknown config key(s) {unknown}; "
                       f"valid keys: {sorted(cfg.keys())}")
    cfg.update(overrides)
    if int(cfg.dim) < 1 or int(cfg.episode_length) < 1:
      raise ValueError(f"PointReach: dim and episode_length must be >= 1, got "
                       f"dim={cfg.dim}, episode_length={cfg.episode_length}")
    self.config = cfg
    self.dim = int(cfg.dim)
    self.episode_length = int(cfg.episode_length)
    # Term name -> scale of the reward; summed in this order.
    self.reward_scales = {"distance": float(cfg.distance_weight),
                          "success": float(cfg.success_weight)}

  @property
  def observation_size(self) -> int:
    return 2 * self.dim

  @property
  def action_size(self) -> int:
    return self.dim

  def _obs(self, pos: jax.Array, goal: jax.Array) -> jax.Array:
    return jnp.concatenate([pos, goal - pos]).astype(jnp.float32)

  def _terms(self, pos: jax.Array, goal: jax.Array) -> Dict[str, jax.Array]:
    """The raw reward terms, [] float32 each: ``distance`` (-|goal - pos|), ``success``."""
    distance = jnp.linalg.norm(goal - pos)
    success = (distance < self.config.goal_radius).astype(jnp.float32)
    return {"distance": -distance, "success": success}

  def _metrics(self, terms: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """``reward_terms/<name>`` for every term, and ``success``."""
    metrics = {REWARD_TERMS_PREFIX + name: value for name, value in terms.items()}
    metrics["success"] = terms["success"]
    return metrics

  def reset(self, key: jax.Array) -> EnvState:
    k_pos, k_goal = jax.random.split(key)
    pos = jax.random.uniform(k_pos, (self.dim,), jnp.float32, -1.0, 1.0)
    r = self.config.goal_range
    goal = jax.random.uniform(k_goal, (self.dim,), jnp.float32, -r, r)
    zero = jnp.zeros((), jnp.float32)
    return EnvState(data={"pos": pos, "goal": goal}, obs=self._obs(pos, goal), reward=zero,
                    done=zero, terminated=zero, truncated=zero,
                    info={"step": jnp.zeros((), jnp.int32)},
                    metrics=self._metrics(self._terms(pos, goal)))

  def step(self, state: EnvState, action: jax.Array) -> EnvState:
    pos, goal = state.data["pos"], state.data["goal"]
    move = self.config.action_scale * jnp.clip(action, -1.0, 1.0)
    pos = jnp.clip(pos + move, -1.0, 1.0)
    terms = self._terms(pos, goal)
    metrics = self._metrics(terms)
    reward = scaled_reward_sum(terms, self.reward_scales)
    step = state.info["step"] + 1
    terminated = (metrics["success"] if self.config.terminate_on_success
                  else jnp.zeros((), jnp.float32))
    # Truncation only when the task did not end for its own reason in the same step.
    truncated = (step >= self.episode_length).astype(jnp.float32) * (1.0 - terminated)
    done = jnp.maximum(terminated, truncated)
    return state.replace(data={"pos": pos, "goal": goal}, obs=self._obs(pos, goal),
                         reward=reward.astype(jnp.float32), done=done, terminated=terminated,
                         truncated=truncated, info=dict(state.info, step=step),
                         metrics=metrics)
