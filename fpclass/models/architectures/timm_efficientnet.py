"""timm's EfficientNet family from Hub checkpoints: EfficientNet B0-B8 and Lite (timm's own and the `tf_` ports),
EfficientNetV2 (the `tf_` ports and timm's `efficientnetv2_rw_*`), as fields of `torchvision_efficientnet.EfficientNet`;
and MobileNetV3 (`MobileNetV3` here: timm builds it from the same blocks, each block its own width and activation).

The `tf_` ports pad as TF does ('SAME': timm's Conv2dSame) with BatchNorm eps 1e-3; timm's own pad symmetrically
(eps 1e-5). Widths and depths follow timm's builder: channels through `round_channels` (multiples of 8, never
under 90% of the scaled width), repeats rounded up. timm's `blocks.<s>.<j>` is `features_<s+1>_<j>`, its
`conv_stem`/`bn1` `features_0`, `conv_head`/`bn2` the last conv and `classifier` the source head.
"""
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import feature, transfer
from fpclass.models.architectures.torchvision_efficientnet import (
  ConvBN,
  EfficientNet,
  SqueezeExcitation,
  activation_fn,
  linear_init,
  stage_names,
)
from fpclass.models.timm_registry import register_timm
from fpclass.models.weights import Rule, torch_bn_rules

# timm's arch_def, one row per stage: (kind, repeats, kernel, stride, expand ratio, channels). 'mbconv' is its
# 'ds' (ratio 1) and 'ir' blocks, 'fused' its 'er' (EdgeResidual), 'conv' its 'cn' (ConvBnAct).
EFFICIENTNET = (('mbconv', 1, 3, 1, 1, 16), ('mbconv', 2, 3, 2, 6, 24), ('mbconv', 2, 5, 2, 6, 40),
                ('mbconv', 3, 3, 2, 6, 80), ('mbconv', 3, 5, 1, 6, 112), ('mbconv', 4, 5, 2, 6, 192),
                ('mbconv', 1, 3, 1, 6, 320))
V2_BASE = (('conv', 1, 3, 1, 1, 16), ('fused', 2, 3, 2, 4, 32), ('fused', 2, 3, 2, 4, 48),
           ('mbconv', 3, 3, 2, 4, 96), ('mbconv', 5, 3, 1, 6, 112), ('mbconv', 8, 3, 2, 6, 192))
V2_S = (('conv', 2, 3, 1, 1, 24), ('fused', 4, 3, 2, 4, 48), ('fused', 4, 3, 2, 4, 64),
        ('mbconv', 6, 3, 2, 4, 128), ('mbconv', 9, 3, 1, 6, 160), ('mbconv', 15, 3, 2, 6, 256))
V2_RW = (('fused', 2, 3, 1, 1, 24), *V2_S[1:-1], ('mbconv', 15, 3, 2, 6, 272))   # timm's first V2-S ('rw')
V2_M = (('conv', 3, 3, 1, 1, 24), ('fused', 5, 3, 2, 4, 48), ('fused', 5, 3, 2, 4, 80),
        ('mbconv', 7, 3, 2, 4, 160), ('mbconv', 14, 3, 1, 6, 176), ('mbconv', 18, 3, 2, 6, 304),
        ('mbconv', 5, 3, 1, 6, 512))
V2_L = (('conv', 4, 3, 1, 1, 32), ('fused', 7, 3, 2, 4, 64), ('fused', 7, 3, 2, 4, 96),
        ('mbconv', 10, 3, 2, 4, 192), ('mbconv', 19, 3, 1, 6, 224), ('mbconv', 25, 3, 2, 6, 384),
        ('mbconv', 7, 3, 1, 6, 640))
V2_XL = (('conv', 4, 3, 1, 1, 32), ('fused', 8, 3, 2, 4, 64), ('fused', 8, 3, 2, 4, 96),
         ('mbconv', 16, 3, 2, 4, 192), ('mbconv', 24, 3, 1, 6, 256), ('mbconv', 32, 3, 2, 6, 512),
         ('mbconv', 8, 3, 1, 6, 640))
TF = dict(padding='same', bn_epsilon=1e-3)   # timm's tf_* ports: pad_type='same', BN_EPS_TF_DEFAULT


def round_channels(channels: int, width: float = 1.0, divisor: int = 8, round_limit: float = 0.9) -> int:
  """timm's `round_channels`: `channels * width` to a multiple of `divisor`, not under `round_limit` of it."""
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * scaled else rounded


