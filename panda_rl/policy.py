"""A trained policy as a plain function, loaded from a checkpoint without the training code.

    import panda_rl
    policy = panda_rl.load_policy("runs/panda_rl/mujoco_ppo_mlp")   # run dir, checkpoints
    action = policy(obs)                                            # dir or one step dir

The network is rebuilt from the config JSON saved with the checkpoint, and only the policy
parameters and the observation normaliser are read from disk; optimizer state, value
network and env state are never loaded.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _abstract(tree: Any) -> Any:
  """Saved array metadata -> ShapeDtypeStruct leaves (no sharding: read to host)."""
  def leaf(m):
    return jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype))

  return jax.tree.map(leaf, tree, is_leaf=lambda x: hasattr(x, "shape") and
                      hasattr(x, "dtype"))


def act_fn(networks: Any, normalize: bool, deterministic: bool = True
           ) -> Callable[[Any, Any, Any, Optional[Array]], Array]:
  """THE policy factory: training, evaluation, videos and :func:`load_policy` all use it.

  Args:
    networks: an :class:`~panda_rl.networks.ActorCritic` (only its policy is used).
    normalize: apply the observation normaliser (``algorithm.normalize_obs``).
    deterministic: return the Gaussian mean (evaluation) instead of a sample.

  Returns:
    ``apply(policy_params, normalizer, obs, key=None) -> action``: raw obs [..., D] (or a
    dict of arrays with common leading axes, images included) -> action [..., A] in
    [-1, 1]. Stochastic policies sample with ``key``.
  """
  from panda_rl import networks as networks_lib
  from panda_rl import normalizer as norm_lib

  def apply(policy_params, stats, obs, key=None):
    if normalize:
      obs = norm_lib.normalize(stats, obs)
    mean, log_std = networks.policy_apply(policy_params, obs)
    if deterministic:
      action = mean
    else:
      if key is None:
        raise ValueError("a stochastic policy needs a PRNG key: policy(obs, key)")
      action = networks_lib.gaussian_sample(key, mean, log_std)
    return jnp.clip(action, -1.0, 1.0)

  return apply


def make_policy_apply(config: Any, action_size: int, deterministic: bool = True,
                      ) -> Callable[[Any, Any, Any, Optional[Array]], Array]:
  """:func:`act_fn` of the agent ``config`` describes (its policy network only)."""
  from panda_rl import networks

  agent = networks.make_networks(config.actor.model, action_size, with_value=False)
  return act_fn(agent, bool(config.algorithm.normalize_obs), deterministic)


def _check_seed(seed: Any, count: int, where: Any) -> None:
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and 0 <= seed < count:
    return
  which = "seed must be 0" if count == 1 else f"seed must be one of 0 .. {count - 1}"
  raise ValueError(f"seed={seed!r}: checkpoint {where} holds {count} seed(s) "
                   f"(runner.num_seeds={count}); {which}.")


def load_policy(checkpoint_dir: str | os.PathLike, *, step: Optional[int] = None,
                deterministic: bool = True, seed: int = 0) -> Callable[..., Array]:
  """Loads a jitted ``obs -> action`` function from a training checkpoint.

  Args:
    checkpoint_dir: a run directory (``<log_path>/<project>/<experiment>``), its
      ``checkpoints/`` directory, or one ``checkpoints/<step>`` directory.
    step: which checkpoint (default: the one named by ``checkpoint_dir`` or the latest
      complete one).
    deterministic: True -> the Gaussian mean (evaluation); False -> a sample, and the
      returned function takes a key: ``policy(obs, key)``.
    seed: which seed's policy of a multi-seed checkpoint (``runner.num_seeds = S``: 0 ..
      S - 1; seed k is the run of ``runner.seed + k``); 0 for a 1-seed checkpoint.

  Returns:
    ``policy(obs, key=None) -> action``: obs [..., obs_dim] (one observation or a batch)
    -> action [..., action_size], clipped to [-1, 1]. For dict observations (vision envs)
    pass the env's dict, every leaf with the same leading axes (e.g. ``front`` [B, H, W, 3]
    uint8, ``tcp_pos`` [B, 3], ``instruction`` [B, L]); the network (``actor.model.encoder``)
    is rebuilt from the saved config. The function carries ``.config`` (the saved
    ConfigDict), ``.step``, ``.seed``, ``.num_seeds``, ``.action_size``, ``.apply``,
    ``.params`` and ``.normalizer`` (``policy(obs, key) == apply(params, normalizer, obs,
    key)``, the pure :func:`act_fn`; what an exporter traces with the parameters as
    constants).

  Raises:
    CheckpointError: no usable checkpoint. ValueError: ``seed`` not in 0 .. S - 1.
  """
  config, step, policy_params, stats, count = _read_policy(checkpoint_dir, step, seed)
  action_size = int(policy_params["log_std"].shape[-1])
  apply = make_policy_apply(config, action_size, deterministic)

  jitted = jax.jit(apply)  # parameters are arguments, not constants baked into the program

  def policy(obs, key=None):
    return jitted(policy_params, stats, obs, key)

  # The same function with the parameters as arguments, ``apply(params, normalizer, obs,
  # key=None)``: a program that calls it (evaluation) is then the same for every checkpoint
  # of a config instead of holding one checkpoint's values as constants; an exporter traces
  # it with them as constants.
  policy.config = config
  policy.step = step
  policy.seed = seed
  policy.num_seeds = count
  policy.action_size = action_size
  policy.deterministic = deterministic
  policy.apply = apply
  policy.params = policy_params
  policy.normalizer = stats
  return policy


def _read_policy(checkpoint_dir, step: Optional[int], seed: int):
  """(saved config, step, seed ``seed``'s policy params, its normaliser, seeds saved),
  reading only the policy and normaliser of the checkpoint."""
  from panda_rl import normalizer as norm_lib
  from panda_rl.checkpoint import Checkpointer, CheckpointError, resolve_checkpoint_path
  from panda_rl.checkpoint import restore_subtree
  from panda_rl.config import config_from_dict, num_seeds

  root, named_step = resolve_checkpoint_path(checkpoint_dir)
  ckpt = Checkpointer(root, read_only=True)
  try:
    step = ckpt.resolve_step(step if step is not None else named_step)
    config = config_from_dict(ckpt.restore_config(step))
    saved = ckpt.saved_tree(step)
  finally:
    ckpt.close()
  count = num_seeds(config)
  _check_seed(seed, count, root / str(step))
  try:
    target = {"params": {"policy": _abstract(saved["params"]["policy"])},
              "normalizer": _abstract(saved["normalizer"])}
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"Checkpoint {root / str(step)} has no params.policy / normalizer "
                          f"in its saved state ({e!r}); is it a panda_rl training "
                          "checkpoint?") from e
  restored = restore_subtree(root, step, target)
  if count > 1:  # the checkpoint holds every seed: leaves [S, ...]
    restored = jax.tree.map(lambda x: x[seed], restored)
  policy_params = jax.tree.map(jnp.asarray, restored["params"]["policy"])
  n = restored["normalizer"]
  stats = norm_lib.RunningStats(mean=jax.tree.map(jnp.asarray, n["mean"]),
                                var=jax.tree.map(jnp.asarray, n["var"]),
                                count=jnp.asarray(n["count"]))
  return config, step, policy_params, stats, count
