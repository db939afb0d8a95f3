"""Helpers for parity tests against the source frameworks (torchvision, Keras on the JAX backend).

The reference framework writes random weights in its own file format; fpclass loads that file; both compute
on the same batch. The weights are informative (BatchNorm statistics from the reference's own train-mode
pass over the test images), and the comparison (`agreement`, `check`) is relative to the logits' scale
with a tolerance tied to the reference's own float32 noise: see "informative comparisons" below. Planted
mutations (`replaced`, `bn_variances`, `reversed_batch_after`) show that the check can fail; float64
versions of both sides (`port_logits_float64`, `torch_logits_float64`, `keras_logits_float64`) show that
what remains in float32 is rounding.
"""
import contextlib
import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.models import transfer

os.environ.setdefault('KERAS_BACKEND', 'jax')


_VARIABLE_SHAPES = {}


def build(name, weights_path, num_classes=1000, image_shape=(64, 64, 3), **fields):
  """(model, variables) for registered model `name` with weights loaded from `weights_path`.

  The variables' shapes come from tracing the model's init once per process for each model, class count,
  input shape and set of fields (and x64 mode): tests that load several files into one model, or one file
  several times, trace it once. The module does not depend on the file (`models.LOADING_KEYS`)."""
  cfg = ml_collections.ConfigDict(dict(name=name, head='softmax', pretrained=str(weights_path),
                                       keep_pretrained_head=fields.pop('keep_pretrained_head', True), **fields))
  model = models.create_model(cfg, num_classes)
  key = (name, num_classes, tuple(image_shape), repr(sorted(fields.items())), jax.config.jax_enable_x64)
  if key not in _VARIABLE_SHAPES:
    _VARIABLE_SHAPES[key] = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
  shapes = _VARIABLE_SHAPES[key]
  variables = {k: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes[k])
               for k in ('params', 'batch_stats') if k in shapes}
  variables = transfer.load_pretrained(models.get_spec(name), ModelSettings.from_config(cfg), variables,
                                       cache_dir='/nonexistent')
  return model, variables


def apply(model, variables, images):
  return jax.jit(model.apply)(variables, images)


def run_once(fn, *args):
  """fn(*args) compiled with XLA's backend optimisation off: for a program run once, where compiling is
  most of its time (half of it on CPU) and its speed does not matter."""
  return jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})(*args)


def compiled_once(fn, *args):
  """fn compiled for `args`' shapes with XLA's backend optimisation off (as `run_once`), kept to be called
  again on arguments of the same shapes: a parity test's port, run on the test batch and its mutations."""
  return jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})


def images(shape, seed=0):
  """A fixed batch in the model's input space (already normalised)."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------- torch

def torchvision_uninitialised(name, **kwargs):
  """torchvision.models.<name>(weights=None, **kwargs) in eval mode without torch's random initialisation,
  for a test that draws its weights itself (randomise_torch_weights, randomise_torch_bn,
  randomise_torch_transformer_parts): built on the meta device, then every tensor zero, every BatchNorm and
  LayerNorm reset as torch builds it (weight 1, bias 0, running statistics 0 and 1). Those helpers then draw
  the same weights as on torch's own initialisation (whose normal draws over VGG16's 138M weights or ConvNeXt's
  truncated ones take 1.4 CPU-s)."""
  import torch
  import torchvision
  with torch.device('meta'):
    module = getattr(torchvision.models, name)(weights=None, **kwargs)
  module = module.to_empty(device='cpu')
  with torch.no_grad():
    for tensor in (*module.parameters(), *module.buffers()):
      tensor.zero_()
    for m in module.modules():
      if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm)):
        m.reset_parameters()
  return module.eval()


def randomise_torch_bn(module, seed=0):
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        m.weight.copy_(torch.rand(n, generator=generator) * 0.4 + 0.3)
        m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
  return module


def randomise_torch_weights(module, seed=0):
  """He-normal conv/linear weights and small random biases: torchvision initialises many biases to zero
  (which would hide a bias mapped to the wrong layer) and AlexNet's default init shrinks its logits to
  ~0.01 (which would make an absolute tolerance meaningless)."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
  return module


