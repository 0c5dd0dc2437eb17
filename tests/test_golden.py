"""Golden numbers: 3 training iterations of the PPO, GRPO and CNN configs (tiny sizes) and one
evaluation must reproduce the parameters, normaliser and metrics recorded in
``tests/golden/*.npz`` before the core was refactored: bit for bit on the machine that wrote
them; across CPUs to float rounding (XLA:CPU emits other vector code for other instruction
sets, e.g. AVX-512 vs AVX2: measured up to 2.4e-7 absolute after 3 iterations), so the
check is ``allclose`` with RTOL / ATOL below, far inside any change of behaviour.

Regenerate (only when a change of numbers is intended, and say why in the commit):

    python tests/test_golden.py --write
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from panda_rl.config import load_config_file

GOLDEN = Path(__file__).with_name("golden")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ITERATIONS = 3
RTOL, ATOL = 1e-4, 1e-5


def _ppo():
  c = load_config_file(CONFIGS / "mujoco_ppo_mlp.py")
  c.env.train.num_envs = 16
  c.env.train.overrides.episode_length = 12  # episodes end (and auto-reset) in the rollouts
  c.env.eval.num_envs = 4
  c.rollout.num_steps = 8
  c.actor.model.policy_hidden = (32, 32)
  c.actor.model.value_hidden = (32, 32)
  c.algorithm.update_epochs = 2
  c.algorithm.num_minibatches = 4
  return c


def _grpo():
  c = load_config_file(CONFIGS / "mujoco_grpo_mlp.py")
  c.env.train.num_envs = 16
  c.env.train.overrides.episode_length = 10
  c.env.eval.num_envs = 4
  c.rollout.num_steps = 10
  c.actor.model.policy_hidden = (32, 32)
  c.algorithm.group_size = 4
  c.algorithm.update_epochs = 2
  c.algorithm.num_minibatches = 4
  c.algorithm.kl_beta = 0.01
  return c


def _cnn():
  c = load_config_file(CONFIGS / "mujoco_ppo_cnn.py")
  c.env.train.num_envs = 4
  c.env.train.overrides.image_height = 16
  c.env.train.overrides.image_width = 16
  c.env.train.overrides.episode_length = 6
  c.env.eval.num_envs = 2
  c.rollout.num_steps = 8
  c.actor.model.policy_hidden = (16,)
  c.actor.model.value_hidden = (16,)
  c.actor.model.cnn_channels = (4, 8)
  c.actor.model.cnn_kernels = (3, 3)
  c.actor.model.cnn_strides = (2, 2)
  c.actor.model.cnn_features = 8
  c.actor.model.embed_dim = 4
  c.actor.optim.lr_schedule = "constant"  # the golden numbers predate the config's "linear"
  c.algorithm.update_epochs = 1
  c.algorithm.num_minibatches = 2
  return c


CASES = {"ppo": _ppo, "grpo": _grpo, "cnn": _cnn}


def _flat(tree, prefix):
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {prefix + jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def run_case(name):
  """{name: array} of the state after 3 iterations, each iteration's metrics and one eval."""
  from panda_rl.training import Trainer

  trainer = Trainer(CASES[name]())
  state = trainer.init(jax.random.PRNGKey(0))
  out = {}
  for i in range(ITERATIONS):
    state, metrics = trainer.train_iteration(state)
    for k, v in jax.device_get(metrics).items():
      out[f"metrics/{i}/{k}"] = np.asarray(v)
  for k, v in jax.device_get(trainer.evaluate(state, jax.random.PRNGKey(5))).items():
    out[f"eval/{k}"] = np.asarray(v)
  out.update(_flat(state.params, "params"))
  out.update(_flat(state.normalizer, "normalizer"))
  out.update(_flat(state.opt_state, "opt_state"))
  out["env_steps"] = np.asarray(state.env_steps)
  return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
  golden = dict(np.load(GOLDEN / f"{name}.npz"))
  got = run_case(name)
  missing = sorted(set(golden) - set(got))
  assert not missing, f"no longer produced: {missing}"
  differ = [k for k in sorted(golden)
            if not np.allclose(golden[k], got[k], rtol=RTOL, atol=ATOL, equal_nan=True)]
  assert not differ, (f"{len(differ)} of {len(golden)} golden values differ, e.g. " +
                      "; ".join(f"{k}: {golden[k].ravel()[:3]} -> {got[k].ravel()[:3]}"
                                for k in differ[:5]))


if __name__ == "__main__":
  if sys.argv[1:] != ["--write"]:
    sys.exit(__doc__)
  GOLDEN.mkdir(exist_ok=True)
  for case in sorted(CASES):
    np.savez(GOLDEN / f"{case}.npz", **run_case(case))
    print("wrote", GOLDEN / f"{case}.npz")
