"""torchvision ConvNeXt-Tiny, ported to Flax; timm's ConvNeXt and ConvNeXt V2 (`grn`) are the same module with
other widths and depths, registered from timm checkpoints by `timm_convnext.py`.

Design notes: docs/modules.md (`fpclass/models/architectures/torchvision_convnext.py`).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.weights import Rule, WeightsFile, apply_rules, read_state_dict

LAYER_NORM_EPSILON = 1e-6
trunc_normal = nn.initializers.truncated_normal(0.02)   # torchvision's trunc_normal_(std=0.02), zero biases
STAGES = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
TINY = ((96, 3), (192, 3), (384, 9), (768, 3))            # (channels, blocks) per stage


def _layer_norm(name, dtype):
  # Two-pass variance, as torch computes it (Flax's default E[x^2] - E[x]^2 loses digits).
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, dtype=dtype, name=name)


class CNBlock(nn.Module):
  """torchvision's CNBlock: x + stochastic_depth(layer_scale * pwconv2(gelu(pwconv1(norm(dwconv(x)))))); with
  `grn`, ConvNeXt V2's: a global response norm after the GELU and no layer scale."""
  drop_path_rate: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32
  grn: bool = False

  @nn.compact
  def __call__(self, x, train):
    dim = x.shape[-1]
    y = Conv(dim, (7, 7), padding=3, feature_group_count=dim, kernel_init=trunc_normal, dtype=self.dtype,
             name='dwconv')(x)
    y = _layer_norm('norm', self.dtype)(y)
    y = nn.gelu(nn.Dense(4 * dim, kernel_init=trunc_normal, dtype=self.dtype, name='pwconv1')(y), approximate=False)
    if self.grn:
      y = global_response_norm(self, y)
    y = nn.Dense(dim, kernel_init=trunc_normal, dtype=self.dtype, name='pwconv2')(y)
    if not self.grn:
      y = y * self.param('layer_scale', nn.initializers.constant(self.layer_scale_init), (dim,)).astype(y.dtype)
    # Named as torchvision's StochasticDepth(p, 'row') module.
    return x + transfer.drop_path(y, self.drop_path_rate, train, 'stochastic_depth')


def global_response_norm(module: nn.Module, y, epsilon: float = 1e-6):
  """ConvNeXt V2's GRN (timm's GlobalResponseNorm): each channel's L2 norm over space, divided by its mean over
  channels, rescales y; y + bias + weight * y * that, weight and bias starting at zero."""
  dim = y.shape[-1]
  compute = jnp.promote_types(y.dtype, jnp.float32)
  norms = jnp.sqrt(jnp.sum(jnp.square(y.astype(compute)), axis=(1, 2), keepdims=True))
  scaled = y * (norms / (jnp.mean(norms, axis=-1, keepdims=True) + epsilon)).astype(y.dtype)
  weight = module.param('grn_weight', nn.initializers.zeros, (dim,)).astype(y.dtype)
  return y + (module.param('grn_bias', nn.initializers.zeros, (dim,)).astype(y.dtype) + weight * scaled)


def drop_path_rates(blocks: Sequence[int], rate: float) -> list[list[float]]:
  """Each stage's blocks' drop rates: torchvision's p * (index of the block in the network) / (blocks - 1)."""
  rates = transfer.linear_drop_path_rates(rate, sum(blocks), sum(blocks) - 1)
  return [rates[sum(blocks[:i]):sum(blocks[:i + 1])] for i in range(len(blocks))]


