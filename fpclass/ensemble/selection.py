"""Ensemble selection over a sweep's variants or an auto run's trials, from their out-of-fold predictions.

A candidate is a variant (`<workdir>/<variant>/`) or a trial (`<workdir>/trials/trial-NNNN/`): its probabilities
are the mean over its seeds of oof_predictions.csv (`fpclass.train.oof`) per example, and its models the fold
workdirs in its folder. The selection itself, and its cross-fitted score, are `fpclass.ensemble.caruana`'s.
"""
import dataclasses
import pathlib
import time

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import metric_registry
from fpclass.data import pipeline
from fpclass.data.source import natural_key
from fpclass.errors import UserInputError
from fpclass.infer import ensemble as ensemble_lib
from fpclass.infer.ensemble import member_workdirs
from fpclass.infer.inference import load_trained
from fpclass.train import oof, sidecar
from fpclass.train import workdir_layout as layout
from fpclass.train.plan import EXPERIMENT_FILE


@dataclasses.dataclass
class Candidate:
  name: str
  folder: pathlib.Path
  probabilities: np.ndarray   # (N, K) in the pool's example order: the mean over its seeds
  models: list                # its fold workdirs (pathlib.Path)

  @property
  def num_params(self) -> int:
    return int(sidecar.read_metadata(self.models[0]).get('num_params') or 0)


@dataclasses.dataclass
class Pool:
  """The candidates of a workdir, aligned on the examples they all predicted."""
  ids: list
  labels: np.ndarray          # (N,) class indices, or (N, K) 0/1 for multi-label
  folds: np.ndarray           # (N,) the split each example was held out in (-1: a single validation split)
  task: str
  class_names: list
  candidates: list
  notes: list                 # candidates left out, and why

  @property
  def stacked(self) -> np.ndarray:
    return np.stack([c.probabilities for c in self.candidates])


def candidate_folders(workdir) -> list[pathlib.Path]:
  """An auto run's trials, or a sweep's variant folders, that hold out-of-fold predictions."""
  workdir = pathlib.Path(workdir)
  if (workdir / layout.TRIALS).is_dir():
    folders = [p for p in (workdir / layout.TRIALS).iterdir() if layout.is_trial_name(p.name)]
  else:
    folders = [p for p in workdir.iterdir() if p.is_dir() and (p / EXPERIMENT_FILE).is_file()] \
        if workdir.is_dir() else []
  return sorted((p for p in folders if (p / oof.FILE).is_file()), key=lambda p: natural_key(p.name))


def read_pool(workdir, names=()) -> Pool:
  """The candidates under `workdir` (only `names` when given), each one's probabilities averaged over its seeds
  and matched by example id; a candidate that predicted other examples, or has no fold models, is left out."""
  folders = candidate_folders(workdir)
  known = [p.name for p in folders]
  if names:
    unknown = [n for n in names if n not in known]
    if unknown:
      raise UserInputError(f'config.ensemble.candidates: {unknown} not found in {workdir}; its candidates are {known}')
    folders = [p for p in folders if p.name in names]
  if not folders:
    raise UserInputError(f'{workdir}: no candidates (sweep variants or auto trials with {oof.FILE}); run --mode '
                         'sweep or --mode auto with this --workdir first')
  frames, notes = {}, []
  for folder in folders:
    if not member_workdirs(folder):
      notes.append(f'{folder.name}: no fold models in its folder')
      continue
    frames[folder.name] = (folder, _mean_over_seeds(oof.read(folder), folder))
  if not frames:
    raise UserInputError(f'{workdir}: no candidate has fold models to predict with')
  reference = max(frames.values(), key=lambda f: len(f[1]))[1]
  ids, class_names = list(reference.index), oof.class_names(reference)
  candidates = []
  for name, (folder, frame) in frames.items():
    if oof.class_names(frame) != class_names:
      raise UserInputError(f'{folder / oof.FILE}: classes {oof.class_names(frame)} differ from {class_names}')
    if set(frame.index) != set(ids):
      notes.append(f'{name}: predicted {len(frame)} examples, not the {len(ids)} of the others')
      continue
    if not frame['split'].loc[ids].equals(reference['split'].loc[ids]):
      raise UserInputError(f'{folder / oof.FILE}: its folds differ from the other candidates\' (another '
                           'data.split_seed or data.num_folds?); ensemble the runs of one split')
    labels = oof.label_columns(frame)
    if not frame[labels].loc[ids].equals(reference[labels].loc[ids]):
      raise UserInputError(f'{folder / oof.FILE}: its examples carry other labels than the other candidates\' (a '
                           'relabelled run?); ensemble the runs of one labelling')
    candidates.append(Candidate(name, folder, oof.labels_and_probabilities(frame.loc[ids].reset_index())[1],
                                member_workdirs(folder)))
  if not candidates:
    raise UserInputError(f'{workdir}: no candidate to ensemble: ' + '; '.join(notes))
  labels, _, task = oof.labels_and_probabilities(reference.loc[ids].reset_index())
  return Pool(ids, labels, reference['split'].loc[ids].to_numpy(np.int64), task, class_names, candidates, notes)


