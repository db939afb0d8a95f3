"""Models restored together for prediction: one run's workdir, or the fold models of a sweep experiment
folder (`<sweep workdir>/<variant>/fold0/`, `fold1/`, ...: each an ordinary workdir).

Predictions apply each model's stored temperature (fpclass.analysis.calibration) to its logits, or to its TTA
logits (fpclass.infer.tta), optionally average over a horizontal flip, then average the models' probabilities
(for a multi-label model, each class's sigmoid), decided with the stored binary threshold (`decision_threshold`)
or per-label thresholds (`label_thresholds`), which every model must share. An ensemble workdir (`--mode
ensemble`) names its members and weights in its metadata.json (`ENSEMBLE_KEY`): `WeightedEnsemble` averages them
with those weights (`weighted_mean`) under the ensemble's calibration, through each member's program for predict,
and through one program of them all (`mixed_probabilities`) for serve and export.
"""
import copy
import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fpclass.analysis.calibration import Decision, scaled_probabilities
from fpclass.config.inputs import DecodeSettings
from fpclass.config.run import RunSettings
from fpclass.data.source import natural_key
from fpclass.errors import UserInputError
from fpclass.infer import tta
from fpclass.infer.inference import Trained, load_trained
from fpclass.models.heads import as_logits, probabilities
from fpclass.train import sidecar


@dataclasses.dataclass
class MemberModel:
  path: pathlib.Path
  config: ml_collections.ConfigDict   # the given config with this model's split and seed (from its sidecar)
  metadata: dict
  trained: Trained | None             # None when loaded with restore=False (the sidecar alone)
  weight: float = 1.0                 # its share in a weighted ensemble's mean (an ensemble workdir's)
  calibrates_mix: bool = False        # its calibration is an ensemble workdir's: its temperature scales the mix

  @property
  def calibration(self) -> dict | None:
    return self.metadata.get('calibration')

  @functools.cached_property
  def settings(self) -> RunSettings:
    """Its config, parsed once: where a member's stored config enters the flow."""
    return self.trained.settings if self.trained is not None else RunSettings.from_config(self.config)


# The keys that place a model on its validation split; a member's own values come from its sidecar.
SPLIT_KEYS = ('seed', 'data.fold', 'data.num_folds', 'data.split_seed', 'data.val_fraction')
# metadata.json's key of an ensemble workdir: {'members': [{'folder': relative path, 'weight', 'models': [names]}]}.
ENSEMBLE_KEY = 'ensemble'


