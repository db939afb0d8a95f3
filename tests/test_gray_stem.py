"""The one-channel stem (config.model.in_channels=1) on g against the source framework on the RGB copy
[g, g, g], the zero-padded border included, with the real ImageNet per-channel constants.

The source framework normalises per channel and then pads with zeros; the folded stem sees one channel
normalised with the channel averages. `transfer.StemConv` takes the padded taps' share of the folded
offset off again, so the two agree everywhere (issue 12). Each case checks that the test can fail: with
the correction zeroed (the fold as it was before) the logits are off by far more than the tolerance.

Reference models get informative BatchNorm statistics (a train-mode pass of the source framework over the
images), so their logits depend on the image; the test asserts that they do.
`python -m pytest -n0 -q tests/test_gray_stem.py -s` prints the table: | port | input | logit scale (max
|logit|) | between-image std / scale | the source's own change for a 1e-6 input jitter / scale | max |d| gray
vs source on the RGB copy / scale | the same with the padding correction zeroed / scale |.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import traverse_util
from jax import lax

from fpclass import models
from fpclass.models import preprocessing, transfer, weights
from tests import parity

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

CLASSES = 10
STATS_IMAGES, EVAL_IMAGES = 16, 4
GRAY_TOL = 1e-5       # max |logit difference| / logit scale
UNFIXED_MIN = 1e-3    # the same with the padding correction zeroed: the test must see the border
SPREAD_MIN = 0.1      # between-image std of the reference logits / logit scale
JITTER = 1e-6         # relative input jitter that measures the source framework's own float32 noise
# The gamma of each residual branch's last BN is scaled by this (the spirit of zero-init-residual training).
# Undamped, these random BN networks are chaotic: the source framework's own logits move by 1e-4 (torchvision
# EfficientNet-B0) or 2e-4 (Keras ResNet50) of their scale for an input jitter of 1e-6, which would drown a
# 1e-5 comparison. Trained networks are not like that.
DAMPING = 0.2

# name -> (framework, (height, width)). Small inputs, so the border is a large share of every map. The
# torchvision three are seed 000's transfer backbones on its grayscale footprints.
# Keras' correct_pad pads one cell less at the top/left at even sizes: EfficientNetB0's stem at 48x40.
CASES = {
    'resnet18': ('torch', (44, 36)),           # 7x7/2 conv, padding 3; BN after it
    'alexnet': ('torch', (64, 64)),            # 11x11/4 conv, padding 2, bias; no BN
    'efficientnet_b0': ('torch', (40, 36)),    # 3x3/2 conv, padding 1; BN after it
    'keras_efficientnetb0': ('keras', (48, 40)),   # Normalization layer folded; asymmetric padding
    'keras_resnet50': ('keras', (48, 40)),     # caffe: BGR, per-channel means; 7x7/2, padding 3, bias
}


def gray_images(n, height, width, seed=0):
  """Gray images in [0, 1] that differ in brightness, contrast and smooth structure, so that a network's
  logits differ between them."""
  rng = np.random.default_rng(seed)
  coarse = rng.standard_normal((n, max(2, height // 8), max(2, width // 8), 1))
  smooth = np.asarray(_resize(coarse, (n, height, width, 1)))
  g = (rng.uniform(0.2, 0.8, (n, 1, 1, 1)) + rng.uniform(0.1, 0.4, (n, 1, 1, 1)) * smooth
       + 0.05 * rng.standard_normal((n, height, width, 1)))
  return np.clip(g, 0, 1).astype(np.float32)


# One compiled program per size (run eagerly, each of the resize's operations compiles its own).
_resize = jax.jit(lambda x, shape: jax.image.resize(x, shape, 'cubic'), static_argnums=1)


def jittered(x, seed=5):
  return x + np.float32(JITTER * np.max(np.abs(x))) * np.random.default_rng(seed).standard_normal(x.shape).astype(
      np.float32)


# ----------------------------------------------------------------------------------------------- references

def torch_reference(name, rgb, folder):
  """(weights file, logits on the first EVAL_IMAGES, logits on those jittered) of a random torchvision model
  whose BN statistics are those of `rgb` (torch's own train-mode pass, cumulative: exactly the batch's).

  Residual branches are damped (see `DAMPING`)."""
  module = parity.randomise_torch_weights(parity.torchvision_uninitialised(name, num_classes=CLASSES))
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torchvision.models.resnet.BasicBlock):
        m.bn2.weight.mul_(DAMPING)
      elif isinstance(m, torchvision.models.efficientnet.MBConv) and m.use_res_connect:
        m.block[-1][1].weight.mul_(DAMPING)   # the projection's BN
  batch_norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in batch_norms:  # only BN in train mode: stochastic depth and dropout stay off
    m.reset_running_stats()
    m.momentum = None
    m.train()
  with torch.no_grad():
    module(torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))))
  module.eval()
  path = folder / f'{name}.pth'
  torch.save(module.state_dict(), path)
  x = rgb[:EVAL_IMAGES]
  return path, parity.torch_forward(module, x, {})[0], parity.torch_forward(module, jittered(x), {})[0]


def keras_reference(name, rgb, folder):
  """As torch_reference, for keras.applications on the JAX backend. EfficientNet's Normalization layer holds
  ImageNet's per-channel mean and variance (std squared: a weights=None model divides by its square root).

  ResNet50's residual branches are damped (see `DAMPING`)."""
  import keras  # after tests.parity, which selects the JAX backend
  application = {'keras_efficientnetb0': 'EfficientNetB0', 'keras_resnet50': 'ResNet50'}[name]
  keras.utils.set_random_seed(0)
  model = parity.keras_application(application, rgb.shape[1:], classes=CLASSES)
  batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  with parity.keras_arrays_uncompiled():
    for layer in model.layers:
      if isinstance(layer, keras.layers.Normalization):
        imagenet = preprocessing.TORCH_IMAGENET
        layer.set_weights([np.asarray(imagenet.mean, np.float32), np.square(np.asarray(imagenet.std, np.float32)),
                           layer.get_weights()[2]])
        layer.finalize_state()
    for layer in batch_norms:
      if layer.name.endswith('_3_bn'):
        gamma, *rest = layer.get_weights()
        layer.set_weights([gamma * DAMPING, *rest])
  if batch_norms:  # one jitted train-mode pass with momentum 0: the moving statistics become the batch's
    for layer in batch_norms:
      layer.momentum = 0.0
    trainable = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    _, state = jax.jit(lambda t, s, x: model.stateless_call(t, s, x, training=True))(trainable, state, rgb)
    for variable, value in zip(model.non_trainable_variables, state):
      variable.assign(value)
  path = folder / f'{name}.weights.h5'
  model.save_weights(str(path))
  x = rgb[:EVAL_IMAGES]
  # The weights are the program's arguments: as constants baked into it they made it slower to compile (ResNet50's
  # 25M: 2.1 CPU-s against 0.7).
  predict = jax.jit(lambda t, s, x: model.stateless_call(t, s, x)[0])
  trainable = [v.value for v in model.trainable_variables]
  state = [v.value for v in model.non_trainable_variables]
  return path, np.asarray(predict(trainable, state, x)), np.asarray(predict(trainable, state, jittered(x)))


