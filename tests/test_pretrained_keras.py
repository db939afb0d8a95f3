"""Parity of the Keras ports (ResNet50, ResNet50V2, VGG16, InceptionV3) with Keras 3 itself on the JAX backend,
on random weights Keras wrote with save_weights (.weights.h5) and in the legacy .h5 layout.

Each reference's BatchNorm statistics come from Keras' own train-mode pass over the test images
(`parity.informative_keras_bn`), so its logits depend on the image; `parity.check` asserts that they do and
compares logits and stages relative to their scale, within a small multiple of Keras' own float32 noise on the
same images. `python -m pytest -p no:xdist -o addopts='' -q tests/test_pretrained_keras.py -s` prints the table.
"""
import os
import re
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')

import h5py  # noqa: E402,F401  (the legacy-layout tests write with it)
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.errors import UserInputError  # noqa: E402
from fpclass.train import optim  # noqa: E402
from tests import parity  # noqa: E402

# Keras 3.15's variables define __array__ without numpy 2's `copy` keyword: numpy warns at every conversion,
# hundreds of times per model, about none of this code.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

# name -> (keras.applications name, input (H, W): not 224, odd and non-square, {stage: Keras layer}).
# None stands for InceptionV3's stem output, an unnamed max pool. The first stage is the grayscale check's.
# The ResNets at 45x37 (37x45), not 70x58: every stage still more than one pixel wide (conv5 2x2), and stride-2
# layers on odd sides (the stem's, conv4's and conv5's inputs). This process runs them unoptimised (XLA level 0), where a forward pass of the four images
# costs in proportion to their pixels (ResNet50 at 70x58: 1.4 CPU-s), and each case runs four (Keras' BN pass,
# the batch, the jittered batch, the port).
CASES = {
    'keras_resnet50': ('ResNet50', (45, 37), {'conv1': 'pool1_pool', 'conv2': 'conv2_block3_out',
                                             'conv3': 'conv3_block4_out', 'conv4': 'conv4_block6_out',
                                             'conv5': 'conv5_block3_out'}),
    'keras_resnet50v2': ('ResNet50V2', (37, 45), {'conv1': 'pool1_pool', 'conv2': 'conv2_block3_out',
                                                 'conv3': 'conv3_block4_out', 'conv4': 'conv4_block6_out',
                                                 'conv5': 'post_relu'}),
    'keras_vgg16': ('VGG16', (64, 96), {'block1_conv1': 'block1_conv1', 'block1_pool': 'block1_pool',
                                        'block3_conv3': 'block3_conv3', 'block5_conv3': 'block5_conv3',
                                        'block5_pool': 'block5_pool'}),
    'keras_inceptionv3': ('InceptionV3', (83, 75), {'stem': None, 'mixed0': 'mixed0', 'mixed3': 'mixed3',
                                                    'mixed7': 'mixed7', 'mixed8': 'mixed8', 'mixed10': 'mixed10'}),
}
IMAGES = 4


class Reference:
  """One Keras model per case for the whole module: random weights with informative BN statistics, its
  .weights.h5 file, a batch (in the model's input space) and Keras' logits and stage features on it and on
  the jittered batch; the port, loaded from the file, built once."""

  def __init__(self, name, folder):
    application, (height, width), stage_layers = CASES[name]
    start = time.perf_counter()
    self.keras_model = parity.keras_application(application, (height, width, 3))
    if None in stage_layers.values():  # the stem of InceptionV3: its second max pool, in Keras' layer order
      stem_pool = [layer.name for layer in self.keras_model.layers if type(layer).__name__ == 'MaxPooling2D'][1]
      stage_layers = {k: v or stem_pool for k, v in stage_layers.items()}
    self.stage_layers = stage_layers
    self.shape = (height, width, 3)
    self.x = parity.varied_images((IMAGES, *self.shape))
    parity.informative_keras_bn(self.keras_model, self.x)
    self.run = parity.keras_runner(self.keras_model, stage_layers)
    self.logits, self.features = self.run(self.x)
    self.jittered_logits, self.jittered_features = self.run(parity.jittered(self.x))
    self.path = folder / f'{name}.weights.h5'
    self.keras_model.save_weights(str(self.path))
    self.seconds = time.perf_counter() - start
    self.name, self._flax = name, None

  def flax(self):
    """(model, variables, jitted apply) of the port loaded from the file, built once."""
    if self._flax is None:
      model, variables = parity.build(self.name, self.path, image_shape=self.shape)
      self._flax = model, variables, jax.jit(model.apply)
    return self._flax


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  folder, built = tmp_path_factory.mktemp('keras'), {}
  print('\n' + parity.TABLE_HEADER + ' params (port / Keras) | input | seconds |')

  def get(name):
    if name not in built:
      built[name] = Reference(name, folder)
    return built[name]
  return get


