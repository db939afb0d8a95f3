"""Keras InceptionV3, ported to Flax.

Recorded features (`KERAS_FEATURES`), as outputs of Keras layers: 'stem' is the second 3x3/2 max pool
(unnamed in Keras: `max_pooling2d_1` in a fresh session), after conv5's BN and ReLU; 'mixed<i>' is Keras'
concatenation `mixed<i>`, every branch after its BN and ReLU.

Design notes: docs/modules.md (`fpclass/models/architectures/keras_inception.py`).
"""
import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, keras_graph, preprocessing, register, transfer
from fpclass.models.layers import conv as conv_layer
from fpclass.models.layers.pooling import max_pool
from fpclass.models.weights import WeightsFile

BN_EPSILON = 1e-3  # Keras' BatchNormalization default, which conv2d_bn keeps
glorot_uniform = nn.initializers.glorot_uniform()


@dataclasses.dataclass(frozen=True)
class Conv:
  """Keras conv2d_bn(x, filters, kernel..., strides, padding)."""
  name: str
  filters: int
  kernel: tuple = (1, 1)
  stride: int = 1
  padding: str = 'SAME'


@dataclasses.dataclass(frozen=True)
class Fork:
  """Two sub-branches from the same input, concatenated (the 1x3 / 3x1 pairs of mixed9 and mixed10)."""
  left: tuple
  right: tuple


AVG_POOL = 'avg_pool'   # 3x3/1 'same', padding excluded from the average
MAX_POOL = 'max_pool'   # 3x3/2 'valid'


def _block_a(pool_filters):  # mixed0-2, 35x35
  return ((Conv('branch1x1', 64),),
          (Conv('branch5x5_1', 48), Conv('branch5x5_2', 64, (5, 5))),
          (Conv('branch3x3dbl_1', 64), Conv('branch3x3dbl_2', 96, (3, 3)), Conv('branch3x3dbl_3', 96, (3, 3))),
          (AVG_POOL, Conv('branch_pool', pool_filters)))


def _block_c(width):  # mixed4-7, 17x17
  return ((Conv('branch1x1', 192),),
          (Conv('branch7x7_1', width), Conv('branch7x7_2', width, (1, 7)), Conv('branch7x7_3', 192, (7, 1))),
          (Conv('branch7x7dbl_1', width), Conv('branch7x7dbl_2', width, (7, 1)),
           Conv('branch7x7dbl_3', width, (1, 7)), Conv('branch7x7dbl_4', width, (7, 1)),
           Conv('branch7x7dbl_5', 192, (1, 7))),
          (AVG_POOL, Conv('branch_pool', 192)))


BLOCK_B = ((Conv('branch3x3', 384, (3, 3), 2, 'VALID'),),   # mixed3: 35 -> 17
           (Conv('branch3x3dbl_1', 64), Conv('branch3x3dbl_2', 96, (3, 3)),
            Conv('branch3x3dbl_3', 96, (3, 3), 2, 'VALID')),
           (MAX_POOL,))
BLOCK_D = ((Conv('branch3x3_1', 192), Conv('branch3x3_2', 320, (3, 3), 2, 'VALID')),   # mixed8: 17 -> 8
           (Conv('branch7x7x3_1', 192), Conv('branch7x7x3_2', 192, (1, 7)), Conv('branch7x7x3_3', 192, (7, 1)),
            Conv('branch7x7x3_4', 192, (3, 3), 2, 'VALID')),
           (MAX_POOL,))
BLOCK_E = ((Conv('branch1x1', 320),),   # mixed9-10, 8x8
           (Conv('branch3x3_1', 384),
            Fork((Conv('branch3x3_2a', 384, (1, 3)),), (Conv('branch3x3_2b', 384, (3, 1)),))),
           (Conv('branch3x3dbl_1', 448), Conv('branch3x3dbl_2', 384, (3, 3)),
            Fork((Conv('branch3x3dbl_3a', 384, (1, 3)),), (Conv('branch3x3dbl_3b', 384, (3, 1)),))),
           (AVG_POOL, Conv('branch_pool', 192)))
STEM = ((Conv('conv1', 32, (3, 3), 2, 'VALID'), Conv('conv2', 32, (3, 3), 1, 'VALID'), Conv('conv3', 64, (3, 3)),
         MAX_POOL, Conv('conv4', 80, (1, 1), 1, 'VALID'), Conv('conv5', 192, (3, 3), 1, 'VALID'), MAX_POOL),)
BLOCKS = (('stem', STEM), ('mixed0', _block_a(32)), ('mixed1', _block_a(64)), ('mixed2', _block_a(64)),
          ('mixed3', BLOCK_B), ('mixed4', _block_c(128)), ('mixed5', _block_c(160)), ('mixed6', _block_c(160)),
          ('mixed7', _block_c(192)), ('mixed8', BLOCK_D), ('mixed9', BLOCK_E), ('mixed10', BLOCK_E))
