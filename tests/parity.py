"""Helpers for parity tests against the source frameworks (torchvision, Keras on the JAX backend).

The reference framework writes random weights in its own file format; fpclass loads that file; both compute
on the same batch. Random BatchNorm statistics and affine parameters are drawn so that BN is not the identity
(which would hide mapping mistakes) while logits stay O(1), so an absolute tolerance means something.
"""
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
