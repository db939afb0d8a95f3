"""Pure, jittable per-example image augmentations.

Each function maps `(image, key)` to an image of the same shape and dtype: float images in [0, 1], laid out
(H, W, C). `augment_batch` vmaps `augment_image` so the whole thing runs inside the jitted train step on device.
`AugmentSettings` (fpclass.config) is hashable and every on/off decision is a Python check on it, so an op
that is off is never traced and an all-off config costs nothing.

Order: geometry (one affine) -> flips -> policy (RandAugment or TrivialAugment, `fpclass.train.randaugment`) ->
colour -> random erasing, erasing last as torchvision does after ToTensor. Geometry follows Keras'
preprocessing layers; the policy, colour and erasing follow torchvision.

Batch mixing (`mix_batch`: mixup and cutmix) works on a whole batch and its labels, so it is not part of
`augment_batch`: the train step runs it on the model input, after the per-image ops, as timm's Mixup does.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.config.inputs import FILL_MODES, AugmentSettings
from fpclass.train import randaugment

ERASING_ATTEMPTS = 10  # torchvision's RandomErasing retry count
# Each example makes ONE uniform draw, sliced per op in this fixed layout so that turning an op on or off leaves
# the others' numbers unchanged. One draw rather than one per parameter because every vmapped random call is a
# separate threefry in the compiled program, each adding roughly half a second of XLA compile time on CPU.
# The magnitudes a train program takes as arguments, not constants (`fpclass.train.task.Task.arguments`): a
# search's or a sweep's configurations that differ in them alone share one compiled step. Whether each is on
# stays a constant of the program (an op that is off is not traced). The ranges auto searches (geometry, erasing).
MAGNITUDES = ('rotation', 'zoom', 'height', 'width', 'translate', 'erasing')
_DRAWS = dict(flips=2, geometry=6, colour=3, erasing=1 + 4 * ERASING_ATTEMPTS)


def _draw_sizes(cfg: AugmentSettings) -> dict[str, int]:
  """_DRAWS plus, when a policy is on, its slot (its size depends on config.augment.num_ops). The slot comes
  last: JAX's threefry draws are counter-based, so a longer draw begins with the shorter one's numbers and
  every other op keeps its numbers; with the policy off the draw is exactly what it was."""
  if not cfg.policy_enabled:
    return _DRAWS
  return dict(_DRAWS, policy=randaugment.policy_draws(cfg))


# ---------------------------------------------------------------------------------------------------------------
# Geometry


def geometry_matrix(height: int, width: int, *, angle=0.0, scale_y=1.0, scale_x=1.0, shift_y=0.0,
                    shift_x=0.0) -> jax.Array:
  """The 3x3 output->input matrix (rows, cols, 1) of a transform about the image centre.

  The forward transform scales content by (scale_y, scale_x) (> 1 magnifies), rotates it by `angle` degrees
  counter-clockwise as displayed (90 on a square image is `np.rot90(x)`), then shifts it by (shift_y, shift_x)
  pixels (positive is down/right). Arguments may be traced values.
  """
  theta = jnp.deg2rad(jnp.asarray(angle, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  inv_sy, inv_sx = 1.0 / jnp.asarray(scale_y, jnp.float32), 1.0 / jnp.asarray(scale_x, jnp.float32)
  # Forward (row, col) rotation is [[cos, -sin], [sin, cos]] because rows grow downwards; its inverse is the
  # transpose, then the inverse scale.
  linear = jnp.stack([jnp.stack([cos * inv_sy, sin * inv_sy]), jnp.stack([-sin * inv_sx, cos * inv_sx])])
  centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0], jnp.float32)
  offset = centre - linear @ (centre + jnp.stack([jnp.asarray(shift_y, jnp.float32),
                                                  jnp.asarray(shift_x, jnp.float32)]))
  return jnp.concatenate([jnp.concatenate([linear, offset[:, None]], axis=1),
                          jnp.array([[0.0, 0.0, 1.0]], jnp.float32)])


def _fix_index(index: jax.Array, size: int, fill_mode: str) -> jax.Array:
  """Maps integer indices outside [0, size) back inside, as Keras/scipy fill modes define."""
  if fill_mode == 'nearest':
    return jnp.clip(index, 0, size - 1)
  if fill_mode == 'wrap':
    return index % size
  if fill_mode == 'reflect':  # half-sample symmetric: d c b a | a b c d | d c b a
    folded = index % (2 * size)
    return jnp.where(folded < size, folded, 2 * size - 1 - folded)
  return jnp.clip(index, 0, size - 1)  # constant: any in-range index; the corner is masked to the fill value


def affine_transform(image: jax.Array, matrix: jax.Array, fill_mode: str = 'constant',
                     fill_value: float = 0.0) -> jax.Array:
  """Bilinearly samples `image` (H, W, C) at `matrix @ (row, col, 1)` for every output pixel.

  Same result as `jax.scipy.ndimage.map_coordinates(order=1, mode=fill_mode, cval=fill_value)` per channel,
  but one gather fetches all channels: on CPU that is ~8x faster for RGB and no slower for one channel.
  """
  if fill_mode not in FILL_MODES:
    raise ValueError(f'fill_mode must be one of {FILL_MODES}, got {fill_mode!r}')
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
  src_r = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2]
  src_c = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2]
  r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
  wr, wc = (src_r - r0)[..., None], (src_c - c0)[..., None]
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  fill = jnp.asarray(fill_value, image.dtype)

  def corner(r, c):
    value = image[_fix_index(r, h, fill_mode), _fix_index(c, w, fill_mode)]
    if fill_mode == 'constant':
      value = jnp.where(((r >= 0) & (r < h) & (c >= 0) & (c < w))[..., None], value, fill)
    return value

  top = corner(r0, c0) * (1 - wc) + corner(r0, c0 + 1) * wc
  bottom = corner(r0 + 1, c0) * (1 - wc) + corner(r0 + 1, c0 + 1) * wc
  return (top * (1 - wr) + bottom * wr).astype(image.dtype)


def _random_geometry(image: jax.Array, u: jax.Array, cfg: AugmentSettings, flips: jax.Array | None,
                     values=None) -> jax.Array:
  h, w = image.shape[:2]
  u = 2.0 * u - 1.0  # six draws in [-1, 1)
  value = functools.partial(_magnitude, cfg, values)
  angle = value('rotation') * u[0] if cfg.rotation else 0.0
  # Keras RandomZoom: the factor z scales the sampling grid, so z > 1 zooms out (content shrinks by 1/z).
  inv_zoom = 1.0 / (1.0 + value('zoom') * u[1]) if cfg.zoom else 1.0
  # Keras RandomHeight/RandomWidth resize content by the factor; at a fixed output size that is a stretch.
  stretch_y = 1.0 + value('height') * u[2] if cfg.height else 1.0
  stretch_x = 1.0 + value('width') * u[3] if cfg.width else 1.0
  shift_y = value('translate') * h * u[4] if cfg.translate else 0.0
  shift_x = value('translate') * w * u[5] if cfg.translate else 0.0
  matrix = geometry_matrix(h, w, angle=angle, scale_y=stretch_y * inv_zoom, scale_x=stretch_x * inv_zoom,
                           shift_y=shift_y, shift_x=shift_x)
  if flips is not None:
    matrix = matrix @ flips
  return affine_transform(image, matrix, cfg.fill_mode, cfg.fill_value)


def _flip_matrix(height: int, width: int, vflip: jax.Array, hflip: jax.Array) -> jax.Array:
  """The output->input matrix of the chosen flips (0./1. each); flipping a resampled image = resampling at
  flipped output coordinates."""
  vflip, hflip = jnp.asarray(vflip, jnp.float32), jnp.asarray(hflip, jnp.float32)
  zero, one = jnp.float32(0.0), jnp.float32(1.0)
  return jnp.stack([jnp.stack([1.0 - 2.0 * vflip, zero, vflip * (height - 1.0)]),
                    jnp.stack([zero, 1.0 - 2.0 * hflip, hflip * (width - 1.0)]),
                    jnp.stack([zero, zero, one])])


# ---------------------------------------------------------------------------------------------------------------
# Colour (torchvision ColorJitter)


def _grey_mean(image: jax.Array) -> jax.Array:
  if image.shape[-1] == 3:  # torchvision's rgb_to_grayscale weights
    return jnp.mean(image @ jnp.array([0.299, 0.587, 0.114], image.dtype))
  return jnp.mean(image)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  mean = _grey_mean(image)
  return jnp.clip((image - mean) * factor + mean, 0.0, 1.0)


def _random_colour(image: jax.Array, u: jax.Array, cfg: AugmentSettings) -> jax.Array:
  # torchvision draws each factor from [max(0, 1 - x), 1 + x]. x is capped at 1e30: the schema allows any
  # finite x, and one past float32's range made the factor inf, so a black pixel (or one at the mean) became
  # inf * 0 = NaN. A factor that large already saturates the clip to [0, 1].
  factor = lambda x, v: max(0.0, 1.0 - x) + (1.0 + min(x, 1e30) - max(0.0, 1.0 - x)) * v
  ops = []
  if cfg.brightness:
    ops.append(functools.partial(adjust_brightness, factor=factor(cfg.brightness, u[0])))
  if cfg.contrast:
    ops.append(functools.partial(adjust_contrast, factor=factor(cfg.contrast, u[1])))
  if len(ops) == 1:
    return ops[0](image)
  # ColorJitter applies its ops in a random order; both orders are cheap elementwise work, so pick one by select.
  first, second = ops
  return jnp.where(u[2] < 0.5, second(first(image)), first(second(image)))


# ---------------------------------------------------------------------------------------------------------------
# Random erasing (torchvision RandomErasing)


def erasing_box(u: jax.Array, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """torchvision's RandomErasing.get_params, vectorised: returns (found, top, left, box_h, box_w).

  `u` is a (4, ERASING_ATTEMPTS) uniform [0, 1) draw: area, log-ratio, top and left of each candidate. All
  candidates are drawn at once and the first that fits is taken, which matches torchvision's retry loop in
  distribution; `found` is False when none fits (then nothing is erased).
  """
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
  box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_h < height) & (box_w < width)
  first = jnp.argmax(fits)  # index of the first True; 0 when there is none, then `found` is False
  box_h, box_w = box_h[first], box_w[first]
  # Uniform integer position in [0, size - box]: floor of a uniform draw, since the bound is traced.
  top = jnp.floor(u[2, first] * (height - box_h + 1)).astype(jnp.int32)
  left = jnp.floor(u[3, first] * (width - box_w + 1)).astype(jnp.int32)
  return fits[first], jnp.minimum(top, height - box_h), jnp.minimum(left, width - box_w), box_h, box_w


def _random_erasing(image: jax.Array, u: jax.Array, cfg: AugmentSettings, values=None) -> jax.Array:
  h, w = image.shape[:2]
  found, top, left, box_h, box_w = erasing_box(u[1:].reshape(4, -1), h, w, cfg.erasing_scale, cfg.erasing_ratio)
  rows = jax.lax.broadcasted_iota(jnp.int32, (h, w), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (h, w), 1)
  inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
  erase = inside & found & (u[0] < _magnitude(cfg, values, 'erasing'))
  return jnp.where(erase[..., None], jnp.asarray(cfg.erasing_value, image.dtype), image)


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def augment_image(image: jax.Array, key: jax.Array, cfg: AugmentSettings, values=None) -> jax.Array:
  """Augments one (H, W, C) image; deterministic in `key`. Ops that `cfg` turns off are not traced; `values`
  ({name: scalar}, `magnitudes`) replaces the magnitudes of those it turns on."""
  if image.ndim != 3 or not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f'augment_image expects a float (H, W, C) image in [0, 1], got {image.dtype}{image.shape}')
  if not cfg.enabled:
    return image
  layout = _draw_sizes(cfg)
  sizes = list(layout.values())
  draws = dict(zip(layout, jnp.split(jax.random.uniform(key, (sum(sizes),)), np.cumsum(sizes)[:-1])))
  hflip = draws['flips'][0] < cfg.hflip if cfg.hflip else False
  vflip = draws['flips'][1] < cfg.vflip if cfg.vflip else False
  if cfg.geometry_enabled:
    # Flips are folded into the resampling: as selects after the gather, XLA on CPU recomputed the gather for
    # each consumer and one flip cost ~10x the rotation itself.
    flips = _flip_matrix(*image.shape[:2], vflip, hflip) if cfg.hflip or cfg.vflip else None
    image = _random_geometry(image, draws['geometry'], cfg, flips, values)
  else:
    if cfg.hflip:
      image = jnp.where(hflip, image[:, ::-1], image)
    if cfg.vflip:
      image = jnp.where(vflip, image[::-1], image)
  if cfg.policy_enabled:
    # Where timm's and torchvision's ImageNet recipes put RandAugment/TrivialAugment: on the cropped, flipped
    # uint8 image (here: after the geometry and flips), before ColorJitter, ToTensor/normalisation and
    # RandomErasing, so the ops see the image the model's pixels come from and erasing still paints last.
    image = randaugment.apply_policy(image, draws['policy'], cfg)
  if cfg.brightness or cfg.contrast:
    image = _random_colour(image, draws['colour'], cfg)
  if cfg.erasing:
    image = _random_erasing(image, draws['erasing'], cfg, values)
  return image


def augment_batch(images: jax.Array, key: jax.Array, cfg: AugmentSettings, values=None) -> jax.Array:
  """Augments an (N, H, W, C) batch; example i uses `jax.random.split(key, N)[i]`; `values` as in
  `augment_image`."""
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'augment_batch expects float (N, H, W, C) images in [0, 1], got {images.dtype}{images.shape}')
  if not cfg.enabled:
    return images
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda image, k: augment_image(image, k, cfg, values))(images, keys)


def magnitudes(cfg: AugmentSettings) -> dict:
  """{name: value} of the `MAGNITUDES` that `cfg` turns on: what a train program takes as arguments."""
  return {name: getattr(cfg, name) for name in MAGNITUDES if getattr(cfg, name)}


def _magnitude(cfg: AugmentSettings, values, name: str):
  """The magnitude `name`: the traced value a train program was passed, else `cfg`'s."""
  return values[name] if values and name in values else getattr(cfg, name)


