"""keras.applications.EfficientNetB0 and EfficientNetB2, ported to Flax.

Recorded features (`KERAS_FEATURES`), as outputs of Keras layers: 'stem' is Keras' `stem_activation` (after
stem_conv, stem_bn and swish), not the conv's output; 'block<i>' the output of group i's last block (the
input of `block<i+1>a_expand_conv`, and of `top_conv` for block7); 'top_conv' is `top_activation` (after
top_conv, top_bn and swish).

Design notes: docs/modules.md (`fpclass/models/architectures/keras_efficientnet.py`).
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fpclass.models import ModelSpec, feature, keras_graph, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.keras_layers import Normalization, batch_norm, correct_pad, swish
from fpclass.models.weights import WeightsFile

# (kernel, repeats, filters_in, filters_out, expand_ratio, stride) per group: efficientnet.DEFAULT_BLOCKS_ARGS.
# Every block has se_ratio 0.25 and id_skip True.
BLOCKS = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
          (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
SE_RATIO = 0.25
BN_MOMENTUM = 0.99
IMAGENET_STD = (0.229, 0.224, 0.225)   # efficientnet.IMAGENET_STDDEV_RGB
STAGES = ('stem', *(f'block{i}' for i in range(1, len(BLOCKS) + 1)), 'top_conv')
# Each recorded feature: the Keras layer whose output it equals (see the module docstring).
KERAS_FEATURES = {
    'stem': 'stem_activation',
    **{f'block{i}': f'the last block of group {i}: the input of block{i + 1}a_expand_conv' for i in range(1, 7)},
    'block7': 'the last block of group 7: the input of top_conv',
    'top_conv': 'top_activation',
}

# efficientnet.CONV_KERNEL_INITIALIZER / DENSE_KERNEL_INITIALIZER (for layers trained from scratch). A Keras
# depthwise kernel is (kh, kw, C, 1), so its fan_out is kh * kw: Flax's (kh, kw, 1, C) swaps the axes.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
depthwise_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal', in_axis=-1, out_axis=-2)
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_out', 'uniform')


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  filters *= width
  new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * filters else new)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


def block_names(depth: float) -> list:
  """[[block1a], [block2a, block2b], ...]: Keras' block names per group."""
  return [[f'block{i}{chr(ord("a") + j)}' for j in range(round_repeats(group[1], depth))]
          for i, group in enumerate(BLOCKS, start=1)]


class MBConv(nn.Module):
  """efficientnet.block."""
  filters_in: int
  filters_out: int
  kernel: int
  stride: int
  expand_ratio: int
  drop_rate: float
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, train):
    bn = functools.partial(batch_norm, frozen=self.frozen, train=train, momentum=BN_MOMENTUM, dtype=self.dtype)
    conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype)
    filters = self.filters_in * self.expand_ratio
    x = inputs
    if self.expand_ratio != 1:
      x = swish(bn('expand_bn')(conv(filters, (1, 1), use_bias=False, name='expand_conv')(x)))
    padding = correct_pad(x.shape[1:3], self.kernel) if self.stride == 2 else 'SAME'
    x = Conv(filters, (self.kernel, self.kernel), self.stride, padding=padding, feature_group_count=filters,
             use_bias=False, kernel_init=depthwise_init, dtype=self.dtype, name='dwconv')(x)
    x = swish(bn('bn')(x))
    se = jnp.mean(x, axis=(1, 2), keepdims=True)
    se = swish(conv(max(1, int(self.filters_in * SE_RATIO)), (1, 1), name='se_reduce')(se))
    x = x * nn.sigmoid(conv(filters, (1, 1), name='se_expand')(se))
    x = bn('project_bn')(conv(self.filters_out, (1, 1), use_bias=False, name='project_conv')(x))
    if self.stride == 1 and self.filters_in == self.filters_out:
      # Drop-connect: Keras' Dropout(noise_shape=(None, 1, 1, 1)) drops a sample's whole residual branch.
      # A frozen block runs in inference mode throughout, as its BN layers do.
      x = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train or self.frozen)(x)
      x = x + inputs
    return x


class EfficientNet(transfer.Backbone, kw_only=True):
  width: float = 1.0
  depth: float = 1.0
  dropout_rate: float = 0.2        # the source top's dropout (Keras: 0.2 for B0, 0.3 for B2)
  drop_connect_rate: float = 0.2   # the last block's drop-connect rate (Keras' drop_connect_rate)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = x * (1.0 / 255.0)   # keras Rescaling(1 / 255)
    x = Normalization(self.dtype, name='normalization')(x)
    x = transfer.StemConv(round_filters(32, self.width), (3, 3), 2, padding=correct_pad(x.shape[1:3], 3),
                          use_bias=False, kernel_init=conv_init, dtype=self.dtype, gray=self.in_channels == 1,
                          name='stem_conv')(x)
    x = swish(batch_norm('stem_bn', self.stage_frozen(0), train, BN_MOMENTUM, dtype=self.dtype)(x))
    x = feature(self, features, 'stem', x)
    names = block_names(self.depth)
    total, index = sum(len(group) for group in names), 0
    for stage, ((kernel, _, filters_in, filters_out, expand, stride), group) in enumerate(zip(BLOCKS, names), 1):
      if stage > last:
        break
      filters_in, filters_out = round_filters(filters_in, self.width), round_filters(filters_out, self.width)
      for j, name in enumerate(group):
        x = MBConv(filters_in if j == 0 else filters_out, filters_out, kernel, stride if j == 0 else 1, expand,
                   self.drop_connect_rate * index / total, self.stage_frozen(stage), self.dtype, name=name)(x, train)
        index += 1
      x = feature(self, features, f'block{stage}', x)
    if last == len(STAGES) - 1:
      x = Conv(round_filters(1280, self.width), (1, 1), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
               name='top_conv')(x)
      x = swish(batch_norm('top_bn', self.stage_frozen(last), train, BN_MOMENTUM, dtype=self.dtype)(x))
      x = feature(self, features, 'top_conv', x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, kernel_init=dense_init, dtype=self.dtype, name='predictions')(x).astype(
        jnp.float32), features


