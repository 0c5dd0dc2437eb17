"""PPO with a CNN policy/value on PandaPickCubeVision-v0 (two camera views + proprioception +
the instruction's token ids).

The PPO config (``mujoco_ppo_mlp.py``, including its pre-grasp training curriculum) with the
fields below changed, plus the CNN encoder's fields under ``actor.model``. Every field can be
overridden: ``--config.env.train.overrides.image_height=32``.

Image size: the env's default 64 x 64 (two views). The first conv takes 8 x 8 patches at
stride 8 (64 -> 8 px), so the convs cost about what the 32 x 32 stack of the earlier config
did (4 x 4 patches at stride 4); the cube spans 2-4 pixels in the front view at the home
pose, more in the wrist view. The [T, B] observation buffer each iteration keeps is 2 views x
64 x 64 x 3 bytes = 24 KiB per sample (384 MiB at 512 x 32).
"""

import os

from panda_rl.config import load_config_file


def _ppo_config():
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "mujoco_ppo_mlp.py"))


def get_config():
  c = _ppo_config()
  c.env.train.env_id = "PandaPickCubeVision-v0"  # images + proprioception + instruction
  # Parallel training envs (global, over all env devices): half the MLP run's 1024, since
  # every env step also renders two images; 512 x 32 steps = 16,384 samples per iteration.
  c.env.train.num_envs = 512
  c.env.train.overrides.image_height = 64  # rendered image height (the env's default)
  c.env.train.overrides.image_width = 64  # rendered image width (the env's default)
  c.env.eval.num_envs = 128  # parallel evaluation envs (one episode each per evaluation)

  c.actor.model.encoder = "cnn"  # observation encoder: flat (state vectors) | cnn (images)
  # Policy and value read ONE CNN encoder (the value net is a head on its features): half the
  # conv compute of two encoders, and both losses train the features.
  c.actor.model.shared_encoder = True  # value head on the policy encoder's features
  # Two convs: 8x8 patches at stride 8 (64 -> 8 px), then 4x4 at stride 2 (8 -> 4 px): the
  # layout of the earlier 32 x 32 config (4x4 at stride 4, 0.24 s per gradient step on 2,048
  # image pairs, vs 0.93 s for a (16, 32, 32) / (5, 3, 3) / stride-2 stack) on 4x the pixels.
  c.actor.model.cnn_channels = (16, 32)  # output channels of each conv layer
  c.actor.model.cnn_kernels = (8, 4)  # square kernel size of each conv layer
  c.actor.model.cnn_strides = (8, 2)  # stride of each conv layer (64 -> 8 -> 4 px)
  c.actor.model.cnn_features = 64  # Dense features per camera view after the convs
  c.actor.model.embed_dim = 16  # instruction token embedding size (mean over tokens)
  c.actor.optim.lr = 5e-4  # peak learning rate (Adam); below the MLP's 1e-3 for the convs
  c.actor.optim.lr_schedule = "linear"  # decays to 0 at max_epochs: late updates stay small

  # On the 2-core AMD EPYC (BENCHMARKS.md): 100% eval success at iteration 40 (10 min),
  # 3 seeds >= 80% by iteration 60; 100 iterations take about 24 minutes (13 s each).
  c.runner.max_epochs = 100  # training iterations (1.6M env steps)
  c.runner.val_check_interval = 10  # evaluate every N iterations (0 = never)
  c.runner.logger.experiment_name = "mujoco_ppo_cnn"  # runs/panda_rl/mujoco_ppo_cnn
  return c
