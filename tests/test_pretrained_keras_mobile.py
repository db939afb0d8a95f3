"""Parity of the Keras MobileNetV3Large and EfficientNetB0/B2 ports with keras.applications itself (JAX
backend), on weights Keras wrote: `save_weights` .weights.h5 files, and legacy .h5 files in the layout of
the official ImageNet files, which Keras' own weights='imagenet' code path loads.

Each model's Keras reference is built once per module (randomised by parity.keras_application, saved) at a
small non-224 size whose feature maps are odd in places and even in others (both correct_pad cases).
`python -m pytest tests/test_pretrained_keras_mobile.py -s` prints the parity table.
"""
import functools
import re
import time
import types

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.models import keras_efficientnet, keras_graph, keras_mobilenet_v3, weights
from tests import parity

keras = pytest.importorskip('keras', reason='parity needs keras (the test extra installs it)')
# Keras 3.15's variables define __array__ without numpy 2's `copy` keyword (see test_pretrained_keras.py).
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

# name -> (keras.applications function, (height, width)). Batch 2 of raw 0..255 pixels.
CASES = {
    'keras_mobilenetv3large': ('MobileNetV3Large', (72, 88)),
    'keras_efficientnetb0': ('EfficientNetB0', (66, 49)),
    'keras_efficientnetb2': ('EfficientNetB2', (80, 66)),
}
LOGIT_TOL, FEATURE_TOL = 1e-4, 1e-3


def keras_stage_outputs(model, name) -> dict:
  """{fpclass stage name: the Keras tensor it must equal}."""
  if name == 'keras_mobilenetv3large':
    outputs = {'stem': model.get_layer('expanded_conv_depthwise').input}
    for block in range(len(keras_mobilenet_v3.LARGE_BLOCKS)):
      following = f'expanded_conv_{block + 1}_expand' if block + 1 < len(keras_mobilenet_v3.LARGE_BLOCKS) else 'conv_1'
      outputs[keras_mobilenet_v3.block_name(block)] = model.get_layer(following).input
    layer_names = [layer.name for layer in model.layers]  # conv_1's activation is unnamed: the layer after its BN
    outputs['conv_1'] = model.layers[layer_names.index('conv_1_bn') + 1].output
    return outputs
  outputs = {'stem': model.get_layer('stem_activation').output}
  for group in range(1, 8):
    outputs[f'block{group}'] = model.get_layer(f'block{group + 1}a_expand_conv' if group < 7 else 'top_conv').input
  outputs['top_conv'] = model.get_layer('top_activation').output
  return outputs


def make_reference(name, folder, seed=0):
  keras_name, (height, width) = CASES[name]
  start = time.perf_counter()
  model = parity.keras_application(keras_name, (height, width, 3), seed)
  x = np.random.default_rng(seed).uniform(0, 255, (2, height, width, 3)).astype(np.float32)
  logits, features = parity.keras_reference(model, x, keras_stage_outputs(model, name))
  path = folder / f'{name}.weights.h5'
  model.save_weights(str(path))
  return types.SimpleNamespace(name=name, model=model, x=x, path=path, logits=logits, features=features,
                               folder=folder, _rgb=None, seconds=time.perf_counter() - start)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """reference(name): that model's Keras reference, built on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = make_reference(name, tmp_path_factory.mktemp(name))
    return cache[name]
  return get


def rgb_model(ref):
  """(model, variables, jitted apply) of the fpclass port loaded from the reference's file, made once."""
  if ref._rgb is None:
    model, variables = parity.build(ref.name, ref.path, image_shape=ref.x.shape[1:])
    ref._rgb = (model, variables, jax.jit(model.apply))
  return ref._rgb


