"""Restore a trained workdir for inference: the one place evaluate, submit and explain get a model from."""
import dataclasses
import functools
import pathlib

import jax
import numpy as np

from fpclass.config.run import RunSettings
from fpclass.errors import UserInputError
from fpclass.infer import tta
from fpclass.models.heads import probabilities
from fpclass.runtime.sharding import DataParallel
from fpclass.train import checkpoint, sidecar
from fpclass.train.batches import predict_logits
from fpclass.train.loop_state import LoopState
from fpclass.train.steps import CompiledSteps
from fpclass.train.task import Task, TrainState, build_task


@dataclasses.dataclass
class Trained:
  task: Task
  state: TrainState
  metadata: dict
  class_names: tuple
  checkpoint: str      # which checkpoint was restored: 'best' or 'last'
  epoch: int
  loop: LoopState      # the run's final loop state (history, best epoch, stop reason)
  settings: RunSettings | None = None   # the config it was restored under, parsed once: what its readers read

  @functools.cached_property
  def compiled(self) -> CompiledSteps:
    """The programs of this model on this process's mesh. Its predict is the very program training
    validates with (same function, compiler options and shardings), so in the batch shape they share
    (`fpclass.infer.predictions.prediction_chunk`) evaluate, explain and calibrate load it from the persistent
    compilation cache instead of compiling (and, on a GPU, autotuning) one of their own."""
    return CompiledSteps(self.task, DataParallel.over())

  @property
  def predict_fn(self):
    """(params, batch_stats, uint8 images) -> logits on the host, one jitted program per batch shape."""
    return self.compiled.predict

  def batch_logits(self, images: np.ndarray):
    """The logits of one batch through the predict program (serve's warm sizes: each size compiles once)."""
    return self.predict_fn(self.state.params, self.state.batch_stats, images)

  @functools.cached_property
  def augmented_predict(self) -> tta.AugmentedPredict:
    return tta.AugmentedPredict(self.task, self.compiled.parallel)

  def logits(self, images: np.ndarray, batch_size: int, chunk: int | None = None,
             tta_settings: tta.TTA | None = None, first_batch: int = 0) -> np.ndarray:
    """The logits of `images` in fixed-size batches (`fpclass.train.batches.predict_logits`); with `tta_settings` on,
    the TTA logits (`fpclass.infer.tta`), the one place predict, submit and calibrate get them. `first_batch`
    numbers the batches for the augmentation keys when `images` continue an earlier call's."""
    plain = predict_logits(self.task, self.state, images, batch_size, self.predict_fn, chunk)
    if tta_settings is None or not tta_settings.on or len(images) == 0:
      return plain
    batch = int(chunk) if chunk else min(batch_size, len(images))
    return tta.tta_logits(self.task, self.state, images, plain, tta_settings, self.augmented_predict, batch,
                          first_batch)

  def probabilities(self, images: np.ndarray, batch_size: int, chunk: int | None = None,
                    tta_settings: tta.TTA | None = None) -> np.ndarray:
    return probabilities(self.logits(images, batch_size, chunk, tta_settings), self.task.head)


def load_trained(config, workdir, kind: str | None = None) -> Trained:
  """The model of `workdir` with the checkpoint `kind` (default: config.train.select_checkpoint)."""
  workdir = pathlib.Path(workdir)
  metadata = sidecar.read_metadata(workdir)
  if metadata is None:
    raise UserInputError(f'{workdir}: no trained run here ({sidecar.METADATA} is missing)'
                         + (sidecar.model_elsewhere(workdir) or '; run --mode train with this --workdir first'))
  if 'ensemble' in metadata:   # fpclass.infer.ensemble.ENSEMBLE_KEY: a --mode ensemble result has no checkpoint
    raise UserInputError(f'{workdir} is an ensemble workdir (--mode ensemble): submit, predict, serve, export and '
                         'calibrate use it; evaluate and explain take one model (the ensemble\'s cross-fitted scores '
                         'are in ensemble.md): point them at a member\'s workdir or a soup\'s (soup/fold<k>)')
  sidecar.check_restorable(workdir, metadata, sidecar.config_as_json(config))
  run = RunSettings.from_config(config)
  kind = kind or run.train.select_checkpoint
  class_names = tuple(metadata['class_names'])
  task = build_task(run, class_names, np.arange(len(class_names)), steps_per_epoch=1)
  height, width = metadata['image_size']
  abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), (height, width, metadata['channels'])))
  store = checkpoint.CheckpointStore(workdir)
  if store.latest_epoch(kind) is None and kind == 'best' and store.latest_epoch('last') is not None:
    kind = 'last'  # no epoch improved on the monitor (e.g. all NaN): fall back to the final weights
  try:
    # The newest complete checkpoint, so a read beside a training run (or after a damaged save) works. Its
    # model variables are those the run validated and selected with: the average of the weights when it kept
    # one (config.train.ema_decay; `checkpoint.CheckpointStore.restore`), so every mode serves the average.
    epoch, state = store.restore_newest_readable(kind, lambda e: (e, store.restore(kind, abstract, e)[0]))
    # The whole run's history, also when `best` is restored.
    loop = LoopState.from_json(store.restore_newest_readable('last', lambda e: store.loop_state('last', e)))
  finally:
    store.close()
  # Placed as training places them (replicated over the mesh), so the predict program is training's own.
  parallel = DataParallel.over()
  state = state.replace(params=parallel.replicate(state.params), batch_stats=parallel.replicate(state.batch_stats))
  return Trained(task, state, metadata, class_names, kind, int(epoch), loop, run)
