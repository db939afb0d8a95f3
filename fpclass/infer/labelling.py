"""The files a person labels from and sends back (`--mode label_next`): Label Studio tasks and a labels CSV.

- The task file: Label Studio's JSON tasks, one per image to label, `data.image` the image's address (a prefix +
  its path relative to the pool's folder), `data.filename` that relative path, and the model's guess as a
  pre-annotation: `predictions[0].result[0]`, a `choices` result of the control `label` on the object `image`
  (`labelling_config` writes the matching labelling interface).
- The labels template: `filename` (relative to the pool's folder), an empty `label` to fill in, the model's
  `guess`. Filled in, it is a `kaggle_csv` labels CSV (docs/unlabelled.md: data.root = the pool's folder,
  data.train_dir = '.', data.id_column = filename, data.label_column = label).
- `labels_from_export`: Label Studio's JSON export (the tasks with their `annotations`) as that labels CSV.
"""
import dataclasses
import json
import os
import pathlib
from xml.sax.saxutils import quoteattr

import pandas as pd

from fpclass import fileio
from fpclass.errors import UserInputError

CONTROL = 'label'    # the Choices control's name: the pre-annotation's from_name, the export's column
OBJECT = 'image'     # the Image object's name and the task's data key


@dataclasses.dataclass(frozen=True)
class ToLabel:
  """One image to label: its file, its path relative to the pool's folder, the model's guess with its probability,
  and the rank and uncertainty score that put it on the list."""
  file: pathlib.Path
  filename: str
  guess: str
  probability: float
  rank: int
  score: float


def pool_files(names: list, spec: str, test_files: dict | None = None) -> list[pathlib.Path]:
  """The image file of each pool name: a listed path as it is, a CSV's relative path from the CSV's folder
  (`fpclass.data.new_images`), or a test id's file from `test_files` (the source's {id: path})."""
  if test_files is not None:
    return [pathlib.Path(test_files[n]) for n in names]
  listing = pathlib.Path(spec).expanduser()
  base = listing.parent if listing.is_file() and listing.suffix.lower() == '.csv' else None
  return [pathlib.Path(n) if base is None or pathlib.Path(n).is_absolute() else base / n for n in names]


def common_folder(files: list) -> pathlib.Path:
  """The deepest folder holding every file (absolute): what the task file and the labels template are relative to."""
  return pathlib.Path(os.path.commonpath([str(pathlib.Path(f).absolute().parent) for f in files]))


def relative_names(files: list, folder: pathlib.Path) -> list[str]:
  """Each file's path relative to `folder`, with '/' separators (a URL's and a CSV id's)."""
  return [pathlib.Path(f).absolute().relative_to(folder).as_posix() for f in files]


def tasks(rows: list[ToLabel], prefix: str, model_version: str) -> list[dict]:
  """Label Studio tasks with the model's guess as a pre-annotation (a prediction, which the labeller accepts or
  changes)."""
  return [{'data': {OBJECT: prefix + row.filename, 'filename': row.filename, 'rank': row.rank,
                    'score': round(float(row.score), 6)},
           'predictions': [{'model_version': model_version, 'score': round(float(row.probability), 6),
                            'result': [{'from_name': CONTROL, 'to_name': OBJECT, 'type': 'choices',
                                        'value': {'choices': [row.guess]}}]}]}
          for row in rows]


def labelling_config(class_names) -> str:
  """Label Studio's labelling interface for the tasks: the image and one choice per class."""
  choices = '\n'.join(f'    <Choice value={quoteattr(str(c))}/>' for c in class_names)
  return (f'<View>\n  <Image name="{OBJECT}" value="${OBJECT}"/>\n'
          f'  <Choices name="{CONTROL}" toName="{OBJECT}" choice="single" showInline="true">\n{choices}\n'
          '  </Choices>\n</View>\n')


def write_tasks(path: pathlib.Path, task_list: list[dict]) -> None:
  fileio.write_json(path, task_list)


def read_tasks(path: pathlib.Path) -> list[dict]:
  """A task file (or Label Studio's JSON export, the same list with `annotations`)."""
  try:
    loaded = json.loads(pathlib.Path(path).read_text(encoding='utf-8'))
  except (OSError, ValueError) as e:
    raise UserInputError(f'{path}: not a readable Label Studio JSON file ({e})') from None
  if not isinstance(loaded, list):
    raise UserInputError(f'{path}: a Label Studio task file is a JSON list of tasks, not {type(loaded).__name__}')
  return loaded


def labels_template(rows: list[ToLabel]) -> pd.DataFrame:
  """The CSV to fill in: `filename`, an empty `label`, the model's `guess` and its probability, in rank order."""
  return pd.DataFrame({'filename': [r.filename for r in rows], 'label': [''] * len(rows),
                       'guess': [r.guess for r in rows], 'guess_probability': [r.probability for r in rows]},
                      columns=['filename', 'label', 'guess', 'guess_probability'])


def labels_from_export(path: pathlib.Path) -> pd.DataFrame:
  """Label Studio's JSON export as a labels CSV (`filename`, `label`): each task's latest annotation that was not
  cancelled and chose a class of the `label` control; tasks nobody labelled are left out. Never a prediction."""
  rows = []
  for task in read_tasks(path):
    kept = [a for a in task.get('annotations') or [] if not a.get('was_cancelled')]
    chosen = [r['value']['choices'][0] for a in kept[-1:] for r in a.get('result') or []
              if r.get('from_name') == CONTROL and r.get('type') == 'choices' and r.get('value', {}).get('choices')]
    if chosen:
      rows.append({'filename': task['data']['filename'], 'label': chosen[0]})
  return pd.DataFrame(rows, columns=['filename', 'label'])
