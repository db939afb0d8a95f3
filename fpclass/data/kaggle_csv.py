"""The Kaggle layout: a labels CSV, a folder of training images, and a test folder or sample submission.

    <root>/train.csv               id and label columns (config.data.id_column / label_column)
    <root>/train/<id>              the training images (config.data.train_dir)
    <root>/test/<id>               the test images (config.data.test_dir)
    <root>/sample_submission.csv   optional: the test ids, in the order Kaggle expects

Rows whose file is missing are skipped and reported; a missing column, an empty or unknown label, or a
test list that does not match the files is an error naming the file and rows.
"""
import dataclasses
import logging
import os
import pathlib

import numpy as np
import pandas as pd

from fpclass.config.inputs import DataSettings, SourceSettings
from fpclass.data.source import IMAGE_EXTENSIONS, Problem, Source, Split, natural_key, sorted_class_names
from fpclass.errors import UserInputError

MAX_LISTED = 10  # rows named in one error message; the rest are counted


def load_kaggle_csv(data: DataSettings, root: pathlib.Path | None = None, read_labels=None) -> Source:
  """The Kaggle-layout source at `root` (default config.data.root); `data` is the typed data section
  (`DataSettings`). `read_labels(csv_path, data)` parses the
  labels CSV into `CsvLabels`; the default reads one class per row (`read_single_labels`), and
  `fpclass.data.multilabel.read_multilabels` reads several."""
  files = data.files
  root = pathlib.Path(root or files.root).expanduser()
  if not root.is_dir():
    raise UserInputError(f'config.data.root={str(root)!r} is not a folder')
  csv_path = root / files.labels_csv
  if not csv_path.is_file():
    raise UserInputError(f'{csv_path}: labels CSV not found (config.data.labels_csv={files.labels_csv!r}); '
                         f'{root} holds: {_listing(root)}')
  parsed = (read_labels or read_single_labels)(csv_path, data)
  ids, class_names = parsed.ids, parsed.class_names

  train_dir = root / files.train_dir
  if not train_dir.is_dir():
    raise UserInputError(f'{train_dir}: training image folder not found (config.data.train_dir='
                         f'{files.train_dir!r}); {root} holds: {_listing(root)}')
  keep, paths, problems = [], [], []
  for row, name in enumerate(ids):
    path = resolve_file(train_dir, name)
    if _escapes(train_dir, name):  # '../test/x.png' or an absolute path would let test images into training
      problems.append(Problem(file=str(name), split='train', reason=f'outside {train_dir} (row {row + 2} of '
                              f'{csv_path.name}: an id names a file inside config.data.train_dir)'))
    elif path is None:
      problems.append(Problem(file=str(train_dir / name), split='train',
                              reason=f'no such file (row {row + 2} of {csv_path.name})'))
    else:
      keep.append(row)
      paths.append(path)
  if not keep:
    raise UserInputError(f'{csv_path}: none of its {len(ids)} rows names a file in {train_dir} '
                         f'(first: {ids[0]!r})')
  train = Split(ids=[ids[r] for r in keep], labels=parsed.labels[np.asarray(keep, np.int64)], paths=paths)
  notes = [f'{len(ids)} rows in {csv_path.name}; {len(problems)} name no file'] if problems else []
  test, test_notes = _test_split(root, files)
  return Source(name='kaggle_csv', class_names=class_names, train=train, test=test, problems=problems,
                notes=list(parsed.notes) + notes + test_notes, root=root)


@dataclasses.dataclass(frozen=True)
class CsvLabels:
  """A labels CSV, row for row: ids (file names), labels (class indices, or an (N, K) 0/1 matrix), classes."""
  ids: list
  labels: np.ndarray
  class_names: tuple
  notes: tuple = ()


def read_single_labels(csv_path: pathlib.Path, data: DataSettings) -> CsvLabels:
  """One class per row: config.data.label_column's value, one of config.data.class_names when given."""
  files = data.files
  id_col, label_col = files.id_column, files.label_column
  frame = read_csv(csv_path, [(id_col, 'id_column'), (label_col, 'label_column')])

  ids = frame[id_col].str.strip()
  labels = frame[label_col].str.strip()
  _reject_rows(csv_path, ids == '', f'empty {id_col!r}')
  _reject_rows(csv_path, labels == '', f'empty {label_col!r}')
  _reject_rows(csv_path, ids.duplicated(keep='first'), f'duplicate {id_col!r}')

  if files.class_names:
    class_names = files.class_order
    _reject_rows(csv_path, ~labels.isin(class_names),
                 f'{label_col!r} not in config.data.class_names={list(class_names)}', values=labels)
  else:
    class_names = sorted_class_names(labels)
  if len(class_names) < 2:
    raise UserInputError(f'{csv_path}: column {label_col!r} has {len(class_names)} class(es) '
                         f'{list(class_names)}; classification needs at least 2')
  counts = labels.value_counts()
  empty = [c for c in class_names if counts.get(c, 0) == 0]
  if empty:
    raise UserInputError(f'{csv_path}: classes {empty} of config.data.class_names have no rows')
  index = {name: i for i, name in enumerate(class_names)}
  return CsvLabels(ids=list(ids), labels=np.array([index[v] for v in labels], np.int32), class_names=class_names)


