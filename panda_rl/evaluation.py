"""The one evaluation loop: one deterministic episode on each of N envs.

Training's periodic evaluation (:meth:`panda_rl.training.Trainer.evaluate`),
``python -m panda_rl.evaluate`` (:func:`evaluate_policy`) and the video recorder
(:class:`panda_rl.video.VideoRecorder`) all run :func:`run_episodes`:

* env ``i`` starts from ``env.reset(split(key, N)[i])``;
* the unwrapped env is stepped in a batch with no auto-reset (one episode per env needs
  none, which keeps a reset out of every step); envs whose episode already ended keep
  stepping with the others but no longer count;
* an episode's return is the sum of its rewards, its length the number of its steps, its
  success 1 if ``metrics["success"] > 0`` at any of its steps.

Without ``record`` the loop is a ``while_loop`` that stops when every episode has ended
(or after :data:`MAX_EVAL_STEPS`); with ``record`` it is a ``scan`` of ``num_steps`` steps
that also returns ``record(state)`` of every step (the video's frames).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from panda_rl import metrics as M
from panda_rl import program_cache
from panda_rl.envs.base import AutoResetWrapper, Env, EnvState
from panda_rl.envs.sharded import ShardedEnv, shard_step

Array = jax.Array
# A safety cap for the while_loop, in env steps, should an env never end.
MAX_EVAL_STEPS = 100_000


class Episodes(NamedTuple):
  """Per-env results of :func:`run_episodes`, each [N] float32."""

  success: Array
  ret: Array
  length: Array


def single_env(env: Env) -> Env:
  """The env of ONE episode: ``env`` without its (batching, auto-resetting) wrappers."""
  while isinstance(env, (AutoResetWrapper, ShardedEnv)):
    env = env.env
  return env


def _body(env: Env, policy: Callable[[Any], Array], mesh: Optional[Any] = None):
  step = jax.vmap(env.step)
  if mesh is not None:  # each device steps its own envs (see panda_rl.envs.sharded)
    step = shard_step(step, mesh)

  def body(carry):
    env_state, active, ret, length, success = carry
    env_state = step(env_state, policy(env_state.obs))
    live = active.astype(jnp.float32)
    ret = ret + live * env_state.reward
    length = length + live
    ok = env_state.metrics.get("success", jnp.zeros_like(ret))
    success = jnp.maximum(success, live * (ok > 0).astype(jnp.float32))
    return env_state, active & (env_state.done < 0.5), ret, length, success

  return body


def run_episodes(env: Env, policy: Callable[[Any], Array], key: Array, num_envs: int, *,
                 record: Optional[Callable[[EnvState], Any]] = None,
                 num_steps: Optional[int] = None,
                 constrain: Optional[Callable[[Any], Any]] = None
                 ) -> Tuple[Episodes, EnvState, Any]:
  """One episode of ``policy`` (obs [N, ...] -> action [N, A]) on each of ``num_envs`` envs.

  Pure and jittable. Args: ``env`` an unbatched env (wrappers are removed), ``record`` an
  optional ``EnvState [N] -> pytree`` recorded after each of ``num_steps`` steps,
  ``constrain`` an optional placement of the [N] initial env state (e.g.
  :meth:`panda_rl.placement.Placement.batch_constraint`: the envs split over devices; a
  :class:`~panda_rl.placement.BatchSplit` also has each device step its own envs).

  Returns:
    (:class:`Episodes`, the initial [N] env state, the records stacked [num_steps, ...] or
    None without ``record``).
  """
  env = single_env(env)
  initial = jax.vmap(env.reset)(jax.random.split(key, num_envs))
  if constrain is not None:
    initial = constrain(initial)
  zeros = jnp.zeros((num_envs,), jnp.float32)
  carry = (initial, jnp.ones((num_envs,), bool), zeros, zeros, zeros)
  body = _body(env, policy, getattr(constrain, "mesh", None))
  if record is None:
    def cond(c):
      return jnp.any(c[0][1]) & (c[1] < MAX_EVAL_STEPS)

    carry, _ = jax.lax.while_loop(cond, lambda c: (body(c[0]), c[1] + 1),
                                  (carry, jnp.zeros((), jnp.int32)))
    records = None
  else:
    def scan_body(c, _):
      c = body(c)
      return c, record(c[0])

    carry, records = jax.lax.scan(scan_body, carry, None, length=int(num_steps))
  _, _, ret, length, success = carry
  return Episodes(success, ret, length), initial, records


def summary(episodes: Episodes) -> Dict[str, Array]:
  """``eval/*`` means over the episodes."""
  return {M.EVAL_SUCCESS_ONCE: jnp.mean(episodes.success),
          M.EVAL_RETURN: jnp.mean(episodes.ret), M.EVAL_EPISODE_LEN: jnp.mean(episodes.length)}


def local_split(num_envs: int) -> Tuple[Optional[Callable[[Any], Any]], Callable[[Any], Any]]:
  """How an evaluation of ``num_envs`` envs uses this process's devices (e.g. one CPU device
  per core), as training splits its envs: (the placement of the initial env state, split
  over the devices, for :func:`run_episodes`; a function that puts the program's inputs on
  those devices, replicated). On one device, in a multi-process run (whose evaluation runs
  in the trainer) or when ``num_envs`` does not divide over the devices: (None, identity),
  and the program runs on one device."""
  from panda_rl.placement import Placement

  devices = tuple(jax.local_devices())
  if len(devices) == 1 or jax.process_count() > 1 or num_envs % len(devices):
    return None, lambda tree: tree
  everything = tuple(range(len(devices)))
  placement = Placement(devices=devices, num_envs=num_envs,
                        groups={c: everything for c in ("env", "rollout", "actor")})
  replicated = placement.replicated("env")
  return (placement.batch_constraint("env", num_envs),
          lambda tree: jax.device_put(tree, replicated))


def episodes_program(env: Env, policy: Callable[[Any], Array], num_envs: int,
                     settings: Any = None) -> Callable[[Array], Episodes]:
  """Jitted ``key -> Episodes`` of :func:`run_episodes`.

  A policy with ``.params``, ``.normalizer`` and ``.apply(params, normalizer, obs)``
  (``panda_rl.load_policy``'s) gets its parameters as arguments of the program, not as constants in it: every checkpoint of a
  config then runs one program, compiled once (and read from JAX's persistent compilation
  cache by later processes). With ``settings`` (JSON-able: what ``env`` and ``policy`` are
  built from) that program is also kept traced across processes
  (:mod:`panda_rl.program_cache`).
  """
  constrain, put = local_split(num_envs)
  params = getattr(policy, "params", None)
  if params is None or not hasattr(policy, "apply") or not hasattr(policy, "normalizer"):
    run_fn = jax.jit(lambda k: run_episodes(env, policy, k, num_envs, constrain=constrain)[0])
    return lambda k: run_fn(put(k))
  params = put((params, policy.normalizer))

  def episodes(p, k):
    return run_episodes(env, lambda obs: policy.apply(*p, obs), k, num_envs,
                        constrain=constrain)[0]

  run = (jax.jit(episodes) if settings is None else
         program_cache.jit(episodes, "episodes", {"settings": settings, "num_envs": num_envs}))
  return lambda k: run(params, put(k))


def evaluate_policy(env: Env, policy: Callable[[Any], Array], num_episodes: int,
                    key: Array, num_envs: Optional[int] = None,
                    settings: Any = None) -> Dict[str, float]:
  """Runs ``num_episodes`` episodes of ``policy`` in batches of ``num_envs`` (default: all).

  Batch ``i`` uses ``fold_in(key, i)``. ``settings``: see :func:`episodes_program`.

  Returns:
    ``{"eval/success_once", "eval/return", "eval/episode_len", "eval/num_episodes"}``.
  """
  num_episodes = int(num_episodes)
  if num_episodes < 1:
    raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
  batch = min(num_episodes, int(num_envs or num_episodes))
  run = episodes_program(env, policy, batch, settings)
  parts = [jax.device_get(run(jax.random.fold_in(key, i)))
           for i in range(math.ceil(num_episodes / batch))]
  success, ret, length = (np.concatenate(x)[:num_episodes] for x in zip(*parts))
  return {M.EVAL_SUCCESS_ONCE: float(success.mean()), M.EVAL_RETURN: float(ret.mean()),
          M.EVAL_EPISODE_LEN: float(length.mean()), M.EVAL_NUM_EPISODES: num_episodes}