def _mean_over_seeds(frame: pd.DataFrame, folder) -> pd.DataFrame:
  """One row per example id: its label, split and probabilities averaged over the rows (seeds) that predicted it."""
  if frame.groupby('id', sort=False)['split'].nunique().gt(1).any():
    raise UserInputError(f'{folder / oof.FILE}: an example was held out in two folds; its ids are not unique')
  return oof.mean_by_id(frame, keep=('split',)).drop(columns='models')


def resolve_metric(name: str, task: str) -> metric_registry.Metric:
  """config.ensemble.metric, or the task's headline when empty."""
  name = name or metric_registry.summarised(task)[0]
  metric = metric_registry.REGISTRY.get(name)
  if metric is None or not metric.applies_to(task):
    valid = [m.name for m in metric_registry.for_task(task)]
    raise UserInputError(f'config.ensemble.metric={name!r}: not a registered metric of a {task} task; one of {valid}')
  return metric


def workdir_metadata(out: pathlib.Path, members: list, metric: str) -> dict:
  """`fpclass.infer.ensemble.workdir_metadata` of (Candidate, weight) pairs."""
  return ensemble_lib.workdir_metadata(out, [(c.folder, c.models, w) for c, w in members], metric)


def ms_per_image(model: pathlib.Path, images: np.ndarray, repeats: int = 10) -> float:
  """Milliseconds per image of one model's `Trained.probabilities` on the batch `images`, compiled first."""
  trained = load_trained(sidecar.config_from_json(sidecar.read_metadata(model)['config']), model)
  trained.probabilities(images, len(images))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    trained.probabilities(images, len(images))
    seconds.append(time.perf_counter() - start)
  return 1000.0 * min(seconds) / len(images)


def examples(pool: Pool):
  """The decoded split the candidates validated on, and each pooled example's position in it."""
  decoded = pipeline.decode_source(sidecar.stored_settings(pool.candidates[0].models[0]).data)
  split = decoded.val if decoded.val is not None else decoded.pool
  index = {str(i): k for k, i in enumerate(split.ids)}
  missing = [i for i in pool.ids if i not in index]
  if missing:
    raise UserInputError(f'{pool.candidates[0].folder}: examples {missing[:3]} of its out-of-fold predictions are '
                         'not in the data its config reads now (data.root moved or changed?)')
  return split, np.asarray([index[i] for i in pool.ids])


def write_predictions(path, pool: Pool, probabilities: np.ndarray) -> None:
  """The pooled examples' ids, splits and labels with `probabilities` (the ensemble's cross-fitted ones)."""
  frame = pd.DataFrame({'id': pool.ids, 'split': pool.folds})
  if pool.task == metric_registry.MULTI:
    frame = frame.assign(**{f'label_{c}': pool.labels[:, k] for k, c in enumerate(pool.class_names)})
  else:
    frame['label'] = [pool.class_names[int(y)] for y in pool.labels]
  fileio.write_csv(path, frame.assign(**{f'p_{c}': probabilities[:, k] for k, c in enumerate(pool.class_names)}))
