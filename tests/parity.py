"""Helpers for parity tests against the source frameworks (torchvision, Keras on the JAX backend).

The reference framework writes random weights in its own file format; fpclass loads that file; both compute
on the same batch. Random BatchNorm statistics and affine parameters are drawn so that BN is not the identity
(which would hide mapping mistakes) while logits stay O(1), so an absolute tolerance means something.
"""
import contextlib
import os

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


# ------------------------------------------------------------------------ keras (MobileNetV3, EfficientNet)

@contextlib.contextmanager
def cheap_keras_init():
  """Keras on JAX draws every initial kernel with jax.random, compiling one XLA program per kernel shape:
  ~20 s of CPU per application here. The parity tests overwrite every weight (randomise_keras_weights),
  so while this is active the build draws zeros (GlorotUniform and Keras' He/LeCun are VarianceScaling)."""
  import keras
  cls = keras.initializers.VarianceScaling
  original = cls.__call__
  cls.__call__ = lambda self, shape, dtype=None: np.zeros(shape, dtype or 'float32')
  try:
    yield
  finally:
    cls.__call__ = original


def build_keras_application(name, input_shape, **kwargs):
  """keras.applications.<name>(input_shape=..., weights=None unless given, ...), built cheaply."""
  import keras
  kwargs.setdefault('weights', None)
  with cheap_keras_init():
    return getattr(keras.applications, name)(input_shape=input_shape, **kwargs)


def randomise_keras_weights(model, seed=0):
  """Random weights that a mapping mistake cannot hide: He-scaled kernels (depthwise ones by their own
  fan-in), nonzero biases, BatchNormalization far from the identity, per-channel Normalization statistics
  unlike the identity and unlike each other."""
  import keras
  rng = np.random.default_rng(seed)

  def draw(layer, variable):
    shape, name = tuple(variable.shape), variable.name
    if name == 'kernel':
      fan_in = np.prod(shape[:2]) if isinstance(layer, keras.layers.DepthwiseConv2D) else np.prod(shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), shape)
    if name == 'count':
      return np.asarray(variable.numpy())
    return {'bias': lambda: rng.normal(0, 0.1, shape), 'beta': lambda: rng.normal(0, 0.1, shape),
            'gamma': lambda: rng.uniform(0.5, 1.5, shape), 'moving_mean': lambda: rng.normal(0, 0.1, shape),
            'moving_variance': lambda: rng.uniform(0.5, 1.5, shape), 'mean': lambda: rng.uniform(0.3, 0.6, shape),
            'variance': lambda: rng.uniform(0.04, 0.1, shape)}[name]()

  for layer in model.layers:
    if layer.weights:
      layer.set_weights([np.asarray(draw(layer, v), v.dtype) for v in layer.weights])
      if isinstance(layer, keras.layers.Normalization):
        # It computes with constants taken from its variables when (re)loaded, and a jitted Keras
        # function captures those constants at its first trace: refresh them before any.
        layer.finalize_state()
  return model


def calibrate_keras_bn(model, x, seed=0):
  """Sets every BatchNormalization's moving statistics to those of its input on `x` (one jitted
  training-mode pass with momentum 0 and dropout off), then perturbs them: activations stay O(1) through
  deep stacks, and inference BN is neither the identity nor plain batch normalisation."""
  import jax
  import keras
  changed = [(layer, 'momentum', 0.0) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  changed += [(layer, 'rate', 0.0) for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
  saved = [(layer, attr, getattr(layer, attr)) for layer, attr, _ in changed]
  try:
    for layer, attr, value in changed:
      setattr(layer, attr, value)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    _, updated = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True))(trainable, non_trainable, x)
  finally:
    for layer, attr, value in saved:
      setattr(layer, attr, value)
  for variable, value in zip(model.non_trainable_variables, updated):
    variable.assign(value)
  rng = np.random.default_rng(seed + 1)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, var = layer.get_weights()
      # A floor on the variance: a channel nearly constant on a small batch would amplify float rounding.
      var = np.maximum(var, 0.05)
      mean = mean + rng.normal(0, 0.2, mean.shape) * np.sqrt(var)
      var = var * rng.uniform(0.5, 2, var.shape)
      layer.set_weights([gamma, beta, mean.astype(np.float32), var.astype(np.float32)])
  return model


def keras_probe(model, features: dict):
  """A Keras model computing `model`'s output and the named feature tensors, in one jitted program."""
  import keras
  names = list(features)
  return keras.Model(model.inputs, [model.output] + [features[n] for n in names]), names


def keras_predict(probe, x) -> tuple:
  """(output, {feature name: array}) from `keras_probe`'s pair."""
  model, names = probe
  outputs = [np.asarray(o) for o in model.predict(x, verbose=0, batch_size=len(x))]
  return outputs[0], dict(zip(names, outputs[1:]))


def scale_keras_logits(model, probe, x, layer_name):
  """Scales the classifier `layer_name` so the logits on `x` have unit standard deviation: an absolute
  tolerance then means something."""
  logits, _ = keras_predict(probe, x)
  layer = model.get_layer(layer_name)
  layer.set_weights([w / float(np.std(logits)) for w in layer.get_weights()])


def keras_following(model, name):
  """The output of the layer after `name` in `model.layers` (an unnamed activation in a chain)."""
  index = [layer.name for layer in model.layers].index(name)
  return model.layers[index + 1].output


def write_legacy_h5(model, path, names=lambda name: name):
  """Writes `model`'s weights in the legacy (Keras 2 `save_weights`) HDF5 layout, as the official ImageNet
  files are: root attributes layer_names/backend/keras_version, one group per layer (by `names(layer.name)`)
  with a weight_names attribute and one dataset per weight ('<layer>/<weight>:0'); layer names holding '/'
  become nested groups, as h5py makes them."""
  import h5py
  import keras
  with h5py.File(path, 'w') as f:
    layer_names = []
    for layer in model.layers:
      name = names(layer.name)
      layer_names.append(name.encode())
      group = f.require_group(name)
      weight_names = [f'{name}/{_legacy_weight_name(layer, v)}:0' for v in layer.weights]
      group.attrs['weight_names'] = np.asarray([n.encode() for n in weight_names], dtype='S')
      for weight_name, variable in zip(weight_names, layer.weights):
        group.create_dataset(weight_name, data=np.asarray(variable.numpy()))
    f.attrs['layer_names'] = np.asarray(layer_names, dtype='S')
    f.attrs['backend'] = keras.backend.backend().encode()
    f.attrs['keras_version'] = b'2.15.0'
  return path


def _legacy_weight_name(layer, variable):
  import keras
  return 'depthwise_kernel' if isinstance(layer, keras.layers.DepthwiseConv2D) else variable.name
