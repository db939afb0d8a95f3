"""Keras ResNet50 (v1) and ResNet50V2, ported to Flax.

Recorded features (`KERAS_FEATURES`), as outputs of Keras layers: 'conv1' is `pool1_pool` (v1: after
conv1_conv, conv1_bn, conv1_relu and the padded max pool; v2: the conv and the pool only); 'conv2' .. 'conv5'
are each stack's last `conv<k>_block<n>_out` (v1: after the residual add and ReLU; v2: the add), except v2's
'conv5', which is `post_relu` (after post_bn and ReLU).

Design notes: docs/modules.md (`fpclass/models/architectures/keras_resnet.py`).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, keras_graph, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.keras_layers import batch_norm
from fpclass.models.layers.pooling import max_pool
from fpclass.models.weights import WeightsFile

BN_EPSILON = 1.001e-5
STAGES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
STACK_FILTERS = (64, 128, 256, 512)
# Each recorded feature: the Keras layer whose output it equals, v1 and v2 (see the module docstring).
KERAS_FEATURES = {'conv1': 'pool1_pool', 'conv2': 'conv2_block3_out', 'conv3': 'conv3_block4_out',
                  'conv4': 'conv4_block6_out', 'conv5': 'conv5_block3_out (ResNet50V2: post_relu)'}
glorot_uniform = nn.initializers.glorot_uniform()  # Keras' default kernel initializer


def _bn(name, frozen, train, dtype):
  return batch_norm(name, frozen, train, momentum=0.99, epsilon=BN_EPSILON, dtype=dtype)


def _conv(filters, kernel, name, dtype, stride=1, padding='VALID', use_bias=True):
  return Conv(filters, (kernel, kernel), stride, padding=padding, use_bias=use_bias,
              kernel_init=glorot_uniform, dtype=dtype, name=name)


def zero_pad(x, pad: int):
  """Keras ZeroPadding2D: zeros in the input space (not -inf, even before a max pool)."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


class _Block(nn.Module):
  """The fields Keras' stack_residual_blocks gives both block versions."""
  filters: int
  stride: int = 1
  conv_shortcut: bool = False
  frozen: bool = False
  dtype: Any = jnp.float32


class BlockV1(_Block):
  """ResNet50's bottleneck block (Keras' resnet.block1): convolutions, then the residual add and ReLU."""

  @nn.compact
  def __call__(self, x, train):
    f, dt = self.filters, self.dtype
    shortcut = x
    if self.conv_shortcut:
      shortcut = _bn('0_bn', self.frozen, train, dt)(_conv(4 * f, 1, '0_conv', dt, self.stride)(x))
    y = nn.relu(_bn('1_bn', self.frozen, train, dt)(_conv(f, 1, '1_conv', dt, self.stride)(x)))
    y = nn.relu(_bn('2_bn', self.frozen, train, dt)(_conv(f, 3, '2_conv', dt, padding='SAME')(y)))
    y = _bn('3_bn', self.frozen, train, dt)(_conv(4 * f, 1, '3_conv', dt)(y))
    return nn.relu(shortcut + y)


class BlockV2(_Block):
  """ResNet50V2's pre-activation block (Keras' resnet.block2)."""

  @nn.compact
  def __call__(self, x, train):
    f, dt = self.filters, self.dtype
    preact = nn.relu(_bn('preact_bn', self.frozen, train, dt)(x))
    if self.conv_shortcut:
      shortcut = _conv(4 * f, 1, '0_conv', dt, self.stride)(preact)
    else:  # MaxPooling2D(1, strides=stride): subsampling
      shortcut = x[:, ::self.stride, ::self.stride]
    y = nn.relu(_bn('1_bn', self.frozen, train, dt)(_conv(f, 1, '1_conv', dt, use_bias=False)(preact)))
    y = _conv(f, 3, '2_conv', dt, self.stride, use_bias=False)(zero_pad(y, 1))
    y = nn.relu(_bn('2_bn', self.frozen, train, dt)(y))
    return shortcut + _conv(4 * f, 1, '3_conv', dt)(y)


def block_args(preact: bool, stack: int, block: int, blocks: int) -> dict:
  """Stride and shortcut kind of block `block` (1-based) of stack `stack` (0-based: conv2 is 0)."""
  if preact:  # v2: a conv shortcut on the first block, the stride on the last (none in conv5)
    return dict(conv_shortcut=block == 1, stride=2 if block == blocks and stack < 3 else 1)
  return dict(conv_shortcut=block == 1, stride=2 if block == 1 and stack > 0 else 1)


