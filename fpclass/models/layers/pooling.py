"""Max pooling whose gradient is cheap on every backend.

`flax.linen.max_pool` differentiates through XLA's select-and-scatter. On CPU, XLA rewrites that into a
reduce-window carrying four full-size int32 index tensors plus a scatter: for the footprint CNN's first
pool that is ~0.4 s per step at batch 32 and ~190 MB of temporaries, and for ResNet's overlapping 3x3/2 stem
pool ~0.4 s at batch 32 (measured, docs/performance.md). Two cheaper forms, same values and gradients:

Design notes: docs/modules.md (`fpclass/models/layers/pooling.py`).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fpclass.models.layers.conv import explicit_pads, strided_windows


def max_pool(x, window=(2, 2), strides=None, padding='VALID'):
  """`nn.max_pool` for NHWC `x` (padding 'VALID', 'SAME' or ((top, bottom), (left, right)))."""
  window, strides = tuple(window), tuple(strides or window)
  if x.ndim != 4:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  if window == strides and padding == 'VALID':
    return _block_max_pool(x, window)
  if jax.default_backend() == 'cpu':
    return _tap_max_pool(x, window, strides, explicit_pads(x.shape[1:3], window, strides, padding))
  return nn.max_pool(x, window, strides=strides, padding=padding)


def _blocks(x, window):
  """(N, H, W, C) -> (N, H/wh, wh, W/ww, ww, C), dropping the rows/columns VALID pooling drops."""
  (wh, ww), (n, h, w, c) = window, x.shape
  return x[:, :h // wh * wh, :w // ww * ww].reshape(n, h // wh, wh, w // ww, ww, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block_max_pool(x, window):
  return jnp.max(_blocks(x, window), axis=(2, 4))


def _block_max_pool_fwd(x, window):
  y = _block_max_pool(x, window)
  return y, (x, y)


def _block_max_pool_bwd(window, residuals, g):
  x, y = residuals
  blocks = _blocks(x, window)
  wh, ww = window
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for dy in range(wh):
    row = []
    for dx in range(ww):
      first = (blocks[:, :, dy, :, dx, :] == y) & ~taken  # the first maximum in the window takes it all
      taken = taken | first
      row.append(jnp.where(first, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(row, axis=3))
  n, h, w, c = x.shape
  dx_blocks = jnp.stack(rows, axis=2).reshape(n, h // wh * wh, w // ww * ww, c)
  return (jnp.pad(dx_blocks, ((0, 0), (0, h - dx_blocks.shape[1]), (0, w - dx_blocks.shape[2]), (0, 0))),)


_block_max_pool.defvjp(_block_max_pool_fwd, _block_max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _tap_max_pool(x, window, strides, pads):
  taps = strided_windows(x, window, strides, pads, -jnp.inf)
  y = taps[0]
  for tap in taps[1:]:
    y = jnp.maximum(y, tap)
  return y


def _tap_max_pool_fwd(x, window, strides, pads):
  y = _tap_max_pool(x, window, strides, pads)
  return y, (x, y)


def _tap_max_pool_bwd(window, strides, pads, residuals, g):
  x, y = residuals
  (_, ww), (sh, sw), ((top, bottom), (left, right)) = window, strides, pads
  padded_h, padded_w = x.shape[1] + top + bottom, x.shape[2] + left + right
  out_h, out_w = y.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  dx = None
  for t, tap in enumerate(strided_windows(x, window, strides, pads, -jnp.inf)):
    i, j = divmod(t, ww)
    first = (tap == y) & ~taken  # the first maximum in the window takes it all, padding included as in XLA
    taken = taken | first
    # Place this tap's share back at its input positions: stride apart, offset by the tap.
    routed = lax.pad(jnp.where(first, g, jnp.zeros_like(g)), jnp.zeros((), g.dtype),
                     ((0, 0, 0), (i, padded_h - i - (out_h - 1) * sh - 1, sh - 1),
                      (j, padded_w - j - (out_w - 1) * sw - 1, sw - 1), (0, 0, 0)))
    dx = routed if dx is None else dx + routed
  return (dx[:, top:top + x.shape[1], left:left + x.shape[2]],)


_tap_max_pool.defvjp(_tap_max_pool_fwd, _tap_max_pool_bwd)
