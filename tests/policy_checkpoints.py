"""Policy checkpoints for the deployment tests, written without training: the networks of a
config initialised at random, and an observation normaliser with non-trivial statistics, saved
by the real :class:`panda_rl.checkpoint.Checkpointer` in a run directory's layout, so that
``panda_rl.load_policy`` and the command lines read them like a training run's."""

from pathlib import Path

import jax
import jax.numpy as jnp

import panda_rl
from panda_rl import networks
from panda_rl import normalizer as norm_lib
from panda_rl.checkpoint import Checkpointer
from panda_rl.config import load_config

REPO = Path(__file__).resolve().parents[1]


def write_policy_checkpoint(run_dir, config_name="mujoco_ppo_mlp.py", overrides=(), step=3,
                            seed=0, action_gain=100.0):
  """Writes ``run_dir/checkpoints/<step>``; returns (run_dir, config).

  ``action_gain`` scales the mean head's kernel (initialised small, so that every action
  would be ~0): with it the actions spread over [-1, 1] and some saturate at the clip.
  """
  config = load_config(str(REPO / "configs" / config_name), list(overrides))
  env = panda_rl.make(config.env.train.env_id,
                      **{k: v for k, v in config.env.train.overrides.items()
                         if k not in ("reset_pregrasp_prob", "reset_in_hand_prob")})
  obs = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs
  one = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), obs)
  k_init, k_obs = jax.random.split(jax.random.PRNGKey(seed))
  net = networks.make_networks(config.actor.model, env.action_size, with_value=False)
  params = {"policy": net.init(k_init, one)["policy"]}
  mean = params["policy"]["mean"]
  params["policy"]["mean"] = dict(mean, kernel=mean["kernel"] * action_gain)
  # Statistics of some random observations: a real normaliser changes the actions.
  batch = jax.tree.map(
      lambda x: (jax.random.uniform(k_obs, (64,) + x.shape, minval=-0.5, maxval=1.0) * 3
                 ).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else
      jnp.zeros((64,) + x.shape, x.dtype), one)
  stats = norm_lib.update(norm_lib.init(one), batch)
  with Checkpointer(Path(run_dir) / "checkpoints") as ck:
    ck.save(step, {"params": params, "normalizer": stats}, config)
    ck.wait_until_finished()
  return Path(run_dir), config