def count(variables) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize('name', sorted(CASES))
def test_logits_and_features_match_keras(name, reference):
  ref = reference(name)
  start = time.perf_counter()
  model, variables, apply = rgb_model(ref)
  logits, features = apply(variables, ref.x)
  assert set(ref.features) == set(models.get_spec(name).stage_names)
  feature_diffs = {stage: parity.max_abs_diff(features[stage], expected) for stage, expected in ref.features.items()}
  worst = max(feature_diffs, key=feature_diffs.get)
  # Keras counts the Normalization layer's `count` too (one scalar fpclass does not keep).
  source_count = ref.model.count_params() - (name != 'keras_mobilenetv3large')
  print(f'\n| {name} | keras.applications.{CASES[name][0]} | {count(variables):,} / '
        f'{ref.model.count_params():,} | {parity.max_abs_diff(logits, ref.logits):.1e} | '
        f'{feature_diffs[worst]:.1e} ({worst}) | {ref.x.shape[1]}x{ref.x.shape[2]} | '
        f'{ref.seconds + time.perf_counter() - start:.1f} s |')
  assert parity.max_abs_diff(logits, ref.logits) <= LOGIT_TOL
  assert np.array_equal(np.argmax(logits, -1), np.argmax(ref.logits, -1))
  for stage, diff in feature_diffs.items():
    assert diff <= FEATURE_TOL, stage
  assert count(variables) == source_count
  # The default Grad-CAM layer is the last conv stage, a spatial map (for MobileNetV3 conv_1, not the 1x1
  # logits conv), and it is among the stages checked against Keras above.
  cam_map = features[models.get_spec(name).cam_layer]
  assert models.get_spec(name).cam_layer in ref.features and cam_map.ndim == 4 and min(cam_map.shape[1:3]) > 1


def grayscale_input(ref, seed=1):
  g = np.random.default_rng(seed).uniform(0, 255, (*ref.x.shape[:3], 1)).astype(np.float32)
  return g, np.repeat(g, 3, axis=-1)


def test_grayscale_mobilenetv3_equals_rgb_on_repeated_channels(reference):
  """Its in-model rescaling is the same for every channel, so the folded stem is exact, borders included.
  The stem is where the two models differ (the rest is the same network), so equal stems mean equal logits."""
  ref = reference('keras_mobilenetv3large')
  _, rgb_vars, rgb_apply = rgb_model(ref)
  gray_model, gray_vars = parity.build(ref.name, ref.path, image_shape=(*ref.x.shape[1:3], 1), in_channels=1,
                                       cut='stem', top='avg', num_classes=2)
  assert gray_vars['params']['conv']['kernel'].shape[2] == 1
  g, ggg = grayscale_input(ref)
  rgb_stem, gray_stem = rgb_apply(rgb_vars, ggg)[1]['stem'], parity.apply(gray_model, gray_vars, g)[1]['stem']
  assert parity.max_abs_diff(rgb_stem, gray_stem) < 1e-5


@pytest.mark.parametrize('name', ['keras_efficientnetb0', 'keras_efficientnetb2'])
def test_grayscale_efficientnet_folds_its_normalization_layer(name, reference):
  """The per-channel statistics of the Normalization layer (random and unequal in this file) are folded
  into the stem: the stem of the 1-channel model on g equals the RGB model's on [g, g, g] away from the
  zero padding too (transfer.StemConv adds each padded tap's share of the folded offset)."""
  ref = reference(name)
  _, rgb_vars, rgb_apply = rgb_model(ref)
  stats = rgb_vars['batch_stats']['normalization']
  assert np.ptp(stats['mean']) > 0.01 and np.ptp(stats['variance']) > 0.01
  gray_model, gray_vars = parity.build(name, ref.path, image_shape=(*ref.x.shape[1:3], 1), in_channels=1,
                                       cut='stem', top='avg', num_classes=2)
  assert gray_vars['batch_stats']['normalization']['mean'].shape == (1,)
  g, ggg = grayscale_input(ref)
  rgb_stem, gray_stem = rgb_apply(rgb_vars, ggg)[1]['stem'], parity.apply(gray_model, gray_vars, g)[1]['stem']
  assert parity.max_abs_diff(rgb_stem, gray_stem) < 1e-4  # the border included (it was off before StemConv)


def test_grayscale_efficientnet_is_exact_with_statistics_shared_by_all_channels(reference):
  """With one mean and variance for every channel the fold is exact, borders included. The stem is where
  the two models differ (the rest is the same network), so equal stems mean equal logits."""
  ref = reference('keras_efficientnetb0')
  norm = next(layer for layer in ref.model.layers if isinstance(layer, keras.layers.Normalization))
  saved, path = norm.get_weights(), ref.folder / 'shared_statistics.weights.h5'
  try:
    norm.set_weights([np.full(3, 0.45, np.float32), np.full(3, 0.05, np.float32), saved[2]])
    ref.model.save_weights(path)
  finally:
    norm.set_weights(saved)
  _, _, rgb_apply = rgb_model(ref)
  _, rgb_vars = parity.build(ref.name, path, image_shape=ref.x.shape[1:])
  gray_model, gray_vars = parity.build(ref.name, path, image_shape=(*ref.x.shape[1:3], 1), in_channels=1,
                                       cut='stem', top='avg', num_classes=2)
  g, ggg = grayscale_input(ref)
  rgb_stem, gray_stem = rgb_apply(rgb_vars, ggg)[1]['stem'], parity.apply(gray_model, gray_vars, g)[1]['stem']
  assert parity.max_abs_diff(rgb_stem, gray_stem) < 1e-5