def member_workdirs(workdir) -> list[pathlib.Path]:
  """The sub-folders of `workdir` that are trained runs (hold a metadata.json), in natural order."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    return []
  return sorted((p for p in workdir.iterdir() if p.is_dir() and (p / sidecar.METADATA).is_file()), key=lambda p: natural_key(p.name))


def workdir_metadata(out: pathlib.Path, members: list, metric: str) -> dict:
  """An ensemble workdir's metadata.json, members given as (folder, fold workdirs, weight): the heaviest member's
  first model's sidecar (class names, input and config, which submit and predict read), and the members' folders
  (relative to `out`), models and weights under ENSEMBLE_KEY (kind 'caruana'; a caller may name another)."""
  top = max(members, key=lambda m: m[2])[1]
  metadata = sidecar.read_metadata(top[0])
  metadata.pop('calibration', None)   # the members' own: fitted on their probabilities, not the mix's
  params = sum(int(sidecar.read_metadata(models[0]).get('num_params') or 0) * len(models) for _, models, _ in members)
  metadata.update(model='ensemble', num_params=params)
  metadata[ENSEMBLE_KEY] = dict(kind='caruana', metric=metric, members=[
      dict(folder=os.path.relpath(folder, out), weight=float(w), models=[p.name for p in models])
      for folder, models, w in members])
  return metadata


def member_config(config, metadata: dict) -> ml_collections.ConfigDict:
  """`config` with the split and seed the member was trained with."""
  out = copy.deepcopy(config)
  stored = metadata['config']
  for key in SPLIT_KEYS:
    *parents, leaf = key.split('.')
    source, target = stored, out
    for p in parents:
      source, target = source[p], target[p]
    target[leaf] = source[leaf]
  return out


def load_members(config, workdir, folds: bool, restore: bool = True) -> list[MemberModel]:
  """The fold models under `workdir` (folds=True), or the run in `workdir` itself; with restore=False their
  sidecars only (no checkpoint is read)."""
  workdir = pathlib.Path(workdir)
  record = ensemble_record(workdir)
  if record is not None:
    return _weighted_members(workdir, record, restore)
  if folds:
    paths = member_workdirs(workdir)
    if not paths:
      raise UserInputError(f'config.submit.average_folds=True: {workdir} holds no fold model folders (fold0/, '
                           'fold1/, ...); point --workdir at a sweep experiment folder, e.g. runs/sweep/exp4')
  else:
    paths = [workdir]
  members = []
  for path in paths:
    metadata = sidecar.read_metadata(path)
    if metadata is None:
      hint = (sidecar.model_elsewhere(path) or
              ('; it holds fold models, so pass --config.submit.average_folds=True' if member_workdirs(path) else
               '; run --mode train with this --workdir first'))
      raise UserInputError(f'{path}: no trained run here ({sidecar.METADATA} is missing){hint}')
    cfg = member_config(config, metadata)
    members.append(MemberModel(path, cfg, metadata, load_trained(cfg, path) if restore else None))
  names = {tuple(m.metadata['class_names']) for m in members}
  if len(names) > 1:
    raise UserInputError(f'the models under {workdir} were trained on different classes: {sorted(names)}')
  return members


def predict_probabilities(members: list[MemberModel], images: np.ndarray, batch_size: int,
                          tta_hflip: bool = False, calibrated: bool = True,
                          tta_settings: tta.TTA | None = None, section: str = 'submit') -> np.ndarray:
  """Mean over models (and over the image and its mirror with tta_hflip) of each model's class
  probabilities, temperature-scaled when `calibrated` and the model's sidecar has a temperature (an ensemble
  workdir's: the mean, as `WeightedEnsemble`'s decision scales it). With `tta_settings` on, each view's logits are
  its TTA logits; a stored calibration must have been fitted on those (`config.<section>.tta*`)."""
  tta_settings = tta_settings or tta.TTA()
  if calibrated:
    for member in members:
      tta.check_calibration(member.calibration, tta_settings, section)
  views = [images, images[:, :, ::-1, :]] if tta_hflip else [images]
  total = None
  for member in members:
    own = calibrated and not member.calibrates_mix
    temperature = (member.calibration or {}).get('temperature', 1.0) if own else 1.0
    for view in views:
      logits = member.trained.logits(np.ascontiguousarray(view), batch_size, tta_settings=tta_settings)
      probs = scaled_probabilities(logits, member.trained.task.head, temperature) * member.weight
      total = probs if total is None else total + probs
  mean = total / (sum(m.weight for m in members) * len(views))
  mixed_temperature = (members[0].calibration or {}).get('temperature') or 1.0
  if calibrated and members[0].calibrates_mix and mixed_temperature != 1.0:   # as WeightedEnsemble's decision
    head = members[0].trained.task.head
    mean = scaled_probabilities(as_logits(mean, head), head, mixed_temperature)
  return mean


def decision_threshold(members: list[MemberModel], calibrated: bool) -> float | None:
  """The stored binary threshold when every model has the same one (a sweep stores one per experiment)."""
  if not calibrated:
    return None
  thresholds = {(m.calibration or {}).get('threshold') for m in members}
  if len(thresholds) != 1:
    raise UserInputError('the models have different stored thresholds; run --mode calibrate on their folder, '
                         'or pass --config.submit.calibrated=False')
  return thresholds.pop()


def label_thresholds(members: list[MemberModel], calibrated: bool) -> np.ndarray:
  """(K,) the multi-label decision thresholds, in class order: the per-label thresholds stored by --mode
  calibrate when `calibrated` and every model has the same ones, else 0.5 for every class. The models'
  probabilities are averaged before the decision, so one set of thresholds must hold for all of them."""
  class_names = tuple(members[0].metadata['class_names'])
  if not calibrated:
    return np.full(len(class_names), 0.5)
  stored = {Decision.from_stored('multilabel', m.calibration or {}, class_names).thresholds for m in members}
  if len(stored) != 1:
    raise UserInputError('the models have different stored per-label thresholds; run --mode calibrate on their '
                         'folder, or pass --config.submit.calibrated=False')
  return np.asarray(stored.pop(), np.float64)


def ensemble_record(workdir) -> dict | None:
  """The members and weights an ensemble workdir's metadata.json lists, or None for any other folder."""
  metadata = sidecar.read_metadata(workdir)
  return (metadata or {}).get(ENSEMBLE_KEY)


