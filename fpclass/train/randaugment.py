"""torchvision's RandAugment and TrivialAugmentWide as pure, jittable per-image ops.

The ops act on the uint8 image that a float image in [0, 1] stands for: `apply_policy` quantises to 255 levels
once, runs the ops on whole levels (held as float32), rounding and truncating where torchvision's uint8 kernels
do, and returns levels / 255. The op set, magnitude tables and sampling are those of
`torchvision.transforms.v2.RandAugment` and `TrivialAugmentWide`; shears, translations and rotations take the
nearest pixel on torchvision's sampling grid and fill with a constant.

Each op's parameters (its sampling grid, blend factor, threshold...) are precomputed per magnitude bin and
sign, so an image's draw only indexes a table. Under `jax.vmap`, a `lax.switch` on a per-image op becomes a
select that runs all 14 ops on every image; on CPU the policy's batching rule loops over the images instead,
each running only its own ops, while other backends keep the parallel select. The draws (three per op: op,
magnitude bin, sign) come from `fpclass.train.augment`'s per-image uniform layout.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

# torchvision's op order (its _AUGMENTATION_SPACE), so op index k is the k-th key there.
OPS = ('Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness', 'Color', 'Contrast',
       'Sharpness', 'Posterize', 'Solarize', 'AutoContrast', 'Equalize')
DRAWS_PER_OP = 3            # uniform draws per op: which op, which magnitude bin (TrivialAugment), which sign
_THETA = 6                  # an op's parameters: a 2x3 matrix at most, then a shift table for the shift kernels
_GREY = (0.2989, 0.587, 0.114)  # torchvision.transforms.v2's rgb_to_grayscale weights
_BLUR_EDGE, _BLUR_CENTRE = 1.0 / 13.0, 5.0 / 13.0  # torchvision's adjust_sharpness smoothing kernel


# ---------------------------------------------------------------------------------------------------------------
# Magnitudes


def _levels(start: float, end: float, num_bins: int) -> np.ndarray:
  """`num_bins` evenly spaced values from start to end, each rounded once to float32.

  torchvision's tables are float32 `torch.linspace`s, whose last bit depends on its CPU kernel's vector width;
  these are the exact values, correctly rounded (tests/test_randaugment.py compares the two).
  """
  return (start + (end - start) * np.arange(num_bins) / (num_bins - 1)).astype(np.float32)


def _posterize_bits(num_bins: int, span: int) -> np.ndarray:
  # 8 bits down to 8 - span, rounded half to even in float32 as torchvision's tensor maths does.
  ratio = np.arange(num_bins).astype(np.float32) / np.float32((num_bins - 1) / span)
  return np.round(np.float32(8) - ratio).astype(np.int64)


def magnitudes(policy: str, num_bins: int, height: int, width: int) -> dict[str, tuple[np.ndarray | None, bool]]:
  """Per op: (its magnitude per bin, or None for ops without one; whether a random sign applies)."""
  if policy == 'randaugment':
    shear, rotate, colour, span = 0.3, 30.0, 0.9, 4
    translate_x, translate_y = 150.0 / 331.0 * width, 150.0 / 331.0 * height
  elif policy == 'trivialaugment':
    shear, rotate, colour, span = 0.99, 135.0, 0.99, 6
    translate_x = translate_y = 32.0
  else:
    raise ValueError(f'unknown policy {policy!r}')
  colour_levels = _levels(0.0, colour, num_bins)
  return {'Identity': (None, False), 'ShearX': (_levels(0.0, shear, num_bins), True),
          'ShearY': (_levels(0.0, shear, num_bins), True), 'TranslateX': (_levels(0.0, translate_x, num_bins), True),
          'TranslateY': (_levels(0.0, translate_y, num_bins), True), 'Rotate': (_levels(0.0, rotate, num_bins), True),
          'Brightness': (colour_levels, True), 'Color': (colour_levels, True), 'Contrast': (colour_levels, True),
          'Sharpness': (colour_levels, True), 'Posterize': (_posterize_bits(num_bins, span), False),
          'Solarize': (_levels(1.0, 0.0, num_bins), False), 'AutoContrast': (None, False), 'Equalize': (None, False)}


# ---------------------------------------------------------------------------------------------------------------
# Parameters: an op and its signed magnitude -> the float32 vector its kernel reads


def _grid_rows(theta, height: int, width: int) -> list[float]:
  """torchvision's inverse affine `theta` (output -> input x, y about the image centre, as F.affine builds it)
  in grid units: each row divided by half the image's width or height in float32, as its _affine_grid does."""
  t = np.asarray(theta, np.float32)
  return [*(t[:3] / np.float32(0.5 * width)), *(t[3:] / np.float32(0.5 * height))]


