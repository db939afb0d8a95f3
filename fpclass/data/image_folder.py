"""ImageFolder: one subfolder per class, with optional split folders.

    <root>/<class>/*                              everything is training data (a holdout is made)
    <root>/train/<class>/*                        training data
    <root>/{val,valid,validation}/<class>/*       optional validation split
    <root>/test/*  or  <root>/test/<class>/*      optional test split (unlabelled or labelled)

Class names are the sorted training subfolder names, as in Keras and torchvision. Hidden files are
ignored; other non-image files are skipped and reported.
"""
import pathlib

import numpy as np

from fpclass.config.inputs import DataSettings
from fpclass.data.source import IMAGE_EXTENSIONS, Problem, Source, Split, natural_key
from fpclass.errors import UserInputError

VAL_DIRS = ('val', 'valid', 'validation')
TEST_DIR = 'test'


def load_image_folder(data: DataSettings, root: pathlib.Path | None = None) -> Source:
  """The ImageFolder source at `root` (default config.data.root); `data` is the typed data section."""
  files = data.files
  if not (root or files.root):
    raise UserInputError('config.data.root is empty: set it to your ImageFolder (one subfolder per class)')
  root = pathlib.Path(root or files.root).expanduser()
  if not root.is_dir():
    raise UserInputError(f'config.data.root={str(root)!r} is not a folder')
  train_root = root / 'train' if (root / 'train').is_dir() else root
  reserved = set(VAL_DIRS) | {TEST_DIR} if train_root == root else set()
  class_dirs = sorted((d for d in train_root.iterdir() if d.is_dir() and not d.name.startswith('.')
                       and d.name not in reserved), key=lambda d: natural_key(d.name))
  found = tuple(d.name for d in class_dirs)
  class_names = files.class_order or found
  if files.class_names:
    absent = [c for c in class_names if c not in found]
    if absent:
      raise UserInputError(f'{train_root}: no folder for classes {absent} of config.data.class_names; '
                           f'class folders found: {list(found)}')
  if len(class_names) < 2:
    raise UserInputError(f'{train_root}: found class folders {list(found)}; an ImageFolder needs one '
                         'subfolder per class and at least 2 classes')

  problems = []
  train = _labelled_split(root, train_root, class_names, 'train', problems)
  val_dirs = [root / name for name in VAL_DIRS if (root / name).is_dir()]
  if len(val_dirs) > 1:
    raise UserInputError(f'{root}: several validation folders {[d.name for d in val_dirs]}; keep one')
  val = _labelled_split(root, val_dirs[0], class_names, 'val', problems) if val_dirs else None
  test = _test_split(root, root / TEST_DIR, class_names, problems) if (root / TEST_DIR).is_dir() else None
  return Source(name='image_folder', class_names=class_names, train=train, val=val, test=test,
                problems=problems, root=root)


def _labelled_split(root, folder, class_names, split, problems) -> Split:
  unknown = sorted(d.name for d in folder.iterdir()
                   if d.is_dir() and not d.name.startswith('.') and d.name not in class_names
                   and not (split == 'train' and d.name in VAL_DIRS + (TEST_DIR,)))
  if unknown:
    raise UserInputError(f'{folder}: class folders {unknown} are not among the classes {list(class_names)}')
  ids, labels, paths = [], [], []
  for index, name in enumerate(class_names):
    class_dir = folder / name
    files = _files(class_dir, split, problems) if class_dir.is_dir() else []
    if split == 'train' and not files:
      raise UserInputError(f'{class_dir}: class {name!r} has no images')
    for path in files:
      ids.append(path.relative_to(root).as_posix())
      labels.append(index)
      paths.append(path)
  if not ids:
    raise UserInputError(f'{folder}: the {split} folder holds no images')
  return Split(ids=ids, labels=np.array(labels), paths=paths)


def _test_split(root, folder, class_names, problems) -> Split | None:
  subdirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith('.')]
  if subdirs:  # a labelled test set, laid out like the training folder
    return _labelled_split(root, folder, class_names, 'test', problems)
  files = _files(folder, 'test', problems)
  if not files:
    raise UserInputError(f'{folder}: the test folder holds no images')
  return Split(ids=[p.relative_to(folder).as_posix() for p in files], labels=None, paths=files)


def _files(folder, split, problems):
  files = []
  for path in sorted(folder.rglob('*'), key=lambda p: natural_key(p.as_posix())):
    if not path.is_file() or any(part.startswith('.') for part in path.relative_to(folder).parts):
      continue
    if path.suffix.lower() in IMAGE_EXTENSIONS:
      files.append(path)
    else:
      problems.append(Problem(file=str(path), split=split, reason='not an image file extension; skipped'))
  return files
