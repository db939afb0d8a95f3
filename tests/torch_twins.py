"""PyTorch twins of fpclass models, and the explicit tables that copy a twin's state_dict into Flax.

The parity tests and bench/gradcam_speed.py build a model in torch (random weights written by torch),
copy its weights into the fpclass model, and compare the two frameworks on the same images. torch is a
test-only dependency, so this lives with the tests.

A table row is (torch state_dict key, Flax parameter path, rule); a rule turns a torch tensor into the
Flax layout. Every key on both sides must be used exactly once, or the copy fails listing the leftovers.
"""
import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from fpclass.models.architectures.cnn import FootprintCNN


@dataclasses.dataclass
class Twin:
  """One model in both frameworks with the same weights; `layers` maps a Flax feature name to the name
  of the torch module whose output is that feature map."""
  torch_model: torch.nn.Module
  flax_model: object
  variables: dict
  layers: dict
  images: np.ndarray | None = None   # the batch its BatchNorm statistics were set on, if they were


def conv_kernel(w):
  """torch Conv2d weight (out, in, kh, kw) -> Flax Conv kernel (kh, kw, in, out)."""
  return w.transpose(2, 3, 1, 0)


def dense_kernel(w):
  """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return w.T


def dense_kernel_after_flatten(channels, height, width):
  """torch flattens NCHW as (C, H, W), Flax flattens NHWC as (H, W, C): reorder the input rows too."""
  def rule(w):
    out = w.shape[0]
    return w.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(height * width * channels, out)
  return rule


def same(w):
  return w


def copy_weights(state_dict, flax_variables, table) -> dict:
  """Flax variables with every entry replaced from `state_dict` through `table`, checking shapes."""
  flat = traverse_util.flatten_dict(jax.device_get(flax_variables))
  torch_keys = {k for k in state_dict if not k.endswith('num_batches_tracked')}
  used_torch = {row[0] for row in table}
  used_flax = {row[1] for row in table}
  missing = sorted('/'.join(k) for k in set(flat) - used_flax)
  unexpected = sorted(torch_keys - used_torch)
  if missing or unexpected:
    raise KeyError(f'weight table mismatch: Flax entries not filled {missing}; torch keys not used {unexpected}')
  out = {}
  for torch_key, flax_path, rule in table:
    value = rule(state_dict[torch_key].detach().cpu().numpy())
    if value.shape != flat[flax_path].shape:
      raise ValueError(f'{torch_key} -> {"/".join(flax_path)}: shape {value.shape} != {flat[flax_path].shape}')
    out[flax_path] = np.asarray(value, flat[flax_path].dtype)
  return traverse_util.unflatten_dict(out)


def footprint_cnn(image_shape, seed=0, conv_channels=(32, 64), fc_sizes=(128,), num_outputs=2,
                  kernel_size=3) -> Twin:
  """`fpclass.models.architectures.cnn.FootprintCNN` (no batch norm) and an nn.Sequential twin, torch weights in both."""
  torch.manual_seed(seed)
  height, width, channels = image_shape
  layers, table, layer_names = collections.OrderedDict(), [], {}
  for i, out in enumerate(conv_channels, start=1):
    layers[f'conv{i}'] = torch.nn.Conv2d(channels, out, kernel_size, padding=kernel_size // 2)
    layers[f'relu{i}'] = torch.nn.ReLU()
    layers[f'pool{i}'] = torch.nn.MaxPool2d(2, 2)
    table += [(f'conv{i}.weight', ('params', f'conv{i}', 'kernel'), conv_kernel),
              (f'conv{i}.bias', ('params', f'conv{i}', 'bias'), same)]
    layer_names[f'conv{i}'] = f'relu{i}'
    channels, height, width = out, height // 2, width // 2
  layers['flatten'] = torch.nn.Flatten()
  inputs, first = channels * height * width, dense_kernel_after_flatten(channels, height, width)
  for j, size in enumerate(fc_sizes, start=1):
    layers[f'fc{j}'] = torch.nn.Linear(inputs, size)
    layers[f'fc{j}_relu'] = torch.nn.ReLU()
    table += [(f'fc{j}.weight', ('params', f'fc{j}', 'kernel'), first if j == 1 else dense_kernel),
              (f'fc{j}.bias', ('params', f'fc{j}', 'bias'), same)]
    inputs = size
  layers['head'] = torch.nn.Linear(inputs, num_outputs)
  table += [('head.weight', ('params', 'head', 'kernel'), first if not fc_sizes else dense_kernel),
            ('head.bias', ('params', 'head', 'bias'), same)]
  torch_model = torch.nn.Sequential(layers).eval()
  flax_model = FootprintCNN(num_outputs=num_outputs, conv_channels=tuple(conv_channels), kernel_size=kernel_size,
                            fc_sizes=tuple(fc_sizes))
  abstract = jax.eval_shape(flax_model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))
  abstract = {k: v for k, v in abstract.items() if k in ('params', 'batch_stats')}  # not the perturbations
  return Twin(torch_model, flax_model, copy_weights(torch_model.state_dict(), abstract, table), layer_names)


def torchvision_twin(name, image_shape, layers, seed=0) -> Twin:
  """torchvision's `name` with random weights, BatchNorm statistics from torch's train-mode pass over
  `parity.varied_images` (the twin's `images`, so that its maps depend on the image), and the fpclass port
  loaded from the state_dict file torch wrote, through the same loader users go through."""
  import tempfile

  import torchvision

  from tests import parity
  torch.manual_seed(seed)
  torch_model = getattr(torchvision.models, name)(weights=None).eval()
  torch_model = parity.randomise_torch_bn(parity.randomise_torch_weights(torch_model, seed), seed)
  images = parity.varied_images((6, *image_shape), seed)
  parity.informative_torch_bn(torch_model, images, seed)
  with tempfile.TemporaryDirectory() as folder:
    path = f'{folder}/{name}.pth'
    torch.save(torch_model.state_dict(), path)
    model, variables = parity.build(name, path, num_classes=1000, image_shape=image_shape)
  return Twin(torch_model, model, variables, layers, images)


def resnet18(image_shape, seed=0) -> Twin:
  return torchvision_twin('resnet18', image_shape, {'layer4': 'layer4', 'layer3': 'layer3'}, seed)


def efficientnet_b0(image_shape, seed=0) -> Twin:
  return torchvision_twin('efficientnet_b0', image_shape, {'last_conv': 'features.8', 'stage6': 'features.6'}, seed)


# name -> (twin builder, input shape (H, W, C), the Flax feature map to explain). Parity tests and
# bench/gradcam_speed.py read this; a ported model adds one row.
CASES = {
    'footprint_cnn': (footprint_cnn, (120, 80, 1), 'conv2'),
    'resnet18': (resnet18, (64, 64, 3), 'layer4'),
    'efficientnet_b0': (efficientnet_b0, (72, 56, 3), 'last_conv'),
}
