"""Keras VGG16, ported to Flax.

Module names are Keras' layer names. As in keras/src/applications/vgg16.py: 3x3 'same' convs with bias and
ReLU, 2x2/2 max pools, and the top flatten -> fc1 (4096, ReLU) -> fc2 (4096, ReLU) -> predictions; no BN,
no dropout. The flatten is in (H, W, C) order, as Keras flattens channels-last maps, so fc1 is tied to the
input size (224 for the ImageNet top).

Stages are the Keras layers themselves, in order (block1_conv1, block1_conv2, block1_pool, block2_conv1,
...), so "freeze the first N layers" is `freeze_till=N`: Keras `base.layers[1:N+1]` (the
InputLayer is base.layers[0] and is not counted; pools count, though they have no weights).

Recorded features (`KERAS_FEATURES`): each is the output of the Keras layer of the same name; a conv's is
after its ReLU (Keras' VGG16 convs carry activation='relu').
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, keras_graph, preprocessing, register, transfer
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.pooling import max_pool
from fpclass.models.weights import WeightsFile

BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LAYERS = tuple(name for b, convs in enumerate(BLOCKS, start=1)
               for name in [f'block{b}_conv{c}' for c in range(1, len(convs) + 1)] + [f'block{b}_pool'])
TOP_LAYERS = ('fc1', 'fc2', 'predictions')
KERAS_FEATURES = {name: name for name in LAYERS}   # each recorded feature: the Keras layer whose output it is
glorot_uniform = nn.initializers.glorot_uniform()  # Keras' default kernel initializer


class KerasVGG16(transfer.Backbone, kw_only=True):
  """Keras VGG16. It has no BN, so freeze_till freezes through the optimizer alone (fpclass.train.optim.param_groups)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    last = transfer.check_cut(self.cut, LAYERS, self.top)
    features = {}
    widths = [w for convs in BLOCKS for w in (*convs, None)]
    for name, width in zip(LAYERS[:last + 1], widths):
      if width is None:
        x = max_pool(x, (2, 2), strides=(2, 2))
      else:
        conv = functools.partial(transfer.StemConv, gray=self.in_channels == 1) if name == LAYERS[0] else Conv
        x = nn.relu(conv(width, (3, 3), padding='SAME', kernel_init=glorot_uniform, dtype=self.dtype,
                         name=name)(x))
      x = feature(self, features, name, x)
    if self.top != 'source':
      return transfer.new_top(self, x, features, train), features
    x = x.reshape(x.shape[0], -1)
    for name in TOP_LAYERS[:2]:
      x = nn.relu(nn.Dense(4096, kernel_init=glorot_uniform, dtype=self.dtype, name=name)(x))
    features['pre_logits'] = x
    return nn.Dense(self.num_outputs, kernel_init=glorot_uniform, dtype=self.dtype, name='predictions')(
        x).astype(jnp.float32), features


def keras_layers():
  """The weighted layers of keras.applications.VGG16(include_top=True): a chain, so creation order."""
  g = keras_graph.KerasGraph()
  x = g.op()
  for name in LAYERS:
    x = g.op(x) if name.endswith('_pool') else g.layer(x, 'Conv2D', name, name=name)
  x = g.op(x)  # flatten
  for name in TOP_LAYERS:
    x = g.layer(x, 'Dense', name, name=name)
  return g.weighted_layers()


KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/'
register(ModelSpec(
    'keras_vgg16', KerasVGG16, 'keras', cam_layer='block5_conv3',
    description=("Keras VGG16. Stages are its 18 Keras layers after the input (block1_conv1 .. block5_pool): "
                 'freeze_till=N freezes the first N of them, as Keras base.layers[1:N+1]. Weights: '
                 "'imagenet' (with the flatten-fc1-fc2 top, 224x224 input) or 'imagenet_notop', or a "
                 '.weights.h5/.h5 file Keras wrote'),
    preprocessing=preprocessing.KERAS_CAFFE,
    stages=tuple((name, rf'^{name}/') for name in LAYERS),
    # md5 hashes from keras/src/applications/vgg16.py
    weights={'imagenet': WeightsFile(f'{KERAS_URL}vgg16_weights_tf_dim_ordering_tf_kernels.h5',
                                     'md5:64373286793e3c8b2b4e3219cbf3544b'),
             'imagenet_notop': WeightsFile(f'{KERAS_URL}vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
                                           'md5:6d6bbae143d832006294945121d1f1fc')},
    convert=keras_graph.converter(keras_layers(), optional=TOP_LAYERS),
    source_head=r'^params/predictions/', source_top=r'^params/(fc1|fc2|predictions)/',
    stem='block1_conv1|params/block1_conv1/bias'))