def _params(name: str, magnitude: float, height: int, width: int) -> np.ndarray:
  """The parameter vector of op `name` at torchvision's (signed) `magnitude`, worked out in float64 as
  torchvision does in Python and rounded once to float32."""
  m = float(magnitude)
  p = [0.0] * _THETA
  if name in ('ShearX', 'ShearY'):
    # torchvision passes the shear as degrees(atan(m)) and takes its tangent back; about the top-left corner.
    t = math.tan(math.radians(math.degrees(math.atan(m))))
    theta = (1.0, t, t * height / 2.0, 0.0, 1.0, 0.0) if name == 'ShearX' else (1.0, 0.0, 0.0, t, 1.0, t * width / 2.0)
    p = _grid_rows(theta, height, width)
  elif name in ('TranslateX', 'TranslateY'):
    shift = float(int(m))  # torchvision truncates the pixel shift towards zero
    theta = (1.0, 0.0, -shift, 0.0, 1.0, 0.0) if name == 'TranslateX' else (1.0, 0.0, 0.0, 0.0, 1.0, -shift)
    p = _grid_rows(theta, height, width)
  elif name == 'Rotate':
    r = math.radians(-(m % 360.0))  # F.rotate: counter-clockwise about the centre
    p = _grid_rows((math.cos(r), math.sin(r), 0.0, -math.sin(r), math.cos(r), 0.0), height, width)
  elif name in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
    factor = 1.0 + m
    p[:2] = [factor, 1.0 - factor]  # torchvision blends image * factor + other * (1 - factor), each in float32
  elif name == 'Posterize':
    p[0] = 2.0 ** (8 - int(m))  # keeping the top `bits` bits = flooring to a multiple of 2^(8 - bits)
  elif name == 'Solarize':
    p[0] = 255.0 * m  # torchvision's threshold: a fraction of the uint8 maximum
  elif name not in OPS:
    raise ValueError(f'unknown op {name!r}; known: {OPS}')
  p = np.asarray(p, np.float32)
  return np.concatenate([p, _source_starts(name, p, height, width)])


def _source_starts(name: str, p: np.ndarray, height: int, width: int) -> np.ndarray:
  """(max(height, width),) float32: for ShearX and TranslateX, each row's nearest source column of its first
  pixel; for ShearY and TranslateY, each column's nearest source row of its first pixel (zeros otherwise).

  They are `_resample_nearest`'s coordinates of those pixels, worked out here once in float32 numpy in
  torchvision's order of operations, so the shift kernels read whole numbers and every backend and batching
  picks the same pixel at a half-pixel tie."""
  f = np.float32
  x = np.arange(width, dtype=f)[None, :] - f((width - 1) / 2.0)
  y = np.arange(height, dtype=f)[:, None] - f((height - 1) / 2.0)
  source_col = np.round((x * p[0] + y * p[1] + p[2] + f(1.0)) * f(width / 2.0) - f(0.5))
  source_row = np.round((x * p[3] + y * p[4] + p[5] + f(1.0)) * f(height / 2.0) - f(0.5))
  starts = np.zeros(max(height, width), np.float32)
  if name in ('ShearX', 'TranslateX'):
    starts[:height] = source_col[:, 0]
  elif name in ('ShearY', 'TranslateY'):
    starts[:width] = source_row[0, :]
  return starts


