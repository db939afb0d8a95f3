"""Data: list a source, decode it through the cache, split it. `load_dataset(config)` does all three.

Sources register by name in `SOURCES`; each is `fn(data: DataSettings) -> Source`. Every function here takes the
typed data section (`DataSettings.from_config(config.data)`), not the config.
"""
import dataclasses
import logging
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.config.inputs import DataSettings, SplitSettings
from fpclass.data import footprints, multilabel_splits, splits, synthetic_multilabel
from fpclass.data.curation import apply_curation
from fpclass.data.decode import decode_files, fit_array
from fpclass.data.digits import load_digits_source
from fpclass.data.file_list import apply_file_list
from fpclass.data.image_folder import load_image_folder
from fpclass.data.kaggle_csv import load_kaggle_csv
from fpclass.data.label_map import apply_label_map
from fpclass.data.lfw_faces import load_lfw_faces_source
from fpclass.data.mnist_5k import load_mnist_5k_source
from fpclass.data.multilabel import read_multilabels
from fpclass.data.rows import in_memory, take_rows
from fpclass.data.source import Source, Split
from fpclass.data.tfds_source import load_tfds
from fpclass.errors import UserInputError


def _kaggle_or_synthetic(data: DataSettings) -> Source:
  multilabel = data.labels.multilabel
  read_labels = read_multilabels if multilabel else None
  if data.files.root:
    return load_kaggle_csv(data, read_labels=read_labels)
  synthetic, cache = data.files.synthetic, fileio.cache_root(data.storage.cache_dir)
  labels = data.labels
  if multilabel:
    shapes = synthetic.shapes
    spec = synthetic_multilabel.MultilabelSpec(seed=synthetic.seed, n_train=shapes.n_train, n_test=shapes.n_test,
                                               size=shapes.size)
    root = synthetic_multilabel.ensure_synthetic_multilabel(cache, spec)
    keys, name = dict(id_column='image_name', label_column='tags'), 'synthetic_shapes'
    labels = dataclasses.replace(labels, label_columns=())
  else:
    spec = footprints.FootprintSpec(seed=synthetic.seed, n_class0=synthetic.n_class0, n_class1=synthetic.n_class1,
                                    n_test=synthetic.n_test)
    root = footprints.ensure_synthetic_footprints(cache, spec)
    keys, name = dict(id_column='filename', label_column='SEX'), 'synthetic_footprints'
  logging.warning('config.data.root is empty: using the embedded SYNTHETIC %s in %s '
                  '(set --config.data.root to your Kaggle folder for real data)', name.split('_')[1], root)
  files = dataclasses.replace(data.files, labels_csv='train.csv', train_dir='train', test_dir='test',
                              sample_submission='sample_submission.csv', class_names=(), **keys)
  source = load_kaggle_csv(dataclasses.replace(data, files=files, labels=labels), root=root, read_labels=read_labels)
  source.name = name
  return source


SOURCES = {
    'kaggle_csv': _kaggle_or_synthetic,
    'image_folder': load_image_folder,
    'tfds': load_tfds,
    'digits': load_digits_source,
    'lfw_faces': load_lfw_faces_source,
    'mnist_5k': load_mnist_5k_source,
}


@dataclasses.dataclass
class ArraySplit:
  """A decoded split: uint8 (N, H, W, C) images with aligned labels, ids and extras. `images` is a numpy
  array, or with `load_dataset(mapped=True)` maybe an `ImageRows` view of the memory-mapped decode cache."""
  images: np.ndarray
  labels: np.ndarray | None
  ids: list
  extras: dict = dataclasses.field(default_factory=dict)

  def __len__(self):
    return len(self.ids)

  def take(self, index) -> 'ArraySplit':
    index = np.asarray(index, np.int64)
    return ArraySplit(images=take_rows(self.images, index),  # a mapped cache stays unread
                      labels=None if self.labels is None else self.labels[index],
                      ids=[self.ids[i] for i in index],
                      extras={k: np.asarray(v)[index] for k, v in self.extras.items()})


