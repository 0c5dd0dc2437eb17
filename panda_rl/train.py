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


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file "
                                  "(configs/*.py); override fields with --config.a.b=v.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default: "
                      "<runner.logger.log_path>/<project_name>/<experiment_name>).")
  flags.mark_flags_as_required(["config"])


def parse_flags(argv):
  """absl flag parsing that names unknown ``--config.*`` fields before absl sees them."""
  from absl import flags

  from panda_rl.config import (check_override_paths, config_file_from_argv,
                               load_config_file, override_paths_from_argv)

  path = config_file_from_argv(argv)
  if path is not None:
    try:
      check_override_paths(load_config_file(path), override_paths_from_argv(argv))
    except ConfigError as e:
      fail("panda_rl.train", e)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # a value that does not parse, a missing --config
    fail("panda_rl.train", ConfigError(f"{e} (see --helpshort)"))


def main(argv) -> None:
  from absl import app, flags
  from absl import logging as absl_logging

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax reports every file it writes at INFO; keep the console to the progress bar.
    absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except USER_ERRORS as e:
    fail("panda_rl.train", e)


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main, flags_parser=parse_flags)
