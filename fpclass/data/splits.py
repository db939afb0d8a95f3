"""Seeded, stratified splits: a validation holdout, and k-fold indices."""
import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from fpclass.errors import UserInputError


def holdout_indices(labels: np.ndarray, fraction: float, seed: int):
  """(train_index, val_index): a stratified holdout of `fraction` of the examples."""
  if not 0.0 < fraction < 1.0:
    raise UserInputError(f'config.data.val_fraction={fraction}: must be in (0, 1)')
  _check_class_sizes(labels, 2, 'config.data.val_fraction')
  index = np.arange(len(labels))
  train, val = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
  return np.sort(train), np.sort(val)


def kfold_indices(labels: np.ndarray, num_folds: int, seed: int):
  """[(train_index, val_index)] for each of `num_folds` stratified folds."""
  if num_folds < 2:
    raise UserInputError(f'config.data.num_folds={num_folds}: must be at least 2')
  _check_class_sizes(labels, num_folds, 'config.data.num_folds')
  folds = StratifiedKFold(num_folds, shuffle=True, random_state=seed)
  return [(np.sort(t), np.sort(v)) for t, v in folds.split(np.zeros(len(labels)), labels)]


def _check_class_sizes(labels, needed, flag):
  values, counts = np.unique(labels, return_counts=True)
  small = {int(v): int(c) for v, c in zip(values, counts) if c < needed}
  if small:
    raise UserInputError(f'classes {small} (index: count) have fewer than {needed} labelled examples, too few '
                         f'for a stratified split ({flag})')
