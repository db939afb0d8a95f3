"""Parity of the Keras MobileNetV3Large and EfficientNetB0/B2 ports with keras.applications itself (JAX
backend), on weights Keras wrote: `save_weights` .weights.h5 files, and legacy .h5 files in the layout of
the official ImageNet files, which Keras' own weights='imagenet' code path loads.

Each model's Keras reference is built once per module (randomised by parity.keras_application, BatchNorm
statistics from Keras' own train-mode pass over the test images, saved) at a small non-224 size whose
feature maps are odd in places and even in others (both correct_pad cases). `parity.check` asserts that the
reference logits vary between images and compares logits and stages within a small multiple of Keras' own
float32 noise. `python -m pytest -p no:xdist -o addopts='' -q tests/test_pretrained_keras_mobile.py -s`
prints the parity table.
"""
import functools
import os
import re
import time
import types

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: E402
import keras  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402

from fpclass import models  # noqa: E402
from fpclass.errors import UserInputError  # noqa: E402
from fpclass.models import keras_graph, weights
from fpclass.models.architectures import keras_efficientnet, keras_mobilenet_v3  # noqa: E402
from tests import parity  # noqa: E402

# Keras 3.15's variables define __array__ without numpy 2's `copy` keyword (see test_pretrained_keras.py).
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

# name -> (keras.applications function, (height, width)). Batches of raw 0..255 pixels.
CASES = {
    'keras_mobilenetv3large': ('MobileNetV3Large', (72, 88)),
    'keras_efficientnetb0': ('EfficientNetB0', (66, 49)),
    'keras_efficientnetb2': ('EfficientNetB2', (80, 66)),
}
IMAGES = 4


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
  x = parity.varied_images((IMAGES, height, width, 3), seed, pixels=True)
  parity.informative_keras_bn(model, x, seed)
  run = parity.keras_runner(model, keras_stage_outputs(model, name))
  (logits, features), (jittered_logits, jittered_features) = run(x), run(parity.jittered(x))
  path = folder / f'{name}.weights.h5'
  model.save_weights(str(path))
  return types.SimpleNamespace(name=name, model=model, x=x, path=path, run=run, logits=logits, features=features,
                               jittered_logits=jittered_logits, jittered_features=jittered_features,
                               folder=folder, _rgb=None, seconds=time.perf_counter() - start)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """reference(name): that model's Keras reference, built on first use."""
  cache = {}
  print('\n' + parity.TABLE_HEADER + ' params (port / Keras) | input | seconds |')

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


def agreement(ref, logits, features, label=None):
  return parity.agreement(label or ref.name, logits, ref.logits, ref.jittered_logits, features, ref.features,
                          ref.jittered_features)


def count(variables) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize('name', sorted(CASES))
def test_logits_and_features_match_keras(name, reference):
  ref = reference(name)
  start = time.perf_counter()
  model, variables, apply = rgb_model(ref)
  logits, features = apply(variables, ref.x)
  assert set(ref.features) == set(models.get_spec(name).stage_names)
  # Keras counts the Normalization layer's `count` too (one scalar fpclass does not keep).
  source_count = ref.model.count_params() - (name != 'keras_mobilenetv3large')
  result = agreement(ref, logits, features)
  print(result.row(params=f'{count(variables):,} / {ref.model.count_params():,}',
                   input=f'{ref.x.shape[1]}x{ref.x.shape[2]}', seconds=f'{ref.seconds + time.perf_counter() - start:.1f}'))
  parity.check(result)
  assert count(variables) == source_count
  # The default Grad-CAM layer is the last conv stage, a spatial map (for MobileNetV3 conv_1, not the 1x1
  # logits conv), and it is among the stages checked against Keras above.
  cam_map = features[models.get_spec(name).cam_layer]
  assert models.get_spec(name).cam_layer in ref.features and cam_map.ndim == 4 and min(cam_map.shape[1:3]) > 1


def test_float64_logits_match_keras_to_rounding(reference):
  """EfficientNetB0 with both sides in float64 agrees to FLOAT64_TOL of the logit scale, so the float32
  differences above are rounding, not a difference in what is computed."""
  ref = reference('keras_efficientnetb0')
  # One image, cropped to 32x33 (even by odd, as 66x49: the asymmetric padding at work; Keras takes 32 px at
  # least): float64 convolutions run slowly on XLA:CPU, slower still at the suite's optimisation level 0 (96 s
  # for two 66x49 images on a loaded machine), in proportion to the pixels.
  x = ref.x[:1, :32, :33]
  ref64 = parity.keras_logits_float64('EfficientNetB0', ref.path, x)
  got64 = parity.port_logits_float64(ref.name, ref.path, x, image_shape=ref.x.shape[1:])
  parity.check_float64('keras_efficientnetb0', got64, ref64)


