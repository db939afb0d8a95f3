"""The frozen-backbone feature cache (fpclass/train/feature_cache.py): the head trained on cached features trains as
the uncached run does (the same metrics.csv but its seconds column), on a Keras port (VGG16, weights Keras
wrote) through launch.py and on a torchvision port (ResNet-18, a torch.save'd state_dict) with dropout in its
head, l2 and a fine-tuning phase; and the cache is refused wherever something trainable or random comes
before the head."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest

from fpclass.config.run import RunSettings
from fpclass.errors import UserInputError
from fpclass.train import feature_cache
from fpclass.train.task import build_task
from fpclass.train.validation import validate
from tests.conftest import launch, load_config
from tests.test_recipes import pet_images
from tests.transfer_weights import write_keras_weights

AUGMENT_OFF = {f'augment.{k}': 0.0 for k in ('hflip', 'rotation', 'translate', 'zoom', 'brightness')}
# The val split's size: the feature pass over train and val, validation and evaluate then predict in one batch
# shape, so each network compiles one prediction program instead of one per split size.
EVAL_BATCH = 4
COLUMNS_TOL = 1e-5   # float tolerance (absolute, or relative above 1) on metrics.csv columns but seconds
# ResNet-18's layout with one basic block a stage: the cache's split, the head's training and the fine-tuning
# phase work on stages, not on depth, and the features (1x1x512) are those of the full network's shape.
LAYERS = (1, 1, 1, 1)


@pytest.fixture(scope='module')
def pets(tmp_path_factory):
  """tests/test_recipes.py's PetImages stand-in cut to 10 good images a class (its empty, truncated and Thumbs.db
  files kept): 16 train and 4 val images, half the feature passes and steps of the whole set."""
  root = tmp_path_factory.mktemp('pets') / 'PetImages'
  pet_images(root, np.random.default_rng(0))
  for path in root.glob('*/*.jpg'):
    if path.stem.isdigit() and 10 <= int(path.stem) < 20:
      path.unlink()
  return root


def assert_same_history(cached, uncached, label):
  """Every metrics.csv column but seconds agrees within COLUMNS_TOL, relative to values over 1."""
  a, b = pd.read_csv(cached / 'metrics.csv'), pd.read_csv(uncached / 'metrics.csv')
  assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
  columns = [c for c in a.columns if c != 'seconds']
  diffs = {c: float(np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)))) for c in columns}
  print(f'{label}: max |cached - uncached| per metrics.csv column: {diffs}')
  for c in columns:
    np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=COLUMNS_TOL, atol=COLUMNS_TOL,
                               err_msg=c)


def test_keras_vgg16_feature_extraction_through_launch(tmp_path, pets):
  """Seed 004's VGG16 recipe with augmentation off (the Keras guide's feature extraction): auto picks the
  cache and says so; metrics.csv and the scores of the restored checkpoint equal the uncached run's. VGG16 is cut
  after block2_pool, its whole file loaded: the cache splits before the new top at any depth, and blocks 3 to 5
  would only add to both runs' compilations."""
  weights = write_keras_weights(tmp_path, ['keras_vgg16'])['keras_vgg16']
  flags = [f'--config.data.root={pets}', f'--config.model.pretrained={weights}', '--config.model.cut=block2_pool',
           '--config.train.batch_size=8', f'--config.eval.batch_size={EVAL_BATCH}',
           '--config.explain.after_training=False', '--config.train.tensorboard=False',
           *[f'--config.{k}={v}' for k, v in AUGMENT_OFF.items()]]
  runs = {}
  for mode in ('auto', 'off'):
    runs[mode] = tmp_path / mode
    result = launch('--config=configs/cats_dogs.py:vgg16,quick', f'--workdir={runs[mode]}',
                    f'--config.train.feature_cache={mode}', *flags)
    log = result.stdout + result.stderr
    assert ("feature cache: auto: the frozen network before 'top' ran once over 16 train and 4 val" in log) == (
        mode == 'auto'), log[-2000:]
  assert_same_history(runs['auto'], runs['off'], 'keras_vgg16')
  scores = [json.loads((runs[m] / 'scores.json').read_text()) for m in ('auto', 'off')]
  assert scores[0]['confusion_matrix'] == scores[1]['confusion_matrix']
  assert scores[0]['loss'] == pytest.approx(scores[1]['loss'], rel=COLUMNS_TOL, abs=COLUMNS_TOL)