def without_padding_correction(variables):
  flat = traverse_util.flatten_dict(variables)
  return traverse_util.unflatten_dict({k: np.zeros_like(v) if k[-1] == transfer.PAD_OFFSET else v
                                       for k, v in flat.items()})


# ---------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize('name', list(CASES))
def test_gray_port_equals_the_source_on_the_rgb_copy(name, tmp_path):
  framework, (height, width) = CASES[name]
  norm = models.get_spec(name).preprocessing
  g = gray_images(STATS_IMAGES, height, width)
  rgb = np.asarray(norm(np.repeat(g, 3, axis=-1)))
  reference = torch_reference if framework == 'torch' else keras_reference
  path, ref, ref_jittered = reference(name, rgb, tmp_path)

  model, variables = parity.build(name, path, num_classes=CLASSES, image_shape=(height, width, 1), in_channels=1)
  apply = jax.jit(model.apply)
  gray = np.asarray(norm.to_grayscale()(g[:EVAL_IMAGES]))
  logits, _ = apply(variables, gray)
  unfixed, _ = apply(without_padding_correction(variables), gray)

  scale = float(np.max(np.abs(ref)))
  spread = float(np.mean(np.std(ref, axis=0)))
  gray_rel = parity.max_abs_diff(logits, ref) / scale
  unfixed_rel = parity.max_abs_diff(unfixed, ref) / scale
  noise_rel = parity.max_abs_diff(ref_jittered, ref) / scale
  print(f'\n| {name} | {height}x{width} | {scale:.3g} | {spread / scale:.0%} | {noise_rel:.1e} | {gray_rel:.1e} | '
        f'{unfixed_rel:.1e} |')
  assert spread >= SPREAD_MIN * scale, 'the reference logits hardly depend on the image'
  assert gray_rel <= GRAY_TOL
  assert np.array_equal(np.argmax(logits, -1), np.argmax(ref, -1))
  assert unfixed_rel >= UNFIXED_MIN, 'without the padding correction the port should be off: is the border seen?'


