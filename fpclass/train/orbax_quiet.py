"""What a user sees of orbax: its messages that tell a user nothing dropped, its errors summarised in one line.

Installed on import (absl's logger filters); `drop_orbax_read_aftermath` after the first failed restore.
"""
import logging
import os
import sys


class _ReadOnlyNotice(logging.Filter):
  """Drops orbax's warning that a manager was opened read-only ('Given directory is read only=...'): every
  reader (evaluate, explain, submit, serve, ...) opens the checkpoints read-only on purpose, so the line, one
  per checkpoint folder opened, told a user nothing. Orbax logs through absl's logger."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


class _AsyncSaveFailure(logging.Filter):
  """Drops orbax's tracebacks of a failed asynchronous save, logged by each of its writer threads: the
  failure reaches the training run when it waits for the save (`CheckpointStore._wait`), which reports it
  once, in one line when the disk is full."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True   # only orbax's own error records are candidates, never another library's
    message = str(record.msg)
    return not ('raised an exception' in message or 'thread' in message and 'failed' in message)


logging.getLogger('absl').addFilter(_ReadOnlyNotice())
logging.getLogger('absl').addFilter(_AsyncSaveFailure())


def _orbax_read_aftermath(unraisable) -> bool:
  """Whether a report to sys.unraisablehook is the aftermath of an orbax restore that failed: orbax reads
  every array of a checkpoint in coroutines on an event loop of its own and, at the first failure, closes
  that loop and raises. The other reads then end unobserved, each reported as a traceback when its coroutine
  is collected (orbax turns the GeneratorExit into its own exception) or when TensorStore calls back into
  the closed loop. The failure itself has been reported once, with its cause."""
  if getattr(unraisable.object, '__qualname__', '') == '_read_array_index_and_device_put':
    return True
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed')


def drop_orbax_read_aftermath() -> None:
  """Drops those reports, from here on in this process, and passes every other one to the hook that was
  in place (installed once, by the first failed `CheckpointStore.restore`, where every array read happens)."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_orbax_read_aftermath', False):
    return

  def hook(unraisable):
    if not _orbax_read_aftermath(unraisable):
      previous(unraisable)
  hook.drops_orbax_read_aftermath = True
  sys.unraisablehook = hook


def summary(error: Exception, limit: int) -> str:
  """`error` in one line, without what TensorStore appends (its whole multi-line spec) or orbax's advice on
  its own API (how to allow truncating or padding arrays of the wrong shape)."""
  text = str(error).split(' See full TensorStore details')[0].split(' Truncating/padding is disabled')[0]
  return ' '.join(text.split())[:limit]