def randomise_torch_transformer_parts(module, seed=0, scales=(0.2, 0.6)):
  """Draws what `randomise_torch_weights` leaves at its initial values, so that a mapping mistake shows:
  LayerNorm weights and biases (else ones and zeros, which hide a swapped pair), nn.MultiheadAttention's
  packed input projection (He-normal, biases 0.1), class tokens and position embeddings (N(0, 0.5):
  torchvision starts its class token at zero) and layer scales (uniform in `scales`: torchvision's ConvNeXt
  starts them at 1e-6, which makes every block nearly the identity)."""
  import torch
  generator = torch.Generator().manual_seed(seed)

  def draw(shape, std):
    return torch.randn(shape, generator=generator) * std
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
        m.bias.copy_(draw(m.bias.shape, 0.1))
      elif isinstance(m, torch.nn.MultiheadAttention):
        m.in_proj_weight.copy_(draw(m.in_proj_weight.shape, (2.0 / m.in_proj_weight.shape[1]) ** 0.5))
        m.in_proj_bias.copy_(draw(m.in_proj_bias.shape, 0.1))
    for name, p in module.named_parameters():
      leaf = name.rsplit('.', 1)[-1]
      if leaf in ('class_token', 'cls_token', 'pos_embedding', 'pos_embed', 'mask_token'):
        p.copy_(draw(p.shape, 0.5))
      elif leaf in ('layer_scale', 'gamma'):
        p.copy_(torch.rand(p.shape, generator=generator) * (scales[1] - scales[0]) + scales[0])
  return module


def torch_forward(module, nhwc, feature_modules: dict):
  """(logits, {feature name: NHWC array}) from a torch model, features captured by forward hooks."""
  import torch
  captured, hooks = {}, []
  for name, path in feature_modules.items():
    sub = module.get_submodule(path)
    hooks.append(sub.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
  try:
    with torch.no_grad():
      logits = module(torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))).numpy()
  finally:
    for h in hooks:
      h.remove()
  return logits, {k: v.numpy().transpose(0, 2, 3, 1) for k, v in captured.items()}


def max_abs_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------------------- keras

def keras_application(name, input_shape, seed=0, weights=None, **kwargs):
  """keras.applications.<name>(weights=None) with logits as its output and random weights (randomise_keras);
  with `weights` ('imagenet', a file) Keras loads those instead."""
  import keras
  with keras_arrays_uncompiled(), _zeros_for_variance_scaling(keras):
    model = getattr(keras.applications, name)(weights=weights, input_shape=input_shape,
                                              classifier_activation=None, **kwargs)
    return randomise_keras(model, seed) if weights is None else model


@contextlib.contextmanager
def _zeros_for_variance_scaling(keras):
  """Keras draws each initial kernel with jax.random, which compiles one XLA program per kernel shape: most
  of the time it takes to build an application on CPU (InceptionV3: ~20 s). randomise_keras overwrites
  every weight, so the build may draw zeros instead (Glorot, He and LeCun are all VarianceScaling). Its
  zeros and ones (biases, BatchNorm) come from numpy too: the same values, without a compiled broadcast per
  shape."""
  patched = {keras.initializers.VarianceScaling: lambda self, shape, dtype=None: np.zeros(shape, dtype or 'float32'),
             keras.initializers.Zeros: lambda self, shape, dtype=None: np.zeros(
                 shape, keras.backend.standardize_dtype(dtype)),
             keras.initializers.Ones: lambda self, shape, dtype=None: np.ones(
                 shape, keras.backend.standardize_dtype(dtype))}
  originals = {cls: cls.__call__ for cls in patched}
  for cls, call in patched.items():
    cls.__call__ = call
  try:
    yield
  finally:
    for cls, call in originals.items():
      cls.__call__ = call


@contextlib.contextmanager
def keras_arrays_uncompiled():
  """Keras (JAX backend) takes numpy arrays into its variables without compiling anything. Its
  convert_to_tensor calls jnp.asarray, which on this JAX stages the array through a program compiled for
  each shape and dtype (14 ms each on this CPU, hundreds per application: its initial values, set_weights,
  load_weights). A numpy array that needs no conversion is copied to the device instead: the same values."""
  import keras
  from keras.src.backend.jax import core
  convert = core.convert_to_tensor

  def device_put(x, dtype=None, sparse=None, ragged=None):
    if (isinstance(x, np.ndarray) and (dtype is None or keras.backend.standardize_dtype(dtype) == x.dtype)
        and jax.dtypes.canonicalize_dtype(x.dtype) == x.dtype):
      return jax.device_put(np.array(x))   # a copy, as jnp.asarray makes
    return convert(x, dtype=dtype, sparse=sparse, ragged=ragged)
  core.convert_to_tensor = device_put
  try:
    yield
  finally:
    core.convert_to_tensor = convert


