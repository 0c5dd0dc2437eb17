"""GRPO with an MLP policy on PandaPickCube-v0 (state observations): no critic.

The PPO config (``mujoco_ppo_mlp.py``) with the fields below changed. Envs reset in groups of
``algorithm.group_size`` that share an initial state; a step's advantage is its episode's
return relative to its group (``panda_rl/agents/grpo.py``). Every iteration plays one whole
episode per env from fresh groups, so ``rollout.num_steps`` must be at least the env's
``episode_length``.
"""

import os

from panda_rl.config import load_config_file


def _ppo_config():
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "mujoco_ppo_mlp.py"))


def get_config():
  c = _ppo_config()
  c.algorithm.adv_type = "grpo"  # group-relative advantages; no value network is built
  # 512 envs, half of PPO's: twice the updates per env step. On seed 0 this reached 80% in
  # 3.07M env steps (9.9 min) where 1024 envs needed 8.19M (27 min; BENCHMARKS.md).
  c.env.train.num_envs = 512
  c.algorithm.group_size = 8  # 512 envs = 64 groups of 8 members sharing a start
  c.algorithm.group_std_norm = True  # (R - group mean) / (group std + 1e-4)
  c.algorithm.normalize_advantages = False  # group advantages are normalised already
  c.algorithm.kl_beta = 0.0  # no KL penalty to the initial (random) policy by default
  # A smaller entropy bonus than PPO's 0.02: one advantage per episode is a noisier signal
  # than GAE's per-step one, and at 0.02 the policy's entropy kept rising (BENCHMARKS.md).
  c.algorithm.entropy_coef = 0.005
  # One whole 100-step PandaPickCube-v0 episode per env per iteration (= episode_length).
  c.rollout.num_steps = 100
  # 51,200 samples per iteration in minibatches of 6,400 (PPO: 32,768 in 4,096s).
  c.algorithm.num_minibatches = 8
  # 1.6x PPO's env steps per iteration: 100 iterations = 5.12M env steps.
  c.runner.max_epochs = 100
  c.runner.val_check_interval = 5  # evaluate every 256k env steps (PPO: every 328k)
  c.runner.save_interval = 20  # checkpoint every 1M env steps
  c.runner.logger.experiment_name = "mujoco_grpo_mlp"  # runs/panda_rl/mujoco_grpo_mlp
  return c
