"""Multi-label labels from a Kaggle CSV: each image has any number of classes, as an (N, K) 0/1 matrix.

Two layouts: one column of space-separated tags (Planet's `image_name,tags`), or one 0/1 column per class
(config.data.label_columns). The classes are config.data.class_names when given, else the sorted union of
the tags (or the columns, in the order given). An image with no tag is allowed and counted. Anything a
user must fix (an unknown tag, a malformed cell, a missing column, a duplicate id) is an error naming the
CSV file and its rows, as in `fpclass.data.kaggle_csv`, whose loader calls `read_multilabels` for the
labels and resolves the files itself.
"""
import dataclasses
import logging
import pathlib

import numpy as np

from fpclass.config.inputs import DataSettings
from fpclass.data.kaggle_csv import MAX_LISTED, CsvLabels, read_csv
from fpclass.data.source import natural_key
from fpclass.errors import UserInputError

TAG_SEPARATORS = (',', ';', '|')  # in a tag cell these mean the file uses another separator than spaces


@dataclasses.dataclass(frozen=True)
class MultiLabels:
  """A multi-label CSV, row for row: ids (file names), an (N, K) uint8 indicator, the class names."""
  ids: list
  indicator: np.ndarray
  class_names: tuple
  notes: tuple = ()  # human-readable facts worth reporting (untagged images, classes with no image)

  @property
  def untagged(self) -> int:
    """Images that carry no class at all."""
    return int(np.sum(~self.indicator.any(1)))

  @property
  def positives(self) -> np.ndarray:
    """(K,) images per class."""
    return self.indicator.sum(0, dtype=np.int64)


def read_multilabels(csv_path: pathlib.Path, data: DataSettings) -> CsvLabels:
  """`fpclass.data.kaggle_csv.load_kaggle_csv`'s reader for config.data.task='multilabel'."""
  labels = _read(csv_path, data)
  return CsvLabels(ids=labels.ids, labels=labels.indicator, class_names=labels.class_names, notes=labels.notes)


def _read(csv_path: pathlib.Path, data: DataSettings) -> MultiLabels:
  label_columns, files = data.labels.label_columns, data.files
  return read_multilabel_csv(csv_path, files.id_column, label_column='' if label_columns else files.label_column,
                             label_columns=label_columns, class_names=files.class_order)


def read_multilabel_csv(csv_path: pathlib.Path | str, id_column: str, label_column: str = '',
                        label_columns: tuple = (), class_names: tuple = ()) -> MultiLabels:
  """Parses `csv_path`: a tag column `label_column`, or the 0/1 columns `label_columns` (exactly one)."""
  csv_path = pathlib.Path(csv_path)
  if bool(label_column) == bool(label_columns):
    raise ValueError('give either label_column (tags) or label_columns (0/1 columns)')
  class_names = tuple(str(c) for c in class_names)
  _reject_duplicates(class_names, 'config.data.class_names')
  label_columns = tuple(str(c) for c in label_columns)
  _reject_duplicates(label_columns, 'config.data.label_columns')
  wanted = [(label_column, 'label_column')] if label_column else [(c, 'label_columns') for c in label_columns]
  frame = read_csv(csv_path, [(id_column, 'id_column')] + wanted)
  if not len(frame):
    raise UserInputError(f'{csv_path}: holds a header and no rows')
  ids = frame[id_column].str.strip()
  _reject_rows(csv_path, ids == '', f'empty {id_column!r}')
  _reject_rows(csv_path, ids.duplicated(keep='first'), f'duplicate {id_column!r}', list(ids))
  if label_column:
    indicator, class_names = _parse_tags(csv_path, list(frame[label_column]), label_column, class_names)
  else:
    indicator, class_names = _parse_columns(csv_path, frame, label_columns, class_names)
  if len(class_names) < 2:
    raise UserInputError(f'{csv_path}: {len(class_names)} class(es) {list(class_names)}; multi-label '
                         'classification needs at least 2 (one tag is a binary, single-label task)')
  labels = MultiLabels(ids=list(ids), indicator=indicator, class_names=class_names)
  notes = []
  if labels.untagged:
    notes.append(f'{labels.untagged} of {len(ids)} images in {csv_path.name} have no class')
  empty = [c for c, n in zip(class_names, labels.positives) if n == 0]
  if empty:
    notes.append(f'classes {empty} have no image in {csv_path.name}')
    logging.warning('%s: %s', csv_path, notes[-1])
  return dataclasses.replace(labels, notes=tuple(notes))


def _parse_tags(csv_path, cells, column, class_names):
  tags = [str(cell).split() for cell in cells]
  bad = [(i, repr(cell)) for i, cell in enumerate(cells) if any(s in cell for s in TAG_SEPARATORS)]
  if bad:
    _raise(csv_path, bad, f'{column!r} holding {" or ".join(map(repr, TAG_SEPARATORS))}: tags are separated by '
           f'spaces (config.data.label_column={column!r})')
  if class_names:
    known = set(class_names)
    unknown = [(i, repr(t)) for i, row in enumerate(tags) for t in row if t not in known]
    if unknown:
      _raise(csv_path, unknown, f'a tag of {column!r} not in config.data.class_names={list(class_names)}')
  else:
    # natural order, then the text itself, so that names differing only in case have one order everywhere
    class_names = tuple(sorted({t for row in tags for t in row}, key=lambda t: (natural_key(t), t)))
  index = {name: k for k, name in enumerate(class_names)}
  indicator = np.zeros((len(tags), len(class_names)), np.uint8)
  for i, row in enumerate(tags):
    indicator[i, [index[t] for t in row]] = 1  # a tag repeated in a cell counts once
  return indicator, class_names


def _parse_columns(csv_path, frame, label_columns, class_names):
  if class_names and sorted(class_names) != sorted(label_columns):
    raise UserInputError(f'config.data.class_names={list(class_names)} must name the same classes as '
                         f'config.data.label_columns={list(label_columns)} (it sets their order)')
  columns = class_names or label_columns
  cells = frame[list(columns)].apply(lambda col: col.str.strip()).to_numpy(dtype=str)
  bad = [(int(i), f'{columns[k]}={str(cells[i, k])!r}')
         for i, k in zip(*np.nonzero((cells != '0') & (cells != '1')))]
  if bad:
    _raise(csv_path, bad, 'a cell of config.data.label_columns that is not 0 or 1')
  return (cells == '1').astype(np.uint8), tuple(columns)


def _reject_duplicates(names, key):
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise UserInputError(f'{key}={list(names)} names {repeated} more than once')


def _reject_rows(csv_path, bad_mask, what, values=None):
  bad = [(int(i), None if values is None else repr(values[i])) for i in np.flatnonzero(np.asarray(bad_mask))]
  if bad:
    _raise(csv_path, bad, what)


def _raise(csv_path, bad, what):
  """`bad`: [(0-based data row, what to show of it or None)]; rows are named by CSV line (header: line 1)."""
  rows = sorted({i for i, _ in bad})
  shown = ', '.join(f'row {i + 2}' + ('' if v is None else f' ({v})') for i, v in bad[:MAX_LISTED])
  more = f' and {len(bad) - MAX_LISTED} more' if len(bad) > MAX_LISTED else ''
  raise UserInputError(f'{csv_path}: {len(rows)} row(s) with {what}: {shown}{more}')
