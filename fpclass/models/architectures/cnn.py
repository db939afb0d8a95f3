"""The seed systems' own small CNNs.

- `footprint_cnn` (the footprint baseline): 2 conv layers with max pooling and fully connected layers, Kaiming init
  as PyTorch's kaiming_normal_; switches for dropout, batch norm and FC sizes cover its experiments.
- `cifar_cnn` (the CIFAR-10 recipe): 3 blocks of 2 convs + BN + max pool + dropout, global average pooling, dense
  layers (L2 via config.train.l2), Keras' Glorot init.
- `small_cnn` (the horses-vs-humans recipe): 3 valid-padded convs (16/32/64) with pooling, dense 512, Keras init.

The seed documents give layer kinds but not every width; the defaults here are stated in README.md.
Named feature maps are recorded with `fpclass.models.feature`, which makes each one differentiable, and
every ReLU is the field `relu`, which guided backpropagation swaps (see `fpclass.models`).
"""
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fpclass.models import ModelSpec, feature, register
from fpclass.models.layers.conv import Conv
from fpclass.models.layers.pooling import max_pool

# PyTorch's kaiming_normal_(mode='fan_in', nonlinearity='relu') draws from an untruncated normal.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
glorot_uniform = nn.initializers.glorot_uniform()


def _batch_norm(train: bool, name: str, dtype):
  # PyTorch's momentum 0.1 is Flax's 0.9; both use eps 1e-5 here (the footprint recipe is PyTorch's).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class FootprintCNN(nn.Module):
  num_outputs: int = 2
  conv_channels: Sequence[int] = (32, 64)
  kernel_size: int = 3
  fc_sizes: Sequence[int] = (128,)
  dropout: float = 0.0
  batch_norm: bool = False
  dtype: Any = jnp.float32
  relu: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = {}
    k = self.kernel_size
    for i, channels in enumerate(self.conv_channels, start=1):
      x = Conv(channels, (k, k), padding=k // 2, kernel_init=kaiming_normal, dtype=self.dtype,
               name=f'conv{i}')(x)
      if self.batch_norm:
        x = _batch_norm(train, f'bn{i}', self.dtype)(x)
      x = feature(self, features, f'conv{i}', self.relu(x))
      x = max_pool(x, (2, 2))
    features['pool'] = x
    x = x.reshape(x.shape[0], -1)
    for j, size in enumerate(self.fc_sizes, start=1):
      x = self.relu(nn.Dense(size, kernel_init=kaiming_normal, dtype=self.dtype, name=f'fc{j}')(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    features['pre_logits'] = x
    logits = nn.Dense(self.num_outputs, kernel_init=kaiming_normal, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32), features


class CifarCNN(nn.Module):
  num_outputs: int = 2
  block_channels: Sequence[int] = (32, 64, 128)
  dense_sizes: Sequence[int] = (128, 64)
  dropout: float = 0.3
  dense_dropout: float = 0.3
  dtype: Any = jnp.float32
  relu: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = {}
    for b, channels in enumerate(self.block_channels, start=1):
      for c in (1, 2):
        x = self.relu(Conv(channels, (3, 3), padding='SAME', kernel_init=glorot_uniform, dtype=self.dtype,
                           name=f'block{b}_conv{c}')(x))
      # Keras BatchNormalization: momentum 0.99, epsilon 1e-3.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=self.dtype,
                       name=f'block{b}_bn')(x)
      x = feature(self, features, f'block{b}', x)
      x = max_pool(x, (2, 2))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = jnp.mean(x, axis=(1, 2))
    for d, size in enumerate(self.dense_sizes, start=1):
      x = self.relu(nn.Dense(size, kernel_init=glorot_uniform, dtype=self.dtype, name=f'dense{d}')(x))
      x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
    features['pre_logits'] = x
    logits = nn.Dense(self.num_outputs, kernel_init=glorot_uniform, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32), features


class SmallCNN(nn.Module):
  num_outputs: int = 2
  conv_channels: Sequence[int] = (16, 32, 64)
  dense_size: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32
  relu: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = {}
    for i, channels in enumerate(self.conv_channels, start=1):
      x = self.relu(Conv(channels, (3, 3), padding='VALID', kernel_init=glorot_uniform, dtype=self.dtype,
                         name=f'conv{i}')(x))
      x = feature(self, features, f'conv{i}', x)
      x = max_pool(x, (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = self.relu(nn.Dense(self.dense_size, kernel_init=glorot_uniform, dtype=self.dtype, name='dense')(x))
    features['pre_logits'] = x
    logits = nn.Dense(self.num_outputs, kernel_init=glorot_uniform, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32), features


register(ModelSpec('footprint_cnn', FootprintCNN, 'cnn', cam_layer='conv2',
                   description='footprint baseline: 2 conv + max pool + FC, Kaiming init'))
register(ModelSpec('cifar_cnn', CifarCNN, 'cnn', cam_layer='block3',
                   description='CIFAR-10 recipe: 3 blocks of 2 conv + BN + pool + dropout, GAP, dense'))
register(ModelSpec('small_cnn', SmallCNN, 'cnn', cam_layer='conv3',
                   description='horses-vs-humans recipe: conv 16/32/64 valid + pool, dense 512'))
