"""`config.data.exclude_csv` and `config.data.relabel_csv`: act on suspected label errors without touching a file.

exclude_csv lists examples that training leaves out; relabel_csv gives examples a new label. Each names an
example in a column `file` (as `--mode label_issues` writes it), `id`, or the source's id column, by its id (a
Kaggle CSV's file name, an image folder's relative path) or its path below the data root; relabel_csv's label
is in `label` or label_issues.csv's `suggested_label` (multi-label: space-separated tags). They apply to the
labelled splits after file_list and label_map, so label_issues.csv of a run is valid input for the next one.
Nothing on disk changes: the record of what changed rides on the Source (`Source.curation`), for the workdir's
curation.csv (`write_record`), and a note says so in the report.
"""
import dataclasses
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.config.inputs import CurationSettings
from fpclass.data.source import Source
from fpclass.errors import UserInputError

RECORD = 'curation.csv'
KEY_COLUMNS = ('file', 'id')                # then the source's own id column
LABEL_COLUMNS = ('label', 'suggested_label')
RECORD_COLUMNS = ('file', 'split', 'action', 'label_before', 'label_after', 'csv', 'csv_row')


def apply_curation(source: Source, settings: CurationSettings, id_column: str = '') -> Source:
  """`source` without the examples of settings.exclude_csv and with the labels of settings.relabel_csv; the
  same source when neither is set. A row naming no example, an unknown class or a missing column is a
  one-line UserInputError naming the CSV, its row and the column."""
  if not settings.exclude_csv and not settings.relabel_csv:
    return source
  index = _example_index(source)
  multilabel = source.train.labels is not None and source.train.labels.ndim == 2
  excluded = _read_keys(settings.exclude_csv, 'exclude_csv', index, id_column) if settings.exclude_csv else {}
  relabels = (_read_relabels(settings.relabel_csv, index, id_column, source.class_names, multilabel)
              if settings.relabel_csv else {})
  splits, record = {}, []
  for name in ('train', 'val'):
    split = getattr(source, name)
    if split is None or split.labels is None:
      splits[name] = split
      continue
    labels = split.labels.copy()
    keep = np.ones(len(split), bool)
    for (split_name, i), (path, row) in excluded.items():
      if split_name == name:
        keep[i] = False
        record.append(_row(split, i, name, 'excluded', source.class_names, None, path, row))
    for (split_name, i), (new, path, row) in relabels.items():
      if split_name == name and keep[i] and not np.array_equal(labels[i], new):
        record.append(_row(split, i, name, 'relabelled', source.class_names, new, path, row))
        labels[i] = new
    splits[name] = dataclasses.replace(split, labels=labels).take(np.flatnonzero(keep))
  actions = [r['action'] for r in record]
  done = [f'{actions.count("excluded")} example(s) left out by config.data.exclude_csv ({settings.exclude_csv})'
          if settings.exclude_csv else '',
          f'{actions.count("relabelled")} relabelled by config.data.relabel_csv ({settings.relabel_csv})'
          if settings.relabel_csv else '']
  note = f'curation: {"; ".join(d for d in done if d)} (the files are unchanged; {RECORD} lists each example)'
  return dataclasses.replace(source, train=splits['train'], val=splits['val'], notes=[*source.notes, note],
                             curation=[*source.curation, *record])


def write_record(folder, record: list) -> pathlib.Path | None:
  """curation.csv in `folder`: one row per example a curation CSV left out or relabelled (nothing without one)."""
  if not record:
    return None
  path = pathlib.Path(folder) / RECORD
  fileio.write_csv(path, pd.DataFrame(record, columns=list(RECORD_COLUMNS)))
  return path


def _example_index(source: Source) -> dict:
  """{key: (split, position)} of every labelled example: by id, and by path below the root for file sources."""
  index = {}
  for name in ('train', 'val'):
    split = getattr(source, name)
    if split is None or split.labels is None:
      continue
    for i, example_id in enumerate(split.ids):
      index.setdefault(str(example_id), (name, i))
    if split.paths is not None and source.root is not None:
      for i, path in enumerate(split.paths):
        try:
          index.setdefault(pathlib.Path(path).relative_to(source.root).as_posix(), (name, i))
        except ValueError:   # a path outside the root has no relative name
          continue
  return index


