"""What every data source yields: file lists or arrays, labels, ids and class names.

A source only lists; decoding (and caching) is `fpclass.data.decode`'s job, so every source shares one
quarantine path for bad files.
"""
import dataclasses
import pathlib
import re

import numpy as np

# Extensions a folder listing treats as images. Kaggle CSV rows are decoded whatever their extension.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


@dataclasses.dataclass(frozen=True)
class Problem:
  """One input that was skipped: the file (or row), the split it belonged to and why."""
  file: str
  split: str
  reason: str


@dataclasses.dataclass
class Split:
  """One split as listed by a source: either file paths or a uint8 (N, H, W, C) array."""
  ids: list
  labels: np.ndarray | None          # int32 class indices; None when unlabelled (a test set)
  paths: list | None = None
  images: np.ndarray | None = None
  extras: dict = dataclasses.field(default_factory=dict)  # per-example side data (e.g. fine labels)

  def __post_init__(self):
    if (self.paths is None) == (self.images is None):
      raise ValueError('a Split holds either paths or images')
    if self.labels is not None:
      self.labels = np.asarray(self.labels, np.int32)
      if len(self.labels) != len(self.ids):
        raise ValueError('labels and ids differ in length')

  def __len__(self):
    return len(self.ids)

  def take(self, index) -> 'Split':
    """The subset at integer positions `index`, keeping every field aligned."""
    index = np.asarray(index, np.int64)
    pick = lambda seq: [seq[i] for i in index]
    return Split(
        ids=pick(self.ids),
        labels=None if self.labels is None else self.labels[index],
        paths=None if self.paths is None else pick(self.paths),
        images=None if self.images is None else self.images[index],
        extras={k: np.asarray(v)[index] for k, v in self.extras.items()})


@dataclasses.dataclass
class Source:
  """A listed dataset. `val` is None when the source has no validation split of its own."""
  name: str
  class_names: tuple
  train: Split
  val: Split | None = None
  test: Split | None = None
  problems: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)   # human-readable facts worth reporting
  root: pathlib.Path | None = None
  # Rows (dicts) of the examples config.data.exclude_csv / relabel_csv left out or relabelled (fpclass.data.curation).
  curation: list = dataclasses.field(default_factory=list)


def natural_key(text: str):
  """Sort key that orders 'img2' before 'img10'."""
  # isdecimal, not isdigit: '²' is a digit that int() refuses (found by tests/test_fuzz.py).
  return [int(t) if t.isdecimal() else t.lower() for t in re.split(r'(\d+)', str(text))]


def sorted_class_names(values) -> tuple:
  """Class names in a stable order: numerically when every name is an integer, else naturally."""
  values = sorted(set(str(v) for v in values), key=natural_key)
  if all(re.fullmatch(r'-?\d+', v) for v in values):
    values = sorted(values, key=int)
  return tuple(values)
