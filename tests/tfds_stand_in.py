"""Stand-in TFDS datasets, prepared for real: ArrayRecord files and metadata written by TFDS's own builder
and writer, without TensorFlow and without a download.

The real datasets cannot be downloaded here. `tfds.testing.mock_data` replaces the reader in-process, which
a `launch.py` subprocess cannot see; this writes what `tfds build --file_format=array_record` would, with
the download and the example generator of the dataset's builder replaced by generated examples. Images
are passed as PNG bytes because TFDS encodes numpy images with TensorFlow. The patched methods are TFDS
internals (checked with tensorflow-datasets 4.9.10).
"""
import io
import pathlib
import tempfile
from unittest import mock

import numpy as np
from PIL import Image

CIFAR10_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def prepare_stand_in(name: str, data_dir, split_sizes: dict, make_image, label_names=None,
                     corrupt=()) -> pathlib.Path:
  """Prepares `name` in `data_dir` with `split_sizes[split]` examples per split.

  `make_image(label, rng)` returns a uint8 (H, W, 3) array for a label; labels cycle through the classes.
  `corrupt` lists (split, index) records whose image bytes are not an image. Returns the version folder.
  """
  import tensorflow_datasets as tfds
  # A builder of a dataset not yet prepared makes an mkdtemp folder for metadata from GCS and leaves it,
  # empty, when none comes (DatasetInfo.initialize_from_bucket): here it lands in the test's own folder.
  scratch = pathlib.Path(data_dir) / 'tmp'
  scratch.mkdir(parents=True, exist_ok=True)
  with mock.patch.object(tempfile, 'tempdir', str(scratch)):
    builder = tfds.builder(name, data_dir=str(data_dir), file_format='array_record')
  features = builder.info.features
  image_key = next(k for k, f in features.items() if isinstance(f, tfds.features.Image))
  label_key = next(k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel))
  text_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]

  def split_generators(self, dl_manager):
    if label_names:
      self.info.features[label_key].names = list(label_names)
    return {split: self._generate_examples(split, n) for split, n in split_sizes.items()}

  def generate_examples(self, split, n):
    rng = np.random.default_rng(sorted(split_sizes).index(split))
    k = self.info.features[label_key].num_classes
    for i in range(n):
      label = i % k
      image = b'not an image' if (split, i) in corrupt else png(make_image(label, rng))
      key = f'{split}_{i:05d}'
      yield key, {image_key: image, label_key: label, **{t: f'{key}.png' for t in text_keys}}

  cls = type(builder)
  with mock.patch.object(cls, '_split_generators', split_generators), \
       mock.patch.object(cls, '_generate_examples', generate_examples), \
       mock.patch.object(cls, '_make_download_manager', lambda self, **kwargs: mock.MagicMock()):
    builder.download_and_prepare()
  return pathlib.Path(builder.data_dir)


def cifar_like_image(label: int, rng) -> np.ndarray:
  """32x32 colour noise around a per-class colour. airplane (0) and bird (2) share a sky blue and differ
  only by a faint mark, a planted version of seed 001's finding that birds and planes get confused."""
  palette = np.array([[90, 140, 220], [200, 40, 40], [90, 140, 220], [150, 110, 60], [120, 90, 40],
                      [170, 130, 80], [40, 150, 60], [110, 70, 40], [30, 60, 140], [210, 200, 60]], np.float64)
  image = palette[label] + rng.normal(0, 40, (32, 32, 3))
  if label == 2:
    image[12:20, 12:20] += 25
  return np.clip(image, 0, 255).astype(np.uint8)


def two_class_image(size):
  """Images for a 2-class set: class 1 is brighter, with noise; learnable but not trivially."""
  def make(label, rng):
    h, w = size if isinstance(size, tuple) else (int(rng.integers(*size)), int(rng.integers(*size)))
    base = 90 + 70 * label
    return np.clip(base + rng.normal(0, 45, (h, w, 3)), 0, 255).astype(np.uint8)
  return make
