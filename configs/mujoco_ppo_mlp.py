"""Default experiment: PPO with MLP policy/value on PandaPickCube-v0 (state observations).

Sections follow the embodied-RL convention (cluster / env / rollout / actor / algorithm /
runner). Every field can be overridden: ``--config.algorithm.gamma=0.98``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.cluster = ml_collections.ConfigDict()
  c.cluster.num_nodes = 1  # processes (hosts) in the run; >1 starts jax.distributed
  # Where components run: "group:range;group:range", groups of env/rollout/actor joined by
  # ",", ranges as "all", "3" or "0-3" (global device ids, jax.devices() order); e.g.
  # "env:0-3;rollout:4-7;actor:8-15". See README.md (Placement) and docs/ARCHITECTURE.md.
  c.cluster.component_placement = "env,rollout,actor:all"
  c.cluster.coordinator_address = ""  # host:port of process 0; "" = $JAX_COORDINATOR_ADDRESS
  c.cluster.process_id = -1  # this process's id (multi-host); -1 = $JAX_PROCESS_ID / auto
  # Multi-host failures end every process within bounded time (seconds):
  c.cluster.init_timeout_s = 300  # wait for the coordinator and every process to join
  c.cluster.heartbeat_timeout_s = 100  # a process silent this long is lost: the others stop

  c.env = ml_collections.ConfigDict()
  c.env.train = ml_collections.ConfigDict()
  c.env.train.env_id = "PandaPickCube-v0"  # registered env name (panda_rl.registered_envs())
  c.env.train.num_envs = 1024  # parallel training envs (global, over all env devices)
  # Training envs reset in this many groups spread over an episode (1 = all at once): the
  # first episode of env i starts (i % K) * episode_length / K steps in (cut short).
  c.env.train.reset_phases = 1
  # Env default_config() overrides (other envs: clear with --config.env.train.overrides={}).
  c.env.train.overrides = ml_collections.ConfigDict()
  # Reverse curriculum: 40% of training resets start with the open hand at the cube (see
  # BENCHMARKS.md: without it PPO never discovered grasping). Eval envs drop this key.
  c.env.train.overrides.reset_pregrasp_prob = 0.4
  c.env.eval = ml_collections.ConfigDict()
  c.env.eval.num_envs = 256  # parallel evaluation envs (one episode each per evaluation)
  c.env.eval.video_cfg = ml_collections.ConfigDict()
  c.env.eval.video_cfg.save_video = False  # write mp4s of evaluation episodes
  c.env.eval.video_cfg.video_base_dir = ""  # "" = <log_path>/video/eval/<project>/<experiment>
  c.env.eval.video_cfg.num_videos = 2  # evaluation episodes written per evaluation
  c.env.eval.video_cfg.fps = 25  # frames per second of the mp4 files
  c.env.eval.video_cfg.resolution = 128  # height/width of each camera view in the video

  c.rollout = ml_collections.ConfigDict()
  c.rollout.num_steps = 32  # env steps per env per training iteration (T)
  c.rollout.pipeline_stage_num = 1  # env-batch stages overlapping physics and inference
  # Exploration noise correlated over steps: AR(1) coefficient rho in [0, 1), each step's
  # noise still N(0, 1), consecutive steps pushing the same way for ~1/(1-rho) steps; 0 = white.
  c.rollout.noise_correlation = 0.0
  # The action dimensions that noise is correlated on (empty = all), e.g. (3,): the gripper's.
  c.rollout.noise_correlation_dims = ()

  c.actor = ml_collections.ConfigDict()
  c.actor.model = ml_collections.ConfigDict()
  c.actor.model.policy_hidden = (256, 256)  # policy MLP hidden sizes
  c.actor.model.value_hidden = (256, 256)  # value MLP hidden sizes
  c.actor.model.activation = "swish"  # hidden activation: relu | tanh | swish | elu
  c.actor.model.init_log_std = -0.5  # initial log standard deviation of the Gaussian
  # Upper bound on that log std (None = unbounded); actions are clipped to [-1, 1], so noise
  # beyond a std of ~1 changes nothing the env sees while the entropy bonus still pays for it.
  c.actor.model.max_log_std = config_dict.placeholder(float)
  # tanh on the Gaussian's mean, keeping it inside [-1, 1] so the noise always reaches the env.
  c.actor.model.bounded_mean = False
  # Per action dimension: a tuple of one entry per dimension (None = untouched), () = off.
  c.actor.model.mean_bound = ()  # bound b > 0 on the mean: b * tanh(raw / b), in [-b, b]
  c.actor.model.min_log_std = ()  # floor under the log std (no gradient below it)
  c.actor.optim = ml_collections.ConfigDict()
  c.actor.optim.lr = 1e-3  # peak learning rate (Adam)
  c.actor.optim.lr_schedule = "constant"  # constant | linear | cosine (decay over the run)
  c.actor.optim.max_grad_norm = 1.0  # global gradient-norm clip
  c.actor.optim.adam_eps = 1e-5  # Adam epsilon

  c.algorithm = ml_collections.ConfigDict()
  c.algorithm.adv_type = "gae"  # gae (PPO) | grpo
  c.algorithm.gamma = 0.97  # discount factor
  c.algorithm.gae_lambda = 0.95  # GAE lambda
  c.algorithm.clip_ratio = 0.2  # PPO probability-ratio clip epsilon
  c.algorithm.value_clip = 0.2  # value-function clip range (<=0 disables)
  c.algorithm.entropy_coef = 0.02  # entropy bonus coefficient
  c.algorithm.value_coef = 0.5  # value loss coefficient
  c.algorithm.update_epochs = 4  # passes over each iteration's batch
  c.algorithm.num_minibatches = 8  # minibatches per epoch
  c.algorithm.normalize_advantages = True  # standardise advantages per minibatch
  c.algorithm.normalize_obs = True  # running mean/std observation normalisation
  c.algorithm.reward_scale = 1.0  # multiplies rewards before advantage estimation
  c.algorithm.group_size = 8  # GRPO: envs per group sharing an initial state
  c.algorithm.group_std_norm = True  # GRPO: divide by the group's return std
  c.algorithm.kl_beta = 0.0  # GRPO: KL penalty to the frozen reference policy

  c.runner = ml_collections.ConfigDict()
  c.runner.seed = 0  # master PRNG seed
  # Independent seeds trained at once in one program (seed k is the run of seed + k), each
  # logged to <run dir>/seed_<k>/, their mean/min/max to the run dir; 1 = a plain run.
  c.runner.num_seeds = 1
  c.runner.max_epochs = 150  # training iterations (4.9M env steps)
  c.runner.val_check_interval = 10  # evaluate every N iterations (0 = never)
  c.runner.save_interval = 50  # checkpoint every N iterations (and at the end)
  c.runner.max_to_keep = 0  # keep only the newest N checkpoints (0 = keep all)
  c.runner.resume = False  # continue from the latest checkpoint in the run directory
  c.runner.logger = ml_collections.ConfigDict()
  c.runner.logger.log_path = "runs"  # root directory of logs, checkpoints, videos
  c.runner.logger.project_name = "panda_rl"  # sub-directory per project
  c.runner.logger.experiment_name = "mujoco_ppo_mlp"  # sub-directory per experiment
  c.runner.logger.logger_backends = ("tensorboard",)  # tensorboard | wandb | swanlab
  return c