def scale(base, width: float, depth, round_limit: float = 0.9, fix_first_last: bool = False) -> dict:
  """The EfficientNet fields of `base` scaled as timm's builder scales it: (`mbconv_stages`, `block_kinds`).
  `depth` is one multiplier or one per stage; repeats round up; Lite keeps its first and last stage's."""
  depths = depth if isinstance(depth, tuple) else (depth,) * len(base)
  stages, kinds = [], []
  for i, ((kind, repeats, kernel, stride, expand, channels), d) in enumerate(zip(base, depths)):
    if fix_first_last and i in (0, len(base) - 1):
      d = 1.0
    stages.append((expand, kernel, stride, round_channels(channels, width, round_limit=round_limit),
                   int(math.ceil(repeats * d))))
    kinds.append(kind)
  return dict(mbconv_stages=tuple(stages), block_kinds=tuple(kinds))


def efficientnet(width, depth, tf=False):
  return dict(**scale(EFFICIENTNET, width, depth), stem_channels=round_channels(32, width),
              last_channels=round_channels(1280, width), **(TF if tf else {}))


def lite(width, depth, tf=False):
  """EfficientNet-Lite: ReLU6, no squeeze-excitation, a fixed 32-channel stem and 1280-channel head."""
  return dict(**scale(EFFICIENTNET, width, depth, fix_first_last=True), stem_channels=32, last_channels=1280,
              activation='relu6', se=False, **(TF if tf else {}))


def v2_base(width, depth):
  return dict(**scale(V2_BASE, width, depth, round_limit=0.0), stem_channels=round_channels(32, width, round_limit=0.0),
              last_channels=round_channels(1280, width, round_limit=0.0), **TF)


def v2(base, stem, last, width=1.0, depth=1.0, tf=True):
  """EfficientNetV2 S/M/L/XL and timm's rw variants (`last` scaled by `width` for the S-shaped ones)."""
  return dict(**scale(base, width, depth), stem_channels=round_channels(stem, width), last_channels=last,
              **(TF if tf else {}))


# name: (fields, default input side, normalisation)
ARCHITECTURES = {
    'efficientnet_b0': (efficientnet(1.0, 1.0), 224, 'imagenet'),
    'efficientnet_b1': (efficientnet(1.0, 1.1), 240, 'inception'),
    'efficientnet_b2': (efficientnet(1.1, 1.2), 256, 'imagenet'),
    'efficientnet_b3': (efficientnet(1.2, 1.4), 288, 'imagenet'),
    'efficientnet_b4': (efficientnet(1.4, 1.8), 320, 'imagenet'),
    'efficientnet_b5': (efficientnet(1.6, 2.2), 448, 'imagenet'),
    'efficientnet_lite0': (lite(1.0, 1.0), 224, 'imagenet'),
    'efficientnetv2_rw_t': (v2(V2_S, 24, round_channels(1280, 0.8), 0.8, 0.9, tf=False), 224, 'imagenet'),
    'efficientnetv2_rw_s': (v2(V2_RW, 24, 1792, tf=False), 288, 'imagenet'),
    'efficientnetv2_rw_m': (v2(V2_RW, 24, round_channels(1792, 1.2), 1.2, (1.2,) * 4 + (1.6,) * 2, tf=False), 320,
                            'imagenet'),
    **{f'tf_efficientnet_b{i}': (efficientnet(w, d, tf=True), side, 'inception' if i == 8 else 'imagenet')
       for i, (w, d, side) in enumerate(((1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260), (1.2, 1.4, 300),
                                         (1.4, 1.8, 380), (1.6, 2.2, 456), (1.8, 2.6, 528), (2.0, 3.1, 600),
                                         (2.2, 3.6, 672)))},
    **{f'tf_efficientnet_lite{i}': (lite(w, d, tf=True), side, 'inception')
       for i, (w, d, side) in enumerate(((1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260), (1.2, 1.4, 300),
                                         (1.4, 1.8, 380)))},
    'tf_efficientnetv2_b0': (v2_base(1.0, 1.0), 192, 'imagenet'),
    'tf_efficientnetv2_b1': (v2_base(1.0, 1.1), 192, 'imagenet'),
    'tf_efficientnetv2_b2': (v2_base(1.1, 1.2), 208, 'imagenet'),
    'tf_efficientnetv2_b3': (v2_base(1.2, 1.4), 240, 'inception'),
    'tf_efficientnetv2_s': (v2(V2_S, 24, 1280), 300, 'inception'),
    'tf_efficientnetv2_m': (v2(V2_M, 24, 1280), 384, 'inception'),
    'tf_efficientnetv2_l': (v2(V2_L, 32, 1280), 384, 'inception'),
    'tf_efficientnetv2_xl': (v2(V2_XL, 32, 1280), 384, 'inception'),
}

