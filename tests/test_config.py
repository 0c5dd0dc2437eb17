"""Configs: loading, command-line-style overrides, loud failures, validation, JSON round trip,
and the one-comment-per-field rule of configs/*.py."""

import re
from pathlib import Path

import jax
import ml_collections
import pytest

from panda_rl.config import (ConfigError, config_diff, config_from_dict, config_to_dict,
                             flatten, load_config, load_config_file, logger_backends, run_dir,
                             split_override, validate_config)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG = str(CONFIG_DIR / "mujoco_ppo_mlp.py")


def test_default_config_loads_and_validates():
  config = load_config(CONFIG)
  for section in ("cluster", "env", "rollout", "actor", "algorithm", "runner"):
    assert section in config
  validate_config(config)
  assert run_dir(config) == Path("runs/panda_rl/mujoco_ppo_mlp")
  assert logger_backends(config) == ("tensorboard",)


def test_overrides_parse_like_the_command_line():
  config = load_config(CONFIG, [
      "algorithm.gamma=0.98",
      "--config.runner.max_epochs=3",
      "actor.model.policy_hidden=(64,32)",
      "runner.resume=True",
      "runner.logger.logger_backends=tensorboard",
      "env.train.env_id=PointReach-v0",
  ])
  assert config.algorithm.gamma == 0.98
  assert config.runner.max_epochs == 3
  assert config.actor.model.policy_hidden == (64, 32)
  assert config.runner.resume is True
  assert config.runner.logger.logger_backends == ("tensorboard",)
  assert config.env.train.env_id == "PointReach-v0"


def test_later_override_wins():
  config = load_config(CONFIG, ["actor.model.policy_hidden=(4,4)",
                                "actor.model.policy_hidden=(8,8)"])
  assert config.actor.model.policy_hidden == (8, 8)


def test_mapping_overrides():
  config = load_config(CONFIG, {"algorithm.gamma": 0.9, "runner.max_epochs": 5})
  assert (config.algorithm.gamma, config.runner.max_epochs) == (0.9, 5)
  with pytest.raises(ConfigError, match="algorithm.gamma"):
    load_config(CONFIG, {"algorithm.gamma": "high"})


def test_any_env_setting_is_overridable_not_only_those_the_file_lists():
  # The default config file lists reset_pregrasp_prob only; sim_dt comes from the env's
  # default_config(), whose float default parses the command-line string.
  config = load_config(CONFIG, ["env.train.overrides.sim_dt=0.01",
                                "--config.env.train.overrides.controller_rate=control"])
  assert dict(config.env.train.overrides) == {"reset_pregrasp_prob": 0.4, "sim_dt": 0.01,
                                              "controller_rate": "control"}
  assert load_config(CONFIG, {"env.train.overrides.sim_dt": 0.01}).env.train.overrides.sim_dt \
      == 0.01
  # The env named on the same command line is the one whose settings count.
  config = load_config(CONFIG, ["env.train.env_id=PointReach-v0",
                                "env.train.overrides.goal_radius=0.1"])
  assert config.env.train.overrides.goal_radius == 0.1
  with pytest.raises(ConfigError, match="could not convert string to float"):
    load_config(CONFIG, ["env.train.overrides.sim_dt=fast"])


@pytest.mark.parametrize("overrides, expected", [
    (["env.train.overrides.sim_td=0.01"],
     r"env 'PandaPickCube-v0' has no setting 'sim_td'\. Did you mean "
     r"'env.train.overrides.sim_dt'\? Its settings: action_scale_grip, "),
    (["env.train.env_id=PointReach-v0", "env.train.overrides.sim_dt=0.01"],
     r"env 'PointReach-v0' has no setting 'sim_dt'"),
    (["env.train.env_id=NoSuchEnv-v0", "env.train.overrides.sim_dt=0.01"],
     r"'env.train.overrides.sim_dt': Unknown env 'NoSuchEnv-v0'"),
    (["env.train.overrides={}", "env.train.overrides.sim_dt=0.01"],
     r"an earlier flag replaced its section; set the field inside that flag's value"),
])
def test_env_settings_that_do_not_exist_fail_clearly(overrides, expected):
  with pytest.raises(ConfigError, match=expected):
    load_config(CONFIG, overrides)


def test_config_is_locked():
  config = load_config(CONFIG)
  with pytest.raises(AttributeError):
    config.algorithm.nope = 1


@pytest.mark.parametrize("override, expected", [
    ("algorithm.nope=1", r"Unknown config field 'algorithm.nope'.*Valid fields of "
                         r"'algorithm': adv_type"),
    ("algorithm.gama=0.9", r"Did you mean 'algorithm.gamma'\?"),
    ("algoritm.gamma=0.9", r"Did you mean 'algorithm'\?"),
    ("algorithm.gamma.x=1", r"'algorithm.gamma' is a value \(float\), not a section"),
])
def test_unknown_fields_fail_loudly(override, expected):
  with pytest.raises(ConfigError, match=expected):
    load_config(CONFIG, [override])


def test_mistyped_value_fails():
  with pytest.raises(ConfigError, match="gamma"):
    load_config(CONFIG, ["algorithm.gamma=high"])
  with pytest.raises(ConfigError, match="max_epochs"):
    load_config(CONFIG, ["runner.max_epochs=2.5"])


