"""Graded probe envs: tiny problems with a closed-form answer, one learner ability each.

When a learner fails on the real task, these say which part is broken, in seconds:

==================  ==============================  ======================================
env                 tests                           closed form
==================  ==============================  ======================================
ProbeConstant-v0    the value net can fit a const.  V(obs) = 1
ProbeObsReward-v0   the value net reads the obs     V(obs) = obs (obs = +-1)
ProbeDiscount-v0    bootstrapping and discounting   V(first obs) = gamma, V(second obs) = 1
ProbeAction-v0      the policy follows the reward   best action = ``a_star``
ProbeActionObs-v0   the policy reads the obs        best action = obs
==================  ==============================  ======================================

Every probe follows :class:`~panda_rl.envs.base.Env` (pure ``reset(key)`` / ``step(state,
action)`` for ONE env, flat float32 observations, continuous actions clipped to [-1, 1],
``metrics["success"]``, an ``episode_length`` attribute) and ends its episodes by
*termination* after ``episode_length`` steps (no bootstrap from the last observation), so
the closed forms hold for any discount. ``make("ProbeAction-v0", a_star=(0.2, 0.1))``
overrides a field of a probe's ``default_config()``; unknown keys fail.

Success: the value probes (whose reward does not depend on the action) report success 1 at
the end of every episode; the action probes report success when the action is within
``success_radius`` (Euclidean) of the best action.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from panda_rl.envs.base import Env, EnvState

Array = jax.Array


def _check_overrides(name: str, cfg: ml_collections.ConfigDict,
                     overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  """``cfg`` updated by ``overrides``; unknown keys fail with the valid ones listed."""
  unknown = sorted(set(overrides) - set(cfg.keys()))
  if unknown:
    raise ValueError(f"{name}: unknown config key(s) {unknown}; valid keys: {sorted(cfg.keys())}")
  cfg.update(overrides)
  return cfg


class _Probe(Env):
  """Shared machinery: a step counter, termination after ``episode_length`` steps.

  Subclasses set ``_NAME``, ``episode_length``, the sizes, and implement
  ``_first_obs(key) -> obs`` and ``_outcome(obs, t, action) -> (reward, success, next obs)``
  for the observation ``obs`` the action was taken at and the step index ``t`` (0-based).
  The env's data is ``{"obs": the current observation}``.
  """

  _NAME = "Probe"

  def __init__(self, cfg: ml_collections.ConfigDict, overrides: Dict[str, Any]):
    self.config = _check_overrides(self._NAME, cfg, overrides)

  def _first_obs(self, key: Array) -> Array:
    raise NotImplementedError

  def _outcome(self, obs: Array, t: Array, action: Array) -> Tuple[Array, Array, Array]:
    raise NotImplementedError

  def reset(self, key: Array) -> EnvState:
    obs = self._first_obs(key).astype(jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    return EnvState(data={"obs": obs}, obs=obs, reward=zero, done=zero, terminated=zero,
                    truncated=zero, info={"step": jnp.zeros((), jnp.int32)},
                    metrics={"success": zero})

  def step(self, state: EnvState, action: Array) -> EnvState:
    self.check_action(action)
    action = jnp.clip(action, -1.0, 1.0)
    t = state.info["step"]
    reward, success, obs = self._outcome(state.data["obs"], t, action)
    obs = obs.astype(jnp.float32)
    step = t + 1
    terminated = (step >= self.episode_length).astype(jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    return state.replace(data={"obs": obs}, obs=obs, reward=reward.astype(jnp.float32),
                         done=terminated, terminated=terminated, truncated=zero,
                         info=dict(state.info, step=step),
                         metrics={"success": success.astype(jnp.float32)})


def _value_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.action_dim = 1  # the action is ignored; its size is free
  return c


class _ValueProbe(_Probe):
  """The value probes: one observation number, the action ignored (``action_dim`` wide)."""

  @staticmethod
  def default_config() -> ml_collections.ConfigDict:
    return _value_config()

  def __init__(self, **overrides: Any):
    super().__init__(self.default_config(), overrides)

  @property
  def observation_size(self) -> int:
    return 1

  @property
  def action_size(self) -> int:
    return int(self.config.action_dim)


class ProbeConstant(_ValueProbe):
  """ProbeConstant-v0: obs [1] is always 0, reward 1, 1-step episodes.

  Closed form: V(obs) = 1 (the terminal step's reward; nothing to bootstrap). The action is
  ignored. Success 1 at every (final) step.
  """

  _NAME = "ProbeConstant"
  episode_length = 1

  def _first_obs(self, key: Array) -> Array:
    return jnp.zeros((1,))

  def _outcome(self, obs, t, action):
    one = jnp.ones(())
    return one, one, obs


class ProbeObsReward(_ValueProbe):
  """ProbeObsReward-v0: obs [1] is -1 or +1 (equally likely), reward = obs, 1-step episodes.

  Closed form: V(obs) = obs. The action is ignored. Success 1 at every (final) step.
  """

  _NAME = "ProbeObsReward"
  episode_length = 1

  def _first_obs(self, key: Array) -> Array:
    return jnp.where(jax.random.bernoulli(key), 1.0, -1.0)[None]

  def _outcome(self, obs, t, action):
    return obs[0], jnp.ones(()), obs


class ProbeDiscount(_ValueProbe):
  """ProbeDiscount-v0: 2-step episodes; obs [1] is the step index (0, then 1); reward 0
  after the first step and 1 after the second (which terminates).

  Closed form: V(obs=0) = gamma, V(obs=1) = 1. The action is ignored. Success 1 at the
  final step (0 at the first).
  """

  _NAME = "ProbeDiscount"
  episode_length = 2

  def _first_obs(self, key: Array) -> Array:
    return jnp.zeros((1,))

  def _outcome(self, obs, t, action):
    last = (t + 1 >= self.episode_length).astype(jnp.float32)
    # The terminal observation repeats the last one (it is never bootstrapped from).
    nxt = jnp.minimum(t + 1, self.episode_length - 1).astype(jnp.float32)[None]
    return last, last, nxt


class ProbeAction(_Probe):
  """ProbeAction-v0: obs [1] is always 0, reward = -sum((a - a_star)^2), 1-step episodes.

  Closed form: best action ``a_star`` (a config vector in [-1, 1]^A, default (0.5, -0.3));
  the value of the Gaussian policy N(mu, sigma^2) is -|mu - a_star|^2 - sum(sigma^2)
  (ignoring the clip to [-1, 1]). Success: |a - a_star| <= success_radius.
  """

  _NAME = "ProbeAction"
  episode_length = 1

  @staticmethod
  def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.a_star = (0.5, -0.3)  # the best action; its length is the action size
    c.success_radius = 0.1  # success: the action this close (Euclidean) to a_star
    return c

  def __init__(self, **overrides: Any):
    super().__init__(self.default_config(), overrides)
    self.a_star = jnp.asarray(self.config.a_star, jnp.float32).reshape(-1)

  @property
  def observation_size(self) -> int:
    return 1

  @property
  def action_size(self) -> int:
    return int(self.a_star.shape[0])

  def _first_obs(self, key: Array) -> Array:
    return jnp.zeros((1,))

  def _outcome(self, obs, t, action):
    err = action - self.a_star
    success = jnp.linalg.norm(err) <= self.config.success_radius
    return -jnp.sum(err * err), success, obs


class ProbeActionObs(_Probe):
  """ProbeActionObs-v0: obs uniform in [-obs_range, obs_range]^dim, reward = -|a - obs|^2,
  1-step episodes.

  Closed form: best action = obs (the policy must read its input). Success:
  |a - obs| <= success_radius.
  """

  _NAME = "ProbeActionObs"
  episode_length = 1

  @staticmethod
  def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dim = 2  # k: observation and action size
    c.obs_range = 0.8  # obs uniform in [-obs_range, obs_range]^k (inside the action box)
    c.success_radius = 0.1  # success: the action this close (Euclidean) to obs
    return c

  def __init__(self, **overrides: Any):
    super().__init__(self.default_config(), overrides)
    if int(self.config.dim) < 1:
      raise ValueError(f"ProbeActionObs: dim must be >= 1, got {self.config.dim}")

  @property
  def observation_size(self) -> int:
    return int(self.config.dim)

  @property
  def action_size(self) -> int:
    return int(self.config.dim)

  def _first_obs(self, key: Array) -> Array:
    r = self.config.obs_range
    return jax.random.uniform(key, (self.observation_size,), jnp.float32, -r, r)

  def _outcome(self, obs, t, action):
    err = action - obs
    success = jnp.linalg.norm(err) <= self.config.success_radius
    return -jnp.sum(err * err), success, obs