def _weighted_members(workdir: pathlib.Path, record: dict, restore: bool) -> list[MemberModel]:
  """An ensemble's models, each restored with its own training config and weighted by its member's weight over
  the member's model count. The ensemble's own calibration (none, multi-label thresholds of --mode ensemble, or
  --mode calibrate's, all fitted on its out-of-fold mix) replaces theirs: the weights were chosen on their
  uncalibrated probabilities. Every
  model must decode its input as the ensemble does: one decoded image feeds them all."""
  ensemble_metadata = sidecar.read_metadata(workdir)
  calibration = ensemble_metadata.get('calibration')
  decoded = RunSettings.from_config(sidecar.config_from_json(ensemble_metadata['config'])).data.decode
  members = []
  for entry in record['members']:
    for name in entry['models']:
      path = workdir / entry['folder'] / name   # not resolved: relative to workdir, as reports name it
      metadata = sidecar.read_metadata(path)
      if metadata is None:
        raise UserInputError(f'{path}: a model of the ensemble in {workdir} is missing ({sidecar.METADATA}); '
                             'run --mode ensemble again on its sweep or auto workdir')
      cfg = sidecar.config_from_json(metadata['config'])
      member = MemberModel(path, cfg, dict(metadata, calibration=calibration),
                           load_trained(cfg, path) if restore else None,
                           float(entry['weight']) / len(entry['models']), calibrates_mix=True)
      own = member.settings.data.decode
      if own != decoded:
        raise UserInputError(f'{path}: decodes its images as {_input_text(own)}, the ensemble in {workdir} as '
                             f'{_input_text(decoded)}; ensemble only models of one input (data.image_size, '
                             'data.channels, data.resize)')
      members.append(member)
  if len({tuple(m.metadata['class_names']) for m in members}) > 1:
    raise UserInputError(f'the models of the ensemble in {workdir} were trained on different classes')
  return members


def _input_text(settings: DecodeSettings) -> str:
  return f'{settings.height}x{settings.width}x{settings.channels} ({settings.resize})'


def weighted_mean(probabilities_by_model, weights):
  """The ensemble's mix: the models' class probabilities averaged with their weights (numpy or jax arrays)."""
  total = sum(w * p for w, p in zip(weights, probabilities_by_model))
  return total / sum(weights)


@dataclasses.dataclass
class WeightedEnsemble:
  """An ensemble workdir's members behind the prediction interface of one restored model (`Trained.logits`,
  `batch_logits`, `class_names`, `task.head`, `metadata`), so predict and serve read it as they read a run: its
  logits are those of the weighted mean probabilities (`heads.as_logits`). The ensemble's stored temperature
  (`metadata['calibration']`, `Decision`) divides these logits: it scales the mix, after the models' uncalibrated
  probabilities are averaged, since --mode calibrate fits it on the mix's out-of-fold probabilities."""
  members: list[MemberModel]
  metadata: dict
  checkpoint: str = 'ensemble'
  epoch: int = 0

  @property
  def task(self):
    return self.members[0].trained.task

  @property
  def class_names(self) -> tuple:
    return self.members[0].trained.class_names

  @property
  def weights(self) -> list[float]:
    return [m.weight for m in self.members]

  @property
  def settings(self) -> RunSettings:
    """The heaviest member's typed sections: every member decodes its input as the ensemble does."""
    return max(self.members, key=lambda m: m.weight).settings

  def probabilities(self, images: np.ndarray, batch_size: int, chunk: int | None = None,
                    tta_settings: tta.TTA | None = None, first_batch: int = 0) -> np.ndarray:
    """The mix through each member's own program (and TTA), on the host in float64: what predict writes."""
    return weighted_mean([probabilities(m.trained.logits(images, batch_size, chunk, tta_settings, first_batch),
                                        m.trained.task.head) for m in self.members], self.weights)

  def logits(self, images: np.ndarray, batch_size: int, chunk: int | None = None,
             tta_settings: tta.TTA | None = None, first_batch: int = 0) -> np.ndarray:
    return as_logits(self.probabilities(images, batch_size, chunk, tta_settings, first_batch), self.task.head)

  @property
  def variables(self) -> tuple:
    """Every model's (params, batch_stats), in member order: the arguments of `mixed_probabilities`."""
    return tuple((m.trained.state.params, m.trained.state.batch_stats) for m in self.members)

  def mixed_probabilities(self, variables, images_u8):
    """Traceable: every model's prediction of the uint8 batch (its own preprocessing inside), mixed as
    `probabilities` mixes them. One program for serve (`batch_logits`) and the one graph of an export."""
    return weighted_mean([probabilities(m.trained.task.predict(params, batch_stats, images_u8),
                                        m.trained.task.head, xp=jnp)
                          for m, (params, batch_stats) in zip(self.members, variables)], self.weights)

  @functools.cached_property
  def _mixed_program(self):
    return jax.jit(self.mixed_probabilities)

  def batch_logits(self, images: np.ndarray) -> np.ndarray:
    """The logits of one batch (a fixed size: each size compiles once) through the one mixing program."""
    return as_logits(np.asarray(self._mixed_program(self.variables, images)), self.task.head)

  def describe(self) -> dict:
    """What /metadata and an export's model.json say about the ensemble: its kind, the selection metric, each
    member's folder, weight and models, and each model's share of the mix."""
    record = self.metadata[ENSEMBLE_KEY]
    total = sum(self.weights)
    # Relative to the ensemble workdir, in the order `_weighted_members` loads them.
    paths = [str(pathlib.PurePath(m['folder'], name)) for m in record['members'] for name in m['models']]
    return {'kind': record.get('kind'), 'metric': record.get('metric'),
            'members': [{'folder': m['folder'], 'weight': float(m['weight']), 'models': list(m['models'])}
                        for m in record['members']],
            'models': [{'path': path, 'model': m.metadata.get('model'), 'weight': m.weight / total,
                        'checkpoint': m.trained.checkpoint if m.trained else None,
                        'epoch': m.trained.epoch if m.trained else None,
                        'normalisation': m.metadata.get('normalisation')} for path, m in zip(paths, self.members)]}


