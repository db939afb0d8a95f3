"""What a folder's images are like, for a config that leaves the channels or the input size to them
(`data.channels=0`, `data.image_size=(0, 0)`: configs/folder.py): the class list, grayscale or colour, and an
input size, read from a sample of the training files' headers (Pillow opens a file without decoding its pixels).

Grayscale when nearly every sampled file is (modes L, LA, I, I;16, 1, or a palette of greys); the input size the
median height and width, scaled so the longer side is at most `MAX_SIDE` (a from-scratch CNN on a CPU), each side a
multiple of 8 and at least `MIN_SIDE`. Array sources give their arrays' shape.
"""
import dataclasses
import statistics

import numpy as np
from PIL import Image

from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError

SAMPLE = 200        # files whose headers are read
MAX_SIDE = 64       # the longer side of the chosen input size
MIN_SIDE = 16
GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')
GRAY_SHARE = 0.9    # this share of the sampled files grayscale: one channel


@dataclasses.dataclass(frozen=True)
class Profile:
  class_names: tuple
  images: int                # the training split's files (or rows)
  sampled: int
  gray: int                  # sampled files that are grayscale
  median_size: tuple         # (height, width) of the sampled files
  channels: int
  image_size: tuple          # (height, width) chosen

  def describe(self, root) -> str:
    kind = 'grayscale' if self.channels == 1 else 'colour'
    return (f'data: {len(self.class_names)} classes ({", ".join(map(str, self.class_names[:8]))}'
            f'{", ..." if len(self.class_names) > 8 else ""}) and {self.images} training images in {root}; '
            f'{self.gray} of {self.sampled} sampled are grayscale, median {self.median_size[0]}x{self.median_size[1]}: '
            f'{kind}, data.channels={self.channels}, data.image_size={self.image_size}')


def _is_gray(image: Image.Image) -> bool:
  if image.mode in GRAY_MODES:
    return True
  if image.mode == 'P':
    palette = np.asarray(image.getpalette() or [], np.int64)[:768].reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())
  return False


def input_size(height: float, width: float, max_side: int = MAX_SIDE) -> tuple[int, int]:
  """(height, width): the aspect of `height` x `width` kept, the longer side at most `max_side` (never enlarged
  past the images' own), each side a multiple of 8 and at least MIN_SIDE."""
  scale = min(1.0, max_side / max(height, width))

  def side(x):
    return max(MIN_SIDE, int(round(x * scale / 8)) * 8)
  return side(height), side(width)


def profile(data: DataSettings, sample: int = SAMPLE, seed: int = 0) -> Profile:
  """The source's classes and a sample of its training images' modes and sizes (`data`'s decode settings are not
  read: they are what this chooses)."""
  source = pipeline.list_source(data)
  train = source.train
  if train.paths is None:   # an array source: its arrays are the images
    images = np.asarray(train.images)
    height, width = images.shape[1:3]
    channels = 1 if images.ndim == 3 or images.shape[-1] == 1 else 3
    return Profile(tuple(source.class_names), len(images), len(images), len(images) if channels == 1 else 0,
                   (height, width), channels, input_size(height, width))
  paths = list(train.paths)
  if not paths:
    raise UserInputError(f'config.data.root={str(source.root)!r}: no training image found to size the input by')
  chosen = np.random.default_rng(seed).permutation(len(paths))[:sample]
  sizes, gray = [], 0
  for i in chosen:
    try:
      with Image.open(paths[i]) as image:
        sizes.append(image.size)   # (width, height)
        gray += _is_gray(image)
    except (OSError, ValueError):   # unreadable: decoding quarantines it later
      continue
  if not sizes:
    raise UserInputError(f'config.data.root={str(source.root)!r}: none of {len(chosen)} sampled files opens as an '
                         'image (Pillow)')
  height = statistics.median(h for _, h in sizes)
  width = statistics.median(w for w, _ in sizes)
  channels = 1 if gray >= GRAY_SHARE * len(sizes) else 3
  return Profile(tuple(source.class_names), len(paths), len(sizes), gray, (int(height), int(width)), channels,
                 input_size(height, width))
