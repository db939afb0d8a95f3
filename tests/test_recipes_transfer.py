"""The seeds' transfer-learning recipes end to end through launch.py with `quick`, on stand-in data, loading
no-top weights files that Keras itself wrote (random weights: there is no download here). Each test checks
what the recipe writes and that the frozen backbone left training exactly as the file holds it.

Keras writes the files with its numpy backend, in a subprocess: the file format is the backend's business
no more than the JAX backend's, and building InceptionV3 on the JAX backend takes over a minute on this
machine (seconds with numpy)."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from flax import traverse_util

from bench.clean_planted import plant_folder
from fpclass import checkpoint, models, optim
from fpclass.inference import load_trained
from fpclass.validation import validate
from tests import content
from tests.conftest import launch, load_config
from tests.test_recipes import check_common_outputs, param_count, pet_images
from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in, two_class_image

# Keras 3 writes the weights files; it is imported only in the subprocess, with its backend chosen there. A
# missing test dependency fails loudly rather than skipping.
assert importlib.util.find_spec('keras') and importlib.util.find_spec('h5py'), 'pip install -e .[test]'

APPLICATIONS = {'keras_resnet50v2': 'ResNet50V2', 'keras_resnet50': 'ResNet50', 'keras_vgg16': 'VGG16',
                'keras_inceptionv3': 'InceptionV3'}


@pytest.fixture(scope='session')
def keras_weights(tmp_path_factory):
  """{registered name: path} of include_top=False .weights.h5 files written by keras.applications."""
  folder = tmp_path_factory.mktemp('keras-weights')
  paths = {name: folder / f'{app}.weights.h5' for name, app in APPLICATIONS.items()}
  script = textwrap.dedent(f'''
      import keras
      keras.utils.set_random_seed(0)
      for app, path in {[(app, str(paths[name])) for name, app in APPLICATIONS.items()]!r}:
        getattr(keras.applications, app)(weights=None, include_top=False, input_shape=(75, 75, 3)).save_weights(path)
  ''')
  subprocess.run([sys.executable, '-c', script], check=True, env=dict(os.environ, KERAS_BACKEND='numpy'),
                 capture_output=True, text=True, timeout=600)
  return paths


def assert_backbone_as_in_file(config, workdir, weights_file, trainable=()):
  """Every backbone variable of the selected checkpoint (params and BN statistics, all but the new top) equals
  the file's, except the modules named in `trainable`, which must have changed."""
  trained = load_trained(config, workdir)
  mapped, _ = models.get_spec(config.model.name).convert(weights_file)
  flat = traverse_util.flatten_dict(checkpoint.model_variables(trained.state))
  backbone = [k for k in flat if k[1] != 'top']
  assert len(backbone) > 10 and any(k[1] == 'top' for k in flat)
  changed = {k[1] for k in backbone if not np.array_equal(np.asarray(flat[k]), mapped[k])}
  assert changed == set(trainable), changed
  return flat