# Ports broken on purpose (EfficientNetB0): each must fail the parity check, on its logits alone too.
MUTATIONS = {
    'a depthwise kernel transposed (block4a)': lambda variables: parity.replaced(variables, {
        'params/block4a/dwconv/kernel': lambda k: k.transpose(1, 0, 2, 3)}),
    'BatchNorm epsilon 1e-5 for 1e-3': lambda variables: parity.replaced(
        variables, parity.bn_variances(variables, lambda var: var - (1e-3 - 1e-5))),
    'batch order reversed after block4a': parity.reversed_batch_after('block4a'),
}


@pytest.mark.parametrize('mutation', list(MUTATIONS))
def test_the_parity_check_fails_on_a_broken_port(mutation, reference):
  ref = reference('keras_efficientnetb0')
  model, variables, apply = rgb_model(ref)
  logits, features = parity.broken_port_outputs(model, variables, apply, ref.x, mutation, MUTATIONS[mutation])
  result = agreement(ref, logits, features, label=f'keras_efficientnetb0, {mutation}')
  print(result.row())
  parity.assert_check_fails(result)


@pytest.mark.parametrize('name', sorted(CASES))
def test_grayscale_stem_matches_keras_on_the_rgb_copy(name, reference):
  """in_channels=1 on g against Keras on [g, g, g]: the stem, its zero-padded border included (correct_pad's
  asymmetric padding at even sizes). MobileNetV3 rescales the same for every channel; EfficientNet's
  Normalization layer holds per-channel statistics (random, unequal) that the one-channel stem folds. The
  stem is all that differs from the RGB port checked above, so the one-channel model stops there."""
  ref = reference(name)
  if name != 'keras_mobilenetv3large':
    stats = rgb_model(ref)[1]['batch_stats']['normalization']
    assert np.ptp(stats['mean']) > 0.01 and np.ptp(stats['variance']) > 0.01
  g = 255 * parity.gray_images((IMAGES, *ref.x.shape[1:3], 1))
  ggg = np.repeat(g, 3, axis=-1)
  expected, jittered = ref.run(ggg)[1]['stem'], ref.run(parity.jittered(ggg))[1]['stem']
  gray_model, gray_vars = parity.build(ref.name, ref.path, image_shape=g.shape[1:], in_channels=1, cut='stem',
                                       top='avg', num_classes=2)
  stem_kernel = gray_vars['params']['stem_conv' if name != 'keras_mobilenetv3large' else 'conv']['kernel']
  assert stem_kernel.shape[2] == 1
  if name != 'keras_mobilenetv3large':
    assert gray_vars['batch_stats']['normalization']['mean'].shape == (1,)
  diff, floor = parity.check_feature(f'{name} gray stem', parity.apply(gray_model, gray_vars, g)[1]['stem'],
                                     expected, jittered)
  print(f'\n{name} gray, stem: max |d| {diff:.1e} of its scale, noise floor {floor:.1e}')


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
  b0, b2, mobilenet = (reference(name) for name in ('keras_efficientnetb0', 'keras_efficientnetb2',
                                                     'keras_mobilenetv3large'))
  # At the input sizes the parity tests built these models at: parity.build traced them there already.
  with pytest.raises(UserInputError, match=r'does not fit this architecture: \[\d+ missing layers: .*block'):
    parity.build('keras_efficientnetb2', b0.path, image_shape=b2.x.shape[1:])
  with pytest.raises(UserInputError, match=r'does not fit this architecture: \[\d+ missing layers: normalization'):
    parity.build('keras_efficientnetb0', mobilenet.path, image_shape=b0.x.shape[1:])


def test_a_truncated_file_is_an_error(reference, tmp_path):
  ref = reference('keras_efficientnetb0')
  truncated = tmp_path / 'truncated.weights.h5'
  truncated.write_bytes(ref.path.read_bytes()[:200_000])
  with pytest.raises(UserInputError, match='cannot read it as a Keras weights file'):
    parity.build(ref.name, truncated, image_shape=ref.x.shape[1:])


# ------------------------------------------------------------------------------------ structure, training

@pytest.mark.parametrize('name', sorted(CASES))
def test_stages_are_in_network_order_and_cover_the_backbone(name):
  """Every backbone parameter belongs to exactly one stage (what freeze_till freezes), the source top to
  none; features come in stage order; a cut stops after its stage."""
  spec = models.get_spec(name)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)

  def features(**fields):  # (variable shapes, the stages the model records, in the order it records them)
    model = models.create_model(ml_collections.ConfigDict(dict(name=name, **fields)), 1000)
    recorded = []

    def init(images):  # one trace: init calls the model as apply does, and hands back its outputs too
      (_, found), variables = model.init_with_output(jax.random.PRNGKey(0), images)
      recorded.extend(found)
      return variables
    variables = jax.eval_shape(init, x)
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


def test_parity_cases_are_the_registry():
  """Every Keras port has a parity case, here or in test_pretrained_keras.py."""
  import importlib
  other = importlib.import_module('tests.test_pretrained_keras').CASES
  models.get_spec(next(iter(CASES)))  # registers every family
  assert not set(CASES) & set(other)
  assert set(CASES) | set(other) == {name for name, spec in models.REGISTRY.items() if spec.family == 'keras'}