@pytest.mark.parametrize("override, expected", [
    ("runner.max_epochs=0", "runner.max_epochs must be an int >= 1"),
    ("runner.val_check_interval=-1", "runner.val_check_interval"),
    ("runner.save_interval=-2", "runner.save_interval"),
    ("runner.max_to_keep=-1", "runner.max_to_keep"),
    ("runner.logger.logger_backends=(tensorboard,mlflow)", r"unknown backend\(s\) \['mlflow'\]"),
    ("runner.logger.experiment_name=", "experiment_name must be a non-empty string"),
    ("env.train.num_envs=0", "env.train.num_envs"),
])
def test_validation_names_the_field(override, expected):
  with pytest.raises(ConfigError, match=expected):
    load_config(CONFIG, [override])


def test_missing_config_file():
  with pytest.raises(ConfigError, match="does not exist"):
    load_config("configs/nope.py")


def test_json_round_trip_restores_tuples():
  config = load_config(CONFIG, ["actor.model.policy_hidden=(64,32)"])
  d = config_to_dict(config)
  assert d["actor"]["model"]["policy_hidden"] == [64, 32]
  back = config_from_dict(d)
  assert back.actor.model.policy_hidden == (64, 32)
  assert config_diff(config, back) == []
  assert config_diff(d, config) == []


def test_config_diff_names_fields_and_ignores():
  a = load_config(CONFIG)
  b = load_config(CONFIG, ["algorithm.gamma=0.9", "runner.max_epochs=7"])
  assert config_diff(a, b) == ["algorithm.gamma: 0.97 -> 0.9", "runner.max_epochs: 150 -> 7"]
  assert config_diff(a, b, ignore=("runner",)) == ["algorithm.gamma: 0.97 -> 0.9"]


def test_flatten():
  c = ml_collections.ConfigDict({"a": {"b": 1, "c": {}}, "d": (1, 2)})
  assert flatten(c) == {"a.b": 1, "a.c": {}, "d": (1, 2)}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_every_config_field_has_a_comment(path):
  """ARCHITECTURE.md: every field has a one-line comment (same line or the line above)."""
  lines = path.read_text().splitlines()
  assign = re.compile(r"^\s*c(\.\w+)+\s*=\s*(?P<value>.*)$")
  missing = []
  for i, line in enumerate(lines):
    m = assign.match(line)
    if not m or "ConfigDict()" in m.group("value") and "#" not in line:
      continue  # not an assignment, or a section header
    has_comment = "#" in line or (i > 0 and lines[i - 1].strip().startswith("#"))
    if not has_comment:
      missing.append(f"{path.name}:{i + 1}: {line.strip()}")
  assert not missing, "config fields without a comment:\n" + "\n".join(missing)
  assert isinstance(load_config_file(path), ml_collections.ConfigDict)


def test_gpu_config_is_the_cpu_recipe_with_a_gpu_sized_batch():
  """configs/mujoco_ppo_mlp_gpu.py changes only the batch and the run's cadence, and passes
  the whole check (envs and placement) before anything compiles."""
  from panda_rl import validation

  gpu, cpu = load_config(str(CONFIG_DIR / "mujoco_ppo_mlp_gpu.py")), load_config(CONFIG)
  changed = {line.split(":")[0] for line in config_diff(cpu, gpu)}
  assert changed == {"env.train.num_envs", "rollout.num_steps", "algorithm.num_minibatches",
                     "runner.max_epochs", "runner.val_check_interval", "runner.save_interval",
                     "runner.logger.experiment_name"}
  samples = gpu.env.train.num_envs * gpu.rollout.num_steps
  assert gpu.env.train.num_envs >= 8192 and samples >= 4 * cpu.env.train.num_envs * 32
  assert samples % gpu.algorithm.num_minibatches == 0
  assert samples // gpu.algorithm.num_minibatches >= 8192  # a GPU-sized minibatch too
  setup = validation.check(gpu)
  assert setup.env.action_size == 4 and setup.placement.collocated
  assert setup.placement.num_devices == jax.device_count()  # every device: the default
  assert run_dir(gpu) == Path("runs/panda_rl/mujoco_ppo_mlp_gpu")


def test_plain_reset_config_has_no_curriculum_and_evaluates_what_it_trains():
  """configs/mujoco_ppo_mlp_plain.py: no training-only (curriculum) key is set at all, only
  the slower gripper, which the evaluation env keeps (it is part of the action interface),
  and the gripper's exploration band on the policy."""
  from panda_rl.envs import pick_cube
  from panda_rl.evaluate import eval_env_settings

  plain, default = load_config(str(CONFIG_DIR / "mujoco_ppo_mlp_plain.py")), load_config(CONFIG)
  overrides = dict(plain.env.train.overrides)
  assert overrides == {"action_scale_grip": 0.25}
  assert not set(overrides) & set(pick_cube.PandaPickCube.TRAIN_ONLY_KEYS)
  assert eval_env_settings(plain) == ("PandaPickCube-v0", overrides)
  changed = {line.split(":")[0] for line in config_diff(default, plain)}
  assert changed == {"env.train.overrides.reset_pregrasp_prob",
                     "env.train.overrides.action_scale_grip", "runner.max_epochs",
                     "runner.logger.experiment_name", "actor.model.mean_bound",
                     "actor.model.min_log_std", "actor.model.max_log_std"}, changed
  assert plain.actor.model.mean_bound == (None, None, None, 0.25)
  assert run_dir(plain) == Path("runs/panda_rl/mujoco_ppo_mlp_plain")


def test_split_override_reads_both_command_line_forms():
  assert split_override("runner.seed=3") == ("runner.seed", "3")
  assert split_override("--config.algorithm.gamma=0.98") == ("algorithm.gamma", "0.98")
  assert split_override("env.train.overrides={'a': 1}") == ("env.train.overrides", "{'a': 1}")
  assert split_override("--config.runner.resume") == ("runner.resume", None)
  assert split_override("a.b=x=y") == ("a.b", "x=y")  # only the first '=' separates