@functools.lru_cache(maxsize=32)
def param_table(policy: str, num_bins: int, height: int, width: int) -> np.ndarray:
  """(len(OPS), num_bins, 2, _THETA + max(height, width)) float32: every op's parameters per magnitude bin,
  positive then negative (unsigned ops get the same parameters for both)."""
  table = np.zeros((len(OPS), num_bins, 2, _THETA + max(height, width)), np.float32)
  for k, (name, (levels, signed)) in enumerate(magnitudes(policy, num_bins, height, width).items()):
    for b in range(num_bins):
      m = 0.0 if levels is None else float(levels[b])
      table[k, b] = [_params(name, m, height, width), _params(name, -m if signed else m, height, width)]
  return table


# ---------------------------------------------------------------------------------------------------------------
# Kernels on grey levels: (H, W, C) float32 holding whole numbers 0..255, parameters p, constant fill level


def _identity(q, p, fill):
  del p, fill
  return q


def _resample_nearest(q, p, fill):
  """The nearest source pixel of each output pixel, `fill` where it falls outside: torchvision's grid (pixel
  offsets from the centre, through `p`, the normalised theta) and grid_sample's nearest mode (align_corners
  False; ties to even), in its order of float32 operations so that near-ties mostly fall the same way."""
  h, w = q.shape[:2]
  x = jax.lax.broadcasted_iota(jnp.float32, (h, w), 1) - (w - 1) / 2.0
  y = jax.lax.broadcasted_iota(jnp.float32, (h, w), 0) - (h - 1) / 2.0
  src_c = jnp.round((x * p[0] + y * p[1] + p[2] + 1.0) * (w / 2.0) - 0.5)
  src_r = jnp.round((x * p[3] + y * p[4] + p[5] + 1.0) * (h / 2.0) - 0.5)
  inside = (src_r >= 0) & (src_r <= h - 1) & (src_c >= 0) & (src_c <= w - 1)
  index = (jnp.clip(src_r, 0, h - 1) * w + jnp.clip(src_c, 0, w - 1)).astype(jnp.int32)
  pixels = q.reshape(h * w, q.shape[2]).at[index].get(mode="promise_in_bounds")  # clipped above
  return jnp.where(inside[..., None], pixels, jnp.float32(fill))


def _shift_rows(q, p, fill):
  """ShearX: each row's source pixels are the row's own, shifted by a whole number of pixels (its start in
  `p`, see `_source_starts`), so the resampling is one slice per row of the image padded with `fill`; equal
  to `_resample_nearest` except at exact half-pixel ties, a gather per pixel that cost 3x more on CPU."""
  h, w = q.shape[:2]
  start = jnp.clip(p[_THETA:_THETA + h], -w, w).astype(jnp.int32) + w  # beyond a width: the row is all fill
  padded = jnp.pad(q, ((0, 0), (w, w), (0, 0)), constant_values=fill)
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, w))(padded, start)


def _shift_columns(q, p, fill):
  """ShearY: `_shift_rows` on the transposed image, each column shifted by its own start."""
  return _shift_rows(q.transpose(1, 0, 2), p, fill).transpose(1, 0, 2)


def _translate(axis: int):
  """TranslateX (axis 1) or TranslateY (axis 0): the whole image moves by its first row's or column's start."""
  def kernel(q, p, fill):
    n = q.shape[axis]
    start = jnp.clip(p[_THETA], -n, n).astype(jnp.int32) + n
    padded = jnp.pad(q, [(n, n) if a == axis else (0, 0) for a in range(3)], constant_values=fill)
    return jax.lax.dynamic_slice_in_dim(padded, start, n, axis)
  return kernel


