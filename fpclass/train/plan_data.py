"""The data of one variant of a plan: the arrays its members index and one member per split x seed.

A solo plan trains on the config's own split (`pipeline.load_dataset`: the holdout, fold `data.fold`, or the
source's validation split) as separate train and val arrays, and hands the split dataset on, so the modes
chained after training need not decode it again. An experiment indexes one pool of every labelled image (the
train and val arrays are the same), each member's fold picking its rows: the splits `pipeline.split_indices`
makes for `data.fold=k`, so each member sees its solo run's data. Either way the images stay in memory when they
fit config.data.device_memory_budget, and are streamed from the memory-mapped decode cache otherwise. With
config.data.unlabelled (and config.semi.method on), the unlabelled images follow the labelled ones in the train
array, labelled UNLABELLED, in memory; no member's train or validation rows point at them (`fpclass.train.semi`).
"""
import dataclasses

import numpy as np

from fpclass.config.inputs import DataSettings
from fpclass.config.training import SemiSettings
from fpclass.data import pipeline, stream
from fpclass.data.rows import in_memory
from fpclass.data.unlabelled import load_pool
from fpclass.errors import UserInputError
from fpclass.train.axis import Split, TrainData
from fpclass.train.members import Member
from fpclass.train.semi import UNLABELLED


@dataclasses.dataclass
class VariantData:
  train_data: TrainData
  members: list
  note: str                             # how the members' validation data was made
  budget: int | None                    # the device bytes the arrays may take (None: the default budget)
  decoded: pipeline.Decoded | None      # an experiment's decoded source (for calibration over its folds)
  dataset: pipeline.Dataset | None      # a solo run's split dataset (for the modes chained after training)


def solo_data(data: DataSettings, seed: int, semi: SemiSettings = SemiSettings()) -> VariantData:
  """One member on the config's own split and seed."""
  dataset = stream.place(pipeline.load_dataset(data, mapped=True), data.storage)
  member = Member(data.split.fold, seed, np.arange(len(dataset.train)),
                  np.arange(len(dataset.val)))
  pool = unlabelled_pool(data, semi, (dataset.train.images, dataset.val.images), dataset.test)
  train, rows = with_pool(Split(dataset.train.images, dataset.train.labels), pool)
  train_data = TrainData(dataset.class_names, train, Split(dataset.val.images, dataset.val.labels), rows)
  return VariantData(train_data, [member], dataset.split_note, None, None, dataset)


def experiment_data(data: DataSettings, folds, seeds, semi: SemiSettings = SemiSettings()) -> VariantData:
  """One member per split x seed over the pool of labelled images."""
  decoded = pipeline.decode_source(data, mapped=True)
  folds, seeds = list(folds), list(seeds)
  pool, val, d = decoded.pool, decoded.val, data.split
  if val is not None:
    if folds not in ([], [-1]):
      raise UserInputError(f'config.sweep.folds={tuple(folds)}: the source has its own validation split, so '
                           'there are no folds to choose; use () or (-1,)')
    split_index = {-1: (np.arange(len(pool)), np.arange(len(val)))}
    note = 'the source\'s own validation split'
  else:
    folds = folds or list(range(d.num_folds))
    split_index = pipeline.split_indices(pool.labels, folds, d, decoded.class_names)
    stratified = 'per-label stratified' if pool.labels.ndim == 2 else 'stratified'
    note = (f'{len(folds)} of {d.num_folds} {stratified} folds' if any(f >= 0 for f in folds) else
            f'the {stratified} {d.val_fraction:.0%} holdout') + f' (split_seed {d.split_seed})'
  (train, val, _), budget = stream.place_splits(data.storage, pool, val if val is not None else pool)
  unlabelled = unlabelled_pool(data, semi, [s.images for s in (pool, decoded.val) if s is not None], decoded.test)
  train_split, rows = with_pool(Split(train.images, _member_labels(train.labels)), unlabelled)
  val_split = train_split if decoded.val is None else Split(val.images, _member_labels(val.labels))
  members = [Member(f, int(s), np.asarray(t, np.int64), np.asarray(v, np.int64))
             for f, (t, v) in split_index.items() for s in seeds]
  return VariantData(TrainData(decoded.class_names, train_split, val_split, rows), members, note, budget, decoded,
                     None)


def unlabelled_pool(data: DataSettings, semi: SemiSettings, labelled, test):
  """config.data.unlabelled's images when semi-supervised training reads them (config.semi.method), else None."""
  if not data.unlabelled.unlabelled or semi.method == 'none':
    return None
  pool = load_pool(data, labelled, test)
  print(f'semi-supervised: {pool.describe()}')
  return pool


def with_pool(train: Split, pool) -> tuple[Split, tuple]:
  """`train` with the pool's images after its own, labelled UNLABELLED, and the pool's (first row, count); `train`
  and () without a pool. In memory: the step gathers both parts from one array."""
  if pool is None:
    return train, ()
  images = np.concatenate([in_memory(train.images), pool.images])
  labels = np.concatenate([np.asarray(train.labels), np.full(len(pool), UNLABELLED, np.asarray(train.labels).dtype)])
  return Split(images, labels), (len(train.labels), len(pool))


def _member_labels(labels: np.ndarray) -> np.ndarray:
  """Class indices as int32; a multi-label 0/1 matrix as it is (uint8), as a solo run trains on it."""
  return labels if labels.ndim == 2 else labels.astype(np.int32)