def resnet18_config(root, weights, **overrides):
  config = load_config('configs/cats_dogs.py:vgg16,quick', **{
      'data.root': str(root), 'model.pretrained': str(weights), 'model.name': 'resnet18', 'model.layers': LAYERS,
      'model.freeze_till': -1,
      'train.batch_size': 8, 'eval.batch_size': EVAL_BATCH,
      'train.tensorboard': False, **AUGMENT_OFF, **overrides})
  with config.unlocked():
    config.model.top_dropout = 0.5
  return config


def test_torchvision_resnet18_with_head_dropout_l2_finetuning_and_streamed_images(tmp_path, pets, capsys,
                                                                                 caplog):
  """A new top with a hidden layer and dropout 0.5 (the head draws the uncached run's keys), l2 over every
  kernel (the frozen ones count in the loss), then a fine-tuning phase, which runs uncached from the state
  the cached phase left. The cached run's images are over its device budget, so they stream for the
  feature pass (and phase 1), while its features (2 KB an image against 3 KB) fit: every row of metrics.csv
  equals the uncached in-memory run's."""
  import torch  # a missing test dependency fails loudly, it does not skip
  import torchvision

  from fpclass.modes.train import train
  from tests import parity
  torch.manual_seed(0)
  module = parity.randomise_torch_bn(parity.randomise_torch_weights(
      torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, list(LAYERS))))
  weights = tmp_path / 'resnet18.pth'
  torch.save(module.state_dict(), weights)
  overrides = {'model.top': 'avg', 'model.top_hidden': (8,), 'train.l2': 1e-3, 'train.finetune_epochs': 1,
               'train.finetune_freeze_till': 4}
  budget = 50_000   # 20 images of 32x32x3 take 61,440 bytes; their 1x1x512 float32 features 40,960
  for mode in ('on', 'off'):
    config = resnet18_config(pets, weights, **overrides, **{'train.feature_cache': mode}, **(
        {'data.device_memory_budget': budget} if mode == 'on' else {}))
    validate(config)
    train(config, tmp_path / mode)
    if mode == 'on':
      log = capsys.readouterr()
      assert "feature cache: on: the frozen network before 'top' ran once over 16 train and 4 val" in log.out
      assert 'streaming input' in caplog.text
  history = pd.read_csv(tmp_path / 'on' / 'metrics.csv')
  assert history['phase'].tolist() == [0, 0, 1]
  assert_same_history(tmp_path / 'on', tmp_path / 'off', 'resnet18')


