"""The new images `--mode predict` classifies: `config.predict.inputs` is one image file, a folder (searched
recursively for image files), a glob ('photos/**/*.png'), or a CSV whose `config.predict.path_column` lists the
images (relative paths are taken from the CSV's folder). A problem with one entry (an empty CSV cell) is listed,
not raised, so one bad row never stops a run.
"""
import dataclasses
import glob
import pathlib

import pandas as pd

from fpclass.data.source import IMAGE_EXTENSIONS, natural_key
from fpclass.errors import UserInputError

GLOB_CHARACTERS = '*?['


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What to classify: `paths` to decode, `names` as written to the output (a CSV row's own value), and
  `problems` found while listing (e.g. an empty CSV cell), as (name, reason)."""
  paths: list
  names: list
  problems: list


def list_inputs(spec: str, path_column: str = 'path', key: str = 'config.predict.inputs',
                column_key: str = 'config.predict.path_column') -> Inputs:
  """The images `spec` names: a file, a folder (recursive), a glob, or a CSV listing paths; errors name `key`, the
  flag that gave `spec`, and `column_key`, the one that gave `path_column`."""
  if not spec:
    raise UserInputError(f'{key} is empty: give an image file, a folder, a glob such as '
                         "'photos/**/*.png', or a CSV with a path column")
  path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    found = sorted((p for p in path.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                   key=lambda p: natural_key(str(p)))
    if not found:
      raise UserInputError(f'{key}={spec!r}: the folder holds no image files '
                           f'(looked recursively for {", ".join(IMAGE_EXTENSIONS)})')
    return Inputs(found, [str(p) for p in found], [])
  if path.is_file():
    if path.suffix.lower() == '.csv':
      return _csv_inputs(path, path_column, column_key)
    return Inputs([path], [str(path)], [])
  if any(c in spec for c in GLOB_CHARACTERS):
    found = sorted((pathlib.Path(p) for p in glob.glob(str(path), recursive=True) if pathlib.Path(p).is_file()),
                   key=lambda p: natural_key(str(p)))
    if not found:
      raise UserInputError(f'{key}={spec!r}: the glob matches no file')
    return Inputs(found, [str(p) for p in found], [])
  raise UserInputError(f'{key}={spec!r}: no such file or folder')


def _csv_inputs(path: pathlib.Path, column: str, column_key: str) -> Inputs:
  try:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise UserInputError(f'{path}: not a readable CSV ({type(e).__name__}: {e})') from None
  if column not in frame.columns:
    raise UserInputError(f'{path}: no column {column!r} ({column_key}); its columns are '
                         f'{list(frame.columns)}')
  paths, names, problems = [], [], []
  for row, value in enumerate(frame[column], start=2):  # row 1 is the header
    if not value.strip():
      problems.append((f'{path}:{row}', f'row {row}: empty {column!r}'))
      continue
    paths.append(pathlib.Path(value) if pathlib.Path(value).is_absolute() else path.parent / value)
    names.append(value)
  return Inputs(paths, names, problems)
