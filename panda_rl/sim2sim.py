"""Episodes of a policy in C MuJoCo and in MJX from the same initial states, and their gap.

* :func:`make_c_env` builds the C MuJoCo twin of a registered MJX env id
  (``PandaPickCube-v0`` -> :class:`~panda_rl.envs.pick_cube_c.PandaPickCubeC`,
  ``PandaPickCubeVision-v0`` -> :class:`~panda_rl.envs.pick_cube_vision_c.PandaPickCubeVisionC`).
* :func:`c_episodes` runs one episode on each of N C MuJoCo envs in lockstep (physics env by
  env, the policy and the vision renderer batched over the N envs), from given ``qpos`` or
  from the envs' own random resets.
* :func:`mjx_episodes` runs the one evaluation loop (:func:`panda_rl.evaluation.run_episodes`)
  on the MJX env, recording the TCP; its initial ``qpos`` are what :func:`c_episodes` starts
  from, so both simulators see the same initial states.
* :func:`compare` puts the two together: both success rates and the TCP gap.

A policy is ``obs batch -> action batch`` (``panda_rl.load_policy(...)`` or
:func:`scripted_policy`); episodes are deterministic and end at success-independent task
ends (time limit, cube out of bounds), exactly like evaluation in training.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np

C_ENVS = {
    "PandaPickCube-v0": "panda_rl.envs.pick_cube_c:PandaPickCubeC",
    "PandaPickCubeVision-v0": "panda_rl.envs.pick_cube_vision_c:PandaPickCubeVisionC",
}


class Trajectories(NamedTuple):
  """One episode per env, on the host.

  Attributes:
    success: [N] bool, ``success`` at any step of the episode.
    length: [N] int, steps until the episode ended.
    tcp: [T, N, 3] TCP position after each step (frozen after the episode's end).
    target: [T, N, 3] the controller target of each step.
    alive: [T, N] bool, the step belongs to the episode.
    step_success: [T, N] bool, ``success`` after each step.
    qpos0: [N, nq] initial states.
  """

  success: np.ndarray
  length: np.ndarray
  tcp: np.ndarray
  target: np.ndarray
  alive: np.ndarray
  step_success: np.ndarray
  qpos0: np.ndarray


def make_c_env(env_id: str, **overrides):
  """The C MuJoCo env of MJX env ``env_id`` with the same overrides."""
  import importlib

  if env_id not in C_ENVS:
    raise ValueError(f"No C MuJoCo version of env {env_id!r}; available: {sorted(C_ENVS)}")
  module, name = C_ENVS[env_id].split(":")
  return getattr(importlib.import_module(module), name)(**overrides)


def scripted_policy() -> Callable[[Any], Any]:
  """The scripted pick policy (:mod:`panda_rl.envs.scripted`): flat obs [N, 10] -> [N, 4]
  (jitted; traceable, so MJX episodes can run it too)."""
  import jax

  from panda_rl.envs.scripted import scripted_action

  return jax.jit(jax.vmap(scripted_action))


def c_episodes(envs: List[Any], policy: Callable[[Any], Any],
               qpos0: Optional[np.ndarray] = None, seed: int = 0,
               on_frame: Optional[Callable[[List[Any]], None]] = None) -> Trajectories:
  """One episode of ``policy`` on each C MuJoCo env, in lockstep.

  Args:
    envs: N envs of one class and config (each owns its MjData).
    policy: obs batch (flat [N, 10] or the vision dict) -> actions [N, 4].
    qpos0: [N, nq] initial states (e.g. from :func:`mjx_episodes`); None: env ``i`` resets
      from its own RNG seeded with ``seed + i``.
    on_frame: called with ``envs`` after the reset and after every step (e.g. to render
      video frames); an env whose episode has ended keeps its last state.
  """
  n, cls = len(envs), type(envs[0])
  flat = np.stack([env.reset_to(qpos0[i], observe=False) if qpos0 is not None
                   else env.reset(seed=seed + i, observe=False)
                   for i, env in enumerate(envs)])
  start = np.stack([env.data.qpos.copy() for env in envs])
  steps = int(envs[0].config.episode_length)
  tcp, target = np.zeros((steps, n, 3)), np.zeros((steps, n, 3))
  alive, step_success = np.zeros((steps, n), bool), np.zeros((steps, n), bool)
  length = np.zeros(n, np.int64)
  live = np.ones(n, bool)
  if on_frame is not None:
    on_frame(envs)
  for t in range(steps):
    if not live.any():
      tcp[t:], target[t:] = tcp[t - 1], target[t - 1]
      break
    actions = np.asarray(policy(cls.observe_batch(envs, flat)))
    for i in np.flatnonzero(live):
      result = envs[i].step(actions[i], observe=False)
      flat[i] = result.obs
      step_success[t, i] = result.metrics["success"] > 0
      length[i] += 1
      alive[t, i] = True
      live[i] = not result.done
    tcp[t] = [env.tcp() for env in envs]
    target[t] = [env.target for env in envs]
    if on_frame is not None:
      on_frame(envs)
  return Trajectories(step_success.any(axis=0), length, tcp, target, alive, step_success,
                      start)


def mjx_episodes(env: Any, policy: Callable[[Any], Any], num_episodes: int, key: Any,
                 batch: int) -> Trajectories:
  """``num_episodes`` MJX episodes in batches; batch ``i`` resets from ``fold_in(key, i)``
  as :func:`panda_rl.evaluation.evaluate_policy` does."""
  import jax

  from panda_rl import evaluation

  env = evaluation.single_env(env)
  steps = int(env.config.episode_length)
  tcp_of = lambda s: env.obs_dict(s.obs)["tcp_pos"]

  def run(k):
    eps, initial, rec = evaluation.run_episodes(
        env, policy, k, batch, num_steps=steps,
        record=lambda s: (tcp_of(s), s.info["target"], s.metrics["success"]))
    return eps.success, eps.length, rec, initial.data.qpos

  run = jax.jit(run)
  parts = [jax.device_get(run(jax.random.fold_in(key, i)))
           for i in range(math.ceil(num_episodes / batch))]
  cut = lambda xs, axis: np.concatenate(xs, axis=axis)
  success = cut([p[0] for p in parts], 0)[:num_episodes] > 0
  length = cut([p[1] for p in parts], 0)[:num_episodes].astype(np.int64)
  tcp = cut([p[2][0] for p in parts], 1)[:, :num_episodes]
  target = cut([p[2][1] for p in parts], 1)[:, :num_episodes]
  qpos0 = cut([p[3] for p in parts], 0)[:num_episodes]
  alive = np.arange(steps)[:, None] < length[None, :]
  step_success = (cut([p[2][2] for p in parts], 1)[:, :num_episodes] > 0) & alive
  return Trajectories(success, length, tcp, target, alive, step_success, qpos0)


def _tracking(tr: Trajectories) -> float:
  """Mean |target - TCP| over the episodes' steps (m): how closely the TCP follows."""
  return float(np.linalg.norm(tr.target - tr.tcp, axis=-1)[tr.alive].mean())


def gap(mjx: Trajectories, c: Trajectories, first_steps: int = 20) -> Dict[str, float]:
  """Success rates and TCP differences of two runs from the same initial states."""
  both = mjx.alive & c.alive
  dist = np.linalg.norm(mjx.tcp - c.tcp, axis=-1)
  early = both.copy()
  early[first_steps:] = False
  s_mjx, s_c = float(mjx.success.mean()), float(c.success.mean())
  return {
      "episodes": int(len(mjx.success)),
      "success_mjx": s_mjx,
      "success_c": s_c,
      "success_ratio": s_c / s_mjx if s_mjx > 0 else float("nan"),
      "both_succeed": float((mjx.success & c.success).mean()),
      "tcp_gap_mean_m": float(dist[both].mean()),
      f"tcp_gap_first{first_steps}_mean_m": float(dist[early].mean()),
      "tracking_mjx_m": _tracking(mjx),
      "tracking_c_m": _tracking(c),
      "length_mjx": float(mjx.length.mean()),
      "length_c": float(c.length.mean()),
  }


def compare(env_id: str, overrides: Dict[str, Any], policy: Callable[[Any], Any],
            num_episodes: int, seed: int = 0, batch: int = 64) -> Dict[str, float]:
  """``policy`` on ``num_episodes`` initial states in MJX and in C MuJoCo: :func:`gap`."""
  import jax

  import panda_rl

  mjx_env = panda_rl.make(env_id, **overrides)
  mjx = mjx_episodes(mjx_env, policy, num_episodes, jax.random.PRNGKey(seed), batch)
  c_parts = []
  for start in range(0, num_episodes, batch):
    qpos = mjx.qpos0[start:start + batch]
    envs = [make_c_env(env_id, **overrides) for _ in range(len(qpos))]
    c_parts.append(c_episodes(envs, policy, qpos0=qpos))
  return gap(mjx, concat(c_parts))


def concat(parts: List[Trajectories]) -> Trajectories:
  """Trajectories of consecutive env batches as one."""
  per_step = ("tcp", "target", "alive", "step_success")  # [T, N, ...]: the env axis is 1
  return Trajectories(*(np.concatenate(xs, axis=1 if name in per_step else 0)
                        for name, xs in zip(Trajectories._fields, zip(*parts))))
