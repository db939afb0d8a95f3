"""A trained workdir's out-of-distribution score and `unknown` threshold (`fpclass.deploy.ood_scores`,
`ood_threshold`), fitted once from the workdir's own splits and stored beside its checkpoints, then scored in the
program that predicts.

- One model (a run, a sweep's fold workdir, auto's final): the score's statistics come from its training split
  (pooled features, labels), the threshold from its validation split, which it never trained on, at
  config.ood.false_rejection (a combined score's threshold on scores each standardised on the other half of the
  split; the rate the reports give is cross-fitted, from images that set nothing: `ood_threshold.fit_held_out`).
  Stored atomically in `<workdir>/ood.npz` with the checkpoint it was fitted on, and fitted again when the
  checkpoint or the settings change, so any workdir, an older one too, gets it on first use by predict or
  export (serve, which writes nothing, fits in memory when the file is missing).
- An ensemble workdir: each model's own fit; the ensemble's score is the weighted mean of its models' scores,
  each standardised by its held-out scores, and its threshold the conformal quantile of that mean over the
  out-of-fold examples, each scored by the models that held it out.
`Scorer` computes (logits or mixed probabilities, score) in one jitted program: serve's, and the exported graph.
"""
import dataclasses
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze
from tqdm.auto import tqdm

from fpclass import fileio
from fpclass.config.outputs import OodSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.deploy import ood_scores as ood
from fpclass.deploy import ood_threshold
from fpclass.errors import UserInputError
from fpclass.infer.inference import Trained
from fpclass.models.heads import as_logits, probabilities
from fpclass.train import sidecar
from fpclass.train.batches import in_fixed_batches, predict_logits
from fpclass.train.task import TaskView

FILE = 'ood.npz'
FORMAT = 6   # 2: Mahalanobis stores the precision's Cholesky factor; 3: a combined score's standardisation;
#   4: standardised and thresholded on separate halves of the held-out images; 5: the input statistics;
#   6: the threshold on held-out scores each standardised on the other half
FEATURES = 'pre_logits'   # the pooled features every registered model records (CONTRIBUTING.md)
SCORE_NOTE = 'higher = less like the training images; unknown when ood_score > threshold'