# Each timm block kind's (conv, its BN) pairs in order, then its squeeze-excitation's position, if any.
LAYERS = {'ds': (('conv_dw', 'bn1'), ('conv_pw', 'bn2')), 'ir': (('conv_pw', 'bn1'), ('conv_dw', 'bn2'),
                                                                  ('conv_pwl', 'bn3')),
          'er': (('conv_exp', 'bn1'), ('conv_pwl', 'bn2')), 'cn': (('conv', 'bn1'),)}


def _conv_bn(source: str, target: str) -> tuple:
  return (Rule(source[0] + r'\.weight', f'params/{target}/conv/kernel', 'conv'),
          *torch_bn_rules(source[1], target + '/bn'))


def _stage_rules(s: int, kind: str, expand: int, se: bool) -> tuple:
  """timm's `blocks.<s>.<j>` -> 'features_<s+1>_<j>/block_<i>', i counting the Sequential as torchvision's."""
  timm_kind = {'fused': 'er', 'conv': 'cn'}.get(kind, 'ds' if expand == 1 else 'ir')
  layers = LAYERS[timm_kind]
  se_at = len(layers) - 1 if se and timm_kind in ('ds', 'ir') else None   # before the projection
  prefix, target = rf'blocks\.{s}\.(\d+)\.', f'features_{s + 1}_{{0}}/block_'
  rules = []
  for i, (conv, bn) in enumerate(layers):
    rules += _conv_bn((prefix + conv, prefix + bn), target + str(i + (se_at is not None and i >= se_at)))
  if se_at is not None:
    for source, fc in (('conv_reduce', 'fc1'), ('conv_expand', 'fc2')):
      rules += [Rule(prefix + rf'se\.{source}\.weight', f'params/{target}{se_at}/{fc}/kernel', 'conv'),
                Rule(prefix + rf'se\.{source}\.bias', f'params/{target}{se_at}/{fc}/bias')]
  return tuple(rules)


def rules(fields: dict) -> tuple:
  stages = fields['mbconv_stages']
  return (
      *_conv_bn(('conv_stem', 'bn1'), 'features_0'),
      *(rule for s, (stage, kind) in enumerate(zip(stages, fields['block_kinds']))
        for rule in _stage_rules(s, kind, stage[0], fields.get('se', True))),
      *_conv_bn(('conv_head', 'bn2'), f'features_{len(stages) + 1}'),
      Rule(r'classifier\.weight', 'params/classifier_1/kernel', 'linear'),
      Rule(r'classifier\.bias', 'params/classifier_1/bias'),
  )


def _stage_regex(index: int) -> str:
  return rf'^features_{index}(_\d+)?/'


for _arch, (_fields, _side, _norm) in ARCHITECTURES.items():
  register_timm(
      _arch, functools.partial(EfficientNet, **_fields, dropout=0.0, drop_path_rate=0.0),
      'EfficientNetV2' if 'v2' in _arch else 'EfficientNet', rules=rules(_fields), cam_layer='last_conv',
      head=r'^params/classifier_1/', top=r'^params/classifier_1/',
      stages=tuple((name, _stage_regex(i)) for i, name in enumerate(stage_names(_fields['mbconv_stages']))),
      stem='features_0/conv|batch_stats/features_0/bn/mean', input_size=_side, norm=_norm)


# ------------------------------------------------------------------------------------------------ MobileNetV3
# timm's arch_def, per stage its blocks: (kind, kernel, stride, expand ratio, channels, squeeze-excitation,
# activation ('' the model's)), one row per block. The minimal variants: no SE, 3x3 kernels, ReLU throughout.
MNV3_LARGE = (
    (('ds', 3, 1, 1, 16, False, 'relu'),),
    (('ir', 3, 2, 4, 24, False, 'relu'), ('ir', 3, 1, 3, 24, False, 'relu')),
    (('ir', 5, 2, 3, 40, True, 'relu'),) + (('ir', 5, 1, 3, 40, True, 'relu'),) * 2,
    (('ir', 3, 2, 6, 80, False, ''), ('ir', 3, 1, 2.5, 80, False, '')) + (('ir', 3, 1, 2.3, 80, False, ''),) * 2,
    (('ir', 3, 1, 6, 112, True, ''),) * 2,
    (('ir', 5, 2, 6, 160, True, ''),) + (('ir', 5, 1, 6, 160, True, ''),) * 2,
    (('cn', 1, 1, 1, 960, False, ''),),
)
MNV3_SMALL = (
    (('ds', 3, 2, 1, 16, True, 'relu'),),
    (('ir', 3, 2, 4.5, 24, False, 'relu'), ('ir', 3, 1, 3.67, 24, False, 'relu')),
    (('ir', 5, 2, 4, 40, True, ''),) + (('ir', 5, 1, 6, 40, True, ''),) * 2,
    (('ir', 5, 1, 3, 48, True, ''),) * 2,
    (('ir', 5, 2, 6, 96, True, ''),) + (('ir', 5, 1, 6, 96, True, ''),) * 2,
    (('cn', 1, 1, 1, 576, False, ''),),
)