class KerasResNet(transfer.Backbone, kw_only=True):
  stack_sizes: Sequence[int]
  preact: bool

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    # Keras' ZeroPadding2D(3) + 'valid' conv, as the conv's own padding (StemConv needs to see it).
    x = transfer.StemConv(64, (7, 7), 2, padding=3, kernel_init=glorot_uniform, dtype=self.dtype,
                          gray=self.in_channels == 1, name='conv1_conv')(x)
    if not self.preact:
      x = nn.relu(_bn('conv1_bn', self.stage_frozen(0), train, self.dtype)(x))
    x = max_pool(zero_pad(x, 1), (3, 3), strides=(2, 2))
    x = feature(self, features, 'conv1', x)
    block_cls = BlockV2 if self.preact else BlockV1
    for stack, blocks in enumerate(self.stack_sizes[:last]):
      frozen = self.stage_frozen(stack + 1)
      for block in range(1, blocks + 1):
        x = block_cls(STACK_FILTERS[stack], frozen=frozen, dtype=self.dtype, name=f'conv{stack + 2}_block{block}',
                      **block_args(self.preact, stack, block, blocks))(x, train)
      if self.preact and stack == 3:
        x = nn.relu(_bn('post_bn', frozen, train, self.dtype)(x))
      x = feature(self, features, STAGES[stack + 1], x)
    if self.top == 'source':
      x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
      return nn.Dense(self.num_outputs, kernel_init=glorot_uniform, dtype=self.dtype, name='predictions')(
          x).astype(jnp.float32), features
    return transfer.new_top(self, x, features, train), features


def keras_layers(stack_sizes, preact):
  """The weighted layers of keras.applications.ResNet50/ResNet50V2(include_top=True), in Keras' order."""
  g = keras_graph.KerasGraph()

  def layer(x, cls, flax):
    return g.layer(x, cls, flax, name=flax.replace('/', '_'))

  x = g.op(g.op())                                   # input, conv1_pad
  x = layer(x, 'Conv2D', 'conv1_conv')
  if not preact:
    x = g.op(layer(x, 'BatchNormalization', 'conv1_bn'))
  x = g.op(g.op(x))                                  # pool1_pad, pool1_pool
  for stack, blocks in enumerate(stack_sizes):
    for block in range(1, blocks + 1):
      args, name = block_args(preact, stack, block, blocks), f'conv{stack + 2}_block{block}'
      if preact:
        preact_x = g.op(layer(x, 'BatchNormalization', f'{name}/preact_bn'))
        shortcut = layer(preact_x, 'Conv2D', f'{name}/0_conv') if args['conv_shortcut'] else \
            (g.op(x) if args['stride'] > 1 else x)
        y = g.op(layer(layer(preact_x, 'Conv2D', f'{name}/1_conv'), 'BatchNormalization', f'{name}/1_bn'))
        y = g.op(layer(layer(g.op(y), 'Conv2D', f'{name}/2_conv'), 'BatchNormalization', f'{name}/2_bn'))
        x = g.op(shortcut, layer(y, 'Conv2D', f'{name}/3_conv'))
      else:
        shortcut = layer(layer(x, 'Conv2D', f'{name}/0_conv'), 'BatchNormalization', f'{name}/0_bn') \
            if args['conv_shortcut'] else x
        y = g.op(layer(layer(x, 'Conv2D', f'{name}/1_conv'), 'BatchNormalization', f'{name}/1_bn'))
        y = g.op(layer(layer(y, 'Conv2D', f'{name}/2_conv'), 'BatchNormalization', f'{name}/2_bn'))
        y = layer(layer(y, 'Conv2D', f'{name}/3_conv'), 'BatchNormalization', f'{name}/3_bn')
        x = g.op(g.op(shortcut, y))                  # add, out (ReLU)
  if preact:
    x = g.op(layer(x, 'BatchNormalization', 'post_bn'))
  layer(g.op(x), 'Dense', 'predictions')             # avg_pool, predictions
  return g.weighted_layers()


KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/resnet/'


def _spec(name, keras_name, preact, hashes, norm):
  files = f'{KERAS_URL}{keras_name.lower()}_weights_tf_dim_ordering_tf_kernels'
  stack_sizes = (3, 4, 6, 3)
  last_stage = r'^(conv5_|post_bn/)' if preact else r'^conv5_'
  return ModelSpec(
      name, functools.partial(KerasResNet, stack_sizes=stack_sizes, preact=preact), 'keras', cam_layer='conv5',
      description=(f'Keras {keras_name}; stages (cut, freeze_till) are its stacks conv1 (stem) .. conv5. '
                   "Weights: 'imagenet' (with the 1000-class top) or 'imagenet_notop', or a .weights.h5/.h5 "
                   'file Keras wrote'),
      preprocessing=norm,
      stages=(('conv1', r'^conv1_'), ('conv2', r'^conv2_'), ('conv3', r'^conv3_'), ('conv4', r'^conv4_'),
              ('conv5', last_stage)),
      weights={'imagenet': WeightsFile(f'{files}.h5', f'md5:{hashes[0]}'),
               'imagenet_notop': WeightsFile(f'{files}_notop.h5', f'md5:{hashes[1]}')},
      convert=keras_graph.converter(keras_layers(stack_sizes, preact), optional=('predictions',)),
      source_head=r'^params/predictions/', source_top=r'^params/predictions/',
      stem='conv1_conv|params/conv1_conv/bias')


# md5 hashes from keras/src/applications/resnet.py WEIGHTS_HASHES (with top, no top).
register(_spec('keras_resnet50', 'ResNet50', False,
               ('2cb95161c43110f7111970584f804107', '4d473c1dd8becc155b73f8504c6f6626'), preprocessing.KERAS_CAFFE))
register(_spec('keras_resnet50v2', 'ResNet50V2', True,
               ('3ef43a0b657b3be2300d5770ece849e0', 'fac2f116257151a9d068a22e544a4917'), preprocessing.KERAS_TF))
