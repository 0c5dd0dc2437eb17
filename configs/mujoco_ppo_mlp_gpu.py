"""PPO with an MLP policy on PandaPickCube-v0, sized for one GPU (H100 / H200 class).

The default config (``mujoco_ppo_mlp.py``, 1024 envs for a 2-core CPU) with the batch made
GPU-sized and the same algorithm. ``scripts/benchmark_gpu.sh`` times it to 90% evaluation
success. On a GPU the env step is cheap at any batch up to tens of thousands of envs, so:

* 8 times the envs and half the rollout length: 8192 x 16 = 131,072 env steps per
  iteration (4x the CPU config's), GAE bootstrapping across the cut episodes as before;
* twice the minibatches, of 8,192 samples (CPU: 8 of 4,096), so an iteration takes 64
  gradient steps (CPU: 32) and the samples per gradient step only double;
* the same learning rate, epochs, networks, curriculum and evaluation task.

Not yet run on a GPU (none was lent so far): the sizes are a reasoned start, not a tuned
recipe; BENCHMARKS.md records what a run gives.
"""

import os

from panda_rl.config import load_config_file


def _cpu_config():
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "mujoco_ppo_mlp.py"))


def get_config():
  c = _cpu_config()
  c.env.train.num_envs = 8192  # parallel training envs (CPU config: 1024)
  c.rollout.num_steps = 16  # env steps per env per iteration (CPU: 32); 131,072 per iteration
  c.algorithm.num_minibatches = 16  # minibatches of 8,192 samples (CPU: 8 of 4,096)
  # 100 iterations = 13.1M env steps (the CPU config needed 2.3M for 90%).
  c.runner.max_epochs = 100
  c.runner.val_check_interval = 5  # evaluate every 655k env steps (256 episodes, as on CPU)
  c.runner.save_interval = 25  # checkpoint every 3.3M env steps
  c.runner.logger.experiment_name = "mujoco_ppo_mlp_gpu"  # runs/panda_rl/mujoco_ppo_mlp_gpu
  return c