def randomise_keras(model, seed=0):
  """Random weights that a mapping mistake cannot hide: He-scaled kernels (so activations stay O(1) through
  deep stacks without BN, as in VGG; a depthwise kernel by its own fan-in), nonzero biases, BN layers far
  from the identity, and per-channel Normalization statistics unlike the identity and unlike each other."""
  import keras
  rng = np.random.default_rng(seed)
  draw = {
      'kernel': lambda shape: rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape),
      'bias': lambda shape: rng.normal(0, 0.1, shape),
      'gamma': lambda shape: rng.uniform(0.3, 0.7, shape), 'beta': lambda shape: rng.normal(0, 0.1, shape),
      'moving_mean': lambda shape: rng.normal(0, 0.1, shape),
      'moving_variance': lambda shape: rng.uniform(0.5, 1.5, shape),
      'mean': lambda shape: rng.uniform(0.3, 0.6, shape), 'variance': lambda shape: rng.uniform(0.04, 0.1, shape),
  }
  for layer in model.layers:
    if not layer.weights:
      continue
    values = []
    for v in layer.weights:
      if isinstance(layer, keras.layers.DepthwiseConv2D) and v.name == 'kernel':  # (kh, kw, C, 1)
        values.append(rng.normal(0, np.sqrt(2 / np.prod(v.shape[:2])), v.shape))
      else:
        values.append(np.asarray(v) if v.name == 'count' else draw[v.name](v.shape))
    layer.set_weights([value.astype(np.float32) for value in values])
    if isinstance(layer, keras.layers.Normalization):
      # It computes with constants taken from its variables when (re)loaded, and a jitted Keras function
      # captures those constants at its first trace: refresh them before any.
      layer.finalize_state()
  return model


def keras_reference(model, nhwc, feature_layers: dict):
  """(logits, {feature name: array}) from a Keras model (features: outputs of the named layers, or Keras
  tensors of the model where the layer is unnamed), after scaling its last weighted layer (the classifier)
  so that these logits have unit standard deviation: an absolute tolerance then means something. One
  jitted program (`predict`) computes everything."""
  import keras
  names = list(feature_layers)
  tensors = [model.get_layer(v).output if isinstance(v, str) else v for v in feature_layers.values()]
  probe = keras.Model(model.inputs, tensors + [model.output])
  dense = [layer for layer in model.layers if layer.weights][-1]
  scale = float(np.std(probe.predict(nhwc, verbose=0, batch_size=len(nhwc))[-1]))
  dense.set_weights([w / scale for w in dense.get_weights()])
  outputs = [np.asarray(o) for o in probe.predict(nhwc, verbose=0, batch_size=len(nhwc))]
  return outputs[-1], dict(zip(names, outputs[:-1]))


def legacy_names(model) -> dict:
  """{weighted layer: its name in a Keras 2 file}: explicit names stay; auto-named layers get Keras 2.0's
  names (`conv2d_1`, `conv2d_2`, ... 1-based per class in creation order), as the official ImageNet files of
  models with unnamed layers (InceptionV3) carry them. Keras 3 auto-names count up per session, so the
  creation order is the order of their numeric suffixes."""
  weighted = [layer for layer in model.layers if layer.weights]
  auto = {}
  for layer in weighted:
    prefix = re.sub(r'(?<!^)(?=[A-Z][a-z])', '_', type(layer).__name__).lower()
    match = re.fullmatch(rf'{prefix}(?:_(\d+))?', layer.name)
    if match:
      auto.setdefault(prefix, []).append((int(match.group(1) or 0), layer))
  names = {layer: layer.name for layer in weighted}
  for prefix, layers in auto.items():
    for rank, (_, layer) in enumerate(sorted(layers, key=lambda item: item[0]), start=1):
      names[layer] = f'{prefix}_{rank}'
  return names


