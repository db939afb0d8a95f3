"""Distillation's own parts (`--mode distill`): the teacher found in a trained workdir, its targets computed in
the student's train step, the checks of student against teacher, and the comparison of student, teacher and the
student trained alone on the images none of them saw.

- The teacher: an ensemble workdir's weighted models, a sweep's fold models (one variant's, or every variant's
  with equal weight per variant), auto's final model, or one run. `Teacher.targets` is traced inside the
  student's jitted step (`fpclass.train.task.Task.teacher`): each teacher model's probabilities of the very
  augmented (and mixed) view the student sees, through its own input normalisation, mixed with their weights:
  big_vision's patient and consistent teacher. Its weights are constants of the student's step program.
- Unlabelled images (config.distill.unlabelled) join the training split with label -1: the teacher labels them.
- The comparison: on each fold the teacher's models held out, the student trained with the models of that fold
  as teacher, and alone on the labels; the paired differences per run (folds x seeds, corrected interval) and
  per image (pooled), and each model's images per second on this machine (`record`, docs/deploy.md).
"""
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fpclass.analysis import metric_registry, stats
from fpclass.config.outputs import DistillSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.data.unlabelled import read_pool
from fpclass.errors import UserInputError
from fpclass.infer.ensemble import MemberModel, workdir_models
from fpclass.models.heads import head_of, probabilities
from fpclass.train.axis import Split
from fpclass.train.semi import UNLABELLED  # the label of an image the teacher alone labels
from fpclass.train.task import build_task


@dataclasses.dataclass(eq=False)   # hashed by identity: a field of the frozen Task, static in its programs
class Teacher:
  """The teacher's models (restored `MemberModel`s, each with its weight) and the unlabelled images it adds.

  Cross-fitted (`held_out`: each model's validation ids), a training image's target comes from the models that
  did not train on it: a fold model's probabilities of its own training images are nearly their labels, so a
  student taught by them learns what the labels teach. `row_weights` ((training rows, models), set by
  `training_data`) holds each row's model weights; a row no model held out, or an unlabelled one, takes every
  model's."""
  models: list
  unlabelled: np.ndarray | None = None
  held_out: list | None = None           # per model, the ids of the images it validated on (cross-fitted)
  row_weights: np.ndarray | None = None  # (training rows, models): each model's weight in each row's target
  temperature: float = 1.0               # Hinton's T: both sides' logits divided by it, the loss scaled by T^2
  label_weight: float = 0.0              # Hinton's alpha: the share of a labelled image's target its label keeps

  def targets(self, view, targets, rows=None):
    """Traced in the student's step: the weighted mean of the models' probabilities of `view` (images in [0, 1],
    the student's augmented and mixed batch), in place of `targets` (the labels', (N, classes), mixed as the
    view is), or with `label_weight` w > 0 beside them: (1 - w) teacher + w label for a labelled image, the
    teacher alone for an unlabelled one (its one-hot row is zeros; a mix of the two, in proportion). As Hinton's
    alpha-weighted loss, since the cross-entropy is linear in its target. Cross-fitted, each image's mean is over
    its own models (`rows`: the batch's rows of the training images; a mixed image takes the models of the image
    it was mixed into)."""
    taught = self._teacher_probabilities(view, rows)
    if self.label_weight == 0.0:
      return taught
    labelled = jnp.sum(targets, axis=-1, keepdims=True)   # 1 for a labelled image, 0 for an unlabelled one
    return taught * (1.0 - self.label_weight * labelled) + self.label_weight * targets

  def _teacher_probabilities(self, view, rows):
    if self.row_weights is None:
      total = 0.0
      for m in self.models:
        total = total + m.weight * self._probabilities(m, view)
      return total / sum(m.weight for m in self.models)
    if rows is None:
      raise UserInputError('config.distill.cross_fit: the training images are streamed from the host, where the '
                           'step does not know their rows; set --config.data.storage=memory, or cross_fit=False')
    weights = jnp.asarray(self.row_weights)[rows]                              # (N, models)
    stacked = jnp.stack([self._probabilities(m, view) for m in self.models], axis=1)   # (N, models, classes)
    return jnp.einsum('nm,nmc->nc', weights, stacked) / jnp.sum(weights, axis=1, keepdims=True)

  def _probabilities(self, m, view):
    task, state = m.trained.task, m.trained.state
    logits, _, _ = task.apply(state.params, state.batch_stats, task.model_input(view), train=False)
    return probabilities(logits if self.temperature == 1.0 else logits / self.temperature, task.head, xp=jnp)

  def training_data(self, data):
    """A solo plan's data (`fpclass.train.plan_data.VariantData`) with the unlabelled images after the labelled
    ones, labelled UNLABELLED, in every member's training rows; and the teacher for it (cross-fitted: with
    its rows' weights)."""
    teacher = self
    if self.held_out is not None:
      teacher = dataclasses.replace(self, row_weights=self._row_weights(data.dataset.train.ids))
    if self.unlabelled is None or not len(self.unlabelled):
      return data, teacher
    train = data.train_data.train
    images = np.concatenate([np.asarray(train.images), self.unlabelled])
    labels = np.concatenate([np.asarray(train.labels), np.full(len(self.unlabelled), UNLABELLED, train.labels.dtype)])
    members = [dataclasses.replace(m, train_index=np.arange(len(images))) for m in data.members]
    train_data = dataclasses.replace(data.train_data, train=Split(images, labels))   # a semi pool's rows kept
    if teacher.row_weights is not None:   # every model teaches the unlabelled images: none trained on them
      every = np.tile(self._weights(), (len(self.unlabelled), 1))
      teacher = dataclasses.replace(teacher, row_weights=np.concatenate([teacher.row_weights, every]))
    return dataclasses.replace(data, train_data=train_data, members=members), teacher

  def _weights(self) -> np.ndarray:
    return np.asarray([m.weight for m in self.models], np.float32)

  def _row_weights(self, ids) -> np.ndarray:
    """(rows, models): a model's weight where it held the row's image out; every model's where none did."""
    held = np.asarray([[i in ids_of for ids_of in self.held_out] for i in ids], bool).reshape(len(ids), -1)
    weights = np.where(held, self._weights(), 0.0).astype(np.float32)
    unheld = ~held.any(axis=1)
    weights[unheld] = self._weights()
    print(f'distill: cross-fitted targets for {int((~unheld).sum())} of {len(ids)} training images'
          + (f'; {int(unheld.sum())} no teacher model held out take every model\'s' if unheld.any() else ''))
    return weights

  def describe(self) -> list[dict]:
    return [{'path': str(m.path), 'weight': m.weight, 'model': m.metadata.get('model'),
             'fold': split_of(m), 'parameters': m.metadata.get('num_params')} for m in self.models]


