"""`config.data.file_list`: train on the files `--mode clean` kept.

The list (clean_files.csv) names every file clean scanned, by path relative to the data root, with a keep
flag. Files with keep=False are left out of the labelled splits; a file the list does not name was added
after cleaning and is an error, so a stale list never silently drops or admits data. An unlabelled test
split is never filtered: a submission needs a row for each of its files.
"""
import dataclasses
import pathlib

import numpy as np

from fpclass.data.kaggle_csv import read_csv
from fpclass.data.source import Source, Split
from fpclass.errors import UserInputError

MAX_LISTED = 5


def relative_key(path, root) -> str:
  """How clean_files.csv names a file: its path relative to the data root, with '/' separators."""
  return pathlib.Path(path).relative_to(root).as_posix()


def read_file_list(path) -> dict[str, bool]:
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise UserInputError(f'config.data.file_list={str(path)!r}: no such file (run --mode clean to write one)')
  frame = read_csv(path, [('path', 'file_list'), ('keep', 'file_list')])
  bad = ~frame['keep'].isin(['True', 'False'])
  if bad.any():
    raise UserInputError(f'{path}: column keep must be True or False (row {int(np.flatnonzero(bad)[0]) + 2})')
  return dict(zip(frame['path'], frame['keep'] == 'True'))


def apply_file_list(source: Source, list_path: str) -> Source:
  keep = read_file_list(list_path)
  if source.root is None or source.train.paths is None:
    raise UserInputError(f'config.data.file_list applies to file sources (kaggle_csv, image_folder), '
                         f'not {source.name}')
  unscanned, dropped = [], 0

  def filtered(split: Split | None) -> Split | None:
    nonlocal dropped
    if split is None or split.labels is None or split.paths is None:
      return split
    keys = [relative_key(p, source.root) for p in split.paths]
    unscanned.extend(k for k in keys if k not in keep)
    index = [i for i, k in enumerate(keys) if keep.get(k, False)]
    dropped += len(keys) - len(index)
    return split.take(index)

  train, val, test = filtered(source.train), filtered(source.val), filtered(source.test)
  if unscanned:
    raise UserInputError(f'config.data.file_list={list_path!r}: {len(unscanned)} file(s) of {source.root} are not '
                         f'in it ({", ".join(unscanned[:MAX_LISTED])}{", ..." if len(unscanned) > MAX_LISTED else ""}); '
                         'they were added after cleaning, or the list belongs to another folder: run --mode clean again')
  note = f'{dropped} file(s) left out by config.data.file_list ({list_path}); its reasons column says why'
  return dataclasses.replace(source, train=train, val=val, test=test, notes=[*source.notes, note])