def test_source_head_step_equals_the_full_models_step():
  """top='source' with freeze_till=-1 trains only torchvision's fc on the pooled features: one step on cached
  features equals one step of the full model (parameters, metrics) and leaves the batch statistics."""
  config = ml_collections.ConfigDict(dict(name='resnet18', head='softmax', top='source', freeze_till=-1, layers=LAYERS))
  full = load_config('configs/cats_dogs.py:vgg16,quick', **AUGMENT_OFF)
  with full.unlocked():
    full.model = config
  task = build_task(RunSettings.from_config(full), ('a', 'b'), np.array([0, 1]), steps_per_epoch=1)
  # One compiled program: run eagerly, the initialisation compiles each of its ~200 operations on its own.
  state = jax.jit(task.init, static_argnums=1)(jax.random.PRNGKey(0), (32, 32, 3))
  split, why = feature_cache.find_split(RunSettings.from_config(full), task, {'params': state.params, 'batch_stats': state.batch_stats},
                                        (32, 32, 3))
  assert why == '' and split.name == 'fc' and not split.is_top and split.feature_shape == (512,)
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
  labels, index, key = jnp.array([0, 1] * 4), jnp.arange(8), jax.random.PRNGKey(3)
  features = jax.jit(feature_cache.FeaturePass(task, split).predict)(state.params, state.batch_stats, images)
  cached = feature_cache.cached_task(task, split)
  new_full, out_full = jax.jit(task.train_step)(state, images, labels, index, key)
  new_cached, out_cached = jax.jit(cached.train_step)(state, features, labels, index, key)
  np.testing.assert_allclose(out_cached['loss_sum'], out_full['loss_sum'], rtol=1e-5)
  assert int(out_cached['correct']) == int(out_full['correct'])
  for path in (('fc', 'kernel'), ('fc', 'bias'), ('conv1', 'kernel')):
    a, b = new_cached.params, new_full.params
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.array_equal(a, b)), new_cached.batch_stats, state.batch_stats))
  np.testing.assert_allclose(jax.jit(cached.predict)(new_cached.params, new_cached.batch_stats, features),
                             jax.jit(task.predict)(new_full.params, new_full.batch_stats, images), rtol=1e-4, atol=1e-5)


def split_reason(model: dict, **train):
  config = load_config('configs/cats_dogs.py:vgg16,quick', **AUGMENT_OFF,
                       **{f'train.{k}': v for k, v in train.items()})
  with config.unlocked():
    config.model = ml_collections.ConfigDict(dict(head='softmax', **model))
  task = build_task(RunSettings.from_config(config), ('a', 'b'), np.array([0, 1]), steps_per_epoch=1)
  variables = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), (32, 32, 3)))
  return feature_cache.find_split(RunSettings.from_config(config), task, variables, (32, 32, 3))


@pytest.mark.parametrize('model, train, reason', [
    (dict(name='resnet18', top='avg', freeze_till=4), {}, "parameters before the head train (layer4_0/"),
    (dict(name='resnet18', top='avg', freeze_till=-1), dict(grad_clip_norm=1.0), 'grad_clip_norm'),
    (dict(name='efficientnet_b0', top='avg', freeze_till=-1), {}, 'draws random numbers in training'),
    (dict(name='vgg16', top='source', freeze_till=-1), {}, 'draws random numbers in training'),  # classifier dropout
    (dict(name='cifar_cnn'), {}, 'has no frozen stages'),
])
def test_the_cache_is_refused_where_the_prefix_trains_or_draws_randomness(model, train, reason):
  split, why = split_reason(model, **train)
  assert split is None and reason in why, why


def test_frozen_prefixes_of_each_family_split_at_their_head():
  for model, name, shape in ((dict(name='keras_vgg16', top='flatten', freeze_till=-1), 'top', (1, 1, 512)),
                             (dict(name='keras_vgg16', top='source', freeze_till=-1), 'predictions', (4096,)),
                             (dict(name='resnet18', top='max', freeze_till=5), 'top', (1, 1, 512))):
    split, why = split_reason(model)
    assert why == '' and (split.name, split.feature_shape) == (name, shape), (model, why)


def test_settings_are_checked_at_validation():
  config = load_config('configs/cats_dogs.py:vgg16,quick', **{'train.feature_cache': 'sometimes'})
  with pytest.raises(UserInputError, match=r"config.train.feature_cache='sometimes'"):
    validate(config)
  config = load_config('configs/cats_dogs.py:vgg16,quick', **{'train.feature_cache': 'on'})  # augmentation on
  with pytest.raises(UserInputError, match='needs augmentation off: config.augment transforms every image anew'):
    validate(config)
  validate(load_config('configs/cats_dogs.py:vgg16,quick', **{'train.feature_cache': 'on', **AUGMENT_OFF}))
