"""torchvision ResNet-18 and ResNet-50 (v1.5: stride on the bottleneck's 3x3), ported to Flax.

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

from fpclass.models import ModelSpec, feature, preprocessing, register, transfer
from fpclass.models.conv import Conv
from fpclass.models.pooling import max_pool
from fpclass.models.torch_layers import BatchNorm
from fpclass.models.weights import TORCH_BN, Rule, WeightsFile, apply_rules, read_state_dict

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # torchvision's kaiming_normal_


def _bn(name, frozen_stage, train):
  return BatchNorm(use_running_average=not train or frozen_stage, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  frozen: bool = False
  relu: Callable = nn.relu
  drop_path_rate: float = 0.0
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    identity = x
    y = Conv(self.planes, (3, 3), self.stride, padding=1, use_bias=False, kernel_init=conv_init, name='conv1')(x)
    y = self.relu(_bn('bn1', self.frozen, train)(y))
    y = Conv(self.planes, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, name='conv2')(y)
    y = transfer.drop_path(_bn('bn2', self.frozen, train)(y), self.drop_path_rate, train, 'drop_path')
    if self.stride != 1 or x.shape[-1] != self.planes * self.expansion:
      identity = Conv(self.planes * self.expansion, (1, 1), self.stride, use_bias=False, kernel_init=conv_init,
                      name='downsample_conv')(x)
      identity = _bn('downsample_bn', self.frozen, train)(identity)
    return self.relu(y + identity)


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  frozen: bool = False
  relu: Callable = nn.relu
  drop_path_rate: float = 0.0
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    identity = x
    y = Conv(self.planes, (1, 1), use_bias=False, kernel_init=conv_init, name='conv1')(x)
    y = self.relu(_bn('bn1', self.frozen, train)(y))
    y = Conv(self.planes, (3, 3), self.stride, padding=1, use_bias=False, kernel_init=conv_init, name='conv2')(y)
    y = self.relu(_bn('bn2', self.frozen, train)(y))
    y = Conv(self.planes * 4, (1, 1), use_bias=False, kernel_init=conv_init, name='conv3')(y)
    y = transfer.drop_path(_bn('bn3', self.frozen, train)(y), self.drop_path_rate, train, 'drop_path')
    if self.stride != 1 or x.shape[-1] != self.planes * 4:
      identity = Conv(self.planes * 4, (1, 1), self.stride, use_bias=False, kernel_init=conv_init,
                      name='downsample_conv')(x)
      identity = _bn('downsample_bn', self.frozen, train)(identity)
    return self.relu(y + identity)


STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')


class ResNet(transfer.Backbone, kw_only=True):
  block: Any
  layers: Sequence[int]
  relu: Callable = nn.relu   # swapped by guided backpropagation (see fpclass.models)
  drop_path_rate: float = 0.0   # the last block's stochastic depth rate (timm's rule, see the docstring)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = transfer.StemConv(64, (7, 7), 2, padding=3, use_bias=False, kernel_init=conv_init,
                          gray=self.in_channels == 1, name='conv1')(x)
    x = self.relu(_bn('bn1', self.stage_frozen(0), train)(x))
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = feature(self, features, 'stem', x)
    rates = transfer.linear_drop_path_rates(self.drop_path_rate, sum(self.layers), sum(self.layers) - 1)
    for i, blocks in enumerate(self.layers[:last], start=1):
      for j in range(blocks):
        x = self.block(64 * 2 ** (i - 1), stride=2 if (j == 0 and i > 1) else 1, frozen=self.stage_frozen(i),
                       relu=self.relu, drop_path_rate=rates[sum(self.layers[:i - 1]) + j],
                       name=f'layer{i}_{j}')(x, train)
      x = feature(self, features, f'layer{i}', x)
    if self.top == 'source':
      x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
      return nn.Dense(self.num_outputs, name='fc')(x).astype(jnp.float32), features
    return transfer.new_top(self, x, features, train), features


RULES = (
    Rule(r'conv1\.weight', 'params/conv1/kernel', 'conv'),
    *(Rule(rf'bn1\.{src}', dst.format('bn1')) for src, dst in TORCH_BN),
    Rule(r'layer(\d)\.(\d+)\.conv(\d)\.weight', 'params/layer{0}_{1}/conv{2}/kernel', 'conv'),
    *(Rule(rf'layer(\d)\.(\d+)\.bn(\d)\.{src}', dst.format('layer{0}_{1}/bn{2}')) for src, dst in TORCH_BN),
    Rule(r'layer(\d)\.(\d+)\.downsample\.0\.weight', 'params/layer{0}_{1}/downsample_conv/kernel', 'conv'),
    *(Rule(rf'layer(\d)\.(\d+)\.downsample\.1\.{src}', dst.format('layer{0}_{1}/downsample_bn'))
      for src, dst in TORCH_BN),
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
      stages=(('stem', r'^(conv1|bn1)/'), *((f'layer{i}', rf'^layer{i}_') for i in range(1, 5))),
      weights={'imagenet': weights}, convert=convert,
      source_head=r'^params/fc/', source_top=r'^params/fc/', stem='conv1|batch_stats/bn1/mean')


register(_spec('resnet18', BasicBlock, (2, 2, 2, 2),
               WeightsFile('https://download.pytorch.org/models/resnet18-f37072fd.pth', 'sha256:f37072fd')))
register(_spec('resnet50', Bottleneck, (3, 4, 6, 3),
               WeightsFile('https://download.pytorch.org/models/resnet50-0676ba61.pth', 'sha256:0676ba61')))
