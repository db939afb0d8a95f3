"""The one exception type that user-facing problems raise.

`launch.py` prints these as a one-line message without a traceback: they describe a file, row or flag the
user can fix, not a bug.
"""


class UserInputError(ValueError):
  """Bad input the user can fix: a file, CSV row, folder, flag or checkpoint; the message names it."""


class RunInterrupted(Exception):
  """Training stopped on SIGINT or SIGTERM after saving where it was; launching again resumes it.
  launch.py prints the message and exits with 128 + the signal number, as the shell would."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