def as_one_model(members: list[MemberModel], workdir) -> tuple:
  """(model, folder) of models restored together, for what scores them as one (the OOD score, stored in the
  folder): the one run itself, else a `WeightedEnsemble` of them (their weights: an ensemble workdir's, or equal)."""
  if len(members) == 1 and not members[0].calibrates_mix:
    return members[0].trained, members[0].path
  return WeightedEnsemble(members, members[0].metadata), pathlib.Path(workdir)


def workdir_models(path, key: str) -> list[MemberModel]:
  """The models of the trained workdir `path`, restored with their weights: an ensemble workdir's weighted models,
  one run, an auto run's final model, one sweep variant's fold models, or a sweep root's (every variant with the
  same share). Errors name `key`, the flag that gave `path`."""
  workdir = pathlib.Path(path)
  if not workdir.is_dir():
    raise UserInputError(f'{key}={str(path)!r}: no such folder')
  if ensemble_record(workdir) is not None:
    return list(load_model(sidecar.stored_config(workdir), workdir).members)
  if sidecar.read_metadata(workdir) is not None:
    return [_restored(workdir, 1.0)]
  if (workdir / sidecar.AUTO_FINAL / sidecar.METADATA).is_file():   # an auto run's final model: its fold models
    return workdir_models(workdir / sidecar.AUTO_FINAL, key)        # as one ensemble, or a refit
  folds = member_workdirs(workdir)
  if folds:   # one sweep variant: its fold models
    return [_restored(p, 1.0) for p in folds]
  variants = [member_workdirs(v) for v in sorted(workdir.iterdir()) if v.is_dir()]
  variants = [v for v in variants if v]
  if variants:   # a sweep's root: every variant, each with the same share
    return [_restored(p, 1.0 / len(v)) for v in variants for p in v]
  raise UserInputError(f'{key}={str(path)!r}: no trained model in it (an ensemble workdir, a sweep, an auto run or '
                       'a run holds a metadata.json, or fold workdirs that do)')


def _restored(path: pathlib.Path, weight: float) -> MemberModel:
  metadata = sidecar.read_metadata(path)
  config = sidecar.config_from_json(metadata['config'])
  return MemberModel(path, config, metadata, load_trained(config, path), weight)


def load_model(config, workdir, explained: bool = False):
  """The model of `workdir` for prediction: its selected checkpoint (`load_trained`), or for an ensemble workdir
  its weighted members (`WeightedEnsemble`). `explained`: Grad-CAM is asked for, which needs one model."""
  record = ensemble_record(workdir)
  if record is None:
    return load_trained(config, workdir)
  if explained:
    raise UserInputError(f'{workdir} is an ensemble workdir (--mode ensemble): Grad-CAM explains one '
                         'model; pass --config.predict.explain=False, or predict with one member\'s workdir')
  metadata = sidecar.read_metadata(workdir)
  members = _weighted_members(pathlib.Path(workdir), record, restore=True)
  return WeightedEnsemble(members, metadata, f'{len(members)}-model ensemble')
