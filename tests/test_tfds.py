"""Named TFDS datasets through tfds.data_source: under tfds.testing.mock_data, and on stand-in datasets
prepared as real ArrayRecord files (tests/tfds_stand_in.py); label mapping keeps the source class."""
import importlib.util
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.data.label_map import parse_label_map, source_class_order
from fpclass.errors import UserInputError
from fpclass.modes.prepare import prepare
from tests.conftest import load_config
from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in, two_class_image


@pytest.fixture(scope='module')
def stand_in_dir(tmp_path_factory):
  """cifar10 (real class names) and cats_vs_dogs (variable sizes, one corrupt record), prepared for real."""
  folder = tmp_path_factory.mktemp('tfds')
  prepare_stand_in('cifar10', folder, {'train': 60, 'test': 30}, cifar_like_image, CIFAR10_NAMES)
  prepare_stand_in('cats_vs_dogs', folder, {'train': 24}, two_class_image((20, 70)), corrupt=[('train', 5)])
  return folder


def cifar_config(**overrides):
  return load_config('configs/cifar_vehicles.py:quick', **overrides)


def test_mock_data_drives_data_source_with_the_recipe_label_map(stand_in_dir):
  on_disk = pipeline.list_raw_source(DataSettings.from_config(cifar_config(**{'data.tfds.data_dir': str(stand_in_dir)}).data))  # fills the cache
  # USE_FILES takes the metadata (CIFAR-10's class names) from the prepared folder; the examples are mock_data's,
  # and must not be confused with the cached arrays of the files there.
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(stand_in_dir)):
    source = pipeline.list_source(DataSettings.from_config(cifar_config().data))
    raw = pipeline.list_raw_source(DataSettings.from_config(cifar_config().data))
  assert 'tensorflow' not in sys.modules
  assert source.class_names == ('vehicle', 'animal') and raw.class_names == CIFAR10_NAMES
  assert len(source.train) == len(source.test) == 40 and len(on_disk.train) == 60
  assert source.train.images.shape == (40, 32, 32, 3) and source.train.images.dtype == np.uint8
  fine = source.train.extras['fine_label']
  assert list(fine) == [CIFAR10_NAMES[i] for i in raw.train.labels]
  vehicles = np.isin(fine, ['airplane', 'automobile', 'ship', 'truck'])
  assert np.array_equal(source.train.labels, np.where(vehicles, 0, 1))
  assert set(fine) > {'airplane', 'bird'}  # both groups are present in 40 random labels


def test_mock_data_variable_size_images_are_fitted_like_files():
  config = load_config('configs/cats_dogs.py:tfds,quick', **{'data.image_size': (48, 40)})
  with tfds.testing.mock_data(num_examples=12):  # cats_vs_dogs images are 5-50 pixels a side here
    dataset = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False)
  assert dataset.class_names == ('cat', 'dog')
  assert dataset.train.images.shape[1:] == (48, 40, 3) and len(dataset.train) + len(dataset.val) == 12
  assert dataset.val.images.std() > 0


def test_prepared_files_are_read_cached_and_corrupt_records_quarantined(stand_in_dir, isolated_cache):
  config = load_config('configs/cats_dogs.py:tfds,quick', **{'data.tfds.data_dir': str(stand_in_dir),
                                                              'data.image_size': (32, 32)})
  first = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  assert [p.reason.startswith('unreadable record') for p in first.quarantine] == [True]
  assert first.quarantine[0].file.startswith('cats_vs_dogs:train[')
  assert len(first.pool) == 23 and set(first.pool.ids) <= {f'train_{i:05d}.png' for i in range(24)}
  assert 'train_00005.png' not in first.pool.ids
  labels = first.pool.labels  # the stand-in's dogs are brighter: images and labels stayed aligned
  assert first.pool.images[labels == 1].mean() > first.pool.images[labels == 0].mean() + 30
  cached = list((isolated_cache / 'decoded').glob('tfds-cats_vs_dogs-*.npz'))
  assert len(cached) == 1
  second = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  assert np.array_equal(first.pool.images, second.pool.images) and first.pool.ids == second.pool.ids
  assert [p.file for p in second.quarantine] == [p.file for p in first.quarantine]


@pytest.mark.parametrize('overrides, message', [
    ({'data.tfds.name': 'cifar100'}, "not prepared in .*cifar100.*pip install 'fpclass\\[prepare\\]'.*--mode prepare"),
    ({'data.tfds.name': 'cifar_ten'}, "config.data.tfds.name='cifar_ten': TFDS has no dataset of that name"),
    ({'data.tfds.test_split': 'validation'}, "config.data.tfds.test_split='validation': Unknown split"),
    ({'data.tfds.image_key': 'picture'}, "config.data.tfds.image_key='picture': cifar10 has features"),
    ({'data.label_map': 'vehicle:airplane,car;animal:*'}, "'car' is not a class of the source"),
])
def test_tfds_problems_name_the_flag(stand_in_dir, overrides, message):
  config = cifar_config(**{'data.tfds.data_dir': str(stand_in_dir), **overrides})
  with pytest.raises(UserInputError, match=message):
    pipeline.list_source(DataSettings.from_config(config.data))


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None, reason='TensorFlow is installed here')
def test_prepare_without_tensorflow_says_what_to_install(tmp_path):
  with pytest.raises(UserInputError, match=r"needs TensorFlow .*pip install 'fpclass\[prepare\]'"):
    prepare(cifar_config(**{'data.tfds.data_dir': str(tmp_path)}))


def test_prepare_leaves_a_prepared_dataset_alone(stand_in_dir, capsys):
  prepare(cifar_config(**{'data.tfds.data_dir': str(stand_in_dir)}))
  assert 'already prepared' in capsys.readouterr().out


def test_label_map_parsing():
  names = ('a', 'b', 'c', 'd')
  assert parse_label_map('x:b,d;y:*', names)[0] == ('x', 'y')
  assert parse_label_map('x:b,d;y:*', names)[1].tolist() == [1, 0, 1, 0]
  assert parse_label_map('y:*;x:a', names)[1].tolist() == [1, 0, 0, 0]
  assert source_class_order('x:d,b;y:*', ['a', 'b', 'c', 'd']) == ['d', 'b', 'a', 'c']
  for spec, message in [('x:a,b', 'not mapped'), ('x:a;y:a,b,c,d', 'mapped twice'), ('x:a;y:*;z:*', 'stand alone'),
                        ('x:a,b,c,d;y:*', 'receive no source class'), ('x a', 'is not "class:'),
                        ('x:a;x:b,c,d', 'named twice'), ('x:*', 'at least 2')]:
    with pytest.raises(UserInputError, match=message):
      parse_label_map(spec, names)
