"""A scripted pick policy (approach, descend, close, lift): the check that the task is real.

It is a pure function of the observation, so it runs vmapped inside a jitted rollout. If it
cannot lift the cube on >= 95% of random resets, the physics or the controller is wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from panda_rl.envs.pick_cube import PandaPickCube


def scripted_action(obs: jax.Array, *, hover: float = 0.06, lift_z: float = 0.25,
                    xy_tol: float = 0.01, z_tol: float = 0.008, gain: float = 10.0,
                    damping: float = 0.0) -> jax.Array:
  """Action [4] for one flat PandaPickCube observation [10]."""
  o = PandaPickCube.obs_dict(obs)
  tcp, cube, opening = o["tcp_pos"], o["cube_pos"], o["gripper_pos"][0]
  dist = jnp.linalg.norm(cube - tcp)
  xy_err = jnp.linalg.norm(cube[:2] - tcp[:2])
  holding = (opening < 0.045) & (dist < 0.02)
  above = xy_err < xy_tol
  at_cube = above & (tcp[2] - cube[2] < z_tol)
  closing = at_cube | holding
  goal = jnp.where(holding, jnp.array([cube[0], cube[1], lift_z]),
                   jnp.where(above, cube, cube + jnp.array([0.0, 0.0, hover])))
  # While closing on the cube, hold position until the fingers have a grip.
  goal = jnp.where(at_cube & ~holding, tcp, goal)
  # With target_mode="accumulate" the env integrates actions into its controller target,
  # which leads the TCP by about (kd / kp) * velocity; damping=0.2 subtracts that lead so
  # the target does not wind up. With target_mode="tcp" (default) no lead builds up.
  xyz = jnp.clip(gain * (goal - tcp - damping * o["tcp_vel"]), -1.0, 1.0)
  grip = jnp.where(closing, 1.0, -1.0)
  return jnp.concatenate([xyz, grip[None]])


def scripted_success_rate(env, num_episodes: int, key: jax.Array,
                          action_noise: float = 0.0) -> dict:
  """Runs one episode per env with the scripted policy; returns success statistics.

  ``action_noise``: std of Gaussian noise added to every action (then clipped to [-1, 1]),
  the way a stochastic policy moves: how robust the grasp is to jittery commands.
  """
  num_steps = env.config.episode_length
  damping = 0.2 if env.config.target_mode == "accumulate" else 0.0
  keys = jax.random.split(key, num_episodes)  # the resets do not depend on the noise
  noise_key = jax.random.fold_in(key, 1)

  @jax.jit
  def run(keys):
    state = jax.vmap(env.reset)(keys)

    def body(carry, step_key):
      state, success_once = carry
      act = jax.vmap(lambda o: scripted_action(o, damping=damping))(state.obs)
      act = jnp.clip(act + action_noise * jax.random.normal(step_key, act.shape), -1.0, 1.0)
      state = jax.vmap(env.step)(state, act)
      lift = state.metrics["reward_terms/lift"]
      return (state, jnp.maximum(success_once, state.metrics["success"])), lift

    (state, success_once), lift = jax.lax.scan(body, (state, jnp.zeros(num_episodes)),
                                               jax.random.split(noise_key, num_steps))
    return success_once, state.metrics["success"], lift

  success_once, final_success, lift = run(keys)
  return {
      "success_once": float(success_once.mean()),
      "final_success": float(final_success.mean()),
      "num_episodes": num_episodes,
      "action_noise": action_noise,
      "max_lift_mean": float(lift.max(axis=0).mean()),
  }