@pytest.mark.parametrize('padding, size, stride', [
    ('SAME', (8, 6), 2),                      # TF SAME at even sizes: the odd cell at the bottom/right
    (((0, 1), (0, 1)), (8, 6), 2),            # Keras correct_pad at even sizes
    (3, (9, 7), 2),                           # torch's symmetric padding
    ('VALID', (9, 7), 1),                     # no padding: no correction
])
def test_stem_conv_is_exact_for_every_zero_padding(padding, size, stride):
  """StemConv(gray) with the folded kernel, offset and pad_offset on g equals the RGB convolution of the
  per-channel normalised [g, g, g] zero-padded afterwards, at every output cell, in float64."""
  norm = preprocessing.KERAS_CAFFE   # BGR, per-channel means: the hardest case
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  g = rng.uniform(size=(2, *size, 1))
  pads = nn.linear.canonicalize_padding(padding, 2)
  with jax.enable_x64(True):
    rgb = np.asarray(norm(jnp.asarray(np.repeat(g, 3, axis=-1))))
    expected = lax.conv_general_dilated(rgb, kernel.astype(np.float64), (stride,) * 2, pads,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias
    folded, offset = weights.fold_rgb_stem(kernel, norm)
    conv = transfer.StemConv(4, (3, 3), stride, padding=padding, gray=True)
    variables = {'params': {'kernel': folded.astype(np.float64), 'bias': (bias + offset).astype(np.float64)},
                 'batch_stats': {transfer.PAD_OFFSET: weights.rgb_stem_tap_offsets(kernel, norm).astype(np.float64)}}
    gray = np.asarray(norm.to_grayscale()(jnp.asarray(g)))
    out = conv.apply(variables, gray)
    # float32 folded constants, caffe's 0..255 scale: agreement to float32 rounding of the constants
    assert parity.max_abs_diff(out, expected) <= 1e-5 * float(np.max(np.abs(expected)))
    unfixed = conv.apply({**variables, 'batch_stats': {transfer.PAD_OFFSET: np.zeros((3, 3, 1, 4))}}, gray)
    if padding == 'VALID':
      assert parity.max_abs_diff(unfixed, expected) <= 1e-5 * float(np.max(np.abs(expected)))
    else:
      assert parity.max_abs_diff(unfixed, expected) > 1e-2 * float(np.max(np.abs(expected)))