def model_outputs(task, params, batch_stats, images_u8):
  """Traced: (logits, pooled features (N, D)) of uint8 images in inference mode."""
  logits, features, _ = task.apply(params, batch_stats, task.prepare(images_u8), train=False)
  if FEATURES not in features:
    raise UserInputError(f'config.ood: this model records no {FEATURES!r} features, which the OOD score needs; '
                         "use --config.ood.score='energy' or 'max_softmax', or --config.ood.enabled=False")
  pooled = features[FEATURES]
  return logits.astype(jnp.float32), pooled.astype(jnp.float32).reshape(pooled.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class OutputsPass(TaskView):
  """`predict` -> the logits and pooled features side by side, (N, L + D), for `predict_logits`'s batching."""

  def predict(self, params, batch_stats, images_u8):
    return jnp.concatenate(model_outputs(self.task, params, batch_stats, images_u8), axis=1)


def outputs(trained: Trained, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(logits, features) of `images` on the host, in fixed batches."""
  both = predict_logits(OutputsPass(trained.task), trained.state, images, batch_size)
  width = 1 if trained.task.head == 'sigmoid' else trained.task.num_classes
  return both[:, :width], both[:, width:]


@dataclasses.dataclass
class ModelOod:
  """One model's fitted score: its statistics, threshold, and held-out scores (ids, values) with their mean and
  spread, by which an ensemble standardises it. `record` is what ood.npz and the reports say about it."""
  statistics: ood.Statistics
  threshold: float
  held_out_ids: np.ndarray
  held_out_scores: np.ndarray
  record: dict

  @property
  def center(self) -> float:
    return float(np.mean(self.held_out_scores))

  @property
  def scale(self) -> float:
    return float(max(np.std(self.held_out_scores), 1e-6))


def fit_model(trained: Trained, run: RunSettings, settings: OodSettings) -> ModelOod:
  """Fits `trained`'s score on its training split and its threshold on its validation split (the split `run`, its
  training config, names, decoded through the cache as training decoded it)."""
  dataset = pipeline.load_dataset(run.data, progress=False)
  if tuple(dataset.class_names) != tuple(trained.class_names):
    raise UserInputError(f'config.ood: the data has classes {list(dataset.class_names)}, the model '
                         f'{list(trained.class_names)}; the OOD threshold is fitted on the data the model trained on')
  if len(dataset.val) == 0:
    raise UserInputError('config.ood: the run has no validation images to fit the OOD threshold on; set '
                         '--config.ood.enabled=False')
  batch = run.eval.batch_size
  linear = None
  if settings.score in ood.FEATURE_SCORES:
    train_logits, train_features = outputs(trained, dataset.train.images, batch)
    if settings.score in ood.HEAD_SCORES:
      linear = last_layer(trained.state.params, train_features, train_logits, settings.score)
  else:
    train_features = np.zeros((len(dataset.train), 0), np.float32)
  statistics = ood.fit_statistics(settings.score, trained.task.head, train_features, dataset.train.labels,
                                  settings.knn_k, settings.max_bank, seed=run.seed, images=dataset.train.images,
                                  linear=linear)
  val_logits, val_features = outputs(trained, dataset.val.images, batch)
  val_images = np.asarray(dataset.val.images)
  fit = ood_threshold.fit_held_out(statistics, val_logits, val_features, settings.false_rejection, run.seed, val_images)
  held_out = ood.scores(fit.statistics, val_logits, val_features, images=val_images)
  record = dict(format=FORMAT, **_settings_record(settings), checkpoint=trained.checkpoint, epoch=trained.epoch,
                threshold=fit.threshold, held_out=len(held_out), train_images=len(dataset.train),
                reached=fit.rate, roles=fit.roles, split=dataset.split_note)
  return ModelOod(fit.statistics, fit.threshold, np.asarray(dataset.val.ids, str), held_out, record)


def last_layer(params, features: np.ndarray, logits: np.ndarray, score: str) -> np.ndarray:
  """(D + 1, L): the model's last layer on its pooled features, kernel rows then the bias row: the Dense kernel
  of shape (D, L) in `params` that maps the training images' features to their logits (every registered model
  ends in one; CONTRIBUTING.md). Read from the parameters, not fitted: a fit on fewer images than features would
  reproduce the training logits and not the layer."""
  width, outputs_ = features.shape[1], logits.shape[1]
  flat = traverse_util.flatten_dict(unfreeze(params))
  tolerance = 0.02 * (1.0 + float(np.abs(logits).max()))   # a half-precision model's logits; another layer is far
  for path, kernel in flat.items():
    if path[-1] != 'kernel' or tuple(kernel.shape) != (width, outputs_):
      continue
    bias = np.asarray(flat.get((*path[:-1], 'bias'), np.zeros(outputs_)), np.float64)
    linear = np.concatenate([np.asarray(kernel, np.float64), bias[None]])
    if np.abs(features @ linear[:-1] + linear[-1] - logits).max() <= tolerance:
      return linear
  raise UserInputError(f'config.ood.score={score!r}: the model has no last Dense layer from its {width} pooled '
                       f'features to its {outputs_} logits; use another score')


def _settings_record(settings: OodSettings) -> dict:
  keys = ('score', 'false_rejection') + (('knn_k', 'max_bank') if settings.score == 'knn' else ())
  return {k: getattr(settings, k) for k in keys}


def save(path: pathlib.Path, fit: ModelOod) -> None:
  """One file, written atomically: the statistics, the held-out scores and the record (JSON)."""
  with fileio.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, record=np.str_(json.dumps(fit.record)), held_out_ids=fit.held_out_ids,
               held_out_scores=fit.held_out_scores, **fit.statistics.arrays())


def load(path: pathlib.Path, head: str) -> ModelOod | None:
  """The fit stored at `path`, or None when it is absent or unreadable (it is fitted again)."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as stored:
      record = json.loads(str(stored['record']))
      arrays = {k: stored[k] for k in ood.ARRAYS if k in stored}
      ids, held_out = stored['held_out_ids'], stored['held_out_scores']
  except (OSError, ValueError, KeyError):
    return None
  statistics = ood.Statistics(record['score'], head, k=int(record.get('knn_k', 1)), **arrays)
  if statistics.score == 'knn':
    statistics.k = int(min(statistics.k, len(statistics.bank)))
  return ModelOod(statistics, float(record['threshold']), ids, held_out, record)


