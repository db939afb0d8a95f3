"""torchvision EfficientNet-B0, ported to Flax.

Module names follow torchvision's: `features.<stage>.<block>.block.<i>` becomes 'features_<stage>_<block>/
block_<i>', each Conv2dNormActivation a `ConvBN` ('conv', 'bn') and the squeeze-excitation 'fc1'/'fc2'.
Padding is torch's symmetric (k - 1) // 2; depthwise convs use `feature_group_count`; BatchNorm is
torchvision's default for B0 (eps 1e-5, momentum 0.1, i.e. Flax 0.9; only B5-B7 and V2 use eps 1e-3), with
torch's running-variance update (`torch_layers.BatchNorm`). The stem conv is a `transfer.StemConv`.
Stochastic depth is torchvision's 'row' mode (whole residual branches of some examples dropped, the rest
scaled by 1 / survival), with the drop rate growing linearly over the 16 blocks; it draws from the
'dropout' rng in training and is the identity at evaluation.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass import preprocessing
from fpclass.models import ModelSpec, feature, register, transfer
from fpclass.models.conv import Conv
from fpclass.models.torch_layers import BatchNorm
from fpclass.models.weights import TORCH_BN, Rule, WeightsFile, apply_rules, read_state_dict

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')       # kaiming_normal_(mode='fan_out')
linear_init = nn.initializers.variance_scaling(1 / 3, 'fan_out', 'uniform')  # uniform(+-1/sqrt(out_features))


class ConvBN(nn.Module):
  """torchvision's Conv2dNormActivation: a bias-free conv with symmetric padding, BatchNorm, optional SiLU."""
  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  activation: bool = True
  frozen: bool = False
  gray: bool = False     # the network's stem on one channel (transfer.StemConv)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(transfer.StemConv, gray=True) if self.gray else Conv
    x = conv(self.features, (self.kernel, self.kernel), self.stride, padding=(self.kernel - 1) // 2,
             feature_group_count=self.groups, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
             name='conv')(x)
    x = BatchNorm(use_running_average=not train or self.frozen, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                  name='bn')(x)
    return nn.silu(x) if self.activation else x


class SqueezeExcitation(nn.Module):
  """torchvision's SqueezeExcitation: global average -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid, times x."""
  squeeze: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = nn.silu(Conv(self.squeeze, (1, 1), kernel_init=conv_init, dtype=self.dtype, name='fc1')(scale))
    scale = Conv(x.shape[-1], (1, 1), kernel_init=conv_init, dtype=self.dtype, name='fc2')(scale)
    return nn.sigmoid(scale) * x