def test_transfer_configs_keep_the_seed_values():
  cifar = load_config('configs/cifar_vehicles.py:resnet50v2')
  assert cifar.data.image_size == (32, 32) and cifar.data.device_resize == (224, 224)
  assert (cifar.model.name, cifar.model.head, tuple(cifar.model.top_hidden), cifar.model.freeze_till) == (
      'keras_resnet50v2', 'sigmoid', (512, 256), -1)
  assert (cifar.train.optimizer, cifar.train.learning_rate, cifar.train.l2) == ('adam', 1e-4, 1e-3)
  assert load_config('configs/cifar_vehicles.py:resnet50v2,quick').data.device_resize == (40, 40)

  horses = load_config('configs/horses_humans.py:inception_mixed7')
  assert horses.data.image_size == (150, 150)
  assert (horses.model.cut, horses.model.top, tuple(horses.model.top_hidden), horses.model.top_dropout,
          horses.model.freeze_till) == ('mixed7', 'flatten', (1024,), 0.2, -1)
  assert (horses.train.optimizer, horses.train.learning_rate) == ('rmsprop', 1e-5)
  # The seed's model summary: 38.5M trainable (the new head on 7x7x768 mixed7 maps), 47.5M in all.
  total = param_count(horses.model, (150, 150, 3))
  head = 7 * 7 * 768 * 1024 + 1024 + 1024 + 1
  assert head == 38_537_217 and round(total / 1e6, 1) == 47.5

  pets = load_config('configs/cats_dogs.py:vgg16')
  assert pets.data.image_size == (224, 224) and pets.data.val_fraction == 0.2
  assert (pets.model.name, pets.model.top, pets.model.freeze_till, pets.explain.after_training) == (
      'keras_vgg16', 'flatten', -1, True)
  labels = optim.param_groups(load_config('configs/cats_dogs.py:vgg16', **{'model.freeze_till': 16}).model)(
      {'block5_conv2': {'kernel': 0}, 'block5_conv3': {'kernel': 0}, 'top': {'logits': {'kernel': 0}}})
  assert labels == {'block5_conv2': {'kernel': 'frozen'}, 'block5_conv3': {'kernel': 'backbone'},
                    'top': {'logits': {'kernel': 'head'}}}

  for backbone, name in (('mobilenetv3large', 'keras_mobilenetv3large'), ('efficientnetb2', 'keras_efficientnetb2'),
                         ('resnet50', 'keras_resnet50'), ('vgg16', 'keras_vgg16')):
    c = load_config(f'configs/climbing.py:{backbone}')
    validate(c)  # the model builds with these fields and the data fits its input
    assert (c.model.name, tuple(c.model.top_hidden), c.model.top_dropout, c.model.freeze_till) == (
        name, (256, 128), 0.2, -1)
    assert (c.data.image_size, c.train.learning_rate, c.train.early_stopping_patience, c.train.epochs) == (
        (224, 224), 1e-5, 30, 100)
    assert (c.augment.hflip, c.augment.vflip, c.augment.rotation, c.augment.zoom, c.augment.height,
            c.augment.width) == (0.5, 0.5, 72.0, 0.2, 0.2, 0.2)
  with pytest.raises(ValueError, match='one backbone per run'):
    load_config('configs/climbing.py:resnet50,vgg16')


def test_cifar_vehicles_resnet50v2_quick(tmp_path, keras_weights):
  tfds_dir = tmp_path / 'tfds'
  prepare_stand_in('cifar10', tfds_dir, {'train': 60, 'test': 10}, cifar_like_image, CIFAR10_NAMES)
  workdir = tmp_path / 'run'
  weights = keras_weights['keras_resnet50v2']
  args = [f'--config.data.tfds.data_dir={tfds_dir}', f'--config.model.pretrained={weights}']
  launch('--config=configs/cifar_vehicles.py:resnet50v2,quick', f'--workdir={workdir}', *args)
  scores, history = check_common_outputs(workdir, 6, ('vehicle', 'animal'))
  assert [scores[s]['n'] for s in ('train', 'test')] == [54, 10]
  content.check_fine_label_table(workdir)
  # No dropout, no augmentation, a frozen backbone: only the head can change the epoch's mean loss.
  assert abs(history['train_loss'][0] - history['train_loss'][1]) > 1e-4
  config = load_config('configs/cifar_vehicles.py:resnet50v2,quick', **{
      'data.tfds.data_dir': str(tfds_dir), 'model.pretrained': str(weights)})
  flat = assert_backbone_as_in_file(config, workdir, weights)
  # 32x32 images upsampled to 40x40 on the device: conv5 is 2x2 (it would be 1x1 at 32); one sigmoid logit.
  assert flat[('params', 'top', 'dense1', 'kernel')].shape == (2048, 512)
  assert flat[('params', 'top', 'logits', 'kernel')].shape == (256, 1)


def test_horses_humans_inception_mixed7_quick(tmp_path, keras_weights):
  tfds_dir = tmp_path / 'tfds'
  prepare_stand_in('horses_or_humans', tfds_dir, {'train': 24, 'test': 8}, two_class_image((300, 300)))
  workdir = tmp_path / 'run'
  weights = keras_weights['keras_inceptionv3']
  overrides = {'data.tfds.data_dir': str(tfds_dir), 'model.pretrained': str(weights)}
  launch('--config=configs/horses_humans.py:inception_mixed7,quick', f'--workdir={workdir}',
         *[f'--config.{k}={v}' for k, v in overrides.items()])
  scores, _ = check_common_outputs(workdir, 8, ('horses', 'humans'))
  config = load_config('configs/horses_humans.py:inception_mixed7,quick', **overrides)
  flat = assert_backbone_as_in_file(config, workdir, weights)
  assert not any(k[1] in ('mixed8', 'mixed9', 'mixed10') for k in flat)  # cut after mixed7
  assert flat[('params', 'top', 'dense1', 'kernel')].shape == (3 * 3 * 768, 1024)  # mixed7 at 75x75
  assert flat[('params', 'top', 'logits', 'kernel')].shape == (1024, 1)
  assert scores['num_params'] == sum(int(np.size(v)) for k, v in flat.items() if k[0] == 'params')


