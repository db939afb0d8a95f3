"""Seeded multi-label splits, stratified per label: a validation holdout, and k-fold indices.

The multi-label twin of `fpclass.data.splits`: the iterative stratification of Sechidis et al. (2011), from
the `iterative-stratification` package, keeps each label's share of positives close to even across the
parts, rare labels first. A label with no positive in a training part cannot be learnt there: that is
logged as a warning naming the label and the folds.
"""
import logging

import numpy as np

from fpclass.errors import UserInputError


def multilabel_holdout_indices(indicator: np.ndarray, fraction: float, seed: int, class_names=None):
  """(train_index, val_index): a holdout of about `fraction` of the images, stratified per label."""
  if not 0.0 < fraction < 1.0:
    raise UserInputError(f'config.data.val_fraction={fraction}: must be in (0, 1)')
  indicator = _check(indicator)
  from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # lazy: needed by multi-label runs only
  split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
  train, val = next(split.split(np.zeros(len(indicator)), indicator))
  _warn_unlearnable(indicator, [np.sort(train)], class_names, 'the holdout')
  return np.sort(train), np.sort(val)


def multilabel_kfold_indices(indicator: np.ndarray, num_folds: int, seed: int, class_names=None):
  """[(train_index, val_index)] for each of `num_folds` folds, stratified per label."""
  if num_folds < 2:
    raise UserInputError(f'config.data.num_folds={num_folds}: must be at least 2')
  indicator = _check(indicator)
  if num_folds > len(indicator):
    raise UserInputError(f'config.data.num_folds={num_folds}: more folds than the {len(indicator)} images')
  from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # lazy: needed by multi-label runs only
  folds = MultilabelStratifiedKFold(num_folds, shuffle=True, random_state=seed)
  out = [(np.sort(t), np.sort(v)) for t, v in folds.split(np.zeros(len(indicator)), indicator)]
  _warn_unlearnable(indicator, [t for t, _ in out], class_names, 'fold')
  return out


def _check(indicator) -> np.ndarray:
  indicator = np.asarray(indicator)
  if indicator.ndim != 2 or indicator.shape[1] < 2 or not np.isin(indicator, (0, 1)).all():
    raise ValueError(f'expected an (N, K >= 2) 0/1 indicator matrix, got shape {indicator.shape}')
  return indicator.astype(bool)


def _warn_unlearnable(indicator, train_parts, class_names, what) -> None:
  """Logs, per label, the training parts that hold none of its positives."""
  names = list(class_names) if class_names is not None else [str(k) for k in range(indicator.shape[1])]
  total = indicator.sum(0)
  for k, name in enumerate(names):
    empty = [f for f, train in enumerate(train_parts) if not indicator[train, k].any()]
    if empty:
      where = 'the holdout' if what == 'the holdout' else f'fold(s) {empty}'
      logging.warning('label %r has no positive image in the training part of %s (%d positive(s) in all): '
                      'those models never see it', name, where, int(total[k]))