def write_legacy_h5(model, path, rename=None):
  """`model`'s weights in the layout of Keras 2's save_weights, which the official ImageNet files have: root
  attrs layer_names/backend/keras_version, a group per layer whose weight_names are '<layer>/<var>:0', each
  array at <layer>/<layer>/<var>:0. Written with h5py from the same arrays Keras saved. `rename` maps the
  weighted layers' names further where tf.keras 2 named them otherwise (MobileNetV3's 'Conv/BatchNorm':
  Keras 3 forbids '/'; h5py makes such names nested groups, as tf.keras did)."""
  import h5py
  names = legacy_names(model)
  if rename:
    names = {layer: rename(name) for layer, name in names.items()}
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [names.get(layer, layer.name).encode() for layer in model.layers]
    f.attrs['backend'], f.attrs['keras_version'] = b'tensorflow', b'2.2.4'
    for layer in model.layers:
      group = f.require_group(names.get(layer, layer.name))
      weight_names = [f'{names[layer]}/{v.name}:0' for v in layer.weights]
      group.attrs['weight_names'] = [n.encode() for n in weight_names]
      for name, variable in zip(weight_names, layer.weights):
        group.create_dataset(name, data=np.asarray(variable))
  return path


# ------------------------------------------------------------------------------- informative comparisons
#
# A random network with random BatchNorm statistics can give logits that hardly depend on the input (the
# statistics match nothing the layers see, small BN scales shrink the image's signal layer by layer), and
# then a parity test passes whatever the port does with the image. So the reference's BatchNorm statistics
# come from a train-mode pass of the reference framework over the test images (then are perturbed, so a
# port that normalised with batch statistics at inference would not agree by accident), the images differ
# from each other at every scale, and `check` asserts that the reference logits do vary between images.
#
# The tolerance is relative to the logits' scale and a small multiple of the reference framework's own
# float32 noise, measured in the same test: the change of the reference's outputs when its input moves by
# JITTER (relative). Two frameworks that compute the same function differ by about that much; a mistake
# moves the outputs by far more.

JITTER = 1e-6          # relative input jitter that measures the noise floor
FLOOR_FACTOR = 10      # tolerance = FLOOR_FACTOR * noise floor
MIN_SPREAD = 0.1       # between-image std of the reference logits, as a fraction of their scale
MAX_FLOOR = 1e-3       # relative; a noisier reference would make the tolerance meaningless
FLOAT64_TOL = 1e-9     # relative, with both sides in float64


def check_float64(label: str, got64, ref64) -> float:
  """Asserts a float64 port agrees with its float64 reference to FLOAT64_TOL of the logit scale; returns it."""
  diff = max_abs_diff(got64, ref64) / np.std(ref64)
  print(f'\n{label} float64: max |d logit| {diff:.1e} of the logit scale')
  assert diff <= FLOAT64_TOL
  return diff


def varied_images(shape, seed=0, pixels=False):
  """A batch whose images differ at every scale: per-image contrast, per-image and per-channel brightness,
  a smooth pattern of its own, and pixel noise. Normalised (about zero mean, unit std), or with
  `pixels=True` raw 0..255 values for models that normalise inside."""
  n, height, width, channels = shape
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing='ij')
  frequency = rng.uniform(0.5, 3, (2, n, 1, 1, channels))
  phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, channels))
  pattern = np.sin(2 * np.pi * (frequency[0] * yy[..., None] + frequency[1] * xx[..., None]) + phase)
  contrast = rng.uniform(0.4, 1.6, (n, 1, 1, 1))
  x = rng.normal(0, 0.6, (n, 1, 1, channels)) + contrast * (pattern + 0.7 * rng.normal(size=shape))
  if pixels:
    x = np.clip(127.5 + 50 * x, 0, 255)
  return x.astype(np.float32)


def gray_images(shape, seed=2):
  """Gray images in [0, 1], (N, H, W, 1), differing as `varied_images` do."""
  return np.clip(0.45 + 0.25 * varied_images(shape, seed), 0, 1).astype(np.float32)