class MBConv(nn.Module):
  expand_ratio: int
  kernel: int
  stride: int
  out_channels: int
  stochastic_depth_prob: float = 0.0
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    in_channels = x.shape[-1]
    expanded = in_channels * self.expand_ratio
    conv_bn = functools.partial(ConvBN, frozen=self.frozen, dtype=self.dtype)
    # Named as torchvision's `block` Sequential indexes them: the expansion conv exists only when it expands.
    first = 0 if expanded == in_channels else 1
    y = x if first == 0 else conv_bn(expanded, name='block_0')(x, train)
    y = conv_bn(expanded, self.kernel, self.stride, groups=expanded, name=f'block_{first}')(y, train)
    y = SqueezeExcitation(max(1, in_channels // 4), self.dtype, name=f'block_{first + 1}')(y)
    y = conv_bn(self.out_channels, activation=False, name=f'block_{first + 2}')(y, train)
    if self.stride == 1 and in_channels == self.out_channels:
      # StochasticDepth(p, 'row'): Dropout whose mask is shared over H, W, C drops whole examples' branches.
      y = nn.Dropout(self.stochastic_depth_prob, broadcast_dims=(1, 2, 3), deterministic=not train,
                     name='stochastic_depth')(y)
      y = y + x
    return y


# torchvision's efficientnet_b0 stages: (expand ratio, kernel, stride, output channels, blocks). The stem has
# 32 channels; the last conv 4x the last stage's (1280).
STEM_CHANNELS = 32
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STAGES = ('stem', *(f'stage{i}' for i in range(1, 8)), 'last_conv')


def stochastic_depth_rates(stages, stochastic_depth_prob: float) -> list[list[float]]:
  """Each block's drop rate: torchvision's p * (index of the block in the network) / (number of blocks)."""
  total = sum(stage[-1] for stage in stages)
  starts = [sum(stage[-1] for stage in stages[:i]) for i in range(len(stages))]
  return [[stochastic_depth_prob * (start + j) / total for j in range(stage[-1])]
          for start, stage in zip(starts, stages)]


class EfficientNet(transfer.Backbone, kw_only=True):
  mbconv_stages: Sequence[Sequence[int]]
  dropout: float = 0.2                 # the source classifier's dropout (torchvision's `dropout`)
  stochastic_depth_prob: float = 0.2   # the last block's rate is just under this (torchvision's default)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = ConvBN(STEM_CHANNELS, 3, 2, frozen=self.stage_frozen(0), gray=self.in_channels == 1, dtype=self.dtype,
               name='features_0')(x, train)
    x = feature(self, features, 'stem', x)
    rates = stochastic_depth_rates(self.mbconv_stages, self.stochastic_depth_prob)
    for i, (expand, kernel, stride, channels, blocks) in enumerate(self.mbconv_stages[:last], start=1):
      for j in range(blocks):
        x = MBConv(expand, kernel, stride if j == 0 else 1, channels, rates[i - 1][j],
                   frozen=self.stage_frozen(i), dtype=self.dtype, name=f'features_{i}_{j}')(x, train)
      x = feature(self, features, STAGES[i], x)
    if last == len(STAGES) - 1:
      x = ConvBN(4 * self.mbconv_stages[-1][3], frozen=self.stage_frozen(last), dtype=self.dtype,
                 name=f'features_{last}')(x, train)
      x = feature(self, features, STAGES[last], x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = jnp.mean(x, axis=(1, 2))
    x = features['pre_logits'] = nn.Dropout(self.dropout, deterministic=not train, name='classifier_0')(x)
    return nn.Dense(self.num_outputs, kernel_init=linear_init, dtype=self.dtype, name='classifier_1')(x).astype(
        jnp.float32), features


RULES = (
    Rule(r'features\.(\d)\.0\.weight', 'params/features_{0}/conv/kernel', 'conv'),
    *(Rule(rf'features\.(\d)\.1\.{src}', dst.format('features_{0}/bn')) for src, dst in TORCH_BN),
    # Depthwise kernels (C, 1, k, k) take the same transpose as any conv: (k, k, 1, C).
    Rule(r'features\.(\d)\.(\d+)\.block\.(\d)\.0\.weight', 'params/features_{0}_{1}/block_{2}/conv/kernel', 'conv'),
    *(Rule(rf'features\.(\d)\.(\d+)\.block\.(\d)\.1\.{src}', dst.format('features_{0}_{1}/block_{2}/bn'))
      for src, dst in TORCH_BN),
    Rule(r'features\.(\d)\.(\d+)\.block\.(\d)\.(fc\d)\.weight', 'params/features_{0}_{1}/block_{2}/{3}/kernel', 'conv'),
    Rule(r'features\.(\d)\.(\d+)\.block\.(\d)\.(fc\d)\.bias', 'params/features_{0}_{1}/block_{2}/{3}/bias'),
    Rule(r'classifier\.1\.weight', 'params/classifier_1/kernel', 'linear'),
    Rule(r'classifier\.1\.bias', 'params/classifier_1/bias'),
)


def convert(path):
  return apply_rules(read_state_dict(path), RULES)


def _stage_regex(index: int) -> str:
  return rf'^features_{index}(_\d+)?/'


register(ModelSpec(
    'efficientnet_b0', functools.partial(EfficientNet, mbconv_stages=B0_STAGES), 'torchvision', cam_layer='last_conv',
    description='torchvision efficientnet_b0, ImageNet weights by name or from a state_dict file',
    preprocessing=preprocessing.TORCH_IMAGENET,
    stages=tuple((name, _stage_regex(index)) for index, name in enumerate(STAGES)),
    weights={'imagenet': WeightsFile('https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth',
                                     'sha256:7f5810bc')},
    convert=convert, source_head=r'^params/classifier_1/', source_top=r'^params/classifier_1/',
    stem='features_0/conv|batch_stats/features_0/bn/mean'))