# ---------------------------------------------------------------------------------------------------------------
# Batch mixing (mixup, cutmix), timm's Mixup in its 'batch' mode


def cutmix_box(lam: jax.Array, centre: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm's rand_bbox: a box of about (1 - lam) of the image around `centre` (integer (row, col)), clipped to the
  image; returns (top, bottom, left, right), bottom and right exclusive."""
  ratio = jnp.sqrt(1.0 - lam)
  half_h = (height * ratio).astype(jnp.int32) // 2
  half_w = (width * ratio).astype(jnp.int32) // 2
  top, bottom = jnp.clip(centre[0] - half_h, 0, height), jnp.clip(centre[0] + half_h, 0, height)
  left, right = jnp.clip(centre[1] - half_w, 0, width), jnp.clip(centre[1] + half_w, 0, width)
  return top, bottom, left, right


def mix_batch(images: jax.Array, targets: jax.Array, key: jax.Array, cfg: AugmentSettings
              ) -> tuple[jax.Array, jax.Array]:
  """Mixup or cutmix of (N, H, W, C) `images` with the batch reversed, and of their (N, K) class-probability
  `targets` in the same proportion; deterministic in `key`.

  One lambda per batch, drawn from Beta(alpha, alpha) of the chosen method. Cutmix pastes a box of the partner
  images and sets lambda to the share of each image that is still its own: the box is clipped at the border,
  so the labels follow the pixels exactly (timm's correct_lam). A batch left unmixed (`cfg.mix_prob`) is
  returned as it came.
  """
  if not cfg.mixing_enabled:
    return images, targets
  height, width = images.shape[1:3]
  draw_key, beta_key = jax.random.split(key)
  apply_u, switch_u, centre_u = jnp.split(jax.random.uniform(draw_key, (4,)), [1, 2])
  # The schema allows any finite alpha; one past float32's range became inf and Beta(inf, inf) never mixed. At
  # 1e30 the draw is already 0.5 to float32 precision.
  mixup_alpha, cutmix_alpha = jnp.float32(min(cfg.mixup_alpha, 1e30)), jnp.float32(min(cfg.cutmix_alpha, 1e30))
  if cfg.mixup_alpha and cfg.cutmix_alpha:
    use_cutmix = switch_u[0] < cfg.mix_switch_prob
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  else:
    alpha = cutmix_alpha if cfg.cutmix_alpha else mixup_alpha
  lam = jax.random.beta(beta_key, alpha, alpha).astype(jnp.float32)
  partners = images[::-1]
  if cfg.mixup_alpha:
    mixup = lam * images + (1.0 - lam) * partners
  if cfg.cutmix_alpha:
    centre = jnp.floor(centre_u * jnp.array([height, width], jnp.float32)).astype(jnp.int32)
    top, bottom, left, right = cutmix_box(lam, centre, height, width)
    rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    cutmix = jnp.where(inside[None, :, :, None], partners, images)
    box_lam = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (height * width)
  if cfg.mixup_alpha and cfg.cutmix_alpha:
    mixed, lam = jnp.where(use_cutmix, cutmix, mixup), jnp.where(use_cutmix, box_lam, lam)
  elif cfg.cutmix_alpha:
    mixed, lam = cutmix, box_lam
  else:
    mixed = mixup
  if cfg.mix_prob < 1.0:
    apply = apply_u[0] < cfg.mix_prob
    mixed, lam = jnp.where(apply, mixed, images), jnp.where(apply, lam, 1.0)
  return mixed.astype(images.dtype), lam * targets + (1.0 - lam) * targets[::-1]