def test_cats_dogs_vgg16_and_freeze_till_sweep_quick(tmp_path, keras_weights):
  root = tmp_path / 'PetImages'
  pet_images(root, np.random.default_rng(0))
  weights = keras_weights['keras_vgg16']
  sweep = tmp_path / 'sweep'
  common = {'data.root': str(root), 'model.pretrained': str(weights)}
  flags = [f'--config.{k}={v}' for k, v in common.items()]
  launch('--config=configs/cats_dogs.py:vgg16,quick', f'--workdir={sweep / "frozen"}', *flags)
  workdir = sweep / 'frozen'
  scores, _ = check_common_outputs(workdir, 8, ('Cat', 'Dog'))
  assert scores['roc_auc'] is not None  # its value: check_scores_match_predictions
  cams = sorted((workdir / 'explain').glob('*.png'))  # Grad-CAM figures
  assert cams and all(content.check_not_blank(p) is not None for p in cams)
  assert (workdir / 'report.d' / '30-explanations.md').is_file() and (workdir / 'explain' / 'top_losses.csv').is_file()
  assert_backbone_as_in_file(load_config('configs/cats_dogs.py:vgg16,quick', **common), workdir, weights)

  # freeze_till=16: VGG16's first 16 layers stay as loaded, block5_conv3 and block5_pool train.
  launch('--config=configs/cats_dogs.py:vgg16,quick', f'--workdir={sweep / "freeze_till_16"}', *flags,
         '--config.model.freeze_till=16', '--config.explain.after_training=False')
  assert_backbone_as_in_file(load_config('configs/cats_dogs.py:vgg16,quick', **common, **{'model.freeze_till': 16}),
                             sweep / 'freeze_till_16', weights, trainable={'block5_conv3'})
  from fpclass.modes.compare import compare_workdir
  table = compare_workdir(load_config('configs/cats_dogs.py:vgg16,quick'), sweep)
  assert sorted(table['freeze_till']) == [-1, 16] and set(table['run']) == {'frozen', 'freeze_till_16'}
  assert pd.read_csv(sweep / 'comparison.csv')['macro_f1'].is_monotonic_decreasing


def test_climbing_backbones_quick_and_comparison(tmp_path, keras_weights):
  """Seed 002 trains a CNN from scratch and pretrained backbones, each in its own workdir, and compares them."""
  root = tmp_path / 'climbing'
  plant_folder(root, originals=24, copies_per_kind=1, seed=5)
  runs = tmp_path / 'runs'
  common = [f'--config.data.root={root}', '--config.data.bad_test_images=prior']  # a corrupt test file is planted
  launch('--config=configs/climbing.py:resnet50,quick', f'--workdir={runs / "resnet50"}', *common,
         f'--config.model.pretrained={keras_weights["keras_resnet50"]}')
  launch('--config=configs/climbing.py:quick', f'--workdir={runs / "scratch"}', *common)
  for run, name in (('resnet50', 'keras_resnet50'), ('scratch', 'cifar_cnn')):
    scores = content.check_scores_match_predictions(runs / run)
    assert scores['model'] == name and set(scores['per_class']) == {'heel_hook', 'others', 'toe_hook'}
  assert_backbone_as_in_file(load_config('configs/climbing.py:resnet50,quick', **{
      'data.root': str(root), 'model.pretrained': str(keras_weights['keras_resnet50']),
      'data.bad_test_images': 'prior'}), runs / 'resnet50',
      keras_weights['keras_resnet50'])
  launch('--config=configs/climbing.py:quick', f'--workdir={runs}', '--mode=compare')
  table = pd.read_csv(runs / 'comparison.csv')
  assert sorted(table['run']) == ['resnet50', 'scratch'] and set(table['model']) == {'keras_resnet50', 'cifar_cnn'}
  assert table['macro_f1'].is_monotonic_decreasing
  for row in table.itertuples():
    scores = json.loads((runs / row.run / 'scores.json').read_text())
    assert row.macro_f1 == pytest.approx(scores['macro_f1'])
    for name in ('heel_hook', 'others', 'toe_hook'):
      assert getattr(row, f'f1_{name}') == pytest.approx(scores['per_class'][name]['f1'])
  report = (runs / 'report.md').read_text()
  assert '## Comparison of runs' in report and f'Best: {table["run"][0]}' in report