def count(variables) -> int:
  return sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize('name', sorted(CASES))
def test_logits_and_features_match_keras(name, reference):
  ref = reference(name)
  start = time.perf_counter()
  _, variables, apply = ref.flax()
  logits, features = apply(variables, ref.x)
  assert count(variables) == ref.keras_model.count_params()  # parameters and BN statistics, as Keras counts
  result = parity.agreement(name, logits, ref.logits, ref.jittered_logits, features, ref.features,
                            ref.jittered_features)
  print(result.row(params=f'{count(variables):,} / {ref.keras_model.count_params():,}',
                   input=f'{ref.shape[0]}x{ref.shape[1]}', seconds=f'{ref.seconds + time.perf_counter() - start:.1f}'))
  parity.check(result)


@pytest.mark.parametrize('name', sorted(CASES))
def test_legacy_h5_layout_loads_the_same_arrays(name, reference, tmp_path):
  """The official ImageNet files' layout (layers by name; InceptionV3's named conv2d_1 .. as Keras 2.0 named
  them), written with h5py from the arrays Keras saved, converts to exactly what the .weights.h5 file does."""
  ref = reference(name)
  spec = models.get_spec(name)
  legacy = parity.write_legacy_h5(ref.keras_model, tmp_path / f'{name}.h5')
  from_keras3, _ = spec.convert(ref.path)
  from_legacy, _ = spec.convert(legacy)
  assert from_legacy.keys() == from_keras3.keys()
  assert all(np.array_equal(from_legacy[k], from_keras3[k]) for k in from_keras3)


def test_layer_tables_follow_keras_layer_order_and_names(reference):
  """Each port's table lists Keras' weighted layers in `model.layers` order (not creation order: Keras sorts
  a functional model by depth), with the names the legacy files carry."""
  from fpclass.models.architectures import keras_inception, keras_resnet, keras_vgg
  tables = {'keras_resnet50': keras_resnet.keras_layers((3, 4, 6, 3), preact=False),
            'keras_resnet50v2': keras_resnet.keras_layers((3, 4, 6, 3), preact=True),
            'keras_vgg16': keras_vgg.keras_layers(), 'keras_inceptionv3': keras_inception.keras_layers()}
  for name, table in tables.items():
    keras_model = reference(name).keras_model
    names = parity.legacy_names(keras_model)
    assert [layer.name for layer in table] == [names[layer] for layer in keras_model.layers if layer.weights], name
    assert [layer.cls for layer in table] == [type(layer).__name__ for layer in keras_model.layers if layer.weights]


def test_legacy_file_keras_writes_loads_by_order(reference, tmp_path):
  """Keras 3's own legacy writer (model.save('x.h5')) names InceptionV3's unnamed layers by this session's
  counters (conv2d, conv2d_95, ...), not as the official file does: such files load by layer order, as Keras
  itself loads every legacy file."""
  ref = reference('keras_inceptionv3')
  path = tmp_path / 'inception_full_model.h5'
  ref.keras_model.save(str(path))
  spec = models.get_spec('keras_inceptionv3')
  from_keras3, _ = spec.convert(ref.path)
  from_legacy, _ = spec.convert(path)
  assert all(np.array_equal(from_legacy[k], from_keras3[k]) for k in from_keras3)