# ------------------------------------------------------------------- legacy files, official ImageNet layout

def tf_keras2_name(name: str) -> str:
  """The name tf.keras 2 gave the MobileNetV3 layer Keras 3 calls `name` (Keras 3 forbids '/' in names);
  the official ImageNet files carry these."""
  top = {'conv': 'Conv', 'conv_bn': 'Conv/BatchNorm', 'conv_1': 'Conv_1', 'conv_1_bn': 'Conv_1/BatchNorm',
         'conv_2': 'Conv_2', 'logits': 'Logits'}
  if name in top:
    return top[name]
  m = re.fullmatch(r'(expanded_conv(?:_\d+)?)_(expand|depthwise|project)(_bn)?', name)
  if m:
    return f'{m[1]}/{m[2]}' + ('/BatchNorm' if m[3] else '')
  m = re.fullmatch(r'(expanded_conv(?:_\d+)?)_squeeze_excite_conv(_1)?', name)
  return f'{m[1]}/squeeze_excite/Conv{m[2] or ""}' if m else name


def serve_as_download(monkeypatch, spec, files: dict):
  """Keras' get_file, answering with local files; checks Keras asks for fpclass' registry entries."""
  entries = {entry.filename: entry for entry in spec.weights.values()}

  def get_file(fname, origin, file_hash=None, **_):
    entry = entries[fname]
    assert (origin, f'md5:{file_hash}') == (entry.url, entry.checksum)
    return str(files[fname])
  monkeypatch.setattr(keras.src.utils.file_utils, 'get_file', get_file)


def keras_notop(model, last_bn):
  """The include_top=False model of `model` (what Keras builds ends at the activation after `last_bn`),
  sharing its layers."""
  names = [layer.name for layer in model.layers]
  return keras.Model(model.inputs, model.layers[names.index(last_bn) + 1].output)


def fresh_session_name(name: str) -> str:
  """Keras numbers auto-named layers per process (normalization_3); a fresh session names the first one
  plainly, as the official files are taken to."""
  return re.sub(r'^normalization_\d+$', 'normalization', name)


def flat(variables) -> dict:
  return traverse_util.flatten_dict(variables, sep='/')


# Keras warns that ImageNet weights are for 224x224 inputs: these are not ImageNet weights.
@pytest.mark.filterwarnings('ignore:`input_shape` is undefined or non-square')
def test_mobilenetv3_official_layout_files_load_as_keras_loads_them(reference, monkeypatch):
  """Legacy files with tf.keras 2 names, with and without the top: Keras (weights='imagenet') reads the
  full one into exactly the reference's weights; fpclass reads both into exactly what it reads from the
  .weights.h5 file."""
  ref = reference('keras_mobilenetv3large')
  spec, shape = models.get_spec(ref.name), ref.x.shape[1:]
  top_file = parity.write_legacy_h5(ref.model, ref.folder / spec.weights['imagenet'].filename, rename=tf_keras2_name)
  notop_file = parity.write_legacy_h5(keras_notop(ref.model, 'conv_1_bn'),
                                      ref.folder / spec.weights['imagenet_notop'].filename, rename=tf_keras2_name)
  serve_as_download(monkeypatch, spec, {top_file.name: top_file})
  loaded = parity.keras_application('MobileNetV3Large', shape, weights='imagenet')
  assert len(loaded.get_weights()) == len(ref.model.get_weights())
  assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), ref.model.get_weights()))

  _, from_keras3 = parity.build(ref.name, ref.path, image_shape=shape)
  _, from_legacy = parity.build(ref.name, top_file, image_shape=shape)
  assert flat(from_legacy).keys() == flat(from_keras3).keys()
  assert all(np.array_equal(v, flat(from_keras3)[k]) for k, v in flat(from_legacy).items())
  _, backbone = parity.build(ref.name, notop_file, image_shape=shape, top='avg', num_classes=2)
  assert all(np.array_equal(v, flat(from_keras3)[k])
             for k, v in flat(backbone).items() if not k.startswith('params/top/'))
  with pytest.raises(UserInputError, match=r'missing: params/conv_2/bias, params/conv_2/kernel'):
    parity.build(ref.name, notop_file, image_shape=shape)  # the source top needs conv_2