def model_ood(trained: Trained, run: RunSettings, workdir, settings: OodSettings, store: bool = True) -> ModelOod:
  """The model's fit from `<workdir>/ood.npz` when it was made for this checkpoint and these settings, else
  fitted now (and stored when `store`)."""
  path = pathlib.Path(workdir) / FILE
  fit = load(path, trained.task.head)
  wanted = dict(format=FORMAT, **_settings_record(settings), checkpoint=trained.checkpoint, epoch=trained.epoch)
  if fit is not None and all(fit.record.get(k) == v for k, v in wanted.items()):
    return fit
  try:
    fit = fit_model(trained, run, settings)
  except UserInputError as e:
    if str(e).startswith('config.ood'):
      raise
    raise UserInputError(f'config.ood: the OOD threshold of {workdir} is fitted on its validation split, which '
                         f'cannot be read: {e}; or set --config.ood.enabled=False') from None
  where = 'in memory (serve writes nothing in the workdir)'
  if store:
    save(path, fit)
    where = f'stored in {path}'
  tqdm.write(f'OOD: {settings.score} score fitted on {fit.record["train_images"]} training images, threshold '
             f'{fit.threshold:.4g} at {settings.false_rejection:.0%} false rejection of {fit.record["held_out"]} '
             f'validation images ({fit.record["reached"]:.1%} flagged, cross-fitted); {where}'
             + _too_few(fit.threshold, settings),
             file=sys.stderr)   # a note: a server's first line on stdout is its address
  return fit


@dataclasses.dataclass
class EnsembleOod:
  """An ensemble workdir's score: its models' fits, their weights, and the threshold of the weighted mean."""
  members: list
  weights: list
  threshold: float
  record: dict
  held_out_scores: np.ndarray   # the out-of-fold examples' scores the threshold was set on


def is_ensemble(model) -> bool:
  """An ensemble workdir's model (`fpclass.infer.ensemble.WeightedEnsemble`: weighted members), not one run's."""
  return hasattr(model, 'members')


def ensemble_ood(ensemble, settings: OodSettings, store: bool = True) -> EnsembleOod:
  """Each model's fit (stored in its own workdir), and the ensemble's threshold on their out-of-fold scores:
  an example's score is the weighted mean of the standardised scores of the models that held it out."""
  fits = [model_ood(m.trained, m.settings, m.path, settings, store) for m in ensemble.members]
  total, weight = {}, {}
  for fit, w in zip(fits, ensemble.weights):
    for i, z in zip(fit.held_out_ids.tolist(), (fit.held_out_scores - fit.center) / fit.scale):
      total[i] = total.get(i, 0.0) + w * z
      weight[i] = weight.get(i, 0.0) + w
  held_out = np.asarray([total[i] / weight[i] for i in total])
  threshold = ood_threshold.conformal_threshold(held_out, settings.false_rejection)
  record = dict(**_settings_record(settings), threshold=threshold, held_out=len(held_out),
                reached=ood_threshold.cross_fitted_rate(held_out, settings.false_rejection, seed=0),
                note='the weighted mean of the models\' scores, each standardised by its own held-out scores; '
                     'threshold on the out-of-fold examples, each scored by the models that held it out; the rate '
                     f'flagged is cross-fitted ({ood_threshold.CROSS_FOLDS} folds): each example against a threshold set '
                     'without it')
  return EnsembleOod(fits, list(ensemble.weights), threshold, record, held_out)