def _truncate(x):
  """A float result stored as uint8 by torchvision: clamped to [0, 255], then truncated."""
  return jnp.floor(jnp.clip(x, 0.0, 255.0))


def _grey(q):
  """torchvision's uint8 grey level: the weighted sum, floored."""
  weights = jnp.asarray(_GREY, jnp.float32)
  return jnp.floor(q[..., 0] * weights[0] + q[..., 1] * weights[1] + q[..., 2] * weights[2])[..., None]


def _brightness(q, p, fill):
  del fill
  return _truncate(q * p[0])


def _color(q, p, fill):
  del fill
  if q.shape[2] == 1:  # torchvision leaves a one-channel image as it is
    return q
  return _truncate(q * p[0] + _grey(q) * p[1])


def _contrast(q, p, fill):
  del fill
  mean = jnp.mean(_grey(q) if q.shape[2] == 3 else q)
  return _truncate(q * p[0] + mean * p[1])


def _sharpness(q, p, fill):
  del fill
  h, w = q.shape[:2]
  if h <= 2 or w <= 2:
    return q
  # The 3x3 window's sum, separably; blurred levels are multiples of 1/13, never halfway, so any float32 order
  # rounds them alike.
  padded = jnp.pad(q, ((1, 1), (1, 1), (0, 0)))
  rows = padded[:-2] + padded[1:-1] + padded[2:]
  window = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  blurred = jnp.round(window * _BLUR_EDGE + q * (_BLUR_CENTRE - _BLUR_EDGE))
  row = jax.lax.broadcasted_iota(jnp.int32, q.shape, 0)
  col = jax.lax.broadcasted_iota(jnp.int32, q.shape, 1)
  border = (row == 0) | (row == h - 1) | (col == 0) | (col == w - 1)
  # The border keeps its pixels; the inside moves towards (factor < 1) or away from the blurred image.
  return jnp.where(border, q, _truncate(q + p[1] * (blurred - q)))


def _posterize(q, p, fill):
  del fill
  return jnp.floor(q / p[0]) * p[0]


def _solarize(q, p, fill):
  del fill
  return jnp.where(q >= p[0], 255.0 - q, q)


def _autocontrast(q, p, fill):
  del p, fill
  low, high = jnp.min(q, axis=(0, 1)), jnp.max(q, axis=(0, 1))
  flat = high == low  # a flat channel stays as it is
  scale = jnp.where(flat, 1.0, (high - low) * jnp.float32(1.0 / 255.0))
  return _truncate((q - jnp.where(flat, 0.0, low)) / scale)


def _equalize(q, p, fill):
  """torchvision's (and PIL's) histogram equalisation per channel, as a lookup table; a channel whose pixels
  nearly all share its top level stays as it is."""
  del p, fill
  h, w, c = q.shape
  levels = q.reshape(h * w, c).astype(jnp.int32)
  channel = jnp.arange(c)
  hist = jnp.zeros((c, 256), jnp.int32).at[channel[None, :], levels].add(1)
  # The top level from the histogram: on CPU a max over the pixels cost a third of the op.
  top = jnp.max(jnp.where(hist > 0, jnp.arange(256)[None, :], 0), axis=1)
  step = (h * w - hist[channel, top]) // 255  # pixels below the top level, per 255
  lut = (jnp.cumsum(hist, axis=1)[:, :-1] + step[:, None] // 2) // jnp.maximum(step, 1)[:, None]
  lut = jnp.concatenate([jnp.zeros((c, 1), jnp.int32), jnp.minimum(lut, 255)], axis=1)
  lut = jnp.where(step[:, None] > 0, lut, jnp.arange(256)[None, :]).astype(jnp.float32)
  return jnp.take_along_axis(lut.T, levels, axis=0).reshape(h, w, c)


_KERNELS = {'Identity': _identity, 'ShearX': _shift_rows, 'ShearY': _shift_columns,
            'TranslateX': _translate(1), 'TranslateY': _translate(0), 'Rotate': _resample_nearest,
            'Brightness': _brightness, 'Color': _color, 'Contrast': _contrast, 'Sharpness': _sharpness,
            'Posterize': _posterize, 'Solarize': _solarize, 'AutoContrast': _autocontrast, 'Equalize': _equalize}


def _to_levels(image):
  return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0)