@pytest.mark.parametrize('name', sorted(CASES))
def test_grayscale_port_matches_keras_on_the_rgb_copy(name, reference):
  """in_channels=1 on g against Keras on [g, g, g], each normalised as the weights expect (caffe: BGR minus
  per-channel means; 'tf': [-1, 1]): the first stage, its zero-padded border included. The stem is all that
  differs from the RGB port checked above, so the one-channel model stops there, and so does Keras: its own
  layers up to that stage's, as a Keras model of their own."""
  ref = reference(name)
  stage, layer = next(iter(ref.stage_layers.items()))
  norm = models.get_spec(name).preprocessing
  g = parity.gray_images((IMAGES, *ref.shape[:2], 1))
  rgb = np.asarray(norm(np.repeat(g, 3, axis=-1)))
  stem = keras.Model(ref.keras_model.inputs, ref.keras_model.get_layer(layer).output)
  run = parity.keras_runner(stem, {stage: layer})
  expected, jittered = run(rgb)[1][stage], run(parity.jittered(rgb))[1][stage]
  model, variables = parity.build(name, ref.path, image_shape=(*ref.shape[:2], 1), in_channels=1, cut=stage,
                                  top='avg')
  _, features = parity.apply(model, variables, np.asarray(norm.to_grayscale()(g)))
  diff, floor = parity.check_feature(f'{name} gray {stage}', features[stage], expected, jittered)
  print(f'\n{name} gray, stage {stage}: max |d| {diff:.1e} of its scale, noise floor {floor:.1e}')


def test_inception_cut_at_mixed7_is_seed_003s_feature_extractor(reference):
  ref = reference('keras_inceptionv3')
  model, variables = parity.build('keras_inceptionv3', ref.path, num_classes=2, image_shape=ref.shape,
                                  cut='mixed7', top='flatten', top_hidden=(16,), keep_pretrained_head=False)
  assert 'mixed8' not in variables['params'] and 'predictions' not in variables['params']
  logits, features = parity.apply(model, variables, ref.x)
  assert logits.shape == (IMAGES, 2) and set(features) == {'stem', *(f'mixed{i}' for i in range(8)), 'pre_logits'}
  parity.check_feature('mixed7', features['mixed7'], ref.features['mixed7'], ref.jittered_features['mixed7'])


def test_legacy_notop_files_load_without_the_classifier(reference, tmp_path):
  """include_top=False files in the legacy layout, by name (the official notop files' layout) and by order
  (Keras' own legacy writer on InceptionV3), give the backbone's arrays."""
  for name, last in (('keras_vgg16', 'block5_pool'), ('keras_inceptionv3', 'mixed10')):
    ref = reference(name)
    spec = models.get_spec(name)
    base = keras.Model(ref.keras_model.inputs, ref.keras_model.get_layer(last).output)
    full, _ = spec.convert(ref.path)
    expected = {k: v for k, v in full.items() if not re.search(spec.source_top, '/'.join(k))}
    paths = [parity.write_legacy_h5(base, tmp_path / f'{name}_notop.h5')]
    if name == 'keras_inceptionv3':
      paths.append(tmp_path / f'{name}_notop_model.h5')
      base.save(str(paths[-1]))
    for path in paths:
      mapped, _ = spec.convert(path)
      assert mapped.keys() == expected.keys(), path
      assert all(np.array_equal(mapped[k], expected[k]) for k in expected), path


def test_notop_file_loads_with_a_new_top_and_not_with_the_source_top(reference, tmp_path):
  """A file without the classifier (include_top=False: Keras' layers up to block5_pool) feeds a new top."""
  ref = reference('keras_vgg16')
  base = keras.Model(ref.keras_model.inputs, ref.keras_model.get_layer('block5_pool').output)
  path = tmp_path / 'vgg16_notop.weights.h5'
  base.save_weights(str(path))
  model, variables = parity.build('keras_vgg16', path, num_classes=3, image_shape=ref.shape, top='avg',
                                  keep_pretrained_head=False)
  _, features = parity.apply(model, variables, ref.x)
  parity.check_feature('block5_pool', features['block5_pool'], ref.features['block5_pool'],
                       ref.jittered_features['block5_pool'])
  with pytest.raises(UserInputError, match=r'missing: params/fc1/bias, params/fc1/kernel, params/fc2'):
    parity.build('keras_vgg16', path, num_classes=3, image_shape=ref.shape, keep_pretrained_head=False)


