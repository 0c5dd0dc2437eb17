"""What the command-line programs share: how a user error ends the process."""

import sys

EXIT_USER_ERROR = 2  # a problem the user can fix (config, placement, checkpoint, ...)


def fail(prog: str, error: BaseException) -> None:
  """Ends the process with ``prog: ErrorType: message`` on stderr (no traceback), exit 2."""
  sys.stderr.write(f"{prog}: {type(error).__name__}: {error}\n")
  sys.exit(EXIT_USER_ERROR)