class ConvNeXt(transfer.Backbone, kw_only=True):
  block_setting: Sequence[Sequence[int]]   # (channels, blocks) per stage
  drop_path_rate: float = 0.1              # the last block's; convnext_tiny's (torchvision's stochastic_depth_prob)
  layer_scale: float = 1e-6                # the initial layer scale (torchvision's `layer_scale`)
  grn: bool = False                        # ConvNeXt V2's blocks (see CNBlock)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = transfer.StemConv(self.block_setting[0][0], (4, 4), 4, padding='VALID', kernel_init=trunc_normal,
                          gray=self.in_channels == 1, dtype=self.dtype, name='features_0_conv')(x)
    x = _layer_norm('features_0_norm', self.dtype)(x)
    x = feature(self, features, 'stem', x)
    rates = drop_path_rates([blocks for _, blocks in self.block_setting], self.drop_path_rate)
    for stage, (channels, blocks) in enumerate(self.block_setting[:last], start=1):
      index = 2 * stage - 1   # torchvision's features index of this stage's blocks
      if stage > 1:           # the downsampling layer before it: features_<index - 1>
        x = _layer_norm(f'features_{index - 1}_norm', self.dtype)(x)
        x = Conv(channels, (2, 2), 2, padding='VALID', kernel_init=trunc_normal, dtype=self.dtype,
                 name=f'features_{index - 1}_conv')(x)
      for j in range(blocks):
        x = CNBlock(rates[stage - 1][j], self.layer_scale, self.dtype, self.grn,
                    name=f'features_{index}_{j}')(x, train)
      x = feature(self, features, STAGES[stage], x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = _layer_norm('classifier_0', self.dtype)(jnp.mean(x, axis=(1, 2)))
    features['pre_logits'] = x
    return nn.Dense(self.num_outputs, kernel_init=trunc_normal, dtype=self.dtype, name='classifier_2')(x).astype(
        jnp.float32), features



def _norm_rules(source: str, target: str):
  return (Rule(source + r'\.weight', f'params/{target}/scale'), Rule(source + r'\.bias', f'params/{target}/bias'))


def _dense_rules(source: str, target: str, kind: str = 'linear'):
  return (Rule(source + r'\.weight', f'params/{target}/kernel', kind), Rule(source + r'\.bias', f'params/{target}/bias'))


BLOCK = r'features\.(\d)\.(\d+)\.'
RULES = (
    *_dense_rules(r'features\.0\.0', 'features_0_conv', 'conv'),
    *_norm_rules(r'features\.0\.1', 'features_0_norm'),
    # Depthwise kernels (C, 1, 7, 7) take the same transpose as any conv: (7, 7, 1, C).
    *_dense_rules(BLOCK + r'block\.0', 'features_{0}_{1}/dwconv', 'conv'),
    *_norm_rules(BLOCK + r'block\.2', 'features_{0}_{1}/norm'),
    *_dense_rules(BLOCK + r'block\.3', 'features_{0}_{1}/pwconv1'),
    *_dense_rules(BLOCK + r'block\.5', 'features_{0}_{1}/pwconv2'),
    Rule(BLOCK + r'layer_scale', 'params/features_{0}_{1}/layer_scale', 'flatten'),   # (C, 1, 1) -> (C,)
    *_norm_rules(r'features\.(\d)\.0', 'features_{0}_norm'),
    *_dense_rules(r'features\.(\d)\.1', 'features_{0}_conv', 'conv'),
    *_norm_rules(r'classifier\.0', 'classifier_0'),
    *_dense_rules(r'classifier\.2', 'classifier_2'),
)


def convert(path):
  return apply_rules(read_state_dict(path), RULES)


def stage_regex(index: int) -> str:
  """Stage 0 is the stem; stage i > 0 is its downsampling layer (features_<2i-2>, none for i = 1) and its
  blocks (features_<2i-1>_<j>)."""
  if index == 0:
    return r'^features_0_'
  return rf'^features_({2 * index - 1}_\d+/|{2 * index - 2}_(norm|conv)/)' if index > 1 else r'^features_1_\d+/'


register(ModelSpec(
    'convnext_tiny', functools.partial(ConvNeXt, block_setting=TINY), 'torchvision', cam_layer='stage4',
    description='torchvision convnext_tiny, ImageNet weights by name or from a state_dict file',
    preprocessing=preprocessing.TORCH_IMAGENET,
    stages=tuple((name, stage_regex(index)) for index, name in enumerate(STAGES)),
    weights={'imagenet': WeightsFile('https://download.pytorch.org/models/convnext_tiny-983f1562.pth',
                                     'sha256:983f1562')},
    convert=convert, source_head=r'^params/classifier_2/', source_top=r'^params/classifier_(0|2)/',
    stem='features_0_conv|params/features_0_conv/bias'))