def _fill_level(fill_value: float) -> float:
  return float(np.round(fill_value * 255.0))  # torchvision rounds the filled float image back to uint8


# ---------------------------------------------------------------------------------------------------------------
# Policies


def num_slots(cfg) -> int:
  """How many ops each image gets: num_ops for randaugment, one for trivialaugment, none when off."""
  if not cfg.policy_enabled:
    return 0
  return cfg.num_ops if cfg.policy == 'randaugment' else 1


def policy_draws(cfg) -> int:
  """The uniform draws the policy takes from each image's draw (0 when off)."""
  return DRAWS_PER_OP * num_slots(cfg)


def sample(u: jax.Array, cfg) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(op index, magnitude bin, negative) per op slot from `policy_draws(cfg)` uniform [0, 1) draws.

  Each op is uniform over OPS; the sign is negative with probability 1/2 (used by signed ops only);
  randaugment uses the configured bin, trivialaugment a uniform one.
  """
  u = jnp.reshape(u, (num_slots(cfg), DRAWS_PER_OP))
  ops = jnp.minimum(jnp.floor(u[:, 0] * len(OPS)), len(OPS) - 1).astype(jnp.int32)
  if cfg.policy == 'trivialaugment':
    bins = jnp.minimum(jnp.floor(u[:, 1] * cfg.num_magnitude_bins), cfg.num_magnitude_bins - 1).astype(jnp.int32)
  else:
    bins = jnp.full(ops.shape, cfg.magnitude, jnp.int32)
  return ops, bins, u[:, 2] < 0.5


def _per_image_ops(levels_fn):
  """`levels_fn(q, u)` for one image, batched by a loop over the images on CPU.

  Under plain vmap, the per-image `lax.switch` becomes a select: every image runs all 14 ops, gathers and
  histograms included. On CPU, looping over the images runs only each image's own ops and is faster; on
  accelerators the select runs the images in parallel, so it stays. Both give the same numbers.
  """
  batched = custom_vmap(levels_fn)

  @batched.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(args, in_batched)]
    out = jax.lax.platform_dependent(*args, cpu=lambda *a: jax.lax.map(lambda one: levels_fn(*one), a),
                                     default=jax.vmap(levels_fn))
    return out, True

  return batched


def policy_levels(cfg, height: int, width: int):
  """The policy as `fn(q, u)` on one image's grey levels (H, W, C) and its draws: plain JAX, so under vmap
  every image runs every op (the select that `apply_policy` avoids on CPU)."""
  table = param_table(cfg.policy, cfg.num_magnitude_bins, height, width)
  branches = [functools.partial(_KERNELS[name], fill=_fill_level(cfg.fill_value)) for name in OPS]

  def levels_fn(q, u):
    ops, bins, negative = sample(u, cfg)
    params = jnp.asarray(table)[ops, bins, negative.astype(jnp.int32)]
    # A loop rather than one switch per op, so the 14 branches compile once whatever num_ops is.
    return jax.lax.fori_loop(0, len(ops), lambda i, q: jax.lax.switch(ops[i], branches, q, params[i]), q)

  return levels_fn


def apply_policy(image: jax.Array, u: jax.Array, cfg) -> jax.Array:
  """The configured policy on one float (H, W, C) image in [0, 1], from its `policy_draws(cfg)` uniform draws;
  the result lies on the 255-level grid."""
  levels_fn = _per_image_ops(policy_levels(cfg, *image.shape[:2]))
  return levels_fn(_to_levels(image), u) / 255.0