def test_efficientnet_official_imagenet_statistics_compute_what_keras_imagenet_model_does(reference, monkeypatch):
  """The official files store ImageNet's std as the Normalization variance and Keras' weights='imagenet'
  model rescales after the layer: fpclass, loading such a file, computes what that Keras model does."""
  ref = reference('keras_efficientnetb0')
  spec, shape = models.get_spec(ref.name), ref.x.shape[1:]
  norm = next(layer for layer in ref.model.layers if isinstance(layer, keras.layers.Normalization))
  saved = norm.get_weights()
  try:
    norm.set_weights([np.asarray((0.485, 0.456, 0.406), np.float32),
                      np.asarray(keras_efficientnet.IMAGENET_STD, np.float32), saved[2]])
    notop_file = parity.write_legacy_h5(keras_notop(ref.model, 'top_bn'),
                                        ref.folder / spec.weights['imagenet_notop'].filename,
                                        rename=fresh_session_name)
  finally:
    norm.set_weights(saved)
  serve_as_download(monkeypatch, spec, {notop_file.name: notop_file})
  imagenet = parity.keras_application('EfficientNetB0', shape, include_top=False, weights='imagenet')
  assert any(isinstance(layer, keras.layers.Rescaling) and np.ndim(layer.scale) for layer in imagenet.layers)
  expected = keras.Model(imagenet.inputs, imagenet.get_layer('stem_activation').output).predict(ref.x, verbose=0)

  model, variables = parity.build(ref.name, notop_file, image_shape=shape, top='avg', cut='stem', num_classes=2)
  assert parity.max_abs_diff(parity.apply(model, variables, ref.x)[1]['stem'], expected) <= 1e-5
  # Everything else in the legacy no-top file maps as the Keras 3 file does.
  _, from_keras3 = parity.build(ref.name, ref.path, image_shape=shape)
  _, from_legacy = parity.build(ref.name, notop_file, image_shape=shape, top='avg', num_classes=2)
  differ = [k for k, v in flat(from_legacy).items()
            if not k.startswith('params/top/') and not np.array_equal(v, flat(from_keras3)[k])]
  assert differ == ['batch_stats/normalization/mean', 'batch_stats/normalization/variance']
  np.testing.assert_allclose(flat(from_legacy)['batch_stats/normalization/variance'],
                             np.square(keras_efficientnet.IMAGENET_STD), rtol=1e-6)


@pytest.mark.parametrize('name', sorted(CASES))
def test_layer_tables_follow_keras_layer_order_and_names(name, reference):
  """The keras_graph tables list Keras' weighted layers in `model.layers` order, with the names the legacy
  files carry (tf.keras 2's for MobileNetV3, a fresh session's 'normalization' for EfficientNet)."""
  keras_model = reference(name).model
  module = keras_mobilenet_v3 if name == 'keras_mobilenetv3large' else keras_efficientnet
  table = module.keras_layers() if module is keras_mobilenet_v3 else module.keras_layers(
      {'keras_efficientnetb0': 1.0, 'keras_efficientnetb2': 1.2}[name])
  rename = tf_keras2_name if module is keras_mobilenet_v3 else fresh_session_name
  names = parity.legacy_names(keras_model)
  weighted = [layer for layer in keras_model.layers if layer.weights]
  assert [layer.name for layer in table] == [rename(names[layer]) for layer in weighted]
  assert [layer.cls for layer in table] == [type(layer).__name__ for layer in weighted]


