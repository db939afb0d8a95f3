"""keras.applications.MobileNetV3Large (alpha 1.0, not minimalistic), ported to Flax.

Recorded features (`KERAS_FEATURES`), as Keras tensors: 'stem' is the hard swish after `conv_bn` (the input
of `expanded_conv_depthwise`), not the conv's output; each 'expanded_conv[_i]' is its block's output, after
the residual add where there is one (the input of the next block's `_expand` conv, or of `conv_1`);
'conv_1' is the hard swish after `conv_1_bn` (an unnamed Keras activation layer), not the conv's output.

Design notes: docs/modules.md (`fpclass/models/architectures/keras_mobilenet_v3.py`).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, keras_graph, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.keras_layers import batch_norm, correct_pad, hard_sigmoid, hard_swish
from fpclass.models.weights import WeightsFile

# (expansion, output filters, kernel, stride, squeeze-excite, activation): MobileNetV3Large's stack_fn.
LARGE_BLOCKS = (
    (1, 16, 3, 1, False, 'relu'), (4, 24, 3, 2, False, 'relu'), (3, 24, 3, 1, False, 'relu'),
    (3, 40, 5, 2, True, 'relu'), (3, 40, 5, 1, True, 'relu'), (3, 40, 5, 1, True, 'relu'),
    (6, 80, 3, 2, False, 'hard_swish'), (2.5, 80, 3, 1, False, 'hard_swish'), (2.3, 80, 3, 1, False, 'hard_swish'),
    (2.3, 80, 3, 1, False, 'hard_swish'), (6, 112, 3, 1, True, 'hard_swish'), (6, 112, 3, 1, True, 'hard_swish'),
    (6, 160, 5, 2, True, 'hard_swish'), (6, 160, 5, 1, True, 'hard_swish'), (6, 160, 5, 1, True, 'hard_swish'),
)
SE_RATIO = 0.25
STEM_CHANNELS, LAST_POINT_CHANNELS = 16, 1280
BN_MOMENTUM = 0.999
ACTIVATIONS = {'relu': nn.relu, 'hard_swish': hard_swish}


def make_divisible(v, divisor=8):
  """mobilenet_v3._depth: round to a multiple of 8, never more than 10% down."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def block_name(block_id: int) -> str:
  return 'expanded_conv' if block_id == 0 else f'expanded_conv_{block_id}'


