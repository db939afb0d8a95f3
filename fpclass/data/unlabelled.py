"""The images nobody labelled (`config.data.unlabelled`): what semi-supervised training and `--mode label_next` read.

The spec is a folder (searched recursively), a glob, a CSV of paths (`config.data.unlabelled_path_column`), or
`test`: the source's own test images, as Kaggle competitors pseudo-label them. The files are decoded and cached as
the labelled ones are (`fpclass.data.decode`); an unreadable file is listed with its reason, never touched. An image
whose pixels equal a labelled image's is named once: its labelled copy is used, so a pool that overlaps the training
folders (or a copy of a validation image) never trains without its label on what scores the model.
"""
import dataclasses
import hashlib

import numpy as np

from fpclass import fileio
from fpclass.config.inputs import DataSettings
from fpclass.data.decode import decode_files
from fpclass.data.new_images import list_inputs
from fpclass.data.rows import in_memory
from fpclass.errors import UserInputError

KEY = 'config.data.unlabelled'
TEST = 'test'


@dataclasses.dataclass(frozen=True)
class Pool:
  """The readable unlabelled images, uint8 (N, H, W, C), with each one's name (its path as listed, or the test
  image's id); `problems`, (name, reason) of what could not be read; `labelled_copies`, the names left out because a
  labelled image has the same pixels; `from_test`: the images are the source's test split."""
  spec: str
  images: np.ndarray
  names: list
  problems: list
  labelled_copies: list
  from_test: bool

  def __len__(self):
    return len(self.names)

  def describe(self) -> str:
    """One line for logs and reports."""
    parts = [f'{len(self)} unlabelled images from {self.spec!r}']
    if self.labelled_copies:
      parts.append(f'{len(self.labelled_copies)} left out as copies of labelled images')
    if self.problems:
      parts.append(f'{len(self.problems)} unreadable, listed')
    return '; '.join(parts)


def pixel_digest(image) -> str:
  """The SHA-1 of an image's bytes, for finding exact copies."""
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def load_pool(data: DataSettings, labelled=(), test=None, progress: bool = False) -> Pool | None:
  """config.data.unlabelled decoded (None when it is empty). `labelled`: arrays of labelled images (train, val) whose
  exact copies leave the pool; `test`: the source's decoded test split (`fpclass.data.pipeline.ArraySplit`, with
  its `decoded` flags) when the spec is 'test'. An empty pool is refused in one line."""
  settings = data.unlabelled
  return read_pool(settings.unlabelled, data, labelled, test, progress, KEY,
                   (settings.unlabelled_path_column, 'config.data.unlabelled_path_column'))


def read_pool(spec: str, data: DataSettings, labelled=(), test=None, progress: bool = False, key: str = KEY,
              path_column: tuple[str, str] = ('path', 'config.data.unlabelled_path_column')) -> Pool | None:
  """`spec` (a folder, glob, CSV or 'test') decoded as `data` decodes, as `load_pool` does; the errors name `key`,
  the flag that gave it (`config.distill.unlabelled` reads its images here too), and `path_column` is (the CSV's
  path column, the flag that gave it)."""
  if not spec:
    return None
  if data.labels.multilabel:
    raise UserInputError(f'{key}: multi-label training learns from labelled images only (an unlabelled image has '
                         'no tag row to pseudo-label); leave it empty')
  if spec == TEST:
    if test is None or not len(test):
      raise UserInputError(f"{key}='test': the source has no test images (data.test_dir)")
    ok = np.asarray(test.extras.get('decoded', np.ones(len(test), bool)), bool)
    images, names = in_memory(test.images)[ok], [str(test.ids[i]) for i in np.flatnonzero(ok)]
    problems = [(str(test.ids[i]), 'could not be decoded (see quarantine.csv)') for i in np.flatnonzero(~ok)]
  else:
    inputs = list_inputs(spec, path_column[0], key, path_column[1])
    decoded, ok, failed = decode_files(inputs.paths, data.decode, split='unlabelled',
                                       cache_dir=fileio.cache_root(data.storage.cache_dir),
                                       workers=data.storage.decode_workers, progress=progress)
    good = np.flatnonzero(ok)
    images, names = in_memory(decoded)[good], [inputs.names[i] for i in good]
    problems = list(inputs.problems) + [(inputs.names[i], p.reason) for i, p in zip(np.flatnonzero(~ok), failed)]
  known = {pixel_digest(image) for array in labelled for image in in_memory(array)}
  fresh = [i for i, image in enumerate(images) if pixel_digest(image) not in known]
  copies = [names[i] for i in sorted(set(range(len(names))) - set(fresh))]
  pool = Pool(spec, images[fresh], [names[i] for i in fresh], problems, copies, spec == TEST)
  if not len(pool):
    why = (f'all {len(copies)} are copies of labelled images' if copies else
           f'none of its {len(problems)} file(s) could be read' if problems else 'it holds no image')
    raise UserInputError(f'{key}={spec!r}: no unlabelled image to use ({why})')
  return pool
