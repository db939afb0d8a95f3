"""timm's RegNet family from Hub checkpoints: RegNetX and RegNetY (squeeze-excitation), 200 MF to 32 GF, and
the `_tv` names (torchvision's weights, widths rounded to the group size its way), as `RegNet`.

A RegNet is a 3x3 stride-2 stem, four stages of bottleneck blocks (1x1, grouped 3x3 with the stride, the
optional squeeze-excitation, 1x1 without activation, a 1x1 conv+BN shortcut where the shape changes, ReLU
after the sum), global average and the classifier. Widths, depths and group widths follow timm's
`generate_regnet` and `adjust_widths_groups_comp` from each architecture's (w0, wa, wm, depth, group size).
timm's names map one to one: `stem`, `s<i>.b<j>` is `s<i>_b<j>`, `head.fc` is `fc`. No stochastic depth
(`drop_path_rate`) yet: tests/test_drop_path.py would need a RegNet reference (timm's rate is per stage).
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fpclass.models import feature, transfer
from fpclass.models.architectures.torchvision_efficientnet import ConvBN, SqueezeExcitation, linear_init
from fpclass.models.architectures.torchvision_resnet import make_divisible
from fpclass.models.timm_registry import register_timm
from fpclass.models.weights import Rule, torch_bn_rules


def regnet_stages(w0: int, wa: float, wm: float, depth: int, group_size: int, group_min_ratio: float = 0.0,
                  bottle_ratio: float = 1.0, quant: int = 8) -> tuple:
  """timm's per-stage (width, blocks, group width): block widths w0 + i * wa quantised to powers of wm (in
  float32, as timm computes them), the runs of equal widths the stages, each width then made a multiple of its
  group width (rounded, or torchvision's `make_divisible` where `group_min_ratio` is set)."""
  f32 = np.float32
  continuous = np.arange(depth, dtype=f32) * f32(wa) + f32(w0)
  exponents = np.round(np.log(continuous / f32(w0)) / f32(np.log(wm)))
  widths = np.round(f32(w0) * np.power(f32(wm), exponents) / f32(quant)) * quant
  stage_widths, depths = np.unique(widths.astype(np.int64), return_counts=True)
  stages = []
  for width, blocks in zip(stage_widths.tolist(), depths.tolist()):
    bottleneck = int(width * bottle_ratio)
    group = min(group_size, bottleneck)
    bottleneck = make_divisible(bottleneck, group, group_min_ratio) if group_min_ratio else \
        int(round(bottleneck / group) * group)
    stages.append((int(bottleneck / bottle_ratio), blocks, group))
  return tuple(stages)


class RegNetBlock(nn.Module):
  """timm's RegNet Bottleneck: its squeeze-excitation after the grouped conv squeezes to a ratio of the block's
  input channels."""
  out_channels: int
  stride: int
  group_size: int
  se_ratio: float = 0.0
  bottle_ratio: float = 1.0
  frozen: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    conv_bn = functools.partial(ConvBN, frozen=self.frozen, act='relu', dtype=self.dtype)
    mid = int(round(self.out_channels * self.bottle_ratio))
    y = conv_bn(mid, name='conv1')(x, train)
    y = conv_bn(mid, 3, self.stride, groups=mid // self.group_size, name='conv2')(y, train)
    if self.se_ratio:
      y = SqueezeExcitation(int(round(x.shape[-1] * self.se_ratio)), 'relu', 'sigmoid', self.dtype, name='se')(y)
    y = conv_bn(self.out_channels, activation=False, name='conv3')(y, train)
    if self.stride != 1 or x.shape[-1] != self.out_channels:
      x = conv_bn(self.out_channels, 1, self.stride, activation=False, name='downsample')(x, train)
    return nn.relu(y + x)


STAGES = ('stem', 's1', 's2', 's3', 's4')


class RegNet(transfer.Backbone, kw_only=True):
  """timm's RegNet (X, and Y with `se_ratio`): each stage's first block has stride 2."""
  block_stages: Sequence[Sequence[int]]   # per stage: (width, blocks, group width)
  se_ratio: float = 0.0
  bottle_ratio: float = 1.0
  stem_width: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = ConvBN(self.stem_width, 3, 2, frozen=self.stage_frozen(0), gray=self.in_channels == 1, act='relu',
               dtype=self.dtype, name='stem')(x, train)
    x = feature(self, features, 'stem', x)
    for i, (width, blocks, group) in enumerate(self.block_stages[:last], start=1):
      for j in range(blocks):
        x = RegNetBlock(width, 2 if j == 0 else 1, group, self.se_ratio, self.bottle_ratio,
                        frozen=self.stage_frozen(i), dtype=self.dtype, name=f's{i}_b{j + 1}')(x, train)
      x = feature(self, features, STAGES[i], x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_outputs, kernel_init=linear_init, dtype=self.dtype, name='fc')(x).astype(
        jnp.float32), features


# name: (w0, wa, wm, group width, depth, se_ratio, group_min_ratio), timm's RegNetCfg; every default input is 224
X, Y = 0.0, 0.25
ARCHITECTURES = {
    'regnetx_002': (24, 36.44, 2.49, 8, 13, X, 0.0), 'regnetx_004': (24, 24.48, 2.54, 16, 22, X, 0.0),
    'regnetx_004_tv': (24, 24.48, 2.54, 16, 22, X, 0.9), 'regnetx_006': (48, 36.97, 2.24, 24, 16, X, 0.0),
    'regnetx_008': (56, 35.73, 2.28, 16, 16, X, 0.0), 'regnetx_016': (80, 34.01, 2.25, 24, 18, X, 0.0),
    'regnetx_032': (88, 26.31, 2.25, 48, 25, X, 0.0), 'regnetx_040': (96, 38.65, 2.43, 40, 23, X, 0.0),
    'regnetx_064': (184, 60.83, 2.07, 56, 17, X, 0.0), 'regnetx_080': (80, 49.56, 2.88, 120, 23, X, 0.0),
    'regnetx_120': (168, 73.36, 2.37, 112, 19, X, 0.0), 'regnetx_160': (216, 55.59, 2.1, 128, 22, X, 0.0),
    'regnetx_320': (320, 69.86, 2.0, 168, 23, X, 0.0),
    'regnety_002': (24, 36.44, 2.49, 8, 13, Y, 0.0), 'regnety_004': (48, 27.89, 2.09, 8, 16, Y, 0.0),
    'regnety_006': (48, 32.54, 2.32, 16, 15, Y, 0.0), 'regnety_008': (56, 38.84, 2.4, 16, 14, Y, 0.0),
    'regnety_008_tv': (56, 38.84, 2.4, 16, 14, Y, 0.9), 'regnety_016': (48, 20.71, 2.65, 24, 27, Y, 0.0),
    'regnety_032': (80, 42.63, 2.66, 24, 21, Y, 0.0), 'regnety_040': (96, 31.41, 2.24, 64, 22, Y, 0.0),
    'regnety_064': (112, 33.22, 2.27, 72, 25, Y, 0.0), 'regnety_080': (192, 76.82, 2.19, 56, 17, Y, 0.0),
    'regnety_080_tv': (192, 76.82, 2.19, 56, 17, Y, 0.9), 'regnety_120': (168, 73.36, 2.37, 112, 19, Y, 0.0),
    'regnety_160': (200, 106.23, 2.48, 112, 18, Y, 0.0), 'regnety_320': (232, 115.89, 2.53, 232, 20, Y, 0.0),
}


def fields(w0, wa, wm, group_size, depth, se_ratio, group_min_ratio) -> dict:
  return dict(block_stages=regnet_stages(w0, wa, wm, depth, group_size, group_min_ratio), se_ratio=se_ratio)


def _conv_bn(source: str, target: str) -> tuple:
  return (Rule(source + r'\.conv\.weight', f'params/{target}/conv/kernel', 'conv'),
          *torch_bn_rules(rf'{source}\.bn', target + '/bn'))


BLOCK = r's(\d)\.b(\d+)\.'
RULES = (
    *_conv_bn('stem', 'stem'),
    *_conv_bn(BLOCK + r'(conv\d|downsample)', 's{0}_b{1}/{2}'),
    Rule(BLOCK + r'se\.(fc\d)\.weight', 'params/s{0}_b{1}/se/{2}/kernel', 'conv'),
    Rule(BLOCK + r'se\.(fc\d)\.bias', 'params/s{0}_b{1}/se/{2}/bias'),
    Rule(r'head\.fc\.weight', 'params/fc/kernel', 'linear'),
    Rule(r'head\.fc\.bias', 'params/fc/bias'),
)


for _arch, _config in ARCHITECTURES.items():
  register_timm(
      _arch, functools.partial(RegNet, **fields(*_config)), 'RegNetY' if _config[5] else 'RegNetX', rules=RULES,
      cam_layer='s4', head=r'^params/fc/', top=r'^params/fc/',
      stages=(('stem', r'^stem/'), *((f's{i}', rf'^s{i}_b\d+/') for i in range(1, 5))),
      stem='stem/conv|batch_stats/stem/bn/mean')
