"""Tests for fpclass.train.randaugment: each op against torchvision.transforms.v2 on uint8 images, the magnitude tables,
the sampling, whole policies replayed through torchvision, and the policy's place in fpclass.train.augment."""
import dataclasses
import functools
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from fpclass.config.inputs import AugmentSettings
from fpclass.config.settings import ConfigError
from fpclass.train import augment, randaugment

GEOMETRIC = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
REFERENCES = {'randaugment': v2.RandAugment(), 'trivialaugment': v2.TrivialAugmentWide()}
BINS = (0, 9, 15, 20, 30)  # a spread of magnitudes; 9 is RandAugment's default, 20 gives half-pixel ties



def apply_op(image, name: str, magnitude: float = 0.0, fill_value: float = 0.0):
  """One op on a float (H, W, C) image in [0, 1], as torchvision's RandAugment applies `name` at its signed
  `magnitude` (bits for Posterize, a fraction of 255 for Solarize) to the uint8 image it stands for: the
  policy's own kernel and parameters, outside its random choice of ops."""
  h, w = image.shape[:2]
  params = jnp.asarray(randaugment._params(name, magnitude, h, w))
  return randaugment._KERNELS[name](randaugment._to_levels(image), params, randaugment._fill_level(fill_value)) / 255.0

def _images() -> dict[str, np.ndarray]:
  """Non-square uint8 images (H, W, C): random RGB and grey, and an RGB one with awkward channels (flat; nearly
  all one level, which equalisation leaves alone; a ramp)."""
  rng = np.random.default_rng(0)
  awkward = np.zeros((23, 31, 3), np.uint8)
  awkward[..., 0] = 77
  awkward[..., 1] = 200
  awkward[:2, :3, 1] = 10
  awkward[..., 2] = np.linspace(30, 90, 31).astype(np.uint8)[None, :]
  return {'rgb': rng.integers(0, 256, (23, 31, 3), dtype=np.uint8),
          'grey': rng.integers(0, 256, (23, 31, 1), dtype=np.uint8), 'awkward': awkward}


IMAGES = _images()


def _reference(image: np.ndarray, name: str, magnitude: float, policy: str = 'randaugment') -> np.ndarray:
  """torchvision's op on the uint8 image, as its RandAugment/TrivialAugmentWide applies it (nearest, fill 0)."""
  reference = REFERENCES[policy]
  out = reference._apply_image_or_video_transform(torch.from_numpy(image).permute(2, 0, 1).contiguous(), name,
                                                  magnitude, interpolation=InterpolationMode.NEAREST,
                                                  fill=reference._fill)
  return out.permute(1, 2, 0).numpy()


