"""What the command-line programs share: their start, and how a user error ends them."""

import sys

EXIT_USER_ERROR = 2  # a problem the user can fix (config, placement, checkpoint, ...)


def fail(prog: str, error: BaseException) -> None:
  """Ends the process with ``prog: ErrorType: message`` on stderr (no traceback), exit 2."""
  sys.stderr.write(f"{prog}: {type(error).__name__}: {error}\n")
  sys.exit(EXIT_USER_ERROR)


def start(argv):
  """The absl flags of a command after the common checks: no stray arguments, and quiet
  library logging unless ``--verbosity`` was given."""
  from absl import app, flags
  from absl import logging as absl_logging

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  return flags.FLAGS