def read_csv(path: pathlib.Path, columns) -> pd.DataFrame:
  """Reads a CSV as strings; `columns` is [(column, config key)], each of which must be present."""
  try:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise UserInputError(f'{path}: not a readable CSV ({type(e).__name__}: {e})') from None
  missing = [(col, key) for col, key in columns if col not in frame.columns]
  if missing:
    wanted = ', '.join(f'{col!r} (config.data.{key})' for col, key in missing)
    raise UserInputError(f'{path}: missing column {wanted}; its columns are {list(frame.columns)}')
  return frame


def resolve_file(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  """The file for a CSV id: the name itself, or the name plus an image extension (ids often omit it)."""
  path = folder / name
  if _is_file(path):
    return path
  if not path.suffix or path.suffix.lower() not in IMAGE_EXTENSIONS:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
      candidate = folder / f'{name}{ext}'
      if _is_file(candidate):
        return candidate
  return None


def _escapes(folder: pathlib.Path, name: str) -> bool:
  """Whether a CSV id points outside `folder` ('..' parts or an absolute path); symlinks are not followed."""
  inside = os.path.normpath(folder)
  return not os.path.normpath(folder / name).startswith(inside + os.sep)


def _is_file(path: pathlib.Path) -> bool:
  try:
    return path.is_file()
  except OSError:  # Path.is_file raises ENAMETOOLONG (an id over 255 bytes), which names no file either
    return False


def _test_split(root: pathlib.Path, files: SourceSettings):
  test_dir = root / files.test_dir
  sample_path = root / files.sample_submission
  if sample_path.is_file():
    frame = read_csv(sample_path, [(files.id_column, 'id_column')])
    ids = list(frame[files.id_column].str.strip())
    if not test_dir.is_dir():
      raise UserInputError(f'{sample_path} lists {len(ids)} test files but the test folder {test_dir} '
                           f'does not exist (config.data.test_dir={files.test_dir!r})')
    paths = [resolve_file(test_dir, name) for name in ids]
    missing = [(row + 2, name) for row, (name, p) in enumerate(zip(ids, paths)) if p is None]
    if missing:
      shown = ', '.join(f'row {r}: {n!r}' for r, n in missing[:MAX_LISTED])
      raise UserInputError(f'{sample_path}: {len(missing)} of {len(ids)} test ids have no file in {test_dir} '
                           f'({shown}{", ..." if len(missing) > MAX_LISTED else ""})')
    listed = {p.resolve() for p in paths}
    extra = [p.name for p in _image_files(test_dir) if p.resolve() not in listed]
    notes = []
    if extra:
      notes.append(f'{len(extra)} image(s) in {test_dir} are not in {sample_path.name} and are ignored: '
                   f'{extra[:MAX_LISTED]}')
      logging.warning(notes[-1])
    return Split(ids=ids, labels=None, paths=paths), notes
  if test_dir.is_dir():
    files = sorted(_image_files(test_dir), key=lambda p: natural_key(p.name))
    if not files:
      raise UserInputError(f'{test_dir}: the test folder holds no images')
    return Split(ids=[p.name for p in files], labels=None, paths=files), []
  return None, [f'no test set: neither {sample_path.name} nor {test_dir.name}/ exists in {root}']


def _image_files(folder: pathlib.Path):
  return [p for p in folder.iterdir()
          if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in IMAGE_EXTENSIONS]


def _reject_rows(csv_path, bad_mask, what, values=None):
  bad = np.flatnonzero(np.asarray(bad_mask))
  if len(bad):
    shown = ', '.join(f'row {i + 2}' + (f' ({values.iloc[i]!r})' if values is not None else '')
                      for i in bad[:MAX_LISTED])
    more = f' and {len(bad) - MAX_LISTED} more' if len(bad) > MAX_LISTED else ''
    raise UserInputError(f'{csv_path}: {len(bad)} row(s) with {what}: {shown}{more}')


def _listing(folder: pathlib.Path) -> str:
  names = sorted(p.name + ('/' if p.is_dir() else '') for p in folder.iterdir())
  return ', '.join(names[:20]) + (', ...' if len(names) > 20 else '') if names else '(nothing)'