def _ours(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
  out = apply_op(jnp.asarray(image, jnp.float32) / 255.0, name, magnitude)
  return np.round(np.asarray(out) * 255.0).astype(np.uint8)


def _half_pixel_ties(name: str, magnitude: float, height: int, width: int) -> np.ndarray:
  """(H, W) True where torchvision's nearest source pixel is an exact tie (a coordinate halfway between two
  pixels): there its pick follows float32 rounding in its own grid arithmetic."""
  p = randaugment._params(name, magnitude, height, width).astype(np.float64)
  x = np.arange(width)[None, :] - (width - 1) / 2.0
  y = np.arange(height)[:, None] - (height - 1) / 2.0
  col = (x * p[0] + y * p[1] + p[2] + 1.0) * (width / 2.0) - 0.5
  row = (x * p[3] + y * p[4] + p[5] + 1.0) * (height / 2.0) - 0.5
  halfway = lambda v: np.abs(v - np.floor(v) - 0.5) < 1e-4
  return halfway(col) | halfway(row)


def _cases(name: str):
  """(policy, signed magnitude) for op `name` over both policies' tables at BINS, both signs."""
  for policy in REFERENCES:
    levels, signed = randaugment.magnitudes(policy, 31, 23, 31)[name]
    values = [0.0] if levels is None else sorted({float(levels[b]) for b in BINS})
    for m in values:
      for sign in ((1, -1) if signed else (1,)):
        yield policy, m * sign


# --- each op against torchvision ------------------------------------------------------------------------------


@pytest.mark.parametrize('image', sorted(IMAGES))
@pytest.mark.parametrize('name', randaugment.OPS)
def test_op_matches_torchvision(name, image):
  """Within 1 grey level everywhere (float32 sums in another order truncate the other way when the exact
  result is a whole number: on the awkward image, a whole channel at once), and on the random images equal on
  at least 95% of pixels (the worst case, Color at factor 1.6, differs on 1.7%; a rounding-for-truncation slip
  moves about half of them). Geometric ops: equal except at exact half-pixel ties."""
  x = IMAGES[image]
  for policy, magnitude in _cases(name):
    ours, theirs = _ours(x, name, magnitude), _reference(x, name, magnitude, policy)
    differ = ours != theirs
    where = f'{name}({magnitude}) from {policy} on {image}'
    if name in GEOMETRIC:
      ties = _half_pixel_ties(name, magnitude, *x.shape[:2])
      assert not (differ.any(axis=2) & ~ties).any(), where
    else:
      assert np.abs(ours.astype(int) - theirs).max() <= 1, where
      assert image == 'awkward' or differ.mean() <= 0.05, where


def test_ops_on_a_square_image_at_right_angles():
  """torchvision rotates a square image by 90 degrees with rot90; the resampling lands on the same pixels."""
  x = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  for angle in (90.0, -90.0, 180.0, 45.0):
    np.testing.assert_array_equal(_ours(x, 'Rotate', angle), _reference(x, 'Rotate', angle))


def test_geometric_fill_and_float_input():
  """The fill level, and an input between grey levels is quantised first (as the uint8 image it stands for)."""
  x = IMAGES['rgb']
  ours = apply_op(jnp.asarray(x, jnp.float32) / 255.0, 'TranslateX', 10.0, fill_value=0.5)
  np.testing.assert_array_equal(np.round(np.asarray(ours)[:, :10] * 255), 128)
  # The policy fills with config.augment.fill_value: trivialaugment's TranslateX at its top bin (32 px).
  cfg = AugmentSettings(policy='trivialaugment', fill_value=0.5)
  u = jnp.array([(randaugment.OPS.index('TranslateX') + 0.5) / 14, 30.5 / 31, 0.9])
  shifted = jax.jit(randaugment.apply_policy, static_argnames='cfg')(jnp.asarray(x, jnp.float32) / 255.0, u, cfg=cfg)
  np.testing.assert_array_equal(np.round(np.asarray(shifted) * 255), 128)
  nudged = jnp.asarray(x, jnp.float32) / 255.0 + 0.4 / 255.0
  np.testing.assert_array_equal(_ours(x, 'Equalize', 0.0),
                                np.round(np.asarray(apply_op(nudged, 'Equalize')) * 255))


# --- magnitude tables -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('policy', sorted(REFERENCES))
@pytest.mark.parametrize('num_bins', [31, 11])
def test_magnitude_tables_match_torchvision(policy, num_bins):
  space = REFERENCES[policy]._AUGMENTATION_SPACE
  for height, width in ((23, 31), (120, 80)):
    ours = randaugment.magnitudes(policy, num_bins, height, width)
    assert tuple(ours) == tuple(space) == randaugment.OPS
    for name, (levels, signed) in ours.items():
      table, their_signed = space[name]
      theirs = table(num_bins, height, width)
      assert signed == their_signed, name
      if theirs is None:
        assert levels is None, name
      elif name == 'Posterize':
        np.testing.assert_array_equal(levels, theirs.numpy(), err_msg=name)
      else:
        # torch's float32 linspace is off by an ulp here and there (it depends on its CPU kernel's vector width);
        # ours is correctly rounded.
        np.testing.assert_allclose(levels, theirs.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
        if name.startswith('Translate'):
          # torchvision truncates the shift to whole pixels: the same, except where the exact value is a whole
          # number that torch's ulp puts just below (trivialaugment's bin 15 is 16 px, 15 in torchvision).
          exact = np.isclose(levels, np.round(levels), rtol=0, atol=1e-4) & (levels != np.round(levels) - 1)
          same = levels.astype(int) == theirs.numpy().astype(int)
          assert (same | exact).all(), name


# --- sampling -------------------------------------------------------------------------------------------------


def _chi2_p(counts) -> float:
  return scipy.stats.chisquare(counts).pvalue


def test_sampling_is_uniform():
  """Each op, each trivialaugment bin and each sign uniform, with fixed draws so it cannot flake."""
  n = 14 * 2000
  cfg = AugmentSettings(policy='trivialaugment')
  u = jax.random.uniform(jax.random.key(0), (n, randaugment.policy_draws(cfg)))
  ops, bins, negative = (np.asarray(a).ravel() for a in jax.vmap(lambda v: randaugment.sample(v, cfg))(u))
  op_counts = np.bincount(ops, minlength=len(randaugment.OPS))
  assert len(op_counts) == len(randaugment.OPS) and _chi2_p(op_counts) > 1e-3, op_counts
  bin_counts = np.bincount(bins, minlength=cfg.num_magnitude_bins)
  assert len(bin_counts) == cfg.num_magnitude_bins and _chi2_p(bin_counts) > 1e-3, bin_counts
  assert _chi2_p(np.bincount(negative.astype(int), minlength=2)) > 1e-3
  # randaugment: num_ops ops per image, each uniform, at the configured bin.
  cfg = AugmentSettings(policy='randaugment', num_ops=3, magnitude=5)
  u = jax.random.uniform(jax.random.key(1), (n // 3, randaugment.policy_draws(cfg)))
  ops, bins, _ = (np.asarray(a) for a in jax.vmap(lambda v: randaugment.sample(v, cfg))(u))
  assert ops.shape == (n // 3, 3) and (bins == 5).all()
  for slot in range(3):
    assert _chi2_p(np.bincount(ops[:, slot], minlength=len(randaugment.OPS))) > 1e-3


# --- whole policies -------------------------------------------------------------------------------------------


_jit_batch = jax.jit(augment.augment_batch, static_argnames='cfg')


def _replay(image: np.ndarray, u: np.ndarray, cfg: AugmentSettings) -> np.ndarray:
  """torchvision applying the ops that draws `u` pick, one after another, to the uint8 image."""
  ops, bins, negative = (np.asarray(a) for a in randaugment.sample(jnp.asarray(u), cfg))
  space = randaugment.magnitudes(cfg.policy, cfg.num_magnitude_bins, *image.shape[:2])
  for op, b, neg in zip(ops, bins, negative):
    name = randaugment.OPS[op]
    levels, signed = space[name]
    magnitude = 0.0 if levels is None else float(levels[b]) * (-1 if signed and neg else 1)
    image = _reference(image, name, magnitude, cfg.policy)
  return image


@pytest.mark.parametrize('cfg', [AugmentSettings(policy='randaugment'),
                                 AugmentSettings(policy='randaugment', num_ops=3, magnitude=13),
                                 AugmentSettings(policy='trivialaugment')], ids=['ra', 'ra-3-13', 'ta'])
def test_policy_replays_through_torchvision(cfg):
  """augment_batch (jitted, batched) equals torchvision applying each image's drawn ops in turn: the draws
  come from the policy's slot at the end of augment's layout. The result is deterministic in the key and lies
  on the 255-level grid."""
  images = np.concatenate([IMAGES['rgb'][None], IMAGES['awkward'][None],
                           np.random.default_rng(2).integers(0, 256, (6, 23, 31, 3), dtype=np.uint8)])
  key = jax.random.key(7)
  floats = _jit_batch(jnp.asarray(images, jnp.float32) / 255.0, key, cfg)
  np.testing.assert_array_equal(floats, _jit_batch(jnp.asarray(images, jnp.float32) / 255.0, key, cfg))
  np.testing.assert_allclose(np.asarray(floats) * 255, np.round(np.asarray(floats) * 255), atol=1e-4)
  out = np.round(np.asarray(floats) * 255).astype(int)
  start, total = sum(augment._DRAWS.values()), sum(augment._draw_sizes(cfg).values())
  picked = set()
  for i, k in enumerate(jax.random.split(key, len(images))):
    u = np.asarray(jax.random.uniform(k, (total,)))[start:]
    picked.update(np.asarray(randaugment.sample(jnp.asarray(u), cfg)[0]).tolist())
    theirs = _replay(images[i], u, cfg).astype(int)
    assert np.abs(out[i] - theirs).max() <= 1, i
    assert (out[i] != theirs).mean() <= 0.05, i
  assert len(picked) >= 5  # the draws exercised a spread of ops


def test_batched_loop_equals_vmapped_select_and_one_image():
  """The CPU batching rule (a loop running each image's own ops) gives the numbers of plain vmap (every op on
  every image, selected) and of one image at a time."""
  cfg = AugmentSettings(policy='randaugment', num_ops=3, magnitude=20, fill_value=0.3)
  q = jnp.asarray(np.random.default_rng(3).integers(0, 256, (12, 9, 13, 3)), jnp.float32)
  u = jax.random.uniform(jax.random.key(4), (12, randaugment.policy_draws(cfg)))
  levels_fn = randaugment.policy_levels(cfg, 9, 13)
  select = jax.jit(jax.vmap(levels_fn))(q, u)
  loop = jax.jit(jax.vmap(randaugment._per_image_ops(levels_fn)))(q, u)
  np.testing.assert_array_equal(loop, select)
  np.testing.assert_array_equal(levels_fn(q[5], u[5]), select[5])
  # The loop is what CPU runs: a while loop, and no select over all ops.
  text = jax.jit(jax.vmap(randaugment._per_image_ops(levels_fn))).lower(q, u).as_text()
  assert 'stablehlo.while' in text and 'stablehlo.case' in text


# --- the policy inside augment_image ---------------------------------------------------------------------------


def _primitive_names(cfg, shape=(2, 12, 8, 1)) -> set[str]:
  jaxpr = jax.make_jaxpr(functools.partial(augment.augment_batch, cfg=cfg))(jnp.zeros(shape), jax.random.key(0))
  found = set()

  def walk(jp):
    for eqn in jp.eqns:
      found.add(eqn.primitive.name)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  return found


EVERYTHING = AugmentSettings(hflip=0.5, vflip=0.5, rotation=10.0, zoom=0.1, translate=0.1, brightness=0.2,
                             contrast=0.2, erasing=0.5)


def test_off_policy_is_not_traced_and_leaves_the_other_draws(monkeypatch):
  assert augment._draw_sizes(EVERYTHING) is augment._DRAWS
  policy_only = {'platform_index', 'cond', 'scatter-add'}  # the batching rule's choice, the op switch, equalise
  assert not policy_only & _primitive_names(EVERYTHING)
  assert policy_only <= _primitive_names(dataclasses.replace(EVERYTHING, policy='trivialaugment'))
  assert not AugmentSettings(policy='randaugment', num_ops=0).enabled
  x = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (4, 12, 8, 1)), jnp.float32)
  before = _jit_batch(x, jax.random.key(3), EVERYTHING)
  # With the policy on but made the identity, every other op draws the same numbers as without it.
  monkeypatch.setattr(randaugment, 'apply_policy', lambda image, u, cfg: image)
  cfg = dataclasses.replace(EVERYTHING, policy='randaugment', num_ops=4)
  assert augment._draw_sizes(cfg)['policy'] == randaugment.policy_draws(cfg) == 12
  np.testing.assert_array_equal(jax.jit(augment.augment_batch, static_argnames='cfg')(x, jax.random.key(3), cfg),
                                before)


def test_policy_runs_after_flips_and_before_colour_and_erasing(monkeypatch):
  """The order: flips before the policy (it sees the flipped image), colour and erasing after."""
  seen = []

  def spy(image, u, cfg):
    seen.append('policy')
    return image
  monkeypatch.setattr(randaugment, 'apply_policy', spy)
  for op in ('_random_colour', '_random_erasing'):
    original = getattr(augment, op)
    monkeypatch.setattr(augment, op, lambda image, u, cfg, *values, _op=op, _original=original: (
        seen.append(_op), _original(image, u, cfg, *values))[1])
  cfg = dataclasses.replace(EVERYTHING, rotation=0.0, zoom=0.0, translate=0.0, policy='randaugment')
  x = jnp.asarray(np.random.default_rng(6).uniform(0, 1, (12, 8, 1)), jnp.float32)
  jax.make_jaxpr(functools.partial(augment.augment_image, cfg=cfg))(x, jax.random.key(0))  # tracing is enough
  assert seen == ['policy', '_random_colour', '_random_erasing']


# --- settings -------------------------------------------------------------------------------------------------


def test_settings_checks_name_their_keys():
  defaults = AugmentSettings()
  assert (defaults.policy, defaults.num_ops, defaults.magnitude, defaults.num_magnitude_bins) == ('', 2, 9, 31)
  assert not defaults.enabled and AugmentSettings(policy='trivialaugment').enabled
  for bad, key in [({'policy': 'autoaugment'}, 'policy'), ({'num_ops': -1}, 'num_ops'),
                   ({'num_magnitude_bins': 1, 'magnitude': 0}, 'num_magnitude_bins'),
                   ({'magnitude': 31}, 'magnitude'), ({'magnitude': -1}, 'magnitude')]:
    with pytest.raises(ConfigError, match=rf'config\.augment\.{key}='):
      AugmentSettings(**bad)
  with pytest.raises(ConfigError, match=r'config\.augment\.num_ops=2\.5: must be a whole number'):
    AugmentSettings.from_config({'num_ops': 2.5})
  assert AugmentSettings(magnitude=40, num_magnitude_bins=41).magnitude == 40
  assert math.isclose(randaugment.magnitudes('randaugment', 41, 8, 8)['Rotate'][0][40], 30.0)
