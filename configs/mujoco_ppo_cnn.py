"""PPO with a CNN policy/value on PandaPickCubeVision-v0 (two camera views + proprioception +
the instruction's token ids).

The PPO config (``mujoco_ppo_mlp.py``, including its pre-grasp training curriculum) with the
fields below changed, plus the CNN encoder's fields under ``actor.model``. Every field can be
overridden: ``--config.env.train.overrides.image_height=64``.

Image size: 32 x 32 for training. Rendering cost grows with the pixel count (a 64 x 64 frame
costs ~4x a 32 x 32 one, and the renderer runs for every env at every step), and so does the
[T, B] observation buffer each iteration keeps (2 views x 32 x 32 x 3 bytes = 6 KiB per
sample here, 24 KiB at 64 x 64). At 32 x 32 the cube is still visible: a few pixels in the
wrist view (more as the hand approaches), 1-2 in the front view.
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
  c.env.train.overrides.image_height = 32  # rendered image height (see the module doc)
  c.env.train.overrides.image_width = 32  # rendered image width (see the module doc)
  c.env.eval.num_envs = 64  # parallel evaluation envs (one episode each per evaluation)

  c.actor.model.encoder = "cnn"  # observation encoder: flat (state vectors) | cnn (images)
  # Policy and value read ONE CNN encoder (the value net is a head on its features): half the
  # conv compute of two encoders, and both losses train the features.
  c.actor.model.shared_encoder = True  # value head on the policy encoder's features
  # Two convs: 4x4 patches at stride 4 (32 -> 8 px), then 4x4 at stride 2 (8 -> 4 px). A
  # gradient step on 2,048 image pairs costs 0.24 s on the 2-core CPU, vs 0.93 s for a
  # (16, 32, 32) / (5, 3, 3) / stride-2 stack; the cube still spans 1-2 first-layer patches.
  c.actor.model.cnn_channels = (16, 32)  # output channels of each conv layer
  c.actor.model.cnn_kernels = (4, 4)  # square kernel size of each conv layer
  c.actor.model.cnn_strides = (4, 2)  # stride of each conv layer (32 -> 8 -> 4 px)
  c.actor.model.cnn_features = 64  # Dense features per camera view after the convs
  c.actor.model.embed_dim = 16  # instruction token embedding size (mean over tokens)
  c.actor.optim.lr = 5e-4  # peak learning rate (Adam); below the MLP's 1e-3 for the convs

  # On the 2-core CPU (BENCHMARKS.md): 84% eval success at iteration 50, 97% at 60; 150
  # iterations (2.5M env steps) take about 38 minutes at ~1,200 env steps/s.
  c.runner.max_epochs = 150  # training iterations (2.5M env steps)
  c.runner.val_check_interval = 10  # evaluate every N iterations (0 = never)
  c.runner.logger.experiment_name = "mujoco_ppo_cnn"  # runs/panda_rl/mujoco_ppo_cnn
  return c