def jittered(x, seed=1):
  """`x` moved by JITTER relative to its scale (RMS), elementwise at random."""
  x = np.asarray(x)
  noise = np.random.default_rng(seed).normal(size=x.shape)
  return (x + JITTER * np.sqrt(np.mean(np.square(x, dtype=np.float64))) * noise).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Agreement:
  """A port's outputs against the reference's, in units of the reference's scale.

  scale:   std of all the reference logits (over images and classes)
  peak:    max |reference logit|
  spread:  between-image std of the reference logits (RMS over classes of the std over images) / scale
  floor:   max |reference(jittered input) - reference(input)| / scale: the reference framework's own
           float32 noise on these logits
  diff:    max |port - reference| / scale
  features: {stage: (diff, floor)}, each relative to max |reference feature| of that stage
  """
  name: str
  scale: float
  peak: float
  spread: float
  floor: float
  diff: float
  same_argmax: bool
  features: dict = dataclasses.field(default_factory=dict)

  def row(self, **extra) -> str:
    worst = max(self.features, key=lambda k: self.features[k][0] / max(self.features[k][1], 1e-30), default=None)
    cells = [self.name, f'{self.scale:.3g} (peak {self.peak:.3g})', f'{self.spread * self.scale:.3g} ({self.spread:.2f})',
             f'{self.floor:.1e}', f'{self.diff:.1e}', f'{self.diff / self.floor:.2f}' if self.floor else 'inf',
             f'{self.features[worst][0]:.1e} / {self.features[worst][1]:.1e} ({worst})' if worst else '-']
    cells += [f'{v:.1e}' if isinstance(v, float) else str(v) for v in extra.values()]
    return '| ' + ' | '.join(cells) + ' |'


TABLE_HEADER = ('| port | logit scale (std) | between-image std (/scale) | float32 floor | max |d| RGB | d / floor | '
                'stage |d| / floor, worst |')


def agreement(name, logits, ref, ref_jittered, features=None, ref_features=None,
              ref_jittered_features=None) -> Agreement:
  ref = np.asarray(ref, np.float64)
  scale = float(np.std(ref))
  spread = float(np.sqrt(np.mean(np.var(ref, axis=0)))) / scale
  stages = {}
  for stage, expected in (ref_features or {}).items():
    stage_scale = float(np.max(np.abs(expected)))
    stages[stage] = (max_abs_diff(features[stage], expected) / stage_scale,
                     max_abs_diff(ref_jittered_features[stage], expected) / stage_scale)
  return Agreement(name, scale, float(np.max(np.abs(ref))), spread, max_abs_diff(ref_jittered, ref) / scale, max_abs_diff(logits, ref) / scale,
                   bool(np.array_equal(np.argmax(logits, -1), np.argmax(ref, -1))), stages)


def check(result: Agreement, factor=FLOOR_FACTOR) -> Agreement:
  """Asserts that the comparison means something (the reference logits vary between images; its noise floor
  is small) and that the port agrees within `factor` times that floor, logits and every stage."""
  problems = []
  if not result.spread >= MIN_SPREAD:
    problems.append(f'reference logits hardly vary between images: between-image std {result.spread:.2g} of '
                    f'their scale {result.scale:.3g} (need {MIN_SPREAD})')
  if not result.floor <= MAX_FLOOR:
    problems.append(f'the reference noise floor {result.floor:.1e} is above {MAX_FLOOR:.0e}')
  if not result.diff <= factor * result.floor:
    problems.append(f'max |d logit| {result.diff:.2e} of the scale > {factor} x noise floor {result.floor:.2e}')
  if not result.same_argmax:
    problems.append('the predicted classes differ')
  for stage, (diff, floor) in result.features.items():
    if not diff <= factor * floor:
      problems.append(f'stage {stage}: max |d| {diff:.2e} of its scale > {factor} x its noise floor {floor:.2e}')
  assert not problems, f'{result.name}: ' + '; '.join(problems)
  return result


def perturbed_statistics(mean, var, rng, amount=0.02):
  """Statistics near (mean, var): the mean moved by `amount` standard deviations at random, the variance
  scaled by a factor within exp(+-2 * amount)."""
  std = np.sqrt(np.asarray(var, np.float64))
  mean = np.asarray(mean, np.float64) + amount * std * rng.normal(size=np.shape(mean))
  var = np.square(std) * np.exp(2 * amount * rng.uniform(-1, 1, np.shape(std)))
  return mean.astype(np.float32), var.astype(np.float32)