def model_splits(models: list[MemberModel]) -> list:
  """Each model's dataset: its own data settings and split over its source, decoded once per source."""
  decoded, out = {}, []
  for m in models:
    data = m.settings.data
    key = repr(dataclasses.replace(data, split=None))
    if key not in decoded:
      decoded[key] = pipeline.decode_source(data, progress=False)
    out.append(pipeline.split_dataset(decoded[key], data.split))
  return out


def held_out_ids(splits: list) -> list[frozenset]:
  """Each model's validation images (ids), from `model_splits`."""
  return [frozenset(split.val.ids) for split in splits]


def teacher_trained_on(splits: list, ids) -> int:
  """How many of `ids` (the student's validation images) some teacher model trained on. Their scores may then be
  optimistic: what the teacher learnt of those images can reach the student through its targets (docs/deploy.md
  has a run where it did and runs where it did not). `splits`: the teacher models', from `model_splits`."""
  trained = frozenset().union(*(split.train.ids for split in splits))
  return sum(i in trained for i in ids)


def split_of(model: MemberModel) -> int:
  """The split a model validated on (its own config's data.fold; -1 the holdout)."""
  return model.settings.data.split.fold


def teacher_models(path: str) -> list[MemberModel]:
  """The models of the teacher workdir `path`, restored with their weights (`fpclass.infer.ensemble.workdir_models`:
  see the module's docstring)."""
  if not path:
    raise UserInputError('config.distill.teacher is empty: give the workdir of an ensemble (--mode ensemble), a '
                         'sweep, an auto run or a run')
  return workdir_models(path, 'config.distill.teacher')


