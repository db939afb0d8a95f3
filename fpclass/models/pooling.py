"""Max pooling whose gradient is cheap on every backend.

`flax.linen.max_pool` differentiates through XLA's select-and-scatter. On CPU, XLA rewrites that into a
reduce-window carrying four full-size int32 index tensors plus a scatter: for the footprint CNN's first
pool that is ~0.4 s per step at batch 32 and ~190 MB of temporaries (measured, docs/performance.md).
For the non-overlapping windows every seed CNN uses (window == stride, VALID), the pooled blocks are a
reshape of the input, so the forward pass is one reduction and the backward pass one elementwise select.
The gradient is routed to the first maximum of each window in row-major order, exactly as
select-and-scatter (and PyTorch's max_pool2d) does, so the two agree bit for bit, ties included.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool(x, window=(2, 2), strides=None, padding='VALID'):
  """`nn.max_pool` for NHWC `x`; non-overlapping VALID windows take the fast path below."""
  window, strides = tuple(window), tuple(strides or window)
  if window == strides and padding == 'VALID' and x.ndim == 4:
    return _block_max_pool(x, window)
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