def test_keras3_notop_file_loads_the_backbone(reference, tmp_path):
  """An include_top=False .weights.h5 file (Keras' layers up to the last conv stage) feeds a new top with
  exactly the backbone arrays of the full file; the source top cannot load from it."""
  ref = reference('keras_mobilenetv3large')
  path = tmp_path / 'notop.weights.h5'
  keras_notop(ref.model, 'conv_1_bn').save_weights(str(path))
  shape = ref.x.shape[1:]
  _, full = rgb_model(ref)[:2]
  _, backbone = parity.build(ref.name, path, image_shape=shape, top='avg', num_classes=2)
  backbone = {k: v for k, v in flat(backbone).items() if not k.startswith('params/top/')}
  assert backbone.keys() == {k for k in flat(full) if not re.match(r'params/(conv_2|logits)/', k)}
  assert all(np.array_equal(v, flat(full)[k]) for k, v in backbone.items())
  with pytest.raises(UserInputError, match=r'missing: params/conv_2/bias, params/conv_2/kernel'):
    parity.build(ref.name, path, image_shape=shape)


def test_registry_weights_are_the_files_keras_names():
  from keras.src.applications import efficientnet, mobilenet_v3
  mobilenet = models.get_spec('keras_mobilenetv3large').weights
  top_md5, notop_md5 = mobilenet_v3.WEIGHTS_HASHES['large_224_1.0_float']
  assert mobilenet['imagenet'] == weights.WeightsFile(
      mobilenet_v3.BASE_WEIGHT_PATH + 'weights_mobilenet_v3_large_224_1.0_float.h5', f'md5:{top_md5}')
  assert mobilenet['imagenet_notop'] == weights.WeightsFile(
      mobilenet_v3.BASE_WEIGHT_PATH + 'weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5', f'md5:{notop_md5}')
  for variant in ('b0', 'b2'):
    entries = models.get_spec(f'keras_efficientnet{variant}').weights
    top_md5, notop_md5 = efficientnet.WEIGHTS_HASHES[variant]
    assert entries['imagenet'] == weights.WeightsFile(
        f'{efficientnet.BASE_WEIGHTS_PATH}efficientnet{variant}.h5', f'md5:{top_md5}')
    assert entries['imagenet_notop'] == weights.WeightsFile(
        f'{efficientnet.BASE_WEIGHTS_PATH}efficientnet{variant}_notop.h5', f'md5:{notop_md5}')


def test_keras_reader_on_a_file_keras_wrote(reference):
  """weights.read_keras_weights + keras_mapped: a DepthwiseConv2D kernel (kh, kw, C, 1) becomes Flax's
  (kh, kw, 1, C); the Normalization layer's mean and variance go to batch_stats (untrained, as in Keras)
  and its count is dropped; a layer named optional may be absent, any other absent layer is an error."""
  ref = reference('keras_efficientnetb0')
  layers = keras_efficientnet.keras_layers(1.0)
  found = weights.read_keras_weights(ref.path, layers)
  mapped = weights.keras_mapped(found, {layer.flax: keras_graph.KINDS[layer.cls] for layer in layers})
  depthwise = ref.model.get_layer('block2a_dwconv').get_weights()[0]
  assert depthwise.shape == (3, 3, 96, 1)
  assert np.array_equal(mapped[('params', 'block2a', 'dwconv', 'kernel')], depthwise.reshape(3, 3, 1, 96))
  norm = next(layer for layer in ref.model.layers if isinstance(layer, keras.layers.Normalization))
  assert np.array_equal(mapped[('batch_stats', 'normalization', 'mean')], norm.get_weights()[0])
  assert np.array_equal(mapped[('batch_stats', 'normalization', 'variance')], norm.get_weights()[1])
  assert not [k for k in mapped if k[0] == 'params' and k[1] == 'normalization']
  extra = [*layers, weights.KerasLayer('absent', 'Dense', 'absent')]
  with pytest.raises(UserInputError, match=r'\[1 missing layers: absent\]'):
    weights.read_keras_weights(ref.path, extra)
  assert 'absent' not in weights.read_keras_weights(ref.path, extra, optional=('absent',))


# ---------------------------------------------------------------------------------------------- errors

def test_a_new_class_count_drops_the_source_head(reference):
  ref = reference('keras_efficientnetb0')
  _, variables = parity.build(ref.name, ref.path, num_classes=3, keep_pretrained_head=False,
                              image_shape=ref.x.shape[1:])
  assert variables['params']['predictions']['kernel'].shape == (1280, 3)
  assert np.array_equal(variables['params']['block7a']['dwconv']['kernel'][..., 0, :],
                        ref.model.get_layer('block7a_dwconv').get_weights()[0][..., 0])