def minimal(stages) -> tuple:
  return tuple(tuple((kind, min(kernel, 3), stride, expand, channels, False, '') for kind, kernel, stride, expand,
                     channels, _, _ in stage) for stage in stages)


class MobileNetV3Block(nn.Module):
  """timm's blocks in MobileNetV3: 'ds' (depthwise, SE, 1x1 projection), 'ir' (1x1 expansion to
  round_channels(in x ratio), depthwise, SE, projection) and 'cn' (one conv); a residual where the shape
  allows ('ds', 'ir'). The SE squeezes to round_channels(a quarter of its input), ReLU, hard sigmoid gate."""
  kind: str
  kernel: int
  stride: int
  expand: float
  out_channels: int
  se: bool
  act: str
  padding: str = 'symmetric'
  epsilon: float = 1e-5
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    conv_bn = functools.partial(ConvBN, frozen=self.frozen, epsilon=self.epsilon, act=self.act, padding=self.padding,
                                dtype=self.dtype)
    if self.kind == 'cn':
      return conv_bn(self.out_channels, self.kernel, self.stride, name='conv')(x, train)
    mid = round_channels(x.shape[-1], self.expand) if self.kind == 'ir' else x.shape[-1]
    y = conv_bn(mid, name='conv_pw')(x, train) if self.kind == 'ir' else x
    y = conv_bn(mid, self.kernel, self.stride, groups=mid, name='conv_dw')(y, train)
    if self.se:
      y = SqueezeExcitation(round_channels(mid / 4), 'relu', 'hard_sigmoid', self.dtype, name='se')(y)
    y = conv_bn(self.out_channels, activation=False, name='conv_pwl')(y, train)
    return y + x if self.stride == 1 and x.shape[-1] == self.out_channels else y


class MobileNetV3(transfer.Backbone, kw_only=True):
  """timm's MobileNetV3: stem, stages of `MobileNetV3Block`s, then its 'efficient head' (global average, a 1x1
  conv with bias and no BN, the activation, the classifier). No stochastic depth (timm's default: none)."""
  block_stages: Sequence[Sequence[Sequence[Any]]]   # per stage, per block: (kind, kernel, stride, expand,
  # channels, se, activation or '' for `activation`)
  stem_channels: int = 16
  head_channels: int = 1280
  activation: str = 'hard_swish'
  padding: str = 'symmetric'
  bn_epsilon: float = 1e-5
  dropout: float = 0.0   # the source classifier's (timm's drop_rate)

  @nn.compact
  def __call__(self, x, train: bool = False):
    stages = ('stem', *(f'stage{i}' for i in range(1, len(self.block_stages) + 1)))
    last = transfer.check_cut(self.cut, stages, self.top)
    features = {}
    common = dict(padding=self.padding, epsilon=self.bn_epsilon, dtype=self.dtype)
    x = ConvBN(self.stem_channels, 3, 2, frozen=self.stage_frozen(0), gray=self.in_channels == 1,
               act=self.activation, **common, name='conv_stem')(x, train)
    x = feature(self, features, 'stem', x)
    for i, blocks in enumerate(self.block_stages[:last], start=1):
      for j, (kind, kernel, stride, expand, channels, se, act) in enumerate(blocks):
        x = MobileNetV3Block(kind, kernel, stride, expand, channels, se, act or self.activation,
                             frozen=self.stage_frozen(i), **common, name=f'blocks_{i - 1}_{j}')(x, train)
      x = feature(self, features, stages[i], x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = jnp.mean(x, axis=(1, 2))
    x = activation_fn(self.activation)(nn.Dense(self.head_channels, dtype=self.dtype, name='conv_head')(x))
    x = features['pre_logits'] = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, kernel_init=linear_init, dtype=self.dtype, name='classifier')(x).astype(
        jnp.float32), features


