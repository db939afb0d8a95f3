"""The one exception type that user-facing problems raise.

`launch.py` prints these as a one-line message without a traceback: they describe a file, row or flag the
user can fix, not a bug.
"""


class UserInputError(ValueError):
  """Bad input the user can fix: a file, CSV row, folder, flag or checkpoint; the message names it."""
