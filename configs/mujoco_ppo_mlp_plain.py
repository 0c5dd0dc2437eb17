"""PPO from plain resets: no curriculum keys, every training reset is the task's own reset.

The default PPO config (``mujoco_ppo_mlp.py``) with its reverse curriculum removed and a
slower gripper: each unit of a[3] moves the gripper command by 0.25 instead of TASK.md's
reference 1.0. At 1.0, exploration noise on a[3] swings the command between open and
closed from one step to the next, so a grasp is almost never held while the arm happens to
rise; at 0.25 the command integrates the noise and stays closed for several steps, and PPO
discovers grasping and lifting on its own (BENCHMARKS.md, "Plain resets"). Evaluation uses
the same control parameters (action_scale_grip is part of the action interface, not a
curriculum key).

The gripper's exploration is kept in a band (BENCHMARKS.md, "A band for the gripper"): its
mean in [-0.25, 0.25] (``actor.model.mean_bound``) and its std at least 1
(``actor.model.min_log_std``), every std at most e^0.5 (``actor.model.max_log_std``).
Without it, 2 seeds of 5 settled into a hover at the cube with the gripper's mean at -1:
the command then stays open, no grasp is ever tried, and the lifts stop by iteration ~100.
In the band the command keeps wandering at the cube (closed a few % of the time) whatever
the mean does, and the lifts that teach the grasp keep coming.
"""

import os

import ml_collections

from panda_rl.config import load_config_file


def _ppo_config():
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "mujoco_ppo_mlp.py"))


def get_config():
  c = _ppo_config()
  # Env overrides: no reset_pregrasp_prob / reset_in_hand_prob (plain resets only).
  c.env.train.overrides = ml_collections.ConfigDict()
  c.env.train.overrides.action_scale_grip = 0.25  # gripper-command change per unit a[3]
  # The gripper's exploration band (one entry per action dimension, None = untouched):
  c.actor.model.mean_bound = (None, None, None, 0.25)  # its mean in [-0.25, 0.25]
  c.actor.model.min_log_std = (None, None, None, 0.0)  # its std >= 1
  c.actor.model.max_log_std = 0.5  # every std <= e^0.5 (a[3] keeps following its mean)
  c.runner.max_epochs = 300  # training iterations (9.8M env steps)
  c.runner.logger.experiment_name = "mujoco_ppo_mlp_plain"  # runs/panda_rl/mujoco_ppo_mlp_plain
  return c
