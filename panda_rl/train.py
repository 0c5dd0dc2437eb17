"""Trains an agent: ``python -m panda_rl.train --config configs/mujoco_ppo_mlp.py``.

The command line only parses flags and calls :func:`panda_rl.runner.train_and_evaluate` (also
importable from here). Any config field can be overridden (``--config.algorithm.gamma=0.98``);
unknown fields fail before anything runs. Every library error (unknown env or config field,
impossible placement, unusable checkpoint, missing logger package, diverged loss) ends the
run with one message naming the problem, without a traceback, and exit status 2.
"""

import panda_rl  # noqa: F401  (first: sets XLA:CPU flags before any JAX backend starts)

from panda_rl.checkpoint import CheckpointError
from panda_rl.cli import fail
from panda_rl.config import ConfigError
from panda_rl.logger import MissingBackendError
from panda_rl.runner import TrainingDivergedError, TrainResult, train_and_evaluate  # noqa: F401

# What a user can fix: reported as one message, exit status 2 (panda_rl.cli).
USER_ERRORS = (ConfigError, MissingBackendError, CheckpointError, TrainingDivergedError)


# The config that parse_flags loaded (with its overrides) for main.
_LOADED = {}


def _define_flags():
  from absl import flags

  flags.DEFINE_string("config", None, "Experiment config file (configs/*.py); override "
                      "fields with --config.a.b=v (any env setting: "
                      "--config.env.train.overrides.<key>=v).")
  flags.DEFINE_string("workdir", None, "Run directory (default: "
                      "<runner.logger.log_path>/<project_name>/<experiment_name>).")
  flags.mark_flags_as_required(["config"])


def split_overrides(argv):
  """``argv`` -> (the other arguments, the ``--config.a.b=v`` overrides); ``--config.a.b v``
  becomes ``--config.a.b=v``."""
  rest, overrides, args = [], [], list(argv)
  while args:
    arg = args.pop(0)
    if not arg.startswith("--config."):
      rest.append(arg)
    elif "=" in arg or not args:
      overrides.append(arg)
    else:
      overrides.append(f"{arg}={args.pop(0)}")
  return rest, overrides


def parse_flags(argv):
  """absl parses the flags; :func:`panda_rl.config.load_config` loads the config and its
  ``--config.*`` overrides, naming unknown fields and bad values before anything runs."""
  from absl import flags

  from panda_rl.config import load_config

  rest, overrides = split_overrides(argv)
  try:
    parsed = flags.FLAGS(rest)
  except flags.Error as e:  # a missing --config, an unknown flag
    fail("panda_rl.train", ConfigError(f"{e} (see --helpshort)"))
  try:
    _LOADED["config"] = load_config(flags.FLAGS.config, overrides)
  except ConfigError as e:
    fail("panda_rl.train", e)
  return parsed


def main(argv) -> None:
  from absl import app, flags
  from absl import logging as absl_logging

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax reports every file it writes at INFO; keep the console to the progress bar.
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    train_and_evaluate(_LOADED["config"], flags.FLAGS.workdir)
  except USER_ERRORS as e:
    fail("panda_rl.train", e)


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main, flags_parser=parse_flags)