def keras_layers(depth: float) -> list:
  """Every weighted layer in Keras' `model.layers` order (keras_graph): (name, class, Flax module path).
  tf.keras 2 and Keras 3 give them the same names; the Normalization layer is unnamed, and a fresh tf.keras
  session calls it 'normalization'. Chains of weightless layers stand as one op each."""
  g = keras_graph.KerasGraph()

  def layer(x, cls, name, block=''):
    return g.layer(x, cls, f'{block}/{name}' if block else name, name=f'{block}_{name}' if block else name)

  x = layer(g.op(g.op()), 'Normalization', 'normalization')   # input, Rescaling
  x = g.op(layer(layer(g.op(x), 'Conv2D', 'stem_conv'), 'BatchNormalization', 'stem_bn'))   # pad; swish
  for (_, _, filters_in, filters_out, expand, stride), group in zip(BLOCKS, block_names(depth)):
    for j, block in enumerate(group):
      inputs = x
      if expand != 1:
        x = g.op(layer(layer(x, 'Conv2D', 'expand_conv', block), 'BatchNormalization', 'expand_bn', block))
      x = g.op(layer(layer(x, 'DepthwiseConv2D', 'dwconv', block), 'BatchNormalization', 'bn', block))
      se = layer(layer(g.op(x), 'Conv2D', 'se_reduce', block), 'Conv2D', 'se_expand', block)  # squeeze, reshape
      x = layer(layer(g.op(x, se), 'Conv2D', 'project_conv', block), 'BatchNormalization', 'project_bn', block)
      if j > 0 or (stride == 1 and filters_in == filters_out):
        x = g.op(g.op(x), inputs)   # drop-connect, add
  x = g.op(layer(layer(x, 'Conv2D', 'top_conv'), 'BatchNormalization', 'top_bn'))
  layer(g.op(g.op(x)), 'Dense', 'predictions')   # pool, dropout
  return g.weighted_layers()


def undo_imagenet_variance(mapped: dict) -> dict:
  """The official ImageNet files' Normalization variance is ImageNet's std; Keras' weights='imagenet' model
  divides by sqrt(variance * std) (module docstring). Files with other statistics are unchanged."""
  key = ('batch_stats', 'normalization', 'variance')
  if key in mapped and mapped[key].shape == (3,) and np.allclose(mapped[key], IMAGENET_STD, rtol=1e-6, atol=0):
    mapped = {**mapped, key: (mapped[key] * np.asarray(IMAGENET_STD)).astype(np.float32)}
  return mapped


BASE_URL = 'https://storage.googleapis.com/keras-applications/'


def _spec(name, keras_name, width, depth, dropout_rate, hashes):
  return ModelSpec(
      name, functools.partial(EfficientNet, width=width, depth=depth, dropout_rate=dropout_rate), 'keras',
      cam_layer='top_conv',
      description=f'keras.applications.{keras_name}; takes 0..255 pixels (Rescaling and Normalization inside)',
      preprocessing=preprocessing.RAW_0_255,
      stages=(('stem', r'^(normalization|stem_conv|stem_bn)/'),
              *((f'block{i}', rf'^block{i}[a-z]/') for i in range(1, len(BLOCKS) + 1)),
              ('top_conv', r'^top_(conv|bn)/')),
      weights={'imagenet': WeightsFile(f'{BASE_URL}{keras_name.lower()}.h5', f'md5:{hashes[0]}'),
               'imagenet_notop': WeightsFile(f'{BASE_URL}{keras_name.lower()}_notop.h5', f'md5:{hashes[1]}')},
      convert=keras_graph.converter(keras_layers(depth), optional=('predictions',), adjust=undo_imagenet_variance),
      source_head=r'^params/predictions/', source_top=r'^params/predictions/',
      stem='stem_conv|batch_stats/stem_bn/mean', stem_norm='normalization')


# efficientnet.WEIGHTS_HASHES: (with top, without top), md5.
register(_spec('keras_efficientnetb0', 'EfficientNetB0', 1.0, 1.0, 0.2,
               ('902e53a9f72be733fc0bcb005b3ebbac', '50bc09e76180e00e4465e1a485ddc09d')))
register(_spec('keras_efficientnetb2', 'EfficientNetB2', 1.1, 1.2, 0.3,
               ('b15cce36ff4dcbd00b6dd88e7857a6ad', '111f8e2ac8aa800a7a99e3239f7bfb39')))
