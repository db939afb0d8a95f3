"""Helpers for parity tests against the source frameworks (torchvision, Keras on the JAX backend).

The reference framework writes random weights in its own file format; fpclass loads that file; both compute
on the same batch. Random BatchNorm statistics and affine parameters are drawn so that BN is not the identity
(which would hide mapping mistakes) while logits stay O(1), so an absolute tolerance means something.
"""
import contextlib
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fpclass import models
from fpclass.models import transfer

os.environ.setdefault('KERAS_BACKEND', 'jax')


def build(name, weights_path, num_classes=1000, image_shape=(64, 64, 3), **fields):
  """(model, variables) for registered model `name` with weights loaded from `weights_path`."""
  cfg = ml_collections.ConfigDict(dict(name=name, head='softmax', pretrained=str(weights_path),
                                       keep_pretrained_head=fields.pop('keep_pretrained_head', True), **fields))
  model = models.create_model(cfg, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
  variables = {k: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes[k])
               for k in ('params', 'batch_stats') if k in shapes}
  variables = transfer.load_pretrained(models.get_spec(name), cfg, variables, cache_dir='/nonexistent')
  return model, variables


def apply(model, variables, images):
  return jax.jit(model.apply)(variables, images)


def images(shape, seed=0):
  """A fixed batch in the model's input space (already normalised)."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------- torch

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
  with _zeros_for_variance_scaling(keras):
    model = getattr(keras.applications, name)(weights=weights, input_shape=input_shape,
                                              classifier_activation=None, **kwargs)
  return randomise_keras(model, seed) if weights is None else model


@contextlib.contextmanager
def _zeros_for_variance_scaling(keras):
  """Keras draws each initial kernel with jax.random, which compiles one XLA program per kernel shape: most
  of the time it takes to build an application on CPU (InceptionV3: ~20 s). randomise_keras overwrites
  every weight, so the build may draw zeros instead (Glorot, He and LeCun are all VarianceScaling)."""
  cls = keras.initializers.VarianceScaling
  original = cls.__call__
  cls.__call__ = lambda self, shape, dtype=None: np.zeros(shape, dtype or 'float32')
  try:
    yield
  finally:
    cls.__call__ = original


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