@dataclasses.dataclass
class Decoded:
  """Every split of a source, decoded; `pool` is the labelled training data before any holdout."""
  source_name: str
  class_names: tuple
  pool: ArraySplit
  val: ArraySplit | None
  test: ArraySplit | None
  quarantine: list
  notes: list
  root: pathlib.Path | None
  curation: list = dataclasses.field(default_factory=list)   # what data.exclude_csv / relabel_csv changed


@dataclasses.dataclass
class Dataset:
  """What training reads: train, val and (maybe) test, plus what was skipped and how val was made."""
  class_names: tuple
  train: ArraySplit
  val: ArraySplit
  test: ArraySplit | None
  quarantine: list
  notes: list
  source_name: str
  split_note: str
  curation: list = dataclasses.field(default_factory=list)   # what data.exclude_csv / relabel_csv changed


def list_raw_source(data: DataSettings) -> Source:
  """The source as it is on disk: every file, its own classes."""
  name = data.files.source
  if name not in SOURCES:
    raise UserInputError(f'config.data.source={name!r}: unknown source; choose one of {sorted(SOURCES)}')
  if data.labels.multilabel and name != 'kaggle_csv':
    raise UserInputError(f"config.data.task='multilabel': config.data.source={name!r} gives each image one class "
                         "(a folder or a label), so it cannot say several; use data.source=kaggle_csv with a "
                         "tags column (data.label_column) or 0/1 columns (data.label_columns)")
  return SOURCES[name](data)


def list_source(data: DataSettings) -> Source:
  """The source as training sees it: only the files of config.data.file_list, classes grouped by
  config.data.label_map, without the examples of config.data.exclude_csv and with relabel_csv's labels."""
  source = list_raw_source(data)
  if data.files.file_list:
    source = apply_file_list(source, data.files.file_list)
  if data.files.label_map:
    if source.train.labels.ndim == 2:
      raise UserInputError("config.data.label_map groups single labels; it does not apply to "
                           "config.data.task='multilabel' (name the classes in the CSV instead)")
    source = apply_label_map(source, data.files.label_map)
  source = apply_curation(source, data.curation, data.files.id_column)   # after the map: its classes
  return source


def decode_source(data: DataSettings, progress: bool = True, mapped: bool = False) -> Decoded:
  """Lists the configured source and decodes every split; bad files go to the quarantine list.

  `mapped`: splits read from the decode cache keep their images as unread `ImageRows` views of the
  memory-mapped cache (training streams them when they exceed the device budget); otherwise every split's
  images are read into memory, as ordinary numpy arrays."""
  source = list_source(data)
  settings = data.decode
  quarantine = list(source.problems)
  cache = fileio.cache_root(data.storage.cache_dir)

  def decode(split: Split, name: str, keep_failed: bool = False):
    if split.images is not None:
      return ArraySplit(fit_array(split.images, settings), split.labels, list(split.ids), dict(split.extras))
    images, ok, problems = decode_files(split.paths, settings, split=name, cache_dir=cache,
                                        workers=data.storage.decode_workers, progress=progress)
    quarantine.extend(problems)
    decoded = ArraySplit(images, split.labels, list(split.ids), dict(split.extras))
    if keep_failed:
      decoded.extras['decoded'] = ok
      return decoded
    return decoded.take(np.flatnonzero(ok))

  pool = decode(source.train, 'train')
  val = decode(source.val, 'val') if source.val is not None else None
  test = None
  if source.test is not None:
    test = decode(source.test, 'test', keep_failed=True)
    failed = [p for p in quarantine if p.split == 'test']
    if failed and data.files.bad_test_images == 'error':
      shown = '; '.join(f'{p.file}: {p.reason}' for p in failed[:10])
      raise UserInputError(f'{len(failed)} test image(s) cannot be decoded, so a submission would be '
                           f'incomplete: {shown}. Fix or replace them, or set '
                           f"--config.data.bad_test_images=prior to predict the class prior for them.")
  if len(pool) == 0:
    raise UserInputError(f'no training image of {data.files.source} could be decoded; see the reasons: '
                         + '; '.join(f'{p.file}: {p.reason}' for p in quarantine[:5]))
  present = positives(pool.labels, len(source.class_names))
  empty = [source.class_names[i] for i in np.flatnonzero(present == 0)]
  if empty and pool.labels.ndim == 2:  # a label nobody carries is learnt as "never"; say so, but go on
    logging.warning('classes %s have no decodable training image (see the quarantine report)', empty)
  elif empty:
    raise UserInputError(f'classes {empty} have no decodable training image (see the quarantine report)')
  if quarantine:
    logging.warning('%d file(s) skipped; they are listed with reasons in quarantine.csv', len(quarantine))
  if not mapped:
    pool, val, test = (None if s is None else dataclasses.replace(s, images=in_memory(s.images))
                       for s in (pool, val, test))
  return Decoded(source.name, source.class_names, pool, val, test, quarantine, list(source.notes), source.root,
                 source.curation)


