"""timm's ResNet family from Hub checkpoints: ResNet, its deep-stem and average-pool variants (c, d, s, t),
ResNeXt, the wide ResNets and the squeeze-excitation ResNets, all as fields of `torchvision_resnet.ResNet`.

timm's tensor names are torchvision's, plus `conv1.<i>` for a deep stem's Sequential, `downsample.1`/`.2` for
an average-pool shortcut (its pool is index 0) and `se.fc1`/`se.fc2`.
"""
import functools

from fpclass.models.architectures.torchvision_resnet import STEM_REGEX, BasicBlock, Bottleneck, ResNet
from fpclass.models.timm_registry import register_timm
from fpclass.models.weights import Rule, torch_bn_rules

B, K = BasicBlock, Bottleneck
R18, R34, R26, R50, R101, R152, R200 = (2, 2, 2, 2), (3, 4, 6, 3), (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 23, 3), \
    (3, 8, 36, 3), (3, 24, 36, 3)
D = dict(stem_type='deep', stem_width=32, avg_down=True)          # timm's 'd'
C = dict(stem_type='deep', stem_width=32)                         # 'c'
S = dict(stem_type='deep', stem_width=64)                         # 's'
T = dict(stem_type='deep_tiered', stem_width=32, avg_down=True)   # 't'
SE = dict(attention='se')
X32x4, X32x8, X32x16, X32x32, X64x4 = (dict(cardinality=c, base_width=w) for c, w in
                                       ((32, 4), (32, 8), (32, 16), (32, 32), (64, 4)))
WIDE = dict(base_width=128)

# name: (block, layers, fields, default input side)
ARCHITECTURES = {
    'resnet10t': (B, (1, 1, 1, 1), T, 176), 'resnet14t': (K, (1, 1, 1, 1), T, 176),
    'resnet18': (B, R18, {}, 224), 'resnet18d': (B, R18, D, 224), 'resnet34': (B, R34, {}, 224),
    'resnet34d': (B, R34, D, 224), 'resnet26': (K, R26, {}, 224), 'resnet26d': (K, R26, D, 224),
    'resnet26t': (K, R26, T, 256), 'resnet50': (K, R50, {}, 224), 'resnet50c': (K, R50, C, 224),
    'resnet50d': (K, R50, D, 224), 'resnet50s': (K, R50, S, 224), 'resnet50t': (K, R50, T, 224),
    'resnet101': (K, R101, {}, 224), 'resnet101c': (K, R101, C, 224), 'resnet101d': (K, R101, D, 256),
    'resnet101s': (K, R101, S, 224), 'resnet152': (K, R152, {}, 224), 'resnet152c': (K, R152, C, 224),
    'resnet152d': (K, R152, D, 256), 'resnet152s': (K, R152, S, 224), 'resnet200': (K, R200, {}, 224),
    'resnet200d': (K, R200, D, 256),
    'resnext50_32x4d': (K, R50, X32x4, 224), 'resnext50d_32x4d': (K, R50, {**X32x4, **D}, 224),
    'resnext101_32x4d': (K, R101, X32x4, 224), 'resnext101_32x8d': (K, R101, X32x8, 224),
    'resnext101_32x16d': (K, R101, X32x16, 224), 'resnext101_32x32d': (K, R101, X32x32, 224),
    'resnext101_64x4d': (K, R101, X64x4, 224),
    'wide_resnet50_2': (K, R50, WIDE, 224), 'wide_resnet101_2': (K, R101, WIDE, 224),
    'seresnet18': (B, R18, SE, 224), 'seresnet34': (B, R34, SE, 224), 'seresnet50': (K, R50, SE, 224),
    'seresnet50t': (K, R50, {**SE, **T}, 224), 'seresnet101': (K, R101, SE, 224),
    'seresnet152': (K, R152, SE, 224), 'seresnet152d': (K, R152, {**SE, **D}, 256),
    'seresnet200d': (K, R200, {**SE, **D}, 256), 'seresnet269d': (K, (3, 30, 48, 8), {**SE, **D}, 256),
    'seresnext26d_32x4d': (K, R26, {**SE, **X32x4, **D}, 224),
    'seresnext26t_32x4d': (K, R26, {**SE, **X32x4, **T}, 224),
    'seresnext50_32x4d': (K, R50, {**SE, **X32x4}, 224), 'seresnext101_32x4d': (K, R101, {**SE, **X32x4}, 224),
    'seresnext101_32x8d': (K, R101, {**SE, **X32x8}, 224), 'seresnext101d_32x8d': (K, R101, {**SE, **X32x8, **D}, 224),
    'seresnext101_64x4d': (K, R101, {**SE, **X64x4}, 224),
}

LAYER = r'layer(\d)\.(\d+)\.'


def rules(fields: dict) -> tuple:
  """timm names -> the Flax paths of `ResNet` with `fields`; an average-pool shortcut shifts its conv and BN
  one index up in timm's Sequential."""
  conv, bn = ('1', '2') if fields.get('avg_down') else ('0', '1')
  stem = (Rule(r'conv1\.weight', 'params/conv1/kernel', 'conv'),) if not fields.get('stem_type') else (
      Rule(r'conv1\.([036])\.weight', 'params/conv1_{0}/kernel', 'conv'), *torch_bn_rules(r'conv1\.([14])', 'conv1_{0}'))
  return (
      *stem, *torch_bn_rules('bn1', 'bn1'),
      Rule(LAYER + r'conv(\d)\.weight', 'params/layer{0}_{1}/conv{2}/kernel', 'conv'),
      *torch_bn_rules(LAYER + r'bn(\d)', 'layer{0}_{1}/bn{2}'),
      Rule(LAYER + rf'downsample\.{conv}\.weight', 'params/layer{0}_{1}/downsample_conv/kernel', 'conv'),
      *torch_bn_rules(LAYER + rf'downsample\.{bn}', 'layer{0}_{1}/downsample_bn'),
      Rule(LAYER + r'se\.(fc\d)\.weight', 'params/layer{0}_{1}/se/{2}/kernel', 'conv'),
      Rule(LAYER + r'se\.(fc\d)\.bias', 'params/layer{0}_{1}/se/{2}/bias'),
      Rule(r'fc\.weight', 'params/fc/kernel', 'linear'),
      Rule(r'fc\.bias', 'params/fc/bias'),
  )


for _arch, (_block, _layers, _fields, _size) in ARCHITECTURES.items():
  register_timm(
      _arch, functools.partial(ResNet, block=_block, layers=_layers, **_fields), 'ResNet family',
      rules=rules(_fields), cam_layer='layer4', head=r'^params/fc/', top=r'^params/fc/',
      stages=(('stem', STEM_REGEX), *((f'layer{i}', rf'^layer{i}_') for i in range(1, 5))),
      stem=('conv1_0|batch_stats/conv1_1/mean' if _fields.get('stem_type') else 'conv1|batch_stats/bn1/mean'),
      input_size=_size)
