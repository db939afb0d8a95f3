"""Work the training cohorts of one job share: a value computed once and kept for the job, under a key that names
everything it depends on (a frozen backbone's features, a pretrained file's arrays, a chunk's memory plan).
A sweep passes one to every cohort, so its variants and chunks do each such piece of work once. It is passed
explicitly and keyed by content, never by object identity, and lives as long as the job that made it."""


class SharedWork:
  def __init__(self):
    self._values = {}

  def get(self, key: tuple, compute):
    """The value under `key`, computed by `compute()` the first time."""
    if key not in self._values:
      self._values[key] = compute()
    return self._values[key]