class InvertedResidual(nn.Module):
  """mobilenet_v3._inverted_res_block."""
  expansion: float
  filters: int
  kernel: int
  stride: int
  squeeze_excite: bool
  activation: str
  expand: bool           # Keras skips the expand conv in block 0
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    act = ACTIVATIONS[self.activation]
    bn = functools.partial(batch_norm, frozen=self.frozen, train=train, momentum=BN_MOMENTUM, dtype=self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
    shortcut, in_filters = x, x.shape[-1]
    expanded = make_divisible(in_filters * self.expansion)
    if self.expand:
      x = act(bn('expand_bn')(conv(expanded, (1, 1), name='expand')(x)))
    padding = correct_pad(x.shape[1:3], self.kernel) if self.stride == 2 else 'SAME'
    x = conv(x.shape[-1], (self.kernel, self.kernel), self.stride, padding=padding, feature_group_count=x.shape[-1],
             name='depthwise')(x)
    x = act(bn('depthwise_bn')(x))
    if self.squeeze_excite:
      s = jnp.mean(x, axis=(1, 2), keepdims=True)
      s = nn.relu(Conv(make_divisible(expanded * SE_RATIO), (1, 1), dtype=self.dtype,
                       name='squeeze_excite_conv')(s))
      x = x * hard_sigmoid(Conv(expanded, (1, 1), dtype=self.dtype, name='squeeze_excite_conv_1')(s))
    x = bn('project_bn')(conv(self.filters, (1, 1), name='project')(x))
    if self.stride == 1 and in_filters == self.filters:
      x = shortcut + x
    return x


STAGES = ('stem', *(block_name(i) for i in range(len(LARGE_BLOCKS))), 'conv_1')
# Each recorded feature: the Keras tensor it equals (see the module docstring).
KERAS_FEATURES = {
    'stem': 'the hard swish after conv_bn: the input of expanded_conv_depthwise',
    **{block_name(i): f'the output of {block_name(i)}: the input of {block_name(i + 1)}_expand'
       for i in range(len(LARGE_BLOCKS) - 1)},
    block_name(len(LARGE_BLOCKS) - 1): f'the output of {block_name(len(LARGE_BLOCKS) - 1)}: the input of conv_1',
    'conv_1': 'the hard swish after conv_1_bn (an unnamed activation layer)',
}


class MobileNetV3Large(transfer.Backbone, kw_only=True):
  dropout_rate: float = 0.2   # the source top's dropout (keras' dropout_rate)

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    x = x * (1.0 / 127.5) - 1.0   # keras Rescaling(scale=1 / 127.5, offset=-1)
    x = transfer.StemConv(STEM_CHANNELS, (3, 3), 2, padding='SAME', use_bias=False, dtype=self.dtype,
                          gray=self.in_channels == 1, name='conv')(x)
    x = hard_swish(batch_norm('conv_bn', self.stage_frozen(0), train, BN_MOMENTUM, dtype=self.dtype)(x))
    x = feature(self, features, 'stem', x)
    for block_id, (expansion, filters, kernel, stride, se, activation) in enumerate(LARGE_BLOCKS[:last]):
      x = InvertedResidual(expansion, filters, kernel, stride, se, activation, expand=block_id > 0,
                           frozen=self.stage_frozen(block_id + 1), dtype=self.dtype,
                           name=block_name(block_id))(x, train)
      x = feature(self, features, block_name(block_id), x)
    if last == len(STAGES) - 1:
      x = Conv(make_divisible(x.shape[-1] * 6), (1, 1), use_bias=False, dtype=self.dtype, name='conv_1')(x)
      x = hard_swish(batch_norm('conv_1_bn', self.stage_frozen(last), train, BN_MOMENTUM, dtype=self.dtype)(x))
      x = feature(self, features, 'conv_1', x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = hard_swish(Conv(LAST_POINT_CHANNELS, (1, 1), dtype=self.dtype, name='conv_2')(x))
    features['pre_logits'] = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = Conv(self.num_outputs, (1, 1), dtype=self.dtype, name='logits')(x)
    return x.reshape(x.shape[0], -1).astype(jnp.float32), features


def keras_layers() -> list:
  """Every weighted layer in Keras' `model.layers` order (keras_graph): (tf.keras 2 name, class, Flax path).

  The graph below has every branch and merge of Keras' (squeeze-excite multiply, residual add), which is
  what decides the order; chains of weightless layers stand as one op each."""
  g = keras_graph.KerasGraph()

  def conv_bn(x, legacy, flax, cls='Conv2D'):
    x = g.layer(x, cls, flax, name=legacy)
    return g.op(g.layer(x, 'BatchNormalization', f'{flax}_bn', name=f'{legacy}/BatchNorm'))  # + activation

  x = conv_bn(g.op(g.op()), 'Conv', 'conv')   # input, Rescaling
  in_filters = STEM_CHANNELS
  for block_id, (_, filters, _, stride, se, _) in enumerate(LARGE_BLOCKS):
    prefix, shortcut = block_name(block_id), x
    if block_id:
      x = conv_bn(x, f'{prefix}/expand', f'{prefix}/expand')
    x = conv_bn(x, f'{prefix}/depthwise', f'{prefix}/depthwise', 'DepthwiseConv2D')
    if se:
      s = g.layer(g.op(x), 'Conv2D', f'{prefix}/squeeze_excite_conv', name=f'{prefix}/squeeze_excite/Conv')
      s = g.layer(g.op(s), 'Conv2D', f'{prefix}/squeeze_excite_conv_1', name=f'{prefix}/squeeze_excite/Conv_1')
      x = g.op(x, g.op(s))   # hard sigmoid, multiply
    x = g.layer(g.layer(x, 'Conv2D', f'{prefix}/project', name=f'{prefix}/project'), 'BatchNormalization',
                f'{prefix}/project_bn', name=f'{prefix}/project/BatchNorm')
    if stride == 1 and in_filters == filters:
      x = g.op(shortcut, x)  # add
    in_filters = filters
  x = g.op(conv_bn(x, 'Conv_1', 'conv_1'))   # global average pool
  x = g.op(g.layer(x, 'Conv2D', 'conv_2', name='Conv_2'))   # hard swish
  g.op(g.layer(g.op(x), 'Conv2D', 'logits', name='Logits'))   # dropout, flatten
  return g.weighted_layers()


BASE_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/'
register(ModelSpec(
    'keras_mobilenetv3large', MobileNetV3Large, 'keras', cam_layer='conv_1',
    description='keras.applications.MobileNetV3Large; the Grad-CAM layer is conv_1 (960 channels, the last '
                'conv stage), not the 1x1 logits conv',
    preprocessing=preprocessing.RAW_0_255,
    stages=(('stem', r'^conv(_bn)?/'), *((name, rf'^{name}/') for name in STAGES[1:-1]), ('conv_1', r'^conv_1(_bn)?/')),
    weights={'imagenet': WeightsFile(BASE_URL + 'weights_mobilenet_v3_large_224_1.0_float.h5',
                                     'md5:59e551e166be033d707958cf9e29a6a7'),
             'imagenet_notop': WeightsFile(BASE_URL + 'weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5',
                                           'md5:07fb09a5933dd0c8eaafa16978110389')},
    convert=keras_graph.converter(keras_layers(), optional=('conv_2', 'logits')),
    source_head=r'^params/logits/', source_top=r'^params/(conv_2|logits)/', stem='conv|batch_stats/conv_bn/mean'))
