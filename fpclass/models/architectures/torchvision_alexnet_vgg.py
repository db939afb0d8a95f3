"""torchvision AlexNet and VGG16 (no batch norm), ported to Flax.

Module names are torchvision's `features.<i>` / `classifier.<i>` indices ('features_0', 'classifier_6', the
dropouts too), so
the state_dict maps by a four-line table (`RULES`). Padding is torch's symmetric padding, max pools are
torch's floor-mode VALID pools, and before the classifier `adaptive_avg_pool` reproduces torch's
AdaptiveAvgPool2d bin for bin, including maps smaller than its output (the 120x80 footprints give AlexNet
a 2x1 map that torch repeats into 6x6). The classifier flattens in torch's (C, H, W) order so its first
Linear loads unchanged. Neither model has batch norm: `freeze_till` only selects what the optimizer trains. The first conv
(`features_0`) is a `transfer.StemConv`, exact on one channel.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.pooling import max_pool
from fpclass.models.weights import Rule, WeightsFile, apply_rules, read_state_dict

# torch's default Conv2d/Linear init (kaiming_uniform_ with a=sqrt(5)) is uniform(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
vgg_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # VGG's kaiming_normal_
vgg_linear_init = nn.initializers.normal(0.01)


def adaptive_avg_pool(x, output_size: tuple[int, int]):
  """torch's AdaptiveAvgPool2d on NHWC: output row i averages input rows floor(i*H/out) to
  ceil((i+1)*H/out) - 1, and likewise for columns; with H < out, rows repeat."""
  def pool(x, axis, out):
    size = x.shape[axis]
    bins = [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]
    return jnp.stack([jnp.mean(jax.lax.slice_in_dim(x, start, end, axis=axis), axis=axis)
                      for start, end in bins], axis=axis)
  return pool(pool(x, 1, output_size[0]), 2, output_size[1])


def torch_flatten(x):
  """torch.flatten(x, 1) of the NCHW tensor, so a torch Linear after it needs no permutation."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


# AlexNet's convolutions: (torchvision features index, channels, kernel, stride, padding, max pool after).
ALEXNET_CONVS = ((0, 64, 11, 4, 2, True), (3, 192, 5, 1, 2, True), (6, 384, 3, 1, 1, False),
                 (8, 256, 3, 1, 1, False), (10, 256, 3, 1, 1, True))
ALEXNET_STAGES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


class AlexNet(transfer.Backbone, kw_only=True):
  dropout: float = 0.5  # the source classifier's dropout (torchvision's `dropout` argument)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, ALEXNET_STAGES, self.top)
    features = {}
    for stage, (index, channels, kernel, stride, padding, pool) in enumerate(ALEXNET_CONVS[:last + 1]):
      conv = functools.partial(transfer.StemConv, gray=self.in_channels == 1) if index == 0 else Conv
      x = nn.relu(conv(channels, (kernel, kernel), stride, padding=padding, kernel_init=torch_default_init,
                       dtype=self.dtype, name=f'features_{index}')(x))
      if pool:
        x = max_pool(x, (3, 3), strides=(2, 2))
      x = feature(self, features, ALEXNET_STAGES[stage], x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = torch_flatten(adaptive_avg_pool(x, (6, 6)))
    dense = functools.partial(nn.Dense, kernel_init=torch_default_init, dtype=self.dtype)
    dropout = functools.partial(nn.Dropout, self.dropout, deterministic=not train)
    x = dropout(name='classifier_0')(x)
    x = nn.relu(dense(4096, name='classifier_1')(x))
    x = dropout(name='classifier_3')(x)
    x = features['pre_logits'] = nn.relu(dense(4096, name='classifier_4')(x))
    return dense(self.num_outputs, name='classifier_6')(x).astype(jnp.float32), features


# VGG16 (torchvision cfg 'D'): conv channels per block; each block ends in a 2x2/2 max pool.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_STAGES = ('block1', 'block2', 'block3', 'block4', 'block5')


def vgg_conv_indices(blocks) -> tuple[tuple[int, ...], ...]:
  """torchvision's `features` index of each conv, block by block (conv and ReLU take one index each,
  the max pool closing a block one)."""
  indices, index = [], 0
  for block in blocks:
    indices.append(tuple(range(index, index + 2 * len(block), 2)))
    index += 2 * len(block) + 1
  return tuple(indices)


class VGG(transfer.Backbone, kw_only=True):
  blocks: Sequence[Sequence[int]]
  dropout: float = 0.5  # the source classifier's dropout (torchvision's `dropout` argument)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, VGG_STAGES, self.top)
    features = {}
    for stage, (block, indices) in enumerate(zip(self.blocks[:last + 1], vgg_conv_indices(self.blocks))):
      for channels, index in zip(block, indices):
        conv = functools.partial(transfer.StemConv, gray=self.in_channels == 1) if index == 0 else Conv
        x = nn.relu(conv(channels, (3, 3), padding=1, kernel_init=vgg_conv_init, dtype=self.dtype,
                         name=f'features_{index}')(x))
      x = feature(self, features, VGG_STAGES[stage], max_pool(x, (2, 2), strides=(2, 2)))
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = torch_flatten(adaptive_avg_pool(x, (7, 7)))
    dense = functools.partial(nn.Dense, kernel_init=vgg_linear_init, dtype=self.dtype)
    dropout = functools.partial(nn.Dropout, self.dropout, deterministic=not train)
    x = nn.relu(dense(4096, name='classifier_0')(x))
    x = dropout(name='classifier_2')(x)
    x = nn.relu(dense(4096, name='classifier_3')(x))
    x = features['pre_logits'] = dropout(name='classifier_5')(x)
    return dense(self.num_outputs, name='classifier_6')(x).astype(jnp.float32), features


RULES = (
    Rule(r'features\.(\d+)\.weight', 'params/features_{0}/kernel', 'conv'),
    Rule(r'features\.(\d+)\.bias', 'params/features_{0}/bias'),
    Rule(r'classifier\.(\d+)\.weight', 'params/classifier_{0}/kernel', 'linear'),
    Rule(r'classifier\.(\d+)\.bias', 'params/classifier_{0}/bias'),
)


def convert(path):
  return apply_rules(read_state_dict(path), RULES)


def _spec(name, module, stages, cam_layer, weights):
  return ModelSpec(
      name, module, 'torchvision', cam_layer=cam_layer,
      description=f'torchvision {name}, ImageNet weights by name or from a state_dict file',
      preprocessing=preprocessing.TORCH_IMAGENET, stages=stages, weights={'imagenet': weights}, convert=convert,
      source_head=r'^params/classifier_6/', source_top=r'^params/classifier_\d+/',
      stem='features_0|params/features_0/bias')


def _stage_regex(indices) -> str:
  return rf'^features_({"|".join(str(i) for i in indices)})/'


register(_spec('alexnet', AlexNet,
               tuple((name, _stage_regex([conv[0]])) for name, conv in zip(ALEXNET_STAGES, ALEXNET_CONVS)),
               'conv5', WeightsFile('https://download.pytorch.org/models/alexnet-owt-7be5be79.pth',
                                    'sha256:7be5be79')))
register(_spec('vgg16', functools.partial(VGG, blocks=VGG16_BLOCKS),
               tuple((name, _stage_regex(indices)) for name, indices in
                     zip(VGG_STAGES, vgg_conv_indices(VGG16_BLOCKS))),
               'block5', WeightsFile('https://download.pytorch.org/models/vgg16-397923af.pth', 'sha256:397923af')))