def informative_torch_bn(module, nhwc, seed=0):
  """Sets every BatchNorm's running statistics from one train-mode pass of torch over `nhwc` (only BN in
  train mode: dropout and stochastic depth stay off), then perturbs them. Returns `module`, in eval mode."""
  import torch
  norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  module.eval()
  momenta = [m.momentum for m in norms]
  for m in norms:
    m.reset_running_stats()
    m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    m.train()
  with torch.no_grad():
    module(torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))).to(next(module.parameters()).dtype))
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for m, momentum in zip(norms, momenta):
      m.momentum = momentum
      mean, var = perturbed_statistics(m.running_mean.numpy(), m.running_var.numpy(), rng)
      m.running_mean.copy_(torch.from_numpy(mean))
      m.running_var.copy_(torch.from_numpy(var))
  return module.eval()


def informative_keras_bn(model, images, seed=0):
  """Sets every BatchNormalization's moving statistics from one train-mode pass of Keras over `images`
  (momentum 0 and dropout rates 0 meanwhile), then perturbs them. Returns `model`.

  The pass is one compiled `stateless_call`: Keras run eagerly dispatches op by op, a minute for EfficientNetB0."""
  import keras
  norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  if not norms:
    return model
  dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
  saved = [layer.momentum for layer in norms], [layer.rate for layer in dropouts]
  try:
    for layer in norms:
      layer.momentum = 0.0
    for layer in dropouts:
      layer.rate = 0.0
    trainable = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    _, state = run_once(lambda t, s, x: model.stateless_call(t, s, x, training=True), trainable, state, images)
  finally:
    for layer, momentum in zip(norms, saved[0]):
      layer.momentum = momentum
    for layer, rate in zip(dropouts, saved[1]):
      layer.rate = rate
  for variable, value in zip(model.non_trainable_variables, state):
    variable.assign(value)
  rng = np.random.default_rng(seed)
  with keras_arrays_uncompiled():
    for layer in norms:
      values = layer.get_weights()  # [gamma, beta,] moving_mean, moving_variance
      values[-2], values[-1] = perturbed_statistics(values[-2], values[-1], rng)
      layer.set_weights(values)
  return model


def check_feature(label, got, ref, ref_jittered, factor=FLOOR_FACTOR) -> tuple:
  """Asserts that feature map `got` equals the reference's within `factor` times the reference's own noise
  floor there, both relative to max |ref|; returns (diff, floor)."""
  scale = float(np.max(np.abs(ref)))
  diff, floor = max_abs_diff(got, ref) / scale, max_abs_diff(ref_jittered, ref) / scale
  assert floor > 0 and diff <= factor * floor, f'{label}: max |d| {diff:.2e} of its scale > {factor} x noise floor {floor:.2e}'
  return diff, floor


def keras_runner(model, feature_layers: dict):
  """x -> (logits, {feature name: array}) of a Keras model, features being the outputs of the named layers
  (or Keras tensors of the model): one jitted program, so every batch of the same shape reuses it."""
  import keras
  names = list(feature_layers)
  tensors = [model.get_layer(v).output if isinstance(v, str) else v for v in feature_layers.values()]
  probe = keras.Model(model.inputs, tensors + [model.output])
  trainable = [v.value for v in probe.trainable_variables]
  state = [v.value for v in probe.non_trainable_variables]
  compiled = jax.jit(lambda t, s, x: probe.stateless_call(t, s, x)[0])

  def run(x):
    outputs = compiled(trainable, state, x)
    outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    return outputs[-1], dict(zip(names, outputs[:-1]))
  return run


# ------------------------------------------------------------------------------------ broken on purpose

def replaced(variables, changes: dict):
  """`variables` with each '/'-joined path in `changes` replaced by changes[path](its value)."""
  flat = traverse_util.flatten_dict(variables, sep='/')
  for path, change in changes.items():
    flat[path] = change(np.asarray(flat[path]))
  return traverse_util.unflatten_dict(flat, sep='/')


def bn_variances(variables, change) -> dict:
  """{path: change} for every BatchNorm running variance ('batch_stats/.../var') of a port."""
  return {k: change for k in traverse_util.flatten_dict(variables, sep='/')
          if k.startswith('batch_stats/') and k.endswith('/var')}


