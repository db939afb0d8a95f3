"""Out-of-fold predictions: every member's probabilities on the examples it validated on, one file per variant.

    <variant folder>/oof_predictions.csv
      id       the example's id (its file name, or the source's id)
      row      its row in the variant's validation array (the pool for folds), so members can be matched
      split    the member's split: fold k, or -1 for the holdout or the source's own validation split
      seed     the member's seed
      label    its class name (multi-label: label_<class> 0/1 columns)
      p_<class>  the head's probabilities (softmax, sigmoid, or one sigmoid per class), uncalibrated

Written by the training loop for every plan, a solo run's single member too, from the logits each member was
selected with, so that ensembles, label-issue finding and calibration combine them later without running any
model again. Process 0 writes it (`fpclass.fileio`).
"""
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import metric_registry
from fpclass.errors import UserInputError
from fpclass.models.heads import probabilities

FILE = 'oof_predictions.csv'
# An ensemble workdir's own out-of-fold probabilities, one row per example: --mode ensemble's cross-fitted mix, or
# the fixed equal-weight mix of an auto run's final ensemble (fpclass.auto.final).
ENSEMBLE_FILE = 'ensemble_predictions.csv'


def frame(ids, class_names, head: str, results, val_labels: np.ndarray) -> pd.DataFrame:
  """One row per (member, validation example) of `results` (MemberResults with their val_logits)."""
  parts = []
  for r in results:
    index = np.asarray(r.member.val_index, np.int64)
    probs = probabilities(np.asarray(r.val_logits), head)
    labels = val_labels[index]
    part = {'id': [ids[i] for i in index], 'row': index, 'split': r.member.split, 'seed': r.member.seed}
    if head == 'multilabel':
      part.update({f'label_{name}': labels[:, k].astype(int) for k, name in enumerate(class_names)})
    else:
      part['label'] = [class_names[int(y)] for y in labels]
    part.update({f'p_{name}': probs[:, k] for k, name in enumerate(class_names)})
    parts.append(pd.DataFrame(part))
  return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def write(folder, data, results, head: str) -> pathlib.Path | None:
  """oof_predictions.csv of `results` in `folder` (`data`: the variant's `plan_data.VariantData`)."""
  if not results or any(r.val_logits is None for r in results):
    return None
  train_data = data.train_data
  if data.dataset is not None:
    ids = list(data.dataset.val.ids)
  else:
    decoded = data.decoded
    ids = list((decoded.val if decoded.val is not None else decoded.pool).ids)
  path = pathlib.Path(folder) / FILE
  fileio.write_csv(path, frame(ids, train_data.class_names, head, results, np.asarray(train_data.val.labels)))
  return path


def class_names(frame: pd.DataFrame) -> list[str]:
  return [c[2:] for c in frame.columns if c.startswith('p_')]


def labels_and_probabilities(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
  """(labels, probabilities, task) of a predictions frame: class indices (or a 0/1 matrix per label) in the
  order of its p_<class> columns."""
  names = class_names(frame)
  probs = frame[[f'p_{c}' for c in names]].to_numpy(np.float64)
  if f'label_{names[0]}' in frame.columns:
    return frame[[f'label_{c}' for c in names]].to_numpy(np.int64), probs, metric_registry.MULTI
  index = {c: i for i, c in enumerate(names)}
  return frame['label'].astype(str).map(index).to_numpy(np.int64), probs, metric_registry.SINGLE


def label_columns(frame: pd.DataFrame) -> list[str]:
  """The given-label columns: 'label', or one 'label_<class>' per class for multi-label."""
  return [c for c in frame.columns if c == 'label' or c.startswith('label_')]


def mean_by_id(frame: pd.DataFrame, keep=()) -> pd.DataFrame:
  """One row per example id, in first-seen order: the first row's label columns (and `keep` columns), the
  probabilities averaged over the rows (models, seeds) that predicted it, and `models`, how many did."""
  grouped = frame.groupby('id', sort=False)
  first = grouped[[*keep, *label_columns(frame)]].first()
  return first.join(grouped[[f'p_{c}' for c in class_names(frame)]].mean()).assign(models=grouped.size())


def scores(frame: pd.DataFrame) -> dict:
  """Every registered metric of the frame's task on its rows (one member's: its validation fold)."""
  labels, probs, task = labels_and_probabilities(frame)
  return metric_registry.score(labels, probs, task)


def read(folder) -> pd.DataFrame:
  """The out-of-fold predictions a plan wrote in `folder`, or a one-line error naming what is missing."""
  path = pathlib.Path(folder) / FILE
  if not path.is_file():
    raise UserInputError(f'{path}: no out-of-fold predictions here; train or sweep this workdir first (every '
                         'plan writes them)')
  return pd.read_csv(path, dtype={'id': str, 'label': str})
