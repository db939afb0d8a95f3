"""TensorBoard event files of a training run's epochs, in `<workdir>/tensorboard/` (config.train.tensorboard),
written with tensorboardX (no TensorFlow).

metrics.csv stays the record of a run; these files let `tensorboard --logdir <workdir>/tensorboard` plot the
same numbers, as Keras' TensorBoard callback does. Each epoch is written by its own short-lived writer (its own
file, closed at once), so a killed run loses nothing already written and no writer outlives the loop. Each file
starts with TensorBoard's purge marker at its epoch, so after a resume TensorBoard discards any stale points at
or beyond the epoch being rewritten.
"""
import contextlib
import math
import pathlib
import sys

from fpclass import fileio
from fpclass.config.training import TrainSettings
from fpclass.runtime.sinks.sink import Job, Sink

FOLDER = 'tensorboard'


class TensorBoardSink(Sink):
  """Each epoch of a run that keeps a workdir (a solo run, a search's member or refit), in its tensorboard/."""
  name = 'TensorBoard'

  @classmethod
  def configured(cls, config, job: Job) -> 'TensorBoardSink | None':
    return cls() if TrainSettings.from_config(config.train).tensorboard else None

  def epoch(self, rows: list[dict], folder: pathlib.Path | None) -> None:
    if folder is not None:
      write_epoch(pathlib.Path(folder) / FOLDER, rows[-1])


def write_epoch(logdir: str | pathlib.Path, row: dict) -> None:
  """Writes every finite numeric entry of a metrics.csv row ('epoch' is the step) as a scalar:
  train_loss -> loss/train, val_loss -> loss/val, so TensorBoard overlays train and validation curves."""
  if not fileio.is_primary():
    return
  with _without_torch():
    from tensorboardX import SummaryWriter
  epoch = int(row['epoch'])
  writer = SummaryWriter(logdir=str(logdir), purge_step=epoch, filename_suffix=f'.epoch{epoch:05d}')
  try:
    for key, value in row.items():
      if key == 'epoch' or not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        continue
      writer.add_scalar(scalar_tag(key), float(value), global_step=epoch)
  finally:
    writer.close()


@contextlib.contextmanager
def _without_torch():
  """tensorboardX's writer module tries `import torch` at import time, only to accept torch tensors; we pass
  floats. Where torch is installed that import alone takes 3-4 s of every run, so unless torch is already
  loaded it is made to fail (the writer then accepts numpy only) and the module table is put back after."""
  if 'torch' in sys.modules:
    yield
    return
  sys.modules['torch'] = None  # `import torch` now raises ImportError
  try:
    yield
  finally:
    if sys.modules.get('torch', 0) is None:
      del sys.modules['torch']


def scalar_tag(key: str) -> str:
  for split in ('train', 'val'):
    if key.startswith(split + '_'):
      return f'{key[len(split) + 1:]}/{split}'
  return key
