"""Tests for fpclass.train.augment: exact geometry on integer cases, torchvision-style erasing and colour, jit/vmap."""
import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.scipy.ndimage import map_coordinates

from fpclass.config.schema import base_config
from fpclass.train import augment
from fpclass.train.augment import AugmentSettings, affine_transform, augment_batch, augment_image, geometry_matrix

EVERYTHING = AugmentSettings(hflip=0.5, vflip=0.5, rotation=10.0, zoom=0.1, height=0.1, width=0.1, translate=0.1,
                           fill_mode='reflect', brightness=0.2, contrast=0.2, erasing=0.5)


# Tests run jitted like the train step: eager mode compiles every op for every new shape and was many times
# slower.
_jit_batch = jax.jit(augment_batch, static_argnames='cfg')
_jit_affine = jax.jit(affine_transform, static_argnames='fill_mode')


def _augment(images, key, cfg) -> np.ndarray:
  return np.asarray(_jit_batch(images, key, cfg))


def _image(shape, lo=0.0, hi=1.0, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


# --- config -------------------------------------------------------------------------------------------------


def test_all_off_is_identity_and_not_enabled():
  cfg = AugmentSettings()
  assert not cfg.enabled
  x = _image((4, 12, 8, 1))
  np.testing.assert_array_equal(augment_batch(x, jax.random.key(0), cfg), x)
  np.testing.assert_array_equal(_augment(x, jax.random.key(0), cfg), x)
  np.testing.assert_array_equal(augment_image(x[0], jax.random.key(0), cfg), x[0])
  # Off means not traced at all: the jaxpr is just the input passed through.
  assert not jax.make_jaxpr(functools.partial(augment_batch, cfg=cfg))(x, jax.random.key(0)).eqns


def test_rejects_integer_images():
  with pytest.raises(ValueError, match='float'):
    augment_batch(jnp.zeros((2, 4, 4, 1), jnp.uint8), jax.random.key(0), AugmentSettings(hflip=0.5))


@pytest.mark.parametrize('key', ['hflip', 'vflip', 'rotation', 'zoom', 'height', 'width', 'translate',
                                 'brightness', 'contrast', 'erasing'])
def test_each_op_enables(key):
  assert AugmentSettings(**{key: 0.1}).enabled


def _primitives(cfg, shape=(2, 12, 8, 1)):
  """(name, output size) of every primitive that tracing augment_batch with `cfg` records, sub-jaxprs included."""
  jaxpr = jax.make_jaxpr(functools.partial(augment_batch, cfg=cfg))(jnp.zeros(shape), jax.random.key(0))
  found = set()
  def walk(jp):
    for eqn in jp.eqns:
      found.update((eqn.primitive.name, int(np.prod(v.aval.shape))) for v in eqn.outvars)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  return found


def test_disabled_ops_are_not_traced():
  image_size = 2 * 12 * 8
  resamples = lambda cfg: ('gather', image_size) in _primitives(cfg)  # the geometry's pixel gather
  flips = lambda cfg: any(name == 'rev' for name, _ in _primitives(cfg))
  assert resamples(AugmentSettings(zoom=0.1)) and flips(AugmentSettings(vflip=0.5))
  assert not resamples(AugmentSettings(hflip=0.5, vflip=0.5, brightness=0.1, contrast=0.1, erasing=0.5))
  assert not flips(AugmentSettings(brightness=0.1, contrast=0.1, erasing=0.5))
  assert not flips(AugmentSettings(hflip=0.5, vflip=0.5, rotation=5.0))  # folded into the resampling


def test_from_config_configdict():
  assert AugmentSettings.from_config(base_config().augment) == AugmentSettings()
  c = base_config().augment
  c.rotation = 10
  c.fill_mode = 'reflect'
  c.erasing_scale = [0.1, 0.2]  # a list from a flag override still gives a hashable config
  cfg = AugmentSettings.from_config(c)
  assert cfg.rotation == 10.0 and cfg.fill_mode == 'reflect' and cfg.erasing_scale == (0.1, 0.2)
  hash(cfg)
  assert AugmentSettings.from_config({'hflip': 0.5}) == AugmentSettings(hflip=0.5)
  assert set(base_config().augment.keys()) == {f.name for f in dataclasses.fields(AugmentSettings)}


@pytest.mark.parametrize('key,value', [
    ('hflip', 1.5), ('vflip', -0.1), ('erasing', 2.0), ('rotation', -1.0), ('zoom', 1.0), ('height', -0.2),
    ('width', 1.0), ('translate', float('nan')), ('fill_mode', 'mirror'), ('fill_value', 2.0),
    ('brightness', -0.1), ('contrast', float('inf')), ('erasing_scale', (0.5, 0.1)), ('erasing_scale', 0.5),
    ('erasing_ratio', (0.0, 1.0)), ('erasing_value', -1.0), ('hflip', 'often'), ('hflip', '0.5'), ('rotate', 10.0),
])
def test_from_config_rejects_bad_values(key, value):
  with pytest.raises(ValueError, match=rf'config\.augment\.{key}\b'):
    AugmentSettings.from_config(ml_collections.ConfigDict({key: value}))


# --- flips --------------------------------------------------------------------------------------------------


def test_flips():
  x = _image((3, 12, 8, 2))
  np.testing.assert_array_equal(_augment(x, jax.random.key(1), AugmentSettings(hflip=1.0)), x[:, :, ::-1])
  np.testing.assert_array_equal(_augment(x, jax.random.key(1), AugmentSettings(vflip=1.0)), x[:, ::-1])


def test_flip_frequency_with_raw_uint32_key():
  x = np.broadcast_to(np.arange(4, dtype=np.float32)[None, None, :, None] / 4, (2000, 1, 4, 1))
  out = _augment(x, jax.random.PRNGKey(2), AugmentSettings(hflip=0.3))  # old-style keys work too
  flipped = out[:, 0, 0, 0] > 0
  np.testing.assert_array_equal(out[flipped], x[flipped][:, :, ::-1])
  np.testing.assert_array_equal(out[~flipped], x[~flipped])
  assert abs(flipped.mean() - 0.3) < 0.045  # 4.4 sigma at n=2000


GEOMETRY = AugmentSettings(rotation=15.0, zoom=0.2, translate=0.1)


@pytest.mark.parametrize('flip', ['hflip', 'vflip'])
def test_flips_come_after_geometry(flip):
  # With geometry on, flips are folded into the resampling; the result must be the flipped geometry output
  # (the flip draw does not change the geometry draw).
  x = _image((8, 12, 8, 1))
  out = _augment(x, jax.random.key(3), dataclasses.replace(GEOMETRY, **{flip: 1.0}))
  ref = _augment(x, jax.random.key(3), GEOMETRY)
  np.testing.assert_allclose(out, ref[:, :, ::-1] if flip == 'hflip' else ref[:, ::-1], atol=1e-5)


# --- geometry -----------------------------------------------------------------------------------------------


def test_rotation_90_is_rot90():
  # Positive angles rotate counter-clockwise as displayed, like np.rot90 and Keras RandomRotation.
  x = _image((10, 10, 2))
  np.testing.assert_allclose(_jit_affine(x, geometry_matrix(10, 10, angle=90.0)), np.rot90(x), atol=1e-5)
  np.testing.assert_allclose(_jit_affine(x, geometry_matrix(10, 10, angle=-90.0)), np.rot90(x, -1),
                             atol=1e-5)


def test_unit_scale_is_identity():
  x = _image((12, 8, 3))
  np.testing.assert_array_equal(_jit_affine(x, geometry_matrix(12, 8, scale_y=1.0, scale_x=1.0)), x)
  np.testing.assert_array_equal(_jit_affine(x, jnp.eye(3)), x)


def test_scale_magnifies_about_the_centre():
  x = _image((9, 9, 1))
  out = _jit_affine(x, geometry_matrix(9, 9, scale_y=2.0, scale_x=2.0))
  np.testing.assert_array_equal(out[::2, ::2], x[2:7, 2:7])  # out[r, c] = x[4 + (r - 4) / 2, ...]


def test_integer_translation_shifts_exactly():
  x = _image((12, 8, 1))
  out = np.asarray(_jit_affine(x, geometry_matrix(12, 8, shift_y=2.0, shift_x=-3.0), 'constant', 0.25))
  np.testing.assert_array_equal(out[2:, :-3], x[:-2, 3:])  # content moves down 2, left 3
  np.testing.assert_array_equal(out[:2], 0.25)
  np.testing.assert_array_equal(out[:, -3:], 0.25)


@pytest.mark.parametrize('fill_mode,pad_mode', [('nearest', 'edge'), ('reflect', 'symmetric'), ('wrap', 'wrap')])
def test_fill_modes_match_numpy_pad(fill_mode, pad_mode):
  x = _image((6, 5, 1))
  out = _jit_affine(x, geometry_matrix(6, 5, shift_y=4.0, shift_x=-7.0), fill_mode)
  padded = np.pad(x, ((8, 8), (8, 8), (0, 0)), mode=pad_mode)
  np.testing.assert_array_equal(out, padded[8 - 4:8 - 4 + 6, 8 + 7:8 + 7 + 5])


@pytest.mark.parametrize('fill_mode', augment.FILL_MODES)
def test_affine_matches_map_coordinates(fill_mode):
  x = _image((12, 9, 3))
  m = geometry_matrix(12, 9, angle=37.0, scale_y=0.7, scale_x=1.3, shift_y=2.5, shift_x=-4.2)
  rows, cols = np.meshgrid(np.arange(12.0), np.arange(9.0), indexing='ij')
  src = np.einsum('ij,jhw->ihw', np.asarray(m), np.stack([rows, cols, np.ones_like(rows)]))
  ref = np.stack([map_coordinates(x[..., c], list(src[:2]), order=1, mode=fill_mode, cval=0.3)
                  for c in range(3)], -1)
  np.testing.assert_allclose(_jit_affine(x, m, fill_mode, 0.3), ref, atol=1e-5)


def test_random_geometry_changes_image_and_stays_in_range():
  x = _image((8, 12, 8, 1))
  out = _augment(x, jax.random.key(4), GEOMETRY)
  assert np.abs(out - x).max(axis=(1, 2, 3)).min() > 0.01
  assert out.min() >= 0.0 and out.max() <= 1.0


# --- colour -------------------------------------------------------------------------------------------------


def test_brightness_scales_by_a_factor_in_range():
  cfg = AugmentSettings(brightness=0.5)
  x = _image((64, 10, 10, 1), 0.1, 0.6)  # 0.6 * 1.5 < 1, so nothing clips and the factor is recoverable
  out = _augment(x, jax.random.key(5), cfg)
  factor = out.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
  assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5
  assert factor.min() < 0.9 and factor.max() > 1.1  # both directions are drawn
  np.testing.assert_allclose(out, x * factor[:, None, None, None], atol=1e-5)
  bright = _augment(np.full(x.shape, 0.9, np.float32), jax.random.key(5), cfg)
  assert bright.max() == 1.0 and bright.min() >= 0.45 - 1e-6  # clipped at 1


def test_contrast_keeps_mean_and_scales_spread():
  cfg = AugmentSettings(contrast=0.5)
  x = _image((64, 10, 10, 1), 0.3, 0.7)  # (0.7 - 0.5) * 1.5 + 0.5 < 1: no clipping
  out = _augment(x, jax.random.key(6), cfg)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
  factor = out.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
  assert factor.min() >= 0.5 - 1e-4 and factor.max() <= 1.5 + 1e-4
  assert factor.min() < 0.9 and factor.max() > 1.1
  strong = _augment(_image(x.shape), jax.random.key(6), cfg)
  assert strong.min() == 0.0 and strong.max() == 1.0  # clipped at both ends


def test_contrast_uses_grey_mean_for_rgb():
  x = _image((5, 4, 3))
  grey = (x @ np.array([0.299, 0.587, 0.114])).mean()
  np.testing.assert_allclose(augment.adjust_contrast(x, 0.0), np.full(x.shape, grey), atol=1e-6)


# --- erasing ------------------------------------------------------------------------------------------------


def test_erasing_rectangle_area_and_frequency():
  n, h, w = 2000, 20, 16
  scale = (0.05, 0.2)  # with the default ratios every candidate fits, so the erase rate is exactly `erasing`
  x = _image((n, h, w, 1), 0.0, 0.4)  # never 0.5, so erased pixels are exactly those equal to 0.5
  out = _augment(x, jax.random.key(8), AugmentSettings(erasing=0.3, erasing_scale=scale, erasing_value=0.5))
  erased = out[..., 0] == 0.5
  assert abs(erased.any(axis=(1, 2)).mean() - 0.3) < 0.045  # 4.4 sigma at n=2000
  tops = set()
  for mask in erased[erased.any(axis=(1, 2))]:
    rows, cols = np.nonzero(mask)
    box_h, box_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert rows.size == box_h * box_w  # one solid rectangle
    # h and w are rounded from sqrt(area * ratio) and sqrt(area / ratio), so h*w may miss the area by this much.
    slack = 0.5 * (box_h + box_w + 1) + 0.25
    assert scale[0] * h * w - slack <= box_h * box_w <= scale[1] * h * w + slack
    tops.add(rows.min())
  assert len(tops) > 5  # the position is random
  np.testing.assert_array_equal(out[~erased.any(axis=(1, 2))], x[~erased.any(axis=(1, 2))])
  np.testing.assert_array_equal(_augment(x, jax.random.key(8), AugmentSettings(erasing=0.0)), x)


def test_erasing_when_no_box_fits_is_a_no_op():
  # torchvision gives up after 10 attempts; a box of the whole image never fits (needs h < H and w < W).
  x = _image((8, 10, 10, 1))
  cfg = AugmentSettings(erasing=1.0, erasing_scale=(0.99, 1.0), erasing_ratio=(1.0, 1.0))
  np.testing.assert_array_equal(_augment(x, jax.random.key(9), cfg), x)


# --- jit / vmap / keys --------------------------------------------------------------------------------------


def test_jit_vmap_and_keys():
  x = _image((4, 12, 8, 3))
  key = jax.random.key(11)
  out = _jit_batch(x, key, EVERYTHING)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  # XLA fuses and reorders float ops under jit, so equal up to rounding, not bitwise.
  np.testing.assert_allclose(out, augment_batch(jnp.asarray(x), key, EVERYTHING), atol=1e-5)
  np.testing.assert_array_equal(out, _jit_batch(x, key, EVERYTHING))
  assert not np.allclose(out, _jit_batch(x, jax.random.key(12), EVERYTHING))
  keys = jax.random.split(key, x.shape[0])
  one = jax.jit(augment_image, static_argnames='cfg')
  for i in range(x.shape[0]):
    np.testing.assert_allclose(out[i], one(x[i], keys[i], cfg=EVERYTHING), atol=1e-5)
  # Examples in one batch get different draws.
  same = _augment(np.broadcast_to(x[:1], x.shape), key, EVERYTHING)
  assert not np.allclose(same[0], same[1])