def _read(path_text: str, key: str) -> tuple[pathlib.Path, pd.DataFrame]:
  path = pathlib.Path(path_text).expanduser()
  if not path.is_file():
    raise UserInputError(f'config.data.{key}={path_text!r}: no such file')
  try:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise UserInputError(f'{path} (config.data.{key}): not a readable CSV ({type(e).__name__}: {e})') from None
  return path, frame


def _key_column(path: pathlib.Path, frame: pd.DataFrame, key: str, id_column: str) -> str:
  candidates = [*KEY_COLUMNS, *([id_column] if id_column else [])]
  for column in candidates:
    if column in frame.columns:
      return column
  raise UserInputError(f'{path} (config.data.{key}): missing column naming the examples: give one of '
                       f'{candidates}; its columns are {list(frame.columns)}')


def _read_keys(path_text: str, key: str, index: dict, id_column: str) -> dict:
  """{(split, position): (csv path, csv row)} of the examples a CSV names (rows count from 2, after the header)."""
  path, frame = _read(path_text, key)
  column = _key_column(path, frame, key, id_column)
  found = {}
  for offset, value in enumerate(frame[column].str.strip()):
    row = offset + 2
    if value not in index:
      raise UserInputError(f'{path} row {row}, column {column!r}: {value!r} is no labelled example of the data '
                           f'(config.data.{key}); name it by its id or its path below the data root')
    found.setdefault(index[value], (str(path), row))
  return found


def _read_relabels(path_text: str, index: dict, id_column: str, class_names, multilabel: bool) -> dict:
  """{(split, position): (new label, csv path, csv row)}; a new label is a class index, or a 0/1 row."""
  path, frame = _read(path_text, 'relabel_csv')
  column = _key_column(path, frame, 'relabel_csv', id_column)
  label_column = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
  if label_column is None:
    raise UserInputError(f'{path} (config.data.relabel_csv): missing column giving the new labels: give one of '
                         f'{list(LABEL_COLUMNS)}; its columns are {list(frame.columns)}')
  classes = {str(c): k for k, c in enumerate(class_names)}
  found = {}
  for offset, (value, label) in enumerate(zip(frame[column].str.strip(), frame[label_column].str.strip())):
    row = offset + 2
    if value not in index:
      raise UserInputError(f'{path} row {row}, column {column!r}: {value!r} is no labelled example of the data '
                           '(config.data.relabel_csv); name it by its id or its path below the data root')
    tags = label.split() if multilabel else [label]
    unknown = [t for t in tags if t not in classes]
    if unknown or (not multilabel and not label):
      raise UserInputError(f'{path} row {row}, column {label_column!r}: {label!r} is not '
                           f'{"a list of classes" if multilabel else "a class"} of the data; its classes are '
                           f'{list(classes)}')
    if multilabel:
      new = np.zeros(len(class_names), np.int32)
      new[[classes[t] for t in tags]] = 1
    else:
      new = np.int32(classes[label])
    earlier = found.get(index[value])
    if earlier is not None and not np.array_equal(earlier[0], new):
      raise UserInputError(f'{path} row {row}, column {label_column!r}: {value!r} was given another label in row '
                           f'{earlier[2]}')
    found.setdefault(index[value], (new, str(path), row))
  return found


def _label_text(label, class_names) -> str:
  label = np.asarray(label)
  if label.ndim == 1:
    return ' '.join(str(class_names[k]) for k in np.flatnonzero(label))
  return str(class_names[int(label)])


def _row(split, i: int, split_name: str, action: str, class_names, new, path: str, row: int) -> dict:
  return dict(file=str(split.ids[i]), split=split_name, action=action,
              label_before=_label_text(split.labels[i], class_names),
              label_after='' if new is None else _label_text(new, class_names), csv=path, csv_row=row)