def check_student(student: RunSettings, models: list[MemberModel], class_names, image_shape) -> None:
  """One line for a teacher of other classes, another input or another kind of head, and for a student that
  cannot take the images. `student`: the student's typed sections."""
  head = head_of(student)
  decode = student.data.decode
  for m in models:
    if tuple(m.metadata['class_names']) != tuple(class_names):
      raise UserInputError(f'config.distill.teacher: {m.path} was trained on classes {list(m.metadata["class_names"])}, '
                           f'the student\'s data has {list(class_names)}; distil a teacher of the same classes')
    theirs = m.settings.data.decode
    if theirs != decode:
      raise UserInputError(f'config.distill.teacher: {m.path} decodes its images as {_input(theirs)}, the student as '
                           f'{_input(decode)}; give the student the teacher\'s data.image_size, channels and resize')
    if (m.trained.task.head == 'multilabel') != (head == 'multilabel'):
      raise UserInputError(f'config.distill.teacher: {m.path} is {m.trained.task.head}, the student {head}; a '
                           'multi-label teacher teaches a multi-label student')
  run = student
  task = build_task(run, class_names, np.arange(len(class_names)), 1)
  try:   # the student's shapes only: nothing is computed
    jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), image_shape))
  except Exception as e:  # noqa: BLE001 - any shape failure is the student's size, said in one line
    detail = ' '.join(str(e).split())[:200]
    raise UserInputError(f'config.model.name={run.model.name!r}: the student cannot take the teacher\'s '
                         f'{"x".join(map(str, image_shape))} images ({type(e).__name__}: {detail}); choose another '
                         'student, or fields that fit the image size') from None


def _input(decode) -> str:
  return f'{decode.height}x{decode.width}x{decode.channels} ({decode.resize})'


def student_config(config) -> ml_collections.ConfigDict:
  """The config the student trains with: `config`, with no feature cache (the teacher needs the images in every
  step, which a head trained on cached features never sees)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.train.feature_cache = 'off'
  return out


def held_out_models(models: list[MemberModel], split: int) -> list[MemberModel]:
  """The teacher's models that validated on `split`: none of them trained on its validation images."""
  return [m for m in models if split_of(m) == split]


def comparison_splits(models: list[MemberModel], settings: DistillSettings, student: RunSettings) -> list[int]:
  """The splits to compare on: config.distill.folds, else every split a teacher model held out, each checked to
  be the student's own split of the same data (same folds, split seed and holdout fraction)."""
  own = student.data.split
  held = sorted({split_of(m) for m in models})
  splits = list(settings.folds) or held
  for m in models:
    theirs = m.settings.data.split
    if (theirs.num_folds, theirs.split_seed, theirs.val_fraction) != (own.num_folds, own.split_seed, own.val_fraction):
      raise UserInputError(f'config.distill: {m.path} split the data as data.num_folds={theirs.num_folds}, '
                           f'split_seed={theirs.split_seed}, val_fraction={theirs.val_fraction}, the student as '
                           f'{own.num_folds}, {own.split_seed}, {own.val_fraction}: the comparison needs images '
                           'neither saw; give the student the teacher\'s split (or --config.distill.compare=False)')
  missing = [s for s in splits if s not in held]
  if missing:
    raise UserInputError(f'config.distill.folds={tuple(settings.folds)}: no teacher model held out split(s) '
                         f'{missing}; the teacher\'s models validated on {held}')
  return splits


def unlabelled_images(settings: DistillSettings, student: RunSettings) -> np.ndarray | None:
  """config.distill.unlabelled decoded as the student's data, as `config.data.unlabelled` is
  (`fpclass.data.unlabelled.read_pool`): the source's decoded test images, or the readable images of a folder,
  glob or CSV (unreadable files are listed and skipped), without exact copies of its labelled images."""
  if not settings.unlabelled:
    return None
  data, train = student.data, student.train
  if train.class_weights or train.sampler == 'balanced':
    raise UserInputError('config.distill.unlabelled: unlabelled images have no class for config.train.class_weights '
                         "or the 'balanced' sampler; leave those at their defaults")
  dataset = pipeline.load_dataset(data, progress=False)
  pool = read_pool(settings.unlabelled, data, (dataset.train.images, dataset.val.images), dataset.test,
                   key='config.distill.unlabelled', path_column=('path', 'config.distill.unlabelled (its CSV)'))
  print(f'distill: {pool.describe()}')
  return pool.images


def images_per_second(batch_logits, images: np.ndarray, repeats: int = 3) -> float:
  """Images per second of one model's compiled predict on one batch: the best of `repeats` after a warm-up."""
  batch_logits(images)
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    np.asarray(batch_logits(images))
    best = min(best, time.perf_counter() - start)
  return len(images) / best


def teacher_images_per_second(models: list[MemberModel], images: np.ndarray) -> float:
  """The teacher's: every model on each image, one after another."""
  return 1.0 / sum(1.0 / images_per_second(m.trained.batch_logits, images) for m in models)


def metric_of(task: str) -> str:
  """The comparison's metric: accuracy for one label per image, mAP for multi-label."""
  return 'map' if task == metric_registry.MULTI else 'accuracy'


def corrected(values, ratio: float) -> dict:
  interval = stats.corrected_interval(values, ratio)
  return {'mean': interval.mean, 'low': interval.low, 'high': interval.high, 'n': interval.n}