def scale_mnv3(stages, width: float) -> tuple:
  return tuple(tuple((kind, kernel, stride, expand, round_channels(channels, width), se, act)
                     for kind, kernel, stride, expand, channels, se, act in stage) for stage in stages)


def mobilenetv3(stages, width: float, head: int, tf: bool, act: str = 'hard_swish') -> dict:
  """timm's `_gen_mobilenet_v3`: a 16-channel stem scaled unless the width is under 0.75."""
  return dict(block_stages=scale_mnv3(stages, width), stem_channels=16 if width < 0.75 else round_channels(16, width),
              head_channels=head, activation=act, **(TF if tf else {}))


MNV3_ARCHITECTURES = {   # name: (fields, normalisation); every default input is 224
    'mobilenetv3_large_100': (mobilenetv3(MNV3_LARGE, 1.0, 1280, False), 'imagenet'),
    'mobilenetv3_small_050': (mobilenetv3(MNV3_SMALL, 0.5, 1024, False), 'imagenet'),
    'mobilenetv3_small_075': (mobilenetv3(MNV3_SMALL, 0.75, 1024, False), 'imagenet'),
    'mobilenetv3_small_100': (mobilenetv3(MNV3_SMALL, 1.0, 1024, False), 'imagenet'),
    'tf_mobilenetv3_large_075': (mobilenetv3(MNV3_LARGE, 0.75, 1280, True), 'inception'),
    'tf_mobilenetv3_large_100': (mobilenetv3(MNV3_LARGE, 1.0, 1280, True), 'inception'),
    'tf_mobilenetv3_large_minimal_100': (mobilenetv3(minimal(MNV3_LARGE), 1.0, 1280, True, 'relu'), 'inception'),
    'tf_mobilenetv3_small_075': (mobilenetv3(MNV3_SMALL, 0.75, 1024, True), 'inception'),
    'tf_mobilenetv3_small_100': (mobilenetv3(MNV3_SMALL, 1.0, 1024, True), 'inception'),
    'tf_mobilenetv3_small_minimal_100': (mobilenetv3(minimal(MNV3_SMALL), 1.0, 1024, True, 'relu'), 'inception'),
}
MNV3_LAYERS = {'ds': ('conv_dw', 'conv_pwl'), 'ir': ('conv_pw', 'conv_dw', 'conv_pwl'), 'cn': ('conv',)}
MNV3_BNS = {'ds': ('bn1', 'bn2'), 'ir': ('bn1', 'bn2', 'bn3'), 'cn': ('bn1',)}
MNV3_TIMM_NAMES = {('ds', 'conv_pwl'): 'conv_pw'}   # timm's 'ds' names its projection conv_pw


def mnv3_rules(fields: dict) -> tuple:
  rules = list(_conv_bn(('conv_stem', 'bn1'), 'conv_stem'))
  for s, blocks in enumerate(fields['block_stages']):
    for j, (kind, *_) in enumerate(blocks):
      prefix = rf'blocks\.{s}\.{j}\.'
      for layer, bn in zip(MNV3_LAYERS[kind], MNV3_BNS[kind]):
        rules += _conv_bn((prefix + MNV3_TIMM_NAMES.get((kind, layer), layer), prefix + bn), f'blocks_{s}_{j}/{layer}')
      for source, fc in (('conv_reduce', 'fc1'), ('conv_expand', 'fc2')):
        rules += [Rule(prefix + rf'se\.{source}\.weight', f'params/blocks_{s}_{j}/se/{fc}/kernel', 'conv'),
                  Rule(prefix + rf'se\.{source}\.bias', f'params/blocks_{s}_{j}/se/{fc}/bias')]
  return (*rules, Rule(r'conv_head\.weight', 'params/conv_head/kernel', 'pointwise'),
          Rule(r'conv_head\.bias', 'params/conv_head/bias'),
          Rule(r'classifier\.weight', 'params/classifier/kernel', 'linear'),
          Rule(r'classifier\.bias', 'params/classifier/bias'))


for _arch, (_fields, _norm) in MNV3_ARCHITECTURES.items():
  _stages = len(_fields['block_stages'])
  register_timm(
      _arch, functools.partial(MobileNetV3, **_fields), 'MobileNetV3', rules=mnv3_rules(_fields),
      cam_layer=f'stage{_stages}', head=r'^params/classifier/', top=r'^params/(conv_head|classifier)/',
      stages=(('stem', r'^conv_stem/'), *((f'stage{s + 1}', rf'^blocks_{s}_\d+/') for s in range(_stages))),
      stem='conv_stem/conv|batch_stats/conv_stem/bn/mean', norm=_norm)
