"""The algorithm interface: what the trainer asks of PPO, GRPO or any further learner.

The trainer runs ONE path for every algorithm::

    keys = algorithm.iteration_keys(state.key)
    env_state = algorithm.start_rollout(env, state.env_state, keys.reset)
    env_state, traj = rollout(params, normaliser, env_state, keys.rollout)
    batch, advantages, metrics = algorithm.make_batch(networks, state, traj, obs)
    params = epochs x minibatches of algorithm.loss(params, networks, batch, key)

and never branches on the algorithm's name: everything that differs between algorithms is
an attribute or a method below. :func:`panda_rl.agents.make` maps the config string
``algorithm.adv_type`` to the object (the only place that reads it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax

from panda_rl.envs.base import AutoResetWrapper, Env, EnvState

Array = jax.Array


class IterationKeys(NamedTuple):
  """The PRNG keys of one training iteration (``reset`` is None when unused)."""

  next: Array
  reset: Optional[Array]
  rollout: Array
  update: Array


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """Base class of a learning algorithm (frozen: its hyperparameters are read once).

  Attributes:
    name: the ``algorithm.adv_type`` string.
    needs_value: whether a value network is built and trained.
    reward_scale: multiplies rewards before advantages are estimated.
    iteration_metrics: the names of the metrics one iteration returns (see
      :mod:`panda_rl.metrics`), in a stable order.
    fresh_envs: every rollout starts from freshly reset envs (:meth:`start_rollout`)
      instead of continuing where the last one stopped.
  """

  name: str = ""
  needs_value: bool = True
  fresh_envs: bool = False
  reward_scale: float = 1.0
  iteration_metrics: Tuple[str, ...] = ()

  # -- configuration ---------------------------------------------------------------------

  @staticmethod
  def config_problems(config: Any) -> List[str]:
    """Problems of the ``algorithm.*`` fields this algorithm reads (no env needed)."""
    return []

  def env_problems(self, config: Any, env: Env) -> List[str]:
    """Problems that need the (unbatched) training env, e.g. its episode length."""
    return []

  # -- environment -----------------------------------------------------------------------

  def wrap_env(self, env: Env, num_envs: int) -> Env:
    """The batched training env: auto-resetting, one independent episode per env."""
    return AutoResetWrapper(env, num_envs)

  @property
  def stage_block(self) -> int:
    """Envs kept together in one pipeline stage (see :func:`panda_rl.rollout.split_stages`)."""
    return 1

  def start_rollout(self, env: Env, env_state: EnvState, key: Optional[Array]) -> EnvState:
    """The env state a rollout starts from (default: where the last one stopped)."""
    del env, key
    return env_state

  def valid_steps(self, traj: Any) -> Optional[Array]:
    """[T, B] 1.0 where the env really stepped (None: every step)."""
    del traj
    return None

  # -- learning --------------------------------------------------------------------------

  def iteration_keys(self, key: Array) -> IterationKeys:
    k_next, k_rollout, k_update = jax.random.split(key, 3)
    return IterationKeys(k_next, None, k_rollout, k_update)

  def init_extra(self, params: Any) -> Any:
    """Algorithm state kept in ``TrainState.ref_params`` (None: nothing)."""
    del params
    return None

  def make_batch(self, networks: Any, state: Any, traj: Any, obs: Any
                 ) -> Tuple[Any, Array, Dict[str, Array]]:
    """Training data of one rollout.

    Args:
      networks: the :class:`~panda_rl.networks.ActorCritic`.
      state: the TrainState at the start of the iteration.
      traj: the rollout's :class:`~panda_rl.rollout.Transition` [T, B].
      obs: ``traj.obs`` as the policy saw it (normalised), [T, B, ...].

    Returns:
      (batch with leading axis [T * B], advantages [T, B], ``rollout/*`` metrics).
    """
    raise NotImplementedError

  def loss(self, params: Any, networks: Any, batch: Any, key: Array
           ) -> Tuple[Array, Dict[str, Array]]:
    """The pure loss of one minibatch: (scalar, ``train/*`` metrics)."""
    raise NotImplementedError


def flatten_time(x: Array) -> Array:
  """[T, B, ...] -> [T * B, ...]."""
  return x.reshape((-1,) + x.shape[2:])