def split_indices(labels: np.ndarray, folds, split: SplitSettings, class_names=None) -> dict:
  """{fold: (train_index, val_index)} for each of `folds` (-1: the holdout of data.val_fraction), seeded by
  data.split_seed: stratified by class, or per label for a multi-label (N, K) matrix. The one place a solo run
  (`split_dataset`) and a sweep's members get their splits, so a member validates on its solo run's images."""
  multilabel, seed = np.ndim(labels) == 2, split.split_seed
  named = dict(class_names=class_names) if multilabel else {}   # the multi-label splits name a label they warn of
  kfold_of = multilabel_splits.multilabel_kfold_indices if multilabel else splits.kfold_indices
  holdout_of = multilabel_splits.multilabel_holdout_indices if multilabel else splits.holdout_indices
  kfold = kfold_of(labels, split.num_folds, seed, **named) if any(f >= 0 for f in folds) else []
  for f in folds:
    if f >= len(kfold) and f >= 0:
      raise UserInputError(f'config.data.fold={f}: must be below config.data.num_folds={split.num_folds}')
  return {f: kfold[f] if f >= 0 else holdout_of(labels, split.val_fraction, seed, **named) for f in folds}


def split_dataset(decoded: Decoded, split: SplitSettings) -> Dataset:
  """Train/val from the source's own validation split, a k-fold fold, or a stratified holdout."""
  if decoded.val is not None:
    train, val, note = decoded.pool, decoded.val, 'the source\'s own validation folder'
  else:
    fold = split.fold
    train_index, val_index = split_indices(decoded.pool.labels, [fold], split, decoded.class_names)[fold]
    stratified = 'per-label stratified' if decoded.pool.labels.ndim == 2 else 'stratified'
    note = (f'{stratified} fold {fold} of {split.num_folds}' if fold >= 0 else
            f'{stratified} {split.val_fraction:.0%} holdout') + f' (split_seed {split.split_seed})'
    train, val = decoded.pool.take(train_index), decoded.pool.take(val_index)
  return Dataset(decoded.class_names, train, val, decoded.test, decoded.quarantine, decoded.notes,
                 decoded.source_name, note, decoded.curation)


def load_dataset(data: DataSettings, progress: bool = True, mapped: bool = False) -> Dataset:
  """Decoded and split; `mapped` as in `decode_source`."""
  return split_dataset(decode_source(data, progress, mapped), data.split)


def write_quarantine_report(path, problems) -> None:
  """CSV of every skipped input: file, split, reason. Written even when empty, so its absence means
  the run never got as far as reading data."""
  frame = pd.DataFrame([dataclasses.asdict(p) for p in problems], columns=['file', 'split', 'reason'])
  fileio.write_csv(path, frame)


def positives(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(K,) images per class: of int class labels, or of a multi-label (N, K) 0/1 matrix."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    return labels.sum(0, dtype=np.int64)
  return np.bincount(labels, minlength=num_classes)


def class_counts(dataset: Dataset) -> dict:
  """{split: {class name: count}} for the labelled splits (multi-label: images carrying each class, and
  'untagged': images carrying none)."""
  out = {}
  for name in ('train', 'val', 'test'):
    split = getattr(dataset, name)
    if split is not None and split.labels is not None:
      counts = positives(split.labels, len(dataset.class_names))
      out[name] = {c: int(n) for c, n in zip(dataset.class_names, counts)}
      if split.labels.ndim == 2:
        out[name]['untagged'] = int(np.sum(~split.labels.any(1)))
  return out
