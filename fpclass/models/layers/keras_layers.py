"""Keras layer semantics shared by the ports of keras.applications MobileNetV3 and EfficientNet.

- Keras padding='same' is TF SAME (the odd pixel at the bottom/right), which is Flax/lax 'SAME'.
- Before a strided depthwise conv (and EfficientNet's stem) Keras pads with `correct_pad` and convolves
  'valid'. correct_pad reads the static input size: k//2 on both sides for an odd size, one less at the
  top/left for an even one. (A Keras model built without input_shape sees no size and always pads the
  even way; fpclass shapes are static, so it computes what a Keras model built with its input_shape does.)
- keras.layers.BatchNormalization at inference is (x - moving_mean) / sqrt(moving_variance + eps) * gamma
  + beta, and its momentum means what Flax's does (moving = momentum * moving + (1 - momentum) * batch).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def correct_pad(spatial_shape, kernel_size: int):
  """keras.applications.imagenet_utils.correct_pad: ((top, bottom), (left, right)) zero padding."""
  half = kernel_size // 2
  return tuple((half - (1 - size % 2), half) for size in spatial_shape)


def batch_norm(name: str, frozen: bool, train: bool, momentum: float, epsilon: float = 1e-3, dtype=jnp.float32):
  return nn.BatchNorm(use_running_average=not train or frozen, momentum=momentum, epsilon=epsilon, dtype=dtype,
                      name=name)


def hard_sigmoid(x):
  """MobileNetV3's squeeze-excite gate as Keras writes it: ReLU(6.)(x + 3.) * (1. / 6.)."""
  return jax.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x):
  """keras.activations.hard_swish (hard_silu): x * relu6(x + 3) / 6."""
  return jax.nn.hard_silu(x)


def swish(x):
  """keras.activations.swish (silu): x * sigmoid(x)."""
  return jax.nn.silu(x)


class Normalization(nn.Module):
  """keras.layers.Normalization(axis=-1): (x - mean) / max(sqrt(variance), 1e-7) per channel.

  Keras keeps the statistics untrained, so they live in `batch_stats` (weights.keras_mapped puts them there)
  where no optimizer step or weight decay reaches them. Unset, they are Keras' own defaults (0 and 1).
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32)).value
    variance = self.variable('batch_stats', 'variance', lambda: jnp.ones((channels,), jnp.float32)).value
    return ((x - mean) / jnp.maximum(jnp.sqrt(variance), 1e-7)).astype(self.dtype)