def test_a_wrong_class_count_with_the_head_kept_is_an_error(reference):
  ref = reference('keras_mobilenetv3large')
  with pytest.raises(UserInputError, match=r"classifier .*'params/logits/kernel': \(1, 1, 1280, 1000\).*"
                                           r"\(1, 1, 1280, 3\).*keep_pretrained_head=True"):
    parity.build(ref.name, ref.path, num_classes=3, keep_pretrained_head=True, image_shape=ref.x.shape[1:])


def test_a_file_of_another_architecture_is_an_error_listing_names(reference):
  b0, mobilenet = reference('keras_efficientnetb0'), reference('keras_mobilenetv3large')
  with pytest.raises(UserInputError, match=r'does not fit this architecture: \[\d+ missing layers: .*block'):
    parity.build('keras_efficientnetb2', b0.path)
  with pytest.raises(UserInputError, match=r'does not fit this architecture: \[\d+ missing layers: normalization'):
    parity.build('keras_efficientnetb0', mobilenet.path)


def test_a_truncated_file_is_an_error(reference, tmp_path):
  ref = reference('keras_efficientnetb0')
  truncated = tmp_path / 'truncated.weights.h5'
  truncated.write_bytes(ref.path.read_bytes()[:200_000])
  with pytest.raises(UserInputError, match='cannot read it as a Keras weights file'):
    parity.build(ref.name, truncated)


# ------------------------------------------------------------------------------------ structure, training

@pytest.mark.parametrize('name', sorted(CASES))
def test_stages_are_in_network_order_and_cover_the_backbone(name):
  """Every backbone parameter belongs to exactly one stage (what freeze_till freezes), the source top to
  none; features come in stage order; a cut stops after its stage."""
  spec = models.get_spec(name)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)

  def features(**fields):  # (variable shapes, the stages the model records, in the order it records them)
    model = models.create_model(ml_collections.ConfigDict(dict(name=name, **fields)), 1000)
    variables, recorded = jax.eval_shape(model.init, jax.random.PRNGKey(0), x), []
    jax.eval_shape(lambda v, images: recorded.extend(model.apply(v, images)[1]), variables, x)
    return variables, [k for k in recorded if k in spec.stage_names]

  variables, stages = features()
  assert stages == list(spec.stage_names) and spec.cam_layer == stages[-1]
  for path in flat(variables['params']):
    owners = [stage for stage, regex in spec.stages if re.search(regex, path)]
    assert len(owners) == (0 if re.search(spec.source_top, 'params/' + path) else 1), (path, owners)
  assert features(cut=stages[3], top='avg')[1] == stages[:4]


def test_drop_connect_drops_whole_residual_branches_at_train_time_only():
  """Keras' Dropout(noise_shape=(None, 1, 1, 1)) before the residual add: per sample, the whole branch is
  dropped or scaled by 1 / (1 - rate), with the dropout rng; at inference, and in a frozen block, it is
  the identity."""
  x = np.random.default_rng(0).normal(size=(64, 5, 5, 8)).astype(np.float32)
  dropping, plain = keras_efficientnet.MBConv(8, 8, 3, 1, 1, 0.5), keras_efficientnet.MBConv(8, 8, 3, 1, 1, 0.0)
  rng = np.random.default_rng(1)  # (Flax's init would compile its truncated-normal initialisers: seconds)
  shapes = jax.eval_shape(functools.partial(plain.init, train=False), jax.random.PRNGKey(0), x)
  variables = jax.tree_util.tree_map(lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32), shapes)

  def branch(block, train):
    apply = jax.jit(functools.partial(block.apply, train=train, mutable=['batch_stats']))
    return np.asarray(apply(variables, x, rngs={'dropout': jax.random.PRNGKey(1)})[0]) - x

  full, dropped = branch(plain, True), branch(dropping, True)
  kept = np.abs(dropped).max(axis=(1, 2, 3)) > 0
  assert 16 < kept.sum() < 48
  np.testing.assert_allclose(dropped[kept], 2 * full[kept], rtol=1e-4, atol=1e-5)
  assert np.all(dropped[~kept] == 0)
  assert np.array_equal(branch(dropping, False), branch(plain, False))
  assert np.array_equal(branch(dropping.clone(frozen=True), True), branch(plain.clone(frozen=True), True))