def for_model(model, workdir, settings: OodSettings, store: bool = True):
  """The fitted score of what `load_model` returned: a run's (`model_ood`, on the data, split and seed its
  sidecar records) or an ensemble's (`ensemble_ood`)."""
  if is_ensemble(model):
    return ensemble_ood(model, settings, store)
  return model_ood(model, sidecar.settings_from_json(model.metadata['config']), workdir, settings, store)


def configured_scorer(settings: OodSettings, workdir, model) -> 'Scorer | None':
  """`model`'s scorer (what `load_model` returned, or a `WeightedEnsemble` of a workdir's models) with its threshold,
  fitted and stored on first use; None when config.ood (`settings`) is off. What predict and label_next score with."""
  if not settings.enabled:
    return None
  return Scorer(model, for_model(model, workdir, settings))


def _too_few(threshold: float, settings: OodSettings) -> str:
  if np.isfinite(threshold):
    return ''
  return (f'; too few held-out images for a {settings.false_rejection:.0%} rate (it needs '
          f'{math.ceil(1 / settings.false_rejection) - 1}), so no image is flagged unknown: raise '
          '--config.ood.false_rejection or validate on more images')


def describe(fitted) -> dict:
  """What /metadata, model.json and the reports say about the score: its kind, threshold (None when there were
  too few held-out images for the rate: then no image is flagged) and rates."""
  record = fitted.record
  threshold = fitted.threshold if np.isfinite(fitted.threshold) else None
  return {'score': record['score'], 'threshold': threshold, 'false_rejection': record['false_rejection'],
          'held_out': record['held_out'], 'held_out_flagged': record['reached'], 'note': SCORE_NOTE}


class Scorer:
  """(logits, score) of a batch of uint8 images in one program: a run's logits, or an ensemble's logits of its
  mixed probabilities (`heads.as_logits`, as `WeightedEnsemble.batch_logits`), with the fitted score."""

  def __init__(self, model, fitted):
    self.model, self.fitted = model, fitted
    self.ensemble = is_ensemble(model)
    self._program = jax.jit(self.traced)

  @property
  def variables(self):
    if self.ensemble:
      return self.model.variables
    return self.model.state.params, self.model.state.batch_stats

  @property
  def threshold(self) -> float:
    return self.fitted.threshold

  def traced(self, variables, images_u8):
    """(a run's logits or an ensemble's mixed probabilities, ood score (N,)) of a uint8 batch, traceable: the
    graph export writes with its two outputs."""
    if not self.ensemble:
      logits, features = model_outputs(self.model.task, *variables, images_u8)
      return logits, ood.scores(self.fitted.statistics, logits, features, xp=jnp, images=images_u8)
    mixed, standardised = [], []
    for member, (params, batch_stats), fit in zip(self.model.members, variables, self.fitted.members):
      logits, features = model_outputs(member.trained.task, params, batch_stats, images_u8)
      mixed.append(probabilities(logits, member.trained.task.head, xp=jnp))
      standardised.append((ood.scores(fit.statistics, logits, features, xp=jnp, images=images_u8) - fit.center)
                          / fit.scale)
    weights = self.model.weights   # the ensemble's mix (`fpclass.infer.ensemble.weighted_mean`), and the scores'
    return (sum(w * p for w, p in zip(weights, mixed)) / sum(weights),
            sum(w * z for w, z in zip(weights, standardised)) / sum(weights))

  def batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, scores) of one batch on the host; each batch size compiles once."""
    output, score = jax.device_get(self._program(self.variables, images))
    logits = as_logits(output, self.model.task.head) if self.ensemble else np.asarray(output)
    return logits, np.asarray(score, np.float64)

  def outputs(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, scores) of any number of images, in fixed batches of `batch_size` (the last padded): the model runs
    once for both, as predict needs them (without test-time augmentation)."""
    return in_fixed_batches(self.batch, images, (min(batch_size, len(images)),))

  def scores(self, images: np.ndarray, batch_size: int) -> np.ndarray:
    """(N,) scores of any number of images, in fixed batches of `batch_size` (the last padded)."""
    if len(images) == 0:
      return np.zeros(0)
    return self.outputs(images, batch_size)[1]
