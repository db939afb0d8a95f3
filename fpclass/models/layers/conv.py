"""`Conv`: `flax.linen.Conv` with two XLA:CPU slow paths routed around. Every fpclass model uses it.

Design notes: docs/modules.md (`fpclass/models/layers/conv.py`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`'s signature; on CPU the two slow cases above take their own formulation."""
  route = _cpu_route(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                     preferred_element_type)
  if route:
    strides = tuple(window_strides)
    pads = explicit_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    if route == 'depthwise':
      return depthwise_tap_conv(lhs, rhs, strides, pads)
    return im2col_conv(lhs, rhs, strides, pads, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)


def _cpu_route(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
               preferred_element_type) -> str | None:
  """'depthwise', 'im2col' or None (lax's convolution) for a 2-D NHWC/HWIO convolution on CPU."""
  if jax.default_backend() != 'cpu' or lhs.ndim != 4 or preferred_element_type is not None:
    return None
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return None
  if dimension_numbers is None or (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                                   != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)):
    return None
  channels = lhs.shape[-1]
  if feature_group_count == channels > 1 and rhs.shape[2:] == (1, channels):
    return 'depthwise'
  if feature_group_count == 1 and (lhs.shape[1] < rhs.shape[0] or lhs.shape[2] < rhs.shape[1]):
    return 'im2col'
  return None


def explicit_pads(spatial_shape, window, strides, padding) -> tuple:
  """'SAME' / 'VALID' or pairs -> ((top, bottom), (left, right)), as lax computes them."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(spatial_shape, window, strides, padding)
  return tuple(tuple(p) for p in padding)


def strided_windows(x, window, strides, pads, fill=0):
  """The windows of NHWC `x` padded with `fill`: one (N, out_h, out_w, C) strided slice per window tap, taps in
  row-major order. Convolutions here and `fpclass.models.layers.pooling`'s overlapping max pool are sums or maxima of
  these."""
  (wh, ww), (sh, sw), ((top, bottom), (left, right)) = window, strides, pads
  x = lax.pad(x, jnp.asarray(fill, x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  out_h, out_w = (x.shape[1] - wh) // sh + 1, (x.shape[2] - ww) // sw + 1
  return [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw] for i in range(wh) for j in range(ww)]


def im2col_conv(x, kernel, strides, pads, precision=None):
  """NHWC x HWIO convolution as patches @ kernel: the windows concatenated along channels (kernel rows, then
  columns, then input channels: HWIO's own order) times the kernel reshaped to (kh * kw * cin, cout)."""
  kh, kw, cin, cout = kernel.shape
  patches = jnp.concatenate(strided_windows(x, (kh, kw), strides, pads), axis=-1)
  return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout), precision=precision)


def depthwise_tap_conv(x, kernel, strides, pads):
  """Depthwise NHWC convolution (kernel (kh, kw, 1, C)): the sum over taps of window * that tap's kernel row."""
  kh, kw = kernel.shape[:2]
  windows = strided_windows(x, (kh, kw), strides, pads)
  total = windows[0] * kernel[0, 0, 0]
  for tap, window in enumerate(windows[1:], start=1):
    total = total + window * kernel[tap // kw, tap % kw, 0]
  return total


class Conv(nn.Conv):
  """`nn.Conv` computing through `conv_general_dilated` above; a drop-in replacement."""
  conv_general_dilated: Any = conv_general_dilated
