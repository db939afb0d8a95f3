"""Seeds 002 (climbing: backbones against a CNN from scratch, compared) and 004 (cats and dogs: VGG16 frozen,
then a freeze_till sweep) end to end through launch.py with `quick`, loading no-top weights files that Keras
itself wrote; see test_recipes_transfer.py."""
import json

import numpy as np
import pandas as pd
import pytest

from bench.clean_planted import plant_folder
from fpclass.modes.compare import compare_workdir
from tests import content
from tests.conftest import launch, load_config
from tests.test_recipes import check_common_outputs, pet_images
from tests.transfer_weights import assert_backbone_as_in_file, write_keras_weights


@pytest.fixture(scope='module')
def keras_weights(tmp_path_factory):
  return write_keras_weights(tmp_path_factory.mktemp('keras-weights'), ['keras_vgg16', 'keras_resnet50'])


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
  assert cams
  content.check_plots(workdir / 'explain', [p.name for p in cams])
  assert (workdir / 'report.d' / '30-explanations.md').is_file() and (workdir / 'explain' / 'top_losses.csv').is_file()
  assert_backbone_as_in_file(load_config('configs/cats_dogs.py:vgg16,quick', **common), workdir, weights)

  # freeze_till=16: VGG16's first 16 layers stay as loaded, block5_conv3 and block5_pool train. One epoch (quick's
  # first): any step moves block5_conv3, and the comparison reads each run's scores.
  launch('--config=configs/cats_dogs.py:vgg16,quick', f'--workdir={sweep / "freeze_till_16"}', *flags,
         '--config.model.freeze_till=16', '--config.explain.after_training=False', '--config.train.epochs=1',
         '--config.train.tensorboard=False')
  assert_backbone_as_in_file(load_config('configs/cats_dogs.py:vgg16,quick', **common, **{'model.freeze_till': 16}),
                             sweep / 'freeze_till_16', weights, trainable={'block5_conv3'})
  table = compare_workdir(load_config('configs/cats_dogs.py:vgg16,quick'), sweep)
  assert sorted(table['freeze_till']) == [-1, 16] and set(table['run']) == {'frozen', 'freeze_till_16'}
  assert pd.read_csv(sweep / 'comparison.csv')['macro_f1'].is_monotonic_decreasing


def test_climbing_backbones_quick_and_comparison(tmp_path, keras_weights):
  """Seed 002 trains a CNN from scratch and pretrained backbones, each in its own workdir, and compares them."""
  root = tmp_path / 'climbing'
  plant_folder(root, originals=24, copies_per_kind=1, seed=5)
  runs = tmp_path / 'runs'
  data = {'data.root': str(root), 'data.bad_test_images': 'prior'}  # a corrupt test file is planted
  common = [f'--config.{k}={v}' for k, v in data.items()]
  # One epoch each, not quick's two: what is checked here is each run's scores, its frozen backbone as in its file
  # (any step would move it) and the comparison, none of which needs a second epoch.
  one_epoch = [*common, '--config.train.epochs=1', '--config.train.tensorboard=False']
  # ResNet50 cut after its first stack, conv2, from the whole file Keras wrote, for the same reason: its frozen
  # blocks and BN statistics still go through the augmented training steps, and conv3 to conv5 would only add to
  # the train step's compilation (most of this launch; test_pretrained_keras.py checks the whole network).
  backbone = {'model.pretrained': str(keras_weights['keras_resnet50']), 'model.cut': 'conv2'}
  launch('--config=configs/climbing.py:resnet50,quick', f'--workdir={runs / "resnet50"}', *one_epoch,
         *[f'--config.{k}={v}' for k, v in backbone.items()])
  # The CNN from scratch at the backbones' quick size, 32x32 (its own quick size is 64), with one conv block and one
  # dense layer (the recipe's three and two compile in twice the time; test_recipes.py trains the recipe's own):
  # the claim is the comparison.
  launch('--config=configs/climbing.py:quick', f'--workdir={runs / "scratch"}', *one_epoch,
         '--config.data.image_size=(32,32)', '--config.model.block_channels=(8,)', '--config.model.dense_sizes=(16,)')
  for run, name in (('resnet50', 'keras_resnet50'), ('scratch', 'cifar_cnn')):
    scores = content.check_scores_match_predictions(runs / run)
    assert scores['model'] == name and set(scores['per_class']) == {'heel_hook', 'others', 'toe_hook'}
  flat = assert_backbone_as_in_file(load_config('configs/climbing.py:resnet50,quick', **data, **backbone),
                                    runs / 'resnet50', keras_weights['keras_resnet50'])
  assert not any(k[1].startswith(('conv3', 'conv4', 'conv5')) for k in flat)  # cut after conv2
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
