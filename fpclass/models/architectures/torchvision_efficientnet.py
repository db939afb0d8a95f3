"""torchvision EfficientNet-B0 and EfficientNetV2-S, ported to Flax; timm's EfficientNet family is this module
with its fields (`timm_efficientnet`: activation, TF 'SAME' padding, block kinds per stage, no SE).

Module names follow torchvision's: `features.<stage>.<block>.block.<i>` becomes 'features_<stage>_<block>/
block_<i>', each Conv2dNormActivation a `ConvBN` ('conv', 'bn') and the squeeze-excitation 'fc1'/'fc2'.
Padding is torch's symmetric (k - 1) // 2 (or TF's 'SAME', `padding='same'`); depthwise convs use
`feature_group_count`; BatchNorm is torchvision's: eps 1e-5 for B0 and 1e-3 for V2 (`bn_epsilon`), momentum
0.1 (Flax 0.9), with torch's running-variance update (`torch_layers.BatchNorm`). The stem conv is a
`transfer.StemConv`.
Stochastic depth (`drop_path_rate`, torchvision's `stochastic_depth_prob`) is torchvision's 'row' mode
(whole residual branches of some examples dropped, the rest scaled by 1 / survival), its rate growing
linearly over the blocks (16 in B0, 40 in V2-S); in training only, from the 'dropout' rng.

Design notes: docs/modules.md (`fpclass/models/architectures/torchvision_efficientnet.py`).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.errors import UserInputError
from fpclass.models import ModelSpec, feature, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.torch_layers import BatchNorm
from fpclass.models.weights import Rule, WeightsFile, apply_rules, read_state_dict, torch_bn_rules

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')       # kaiming_normal_(mode='fan_out')
linear_init = nn.initializers.variance_scaling(1 / 3, 'fan_out', 'uniform')  # uniform(+-1/sqrt(out_features))
ACTIVATIONS = {'silu': nn.silu, 'relu': nn.relu, 'relu6': nn.relu6, 'hard_swish': nn.hard_swish,
               'sigmoid': nn.sigmoid, 'hard_sigmoid': nn.hard_sigmoid}   # timm's and torch's, by timm's name


def conv_padding(padding: str, kernel: int):
  """torch's symmetric (k - 1) // 2 ('symmetric'), or TF's 'SAME' ('same': timm's Conv2dSame, one more pixel
  after than before where the total is odd)."""
  if padding not in ('symmetric', 'same'):
    raise UserInputError(f"config.model.padding={padding!r}: use 'symmetric' or 'same'")
  return 'SAME' if padding == 'same' else (kernel - 1) // 2


def activation_fn(name: str):
  if name not in ACTIVATIONS:
    raise UserInputError(f'config.model.activation={name!r}: use one of {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


class ConvBN(nn.Module):
  """torchvision's Conv2dNormActivation: a bias-free conv (symmetric or 'SAME' padding), BatchNorm, optionally
  an activation (SiLU unless `act` names another)."""
  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  activation: bool = True
  frozen: bool = False
  gray: bool = False     # the network's stem on one channel (transfer.StemConv)
  epsilon: float = 1e-5  # BatchNorm's
  act: str = 'silu'
  padding: str = 'symmetric'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(transfer.StemConv, gray=True) if self.gray else Conv
    x = conv(self.features, (self.kernel, self.kernel), self.stride, padding=conv_padding(self.padding, self.kernel),
             feature_group_count=self.groups, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
             name='conv')(x)
    x = BatchNorm(use_running_average=not train or self.frozen, momentum=0.9, epsilon=self.epsilon,
                  dtype=self.dtype, name='bn')(x)
    return activation_fn(self.act)(x) if self.activation else x


class SqueezeExcitation(nn.Module):
  """torchvision's SqueezeExcitation: global average -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid, times x (timm's
  MobileNetV3: ReLU and a hard sigmoid, `act` and `gate`)."""
  squeeze: int
  act: str = 'silu'
  gate: str = 'sigmoid'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = activation_fn(self.act)(Conv(self.squeeze, (1, 1), kernel_init=conv_init, dtype=self.dtype,
                                         name='fc1')(scale))
    scale = Conv(x.shape[-1], (1, 1), kernel_init=conv_init, dtype=self.dtype, name='fc2')(scale)
    return activation_fn(self.gate)(scale) * x


class _Block(nn.Module):
  """The fields MBConv and FusedMBConv share (torchvision's MBConvConfig/FusedMBConvConfig)."""
  expand_ratio: int
  kernel: int
  stride: int
  out_channels: int
  drop_path_rate: float = 0.0
  frozen: bool = False
  epsilon: float = 1e-5
  act: str = 'silu'
  padding: str = 'symmetric'
  dtype: Any = jnp.float32

  def conv_bn(self):
    return functools.partial(ConvBN, frozen=self.frozen, epsilon=self.epsilon, act=self.act, padding=self.padding,
                             dtype=self.dtype)


class MBConv(_Block):
  """The inverted residual: 1x1 expansion (absent at ratio 1), depthwise k x k, squeeze-excitation of a quarter
  of the block's input channels (absent with `se=False`: timm's EfficientNet-Lite), 1x1 projection."""
  se: bool = True

  @nn.compact
  def __call__(self, x, train):
    in_channels = x.shape[-1]
    expanded = in_channels * self.expand_ratio
    conv_bn = self.conv_bn()
    # Named as torchvision's `block` Sequential indexes them: the expansion conv exists only when it expands.
    first = 0 if expanded == in_channels else 1
    y = x if first == 0 else conv_bn(expanded, name='block_0')(x, train)
    y = conv_bn(expanded, self.kernel, self.stride, groups=expanded, name=f'block_{first}')(y, train)
    if self.se:
      y = SqueezeExcitation(max(1, in_channels // 4), self.act, dtype=self.dtype, name=f'block_{first + 1}')(y)
    y = conv_bn(self.out_channels, activation=False, name=f'block_{first + 2 if self.se else first + 1}')(y, train)
    return _residual(self, x, y, train)


class FusedMBConv(_Block):
  """EfficientNetV2's fused block: a k x k conv that expands (or, `single`, is the whole block: torchvision's
  at ratio 1, timm's ConvBnAct), then a 1x1 projection; no squeeze-excitation."""
  single: bool = False

  @nn.compact
  def __call__(self, x, train):
    conv_bn = self.conv_bn()
    expanded = x.shape[-1] * self.expand_ratio
    if self.single:
      y = conv_bn(self.out_channels, self.kernel, self.stride, name='block_0')(x, train)
    else:
      y = conv_bn(expanded, self.kernel, self.stride, name='block_0')(x, train)
      y = conv_bn(self.out_channels, activation=False, name='block_1')(y, train)
    return _residual(self, x, y, train)


def _residual(block, x, y, train):
  """torchvision's MBConv/FusedMBConv ending: with stride 1 and as many channels out as in, stochastic depth
  on the branch, then the input added; otherwise the branch alone."""
  if block.stride != 1 or x.shape[-1] != block.out_channels:
    return y
  # Named as torchvision's StochasticDepth(p, 'row') module.
  return transfer.drop_path(y, block.drop_path_rate, train, 'stochastic_depth') + x


# torchvision's stages: (expand ratio, kernel, stride, output channels, blocks). B0's stem has 32 channels and
# its last conv 4x the last stage's (1280); V2-S's stem 24 and its last conv 1280, its first 3 stages fused.
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
             (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
V2_S_STAGES = ((1, 3, 1, 24, 2), (4, 3, 2, 48, 4), (4, 3, 2, 64, 4), (4, 3, 2, 128, 6), (6, 3, 1, 160, 9),
               (6, 3, 2, 256, 15))


def stage_names(stages) -> tuple:
  return ('stem', *(f'stage{i}' for i in range(1, len(stages) + 1)), 'last_conv')


def drop_path_rates(stages, rate: float) -> list[list[float]]:
  """Each stage's blocks' drop rates: torchvision's p * (index of the block in the network) / (blocks), every
  block counted, though only those with a residual connection use theirs."""
  blocks = [stage[-1] for stage in stages]
  rates = transfer.linear_drop_path_rates(rate, sum(blocks), sum(blocks))
  return [rates[sum(blocks[:i]):sum(blocks[:i + 1])] for i in range(len(blocks))]


BLOCK_KINDS = ('mbconv', 'fused', 'conv')   # MBConv; FusedMBConv expanding; FusedMBConv as one conv


class EfficientNet(transfer.Backbone, kw_only=True):
  mbconv_stages: Sequence[Sequence[int]]
  fused_stages: int = 0                # the first stages whose blocks are FusedMBConv (V2)
  block_kinds: Sequence[str] = ()      # each stage's BLOCK_KINDS; () derives them from fused_stages
  stem_channels: int = 32
  last_channels: int = 0               # the last conv's; 0: 4x the last stage's (B0)
  bn_epsilon: float = 1e-5
  activation: str = 'silu'             # every block's and the stem's and last conv's (ACTIVATIONS)
  padding: str = 'symmetric'           # or 'same': TF's (timm's tf_* ports)
  se: bool = True                      # squeeze-excitation in the MBConv blocks
  dropout: float = 0.2                 # the source classifier's dropout (torchvision's `dropout`)
  drop_path_rate: float = 0.2          # the last block's rate is just under this (torchvision's default)

  def kinds(self) -> tuple:
    """Each stage's block kind: `block_kinds`, or torchvision's (fused, one conv at ratio 1, then MBConv)."""
    if self.block_kinds:
      if len(self.block_kinds) != len(self.mbconv_stages) or set(self.block_kinds) - set(BLOCK_KINDS):
        raise ValueError(f'block_kinds={self.block_kinds!r}: one of {BLOCK_KINDS} per stage')
      return tuple(self.block_kinds)
    return tuple(('conv' if stage[0] == 1 else 'fused') if i < self.fused_stages else 'mbconv'
                 for i, stage in enumerate(self.mbconv_stages))

  @nn.compact
  def __call__(self, x, train: bool = False):
    stages = stage_names(self.mbconv_stages)
    last = transfer.check_cut(self.cut, stages, self.top)
    features = {}
    common = dict(epsilon=self.bn_epsilon, act=self.activation, padding=self.padding, dtype=self.dtype)
    x = ConvBN(self.stem_channels, 3, 2, frozen=self.stage_frozen(0), gray=self.in_channels == 1, **common,
               name='features_0')(x, train)
    x = feature(self, features, 'stem', x)
    rates = drop_path_rates(self.mbconv_stages, self.drop_path_rate)
    kinds = self.kinds()
    for i, (expand, kernel, stride, channels, blocks) in enumerate(self.mbconv_stages[:last], start=1):
      block = functools.partial(MBConv, se=self.se) if kinds[i - 1] == 'mbconv' else \
          functools.partial(FusedMBConv, single=kinds[i - 1] == 'conv')
      for j in range(blocks):
        x = block(expand, kernel, stride if j == 0 else 1, channels, rates[i - 1][j], frozen=self.stage_frozen(i),
                  **common, name=f'features_{i}_{j}')(x, train)
      x = feature(self, features, stages[i], x)
    if last == len(stages) - 1:
      x = ConvBN(self.last_channels or 4 * self.mbconv_stages[-1][3], frozen=self.stage_frozen(last), **common,
                 name=f'features_{last}')(x, train)
      x = feature(self, features, stages[last], x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = jnp.mean(x, axis=(1, 2))
    x = features['pre_logits'] = nn.Dropout(self.dropout, deterministic=not train, name='classifier_0')(x)
    return nn.Dense(self.num_outputs, kernel_init=linear_init, dtype=self.dtype, name='classifier_1')(x).astype(
        jnp.float32), features


RULES = (
    Rule(r'features\.(\d)\.0\.weight', 'params/features_{0}/conv/kernel', 'conv'),
    *torch_bn_rules(r'features\.(\d)\.1', 'features_{0}/bn'),
    # Depthwise kernels (C, 1, k, k) take the same transpose as any conv: (k, k, 1, C).
    Rule(r'features\.(\d)\.(\d+)\.block\.(\d)\.0\.weight', 'params/features_{0}_{1}/block_{2}/conv/kernel', 'conv'),
    *torch_bn_rules(r'features\.(\d)\.(\d+)\.block\.(\d)\.1', 'features_{0}_{1}/block_{2}/bn'),
    Rule(r'features\.(\d)\.(\d+)\.block\.(\d)\.(fc\d)\.weight', 'params/features_{0}_{1}/block_{2}/{3}/kernel', 'conv'),
    Rule(r'features\.(\d)\.(\d+)\.block\.(\d)\.(fc\d)\.bias', 'params/features_{0}_{1}/block_{2}/{3}/bias'),
    Rule(r'classifier\.1\.weight', 'params/classifier_1/kernel', 'linear'),
    Rule(r'classifier\.1\.bias', 'params/classifier_1/bias'),
)


def convert(path):
  return apply_rules(read_state_dict(path), RULES)


def _stage_regex(index: int) -> str:
  return rf'^features_{index}(_\d+)?/'


def _spec(name, stages, weights, **fields):
  return ModelSpec(
      name, functools.partial(EfficientNet, mbconv_stages=stages, **fields), 'torchvision', cam_layer='last_conv',
      description=f'torchvision {name}, ImageNet weights by name or from a state_dict file',
      preprocessing=preprocessing.TORCH_IMAGENET,
      stages=tuple((stage, _stage_regex(index)) for index, stage in enumerate(stage_names(stages))),
      weights={'imagenet': weights}, convert=convert, source_head=r'^params/classifier_1/',
      source_top=r'^params/classifier_1/', stem='features_0/conv|batch_stats/features_0/bn/mean')


register(_spec('efficientnet_b0', B0_STAGES, WeightsFile(
    'https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth', 'sha256:7f5810bc')))
register(_spec('efficientnet_v2_s', V2_S_STAGES, WeightsFile(
    'https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth', 'sha256:dd5fe13b'),
    fused_stages=3, stem_channels=24, last_channels=1280, bn_epsilon=1e-3))