def reversed_batch_after(module_name):
  """A Flax method interceptor (`nn.intercept_methods`) reversing the batch order of the output of the
  top-level module `module_name`: a port that mixes up images in a middle stage."""
  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.path == (module_name,):
      return out[::-1]
    return out
  return interceptor


def broken_port_outputs(model, variables, apply, x, mutation: str, mutate):
  """(logits, features) of a port with one planted mutation: a 'batch order ...' mutation intercepts a
  module's call (`reversed_batch_after`); any other changes the variables (`replaced`, `bn_variances`)."""
  if mutation.startswith('batch order'):
    with nn.intercept_methods(mutate):
      return jax.jit(lambda v, images: model.apply(v, images))(variables, x)
  return apply(mutate(variables), x)


def assert_check_fails(result: Agreement) -> None:
  """The parity check rejects a broken port on its logits alone, and with its features."""
  with pytest.raises(AssertionError, match='max .d logit.'):
    check(dataclasses.replace(result, features={}))
  with pytest.raises(AssertionError):
    check(result)


# ------------------------------------------------------------------------------------------------ float64

def head_module(name) -> str:
  """The top-level module name of a registered port's source classifier ('fc', 'predictions', ...)."""
  return re.fullmatch(r'\^params/(\w+)/', models.get_spec(name).source_head).group(1)


def port_logits_float64(name, weights_path, x, image_shape=None, **fields):
  """The port's logits computed in float64 throughout, weights loaded from `weights_path` (float32 values,
  as both frameworks hold them). The ports hand back float32 logits, so these are the classifier module's
  own output, captured before that cast. Runs under `jax.enable_x64` only, so other tests keep float32.

  The weights are loaded as `build` loads them for the float32 port (at `image_shape`, by default x's: a
  convolutional port's variables are the same at any input size, so a test may name the size it built the
  float32 port at, which `build` traced already), then cast; the port computes with dtype float64."""
  model, variables = build(name, weights_path, image_shape=image_shape or x.shape[1:], **fields)
  model = model.clone(dtype=jnp.float64)
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), variables)
    head = head_module(name)

    def logits(variables, x):
      _, state = model.apply(variables, x, capture_intermediates=lambda m, method: (
          method == '__call__' and m.name == head and len(m.path) == 1), mutable=['intermediates'])
      return state['intermediates'][head]['__call__'][0]
    out = np.asarray(jax.jit(logits)(variables, np.asarray(x, np.float64)))
  assert out.dtype == np.float64, out.dtype
  return out.reshape(len(x), -1)


def torch_logits_float64(module, nhwc):
  """torch's logits with a float64 copy of `module`."""
  import copy

  import torch
  double = copy.deepcopy(module).double().eval()
  with torch.no_grad():
    return double(torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2), np.float64))).numpy()


def keras_logits_float64(application, weights_path, x, **kwargs):
  """keras.applications.<application>'s logits with every layer in float64 (Keras' float64 dtype policy,
  under jax.enable_x64), weights loaded from `weights_path`. Keras' global dtype settings come back after."""
  import keras
  from keras.src.backend.common import dtypes
  policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
  narrowing = dict(dtypes.BIT64_TO_BIT32_DTYPE)
  with jax.enable_x64(True):
    try:
      keras.config.set_floatx('float64')
      keras.config.set_dtype_policy('float64')
      # Keras' type promotion narrows float64 to float32 on the JAX backend (to match JAX without x64), so
      # its BatchNormalization would compute in float32 (result_type(float64, 'float32')); under x64 JAX
      # keeps float64, and so does Keras here.
      dtypes.BIT64_TO_BIT32_DTYPE.pop('float64')
      model = keras_application(application, x.shape[1:], weights=str(weights_path), **kwargs)
      for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
          layer.finalize_state()
      trainable = [v.value for v in model.trainable_variables]
      state = [v.value for v in model.non_trainable_variables]
      out = jax.jit(lambda t, s, x: model.stateless_call(t, s, x)[0])(trainable, state, np.asarray(x, np.float64))
      out = np.asarray(out)
    finally:
      dtypes.BIT64_TO_BIT32_DTYPE.clear()
      dtypes.BIT64_TO_BIT32_DTYPE.update(narrowing)
      keras.config.set_floatx(floatx)
      keras.config.set_dtype_policy(policy)
  assert out.dtype == np.float64, out.dtype
  return out
