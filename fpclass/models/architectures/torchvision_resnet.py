"""torchvision ResNet-18 and ResNet-50 (v1.5: stride on the bottleneck's 3x3), ported to Flax; timm's variants
(deep stems, average-pool shortcuts, ResNeXt groups, wide blocks, squeeze-excitation) are fields of the same
module, registered from timm checkpoints by `timm_resnet.py`.

Layer names follow torchvision's, so the state_dict maps by an explicit table (`RULES`). Padding is
torch's symmetric padding; BatchNorm is torch's (`torch_layers.BatchNorm`: eps 1e-5, momentum 0.1, i.e.
Flax 0.9, running variance from the unbiased batch variance); the stem's max pool pads with -inf as torch
does; the stem conv is a `transfer.StemConv`, exact on one channel. This file is the template for the other pretrained families.
torchvision's ResNet has no stochastic depth: `drop_path_rate` follows timm's ResNet (each block's branch
dropped after its last BN, before the shortcut is added, at rate p * block index / (blocks - 1)).
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.errors import UserInputError
from fpclass.models import ModelSpec, feature, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.pooling import max_pool
from fpclass.models.layers.torch_layers import BatchNorm
from fpclass.models.weights import Rule, WeightsFile, apply_rules, read_state_dict, torch_bn_rules

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # torchvision's kaiming_normal_


def _bn(name, frozen_stage, train):
  return BatchNorm(use_running_average=not train or frozen_stage, momentum=0.9, epsilon=1e-5, name=name)


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """timm's channel rounding: the nearest multiple of `divisor` (at least `divisor`), one more step if that
  loses more than 1 - round_limit of `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * value else rounded


def avg_pool_ceil(x):
  """torch's AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on NHWC: an odd side's last window
  averages the values it covers."""
  return nn.avg_pool(x, (2, 2), (2, 2), padding=((0, x.shape[1] % 2), (0, x.shape[2] % 2)), count_include_pad=False)


class SqueezeExcite(nn.Module):
  """timm's SEModule: mean over space -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid, times x; channels / 16
  rounded to 8 in between."""
  relu: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = self.relu(Conv(make_divisible(channels / 16, 8, 0.0), (1, 1), kernel_init=conv_init, name='fc1')(scale))
    return x * nn.sigmoid(Conv(channels, (1, 1), kernel_init=conv_init, name='fc2')(scale))


class _Block(nn.Module):
  planes: int
  stride: int = 1
  frozen: bool = False
  relu: Callable = nn.relu
  drop_path_rate: float = 0.0
  cardinality: int = 1          # ResNeXt's groups in the 3x3 conv
  base_width: int = 64          # ResNeXt's and the wide ResNets' width per group
  avg_down: bool = False        # timm's 'd' variants: the shortcut averages 2x2 then a stride-1 1x1 conv
  attention: str = ''           # '' | 'se' (timm's seresnet*)

  def finish(self, x, y, train):
    """The block's end: squeeze-excitation, stochastic depth, the (projected) shortcut added, ReLU."""
    if self.attention == 'se':
      y = SqueezeExcite(self.relu, name='se')(y)
    y = transfer.drop_path(y, self.drop_path_rate, train, 'drop_path')
    identity = x
    out = self.planes * self.expansion
    if self.stride != 1 or x.shape[-1] != out:
      if self.avg_down and self.stride != 1:
        x = avg_pool_ceil(x)
      identity = Conv(out, (1, 1), 1 if self.avg_down else self.stride, use_bias=False, kernel_init=conv_init,
                      name='downsample_conv')(x)
      identity = _bn('downsample_bn', self.frozen, train)(identity)
    return self.relu(y + identity)


class BasicBlock(_Block):
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    y = Conv(self.planes, (3, 3), self.stride, padding=1, use_bias=False, kernel_init=conv_init, name='conv1')(x)
    y = self.relu(_bn('bn1', self.frozen, train)(y))
    y = Conv(self.planes, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, name='conv2')(y)
    return self.finish(x, _bn('bn2', self.frozen, train)(y), train)


class Bottleneck(_Block):
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    width = int(self.planes * self.base_width / 64) * self.cardinality
    y = Conv(width, (1, 1), use_bias=False, kernel_init=conv_init, name='conv1')(x)
    y = self.relu(_bn('bn1', self.frozen, train)(y))
    y = Conv(width, (3, 3), self.stride, padding=1, feature_group_count=self.cardinality, use_bias=False,
             kernel_init=conv_init, name='conv2')(y)
    y = self.relu(_bn('bn2', self.frozen, train)(y))
    y = Conv(self.planes * 4, (1, 1), use_bias=False, kernel_init=conv_init, name='conv3')(y)
    return self.finish(x, _bn('bn3', self.frozen, train)(y), train)


STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')


class ResNet(transfer.Backbone, kw_only=True):
  block: Any
  layers: Sequence[int]
  relu: Callable = nn.relu   # swapped by guided backpropagation (see fpclass.models)
  drop_path_rate: float = 0.0   # the last block's stochastic depth rate (timm's rule, see the docstring)
  stem_type: str = ''           # '' (one 7x7 conv) | 'deep' | 'deep_tiered': timm's three 3x3 convs
  stem_width: int = 64          # a deep stem's first convs' width (its last has twice that)
  avg_down: bool = False        # see _Block
  cardinality: int = 1
  base_width: int = 64
  attention: str = ''

  def stem(self, x, train):
    """The stem before bn1: torchvision's 7x7 conv, or timm's deep stem (conv1_0, conv1_3, conv1_6 with BN and
    ReLU between them, named by the indices of timm's Sequential)."""
    gray = self.in_channels == 1
    if not self.stem_type:
      return transfer.StemConv(64, (7, 7), 2, padding=3, use_bias=False, kernel_init=conv_init, gray=gray,
                               name='conv1')(x)
    if self.stem_type not in ('deep', 'deep_tiered'):
      raise UserInputError(f"config.model.stem_type={self.stem_type!r}: use '', 'deep' or 'deep_tiered'")
    first = 3 * (self.stem_width // 4) if self.stem_type == 'deep_tiered' else self.stem_width
    x = transfer.StemConv(first, (3, 3), 2, padding=1, use_bias=False, kernel_init=conv_init, gray=gray,
                          name='conv1_0')(x)
    x = self.relu(_bn('conv1_1', self.stage_frozen(0), train)(x))
    x = Conv(self.stem_width, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, name='conv1_3')(x)
    x = self.relu(_bn('conv1_4', self.stage_frozen(0), train)(x))
    return Conv(2 * self.stem_width, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, name='conv1_6')(x)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = self.relu(_bn('bn1', self.stage_frozen(0), train)(self.stem(x, train)))
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = feature(self, features, 'stem', x)
    rates = transfer.linear_drop_path_rates(self.drop_path_rate, sum(self.layers), sum(self.layers) - 1)
    for i, blocks in enumerate(self.layers[:last], start=1):
      for j in range(blocks):
        x = self.block(64 * 2 ** (i - 1), stride=2 if (j == 0 and i > 1) else 1, frozen=self.stage_frozen(i),
                       relu=self.relu, drop_path_rate=rates[sum(self.layers[:i - 1]) + j],
                       cardinality=self.cardinality, base_width=self.base_width, avg_down=self.avg_down,
                       attention=self.attention, name=f'layer{i}_{j}')(x, train)
      x = feature(self, features, f'layer{i}', x)
    if self.top == 'source':
      x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
      return nn.Dense(self.num_outputs, name='fc')(x).astype(jnp.float32), features
    return transfer.new_top(self, x, features, train), features


STEM_REGEX = r'^(conv1(_\d)?|bn1)/'
RULES = (
    Rule(r'conv1\.weight', 'params/conv1/kernel', 'conv'),
    *torch_bn_rules('bn1', 'bn1'),
    Rule(r'layer(\d)\.(\d+)\.conv(\d)\.weight', 'params/layer{0}_{1}/conv{2}/kernel', 'conv'),
    *torch_bn_rules(r'layer(\d)\.(\d+)\.bn(\d)', 'layer{0}_{1}/bn{2}'),
    Rule(r'layer(\d)\.(\d+)\.downsample\.0\.weight', 'params/layer{0}_{1}/downsample_conv/kernel', 'conv'),
    *torch_bn_rules(r'layer(\d)\.(\d+)\.downsample\.1', 'layer{0}_{1}/downsample_bn'),
    Rule(r'fc\.weight', 'params/fc/kernel', 'linear'),
    Rule(r'fc\.bias', 'params/fc/bias'),
)


def convert(path):
  return apply_rules(read_state_dict(path), RULES)


def _spec(name, block, layers, weights):
  return ModelSpec(
      name, functools.partial(ResNet, block=block, layers=layers), 'torchvision', cam_layer='layer4',
      description=f'torchvision {name}, ImageNet weights by name or from a state_dict file',
      preprocessing=preprocessing.TORCH_IMAGENET,
      stages=(('stem', STEM_REGEX), *((f'layer{i}', rf'^layer{i}_') for i in range(1, 5))),
      weights={'imagenet': weights}, convert=convert,
      source_head=r'^params/fc/', source_top=r'^params/fc/', stem='conv1|batch_stats/bn1/mean')


register(_spec('resnet18', BasicBlock, (2, 2, 2, 2),
               WeightsFile('https://download.pytorch.org/models/resnet18-f37072fd.pth', 'sha256:f37072fd')))
register(_spec('resnet50', Bottleneck, (3, 4, 6, 3),
               WeightsFile('https://download.pytorch.org/models/resnet50-0676ba61.pth', 'sha256:0676ba61')))