def test_vgg16_freeze_till_counts_keras_layers_after_the_input(reference):
  """Seed 004's freeze_till=N freezes Keras' base.layers[1:N+1]: N=4 is block1_conv1, block1_conv2,
  block1_pool and block2_conv1 (the pool has no weights), while block2_conv2 and the top train."""
  import ml_collections
  first_four = [layer.name for layer in reference('keras_vgg16').keras_model.layers[1:5]]
  assert first_four == ['block1_conv1', 'block1_conv2', 'block1_pool', 'block2_conv1']
  cfg = ml_collections.ConfigDict(dict(name='keras_vgg16', freeze_till=4))
  model = models.create_model(cfg, 2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3)))['params']
  labels = {k: v['kernel'] for k, v in optim.param_groups(ModelSettings.from_config(cfg))(params).items()}
  assert labels['block1_conv1'] == labels['block1_conv2'] == labels['block2_conv1'] == 'frozen'
  assert labels['block2_conv2'] == labels['block5_conv3'] == 'backbone' and labels['predictions'] == 'head'


def test_wrong_class_count_with_the_head_kept_is_an_error(reference):
  ref = reference('keras_resnet50')
  with pytest.raises(UserInputError, match=r"classifier .*'params/predictions/kernel': \(2048, 1000\).*"
                                           r"'params/predictions/kernel': \(2048, 3\).*keep_pretrained_head=True"):
    parity.build('keras_resnet50', ref.path, num_classes=3, keep_pretrained_head=True, image_shape=ref.shape)


def test_wrong_architecture_is_an_error_listing_names(reference):
  ref = reference('keras_resnet50v2')
  with pytest.raises(UserInputError, match=r'does not fit this (architecture|model): \[\d+ missing'):
    parity.build('keras_resnet50', ref.path, image_shape=reference('keras_resnet50').shape)   # as already traced


def test_truncated_file_is_an_error(reference, tmp_path):
  ref = reference('keras_resnet50')
  path = tmp_path / 'truncated.weights.h5'
  path.write_bytes(ref.path.read_bytes()[:1_000_000])
  with pytest.raises(UserInputError, match='cannot read it as a Keras weights file'):
    parity.build('keras_resnet50', path, image_shape=ref.shape)


def test_canonical_urls_and_checksums_are_keras_own():
  """Every named weights file of a Keras port is the file keras.applications downloads, with its md5."""
  import inspect

  from keras.src.applications import inception_v3, resnet, vgg16

  def resnet_files(weights_name):
    url = f'{resnet.BASE_WEIGHTS_PATH}{weights_name}_weights_tf_dim_ordering_tf_kernels'
    return (f'{url}.h5', f'{url}_notop.h5'), resnet.WEIGHTS_HASHES[weights_name]

  def inline_files(module):  # VGG16 and InceptionV3 pass their hashes inline: with top first, then no top
    return (module.WEIGHTS_PATH, module.WEIGHTS_PATH_NO_TOP), tuple(
        re.findall(r'file_hash="([0-9a-f]{32})"', inspect.getsource(module)))
  expected = {'keras_resnet50': resnet_files('resnet50'), 'keras_resnet50v2': resnet_files('resnet50v2'),
              'keras_vgg16': inline_files(vgg16), 'keras_inceptionv3': inline_files(inception_v3)}
  for name, (urls, hashes) in expected.items():
    weights = models.get_spec(name).weights
    assert (weights['imagenet'].url, weights['imagenet_notop'].url) == urls
    assert (weights['imagenet'].checksum, weights['imagenet_notop'].checksum) == tuple(f'md5:{h}' for h in hashes)