STAGES = tuple(name for name, _ in BLOCKS)
# Each recorded feature: the Keras layer whose output it equals (see the module docstring).
KERAS_FEATURES = {'stem': 'the second max pool (unnamed)', **{name: name for name in STAGES[1:]}}


class ConvBN(nn.Module):
  """Keras conv2d_bn: conv (no bias), BN (no scale), ReLU."""
  spec: Conv
  frozen: bool = False
  dtype: Any = jnp.float32
  gray: bool = False     # the network's first conv on one channel (transfer.StemConv)

  @nn.compact
  def __call__(self, x, train):
    s = self.spec
    conv = functools.partial(transfer.StemConv, gray=True) if self.gray else conv_layer.Conv
    x = conv(s.filters, s.kernel, s.stride, padding=s.padding, use_bias=False, kernel_init=glorot_uniform,
             dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train or self.frozen, momentum=0.99, epsilon=BN_EPSILON,
                     use_scale=False, dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


class Mixed(nn.Module):
  """One stage: its branches from the same input, concatenated on channels in Keras' order."""
  branches: Sequence[tuple]
  frozen: bool = False
  dtype: Any = jnp.float32
  gray: bool = False     # the stem of a one-channel model: its first conv is exact on one channel

  @nn.compact
  def __call__(self, x, train):
    return jnp.concatenate([self._branch(ops, x, train) for ops in self.branches], axis=-1)

  def _branch(self, ops, x, train):
    for op in ops:
      if op == AVG_POOL:
        x = nn.avg_pool(x, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=False)
      elif op == MAX_POOL:
        x = max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
      elif isinstance(op, Fork):
        x = jnp.concatenate([self._branch(op.left, x, train), self._branch(op.right, x, train)], axis=-1)
      else:
        x = ConvBN(op, self.frozen, self.dtype, gray=self.gray and op == STEM[0][0], name=op.name)(x, train)
    return x


class KerasInceptionV3(transfer.Backbone, kw_only=True):

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, STAGES, self.top)
    features = {}
    for index, (name, branches) in enumerate(BLOCKS[:last + 1]):
      x = Mixed(branches, self.stage_frozen(index), self.dtype, gray=index == 0 and self.in_channels == 1,
                name=name)(x, train)
      x = feature(self, features, name, x)
    if self.top == 'source':
      x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
      return nn.Dense(self.num_outputs, kernel_init=glorot_uniform, dtype=self.dtype, name='predictions')(
          x).astype(jnp.float32), features
    return transfer.new_top(self, x, features, train), features


def keras_layers():
  """The weighted layers of keras.applications.InceptionV3(include_top=True), in Keras' order, named as the
  official legacy file names them."""
  g = keras_graph.KerasGraph()

  def branch(stage, ops, x):
    for op in ops:
      if isinstance(op, Fork):
        x = g.op(branch(stage, op.left, x), branch(stage, op.right, x))           # concatenate
      elif isinstance(op, Conv):
        x = g.layer(x, 'Conv2D', f'{stage}/{op.name}/conv')
        x = g.op(g.layer(x, 'BatchNormalization', f'{stage}/{op.name}/bn'))      # BN, ReLU
      else:
        x = g.op(x)                                                               # pooling
    return x

  x = g.op()
  for stage, branches in BLOCKS:
    outputs = [branch(stage, ops, x) for ops in branches]
    x = g.op(*outputs) if len(outputs) > 1 else outputs[0]                       # mixedN
  g.layer(g.op(x), 'Dense', 'predictions', name='predictions')                   # avg_pool, predictions
  return g.weighted_layers()


KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/'
register(ModelSpec(
    'keras_inceptionv3', KerasInceptionV3, 'keras', cam_layer='mixed10',
    description=("Keras InceptionV3 (input >= 75x75). Stages: stem, mixed0 .. mixed10; cut='mixed7' with a new "
                 "top is the horses-vs-humans extractor. Weights: 'imagenet' (with the 1000-class top) or "
                 "'imagenet_notop', or a .weights.h5/.h5 file Keras wrote"),
    preprocessing=preprocessing.KERAS_TF,
    stages=tuple((name, rf'^{name}/') for name in STAGES),
    # md5 hashes from keras/src/applications/inception_v3.py
    weights={'imagenet': WeightsFile(f'{KERAS_URL}inception_v3_weights_tf_dim_ordering_tf_kernels.h5',
                                     'md5:9a0d58056eeedaa3f26cb7ebd46da564'),
             'imagenet_notop': WeightsFile(f'{KERAS_URL}inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5',
                                           'md5:bcbd6486424b2319ff4ef7d526e38f63')},
    convert=keras_graph.converter(keras_layers(), optional=('predictions',)),
    source_head=r'^params/predictions/', source_top=r'^params/predictions/',
    stem='stem/conv1/conv|batch_stats/stem/conv1/bn/mean'))
