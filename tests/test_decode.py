"""Decoding: every Pillow mode, EXIF, resizing, bad files (quarantined, never touched), and the cache."""
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from fpclass.config.inputs import DecodeSettings
from fpclass.data import decode
from fpclass.data.decode import DecodeError, decode_files, decode_image
from tests.conftest import save_image

GREY = DecodeSettings(image_size=(30, 40), channels=1)
RGB = DecodeSettings(image_size=(30, 40), channels=3)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'LA', 'P', 'CMYK', '1', 'I;16'])
@pytest.mark.parametrize('settings', [GREY, RGB], ids=['grey', 'rgb'])
def test_every_mode_decodes_to_the_configured_channels(tmp_path, mode, settings):
  fmt = 'TIFF' if mode == 'CMYK' else 'PNG'
  path = save_image(tmp_path / f'x.{fmt.lower()}', mode=mode, fmt=fmt)
  out = decode_image(path, settings)
  assert out.dtype == np.uint8 and out.shape == (30, 40, settings.channels)


def test_16_bit_is_scaled_not_clipped(tmp_path):
  # Pillow's own convert('L') clips 16-bit values at 255; a mid-grey 16-bit image must stay mid-grey.
  path = save_image(tmp_path / 'x.png', mode='I;16', value=32768)
  out = decode_image(path, GREY)
  assert abs(int(out.mean()) - 128) <= 1


def test_transparency_is_composited_onto_the_background(tmp_path):
  image = Image.new('RGBA', (40, 30), (0, 0, 0, 0))  # fully transparent black
  image.save(tmp_path / 'a.png')
  white = decode_image(tmp_path / 'a.png', GREY)
  black = decode_image(tmp_path / 'a.png', DecodeSettings(image_size=(30, 40), alpha_background=0))
  assert white.min() == 255 and black.max() == 0


def test_palette_with_transparency(tmp_path):
  image = Image.new('P', (40, 30), 0)
  image.putpalette([10, 10, 10] + [200, 200, 200] * 255)
  image.info['transparency'] = 0
  image.save(tmp_path / 'p.png', transparency=0)
  assert decode_image(tmp_path / 'p.png', GREY).min() == 255


def test_exif_orientation_is_applied(tmp_path):
  arr = np.zeros((30, 40), np.uint8)
  arr[:, :20] = 255  # left half white
  image = Image.fromarray(arr, 'L')
  exif = Image.Exif()
  exif[0x0112] = 3  # rotated 180 degrees
  image.save(tmp_path / 'r.jpg', exif=exif, quality=95)
  out = decode_image(tmp_path / 'r.jpg', GREY)[:, :, 0]
  assert out[:, :15].mean() < 50 and out[:, 25:].mean() > 200  # white half now on the right


@pytest.mark.parametrize('mode', ['L', 'RGB', 'CMYK', '1', 'P'])
@pytest.mark.parametrize('settings', [GREY, RGB], ids=['grey', 'rgb'])
def test_decoded_pixels_are_pillows_own_conversion(tmp_path, mode, settings):
  """At the stored size (no resize), modes without alpha or 16-bit samples decode to exactly what Pillow's
  own `convert('L' or 'RGB')` gives; an all-zero or shifted image fails this."""
  fmt = 'TIFF' if mode == 'CMYK' else 'PNG'
  source = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8), 'RGB')
  path = tmp_path / f'x.{fmt.lower()}'
  source.convert(mode).save(path, format=fmt)
  with Image.open(path) as image:
    expected = np.asarray(image.convert('L' if settings.channels == 1 else 'RGB'))
  out = decode_image(path, settings)
  assert out.std() > 10 and np.array_equal(out.reshape(expected.shape), expected)


@pytest.mark.parametrize('mode', ['LA', 'RGBA'])
def test_alpha_is_composited_as_pillow_composites_it(tmp_path, mode):
  rng = np.random.default_rng(4)
  rgba = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), 'RGBA').convert(mode)
  rgba.save(tmp_path / 'a.png')
  for background in (0, 255):
    flat = Image.alpha_composite(Image.new('RGBA', rgba.size, (background,) * 3 + (255,)), rgba.convert('RGBA'))
    expected = np.asarray(flat.convert('L'), dtype=int)
    out = decode_image(tmp_path / 'a.png', DecodeSettings(image_size=(30, 40), alpha_background=background))
    assert np.abs(out[:, :, 0].astype(int) - expected).max() <= 1  # Pillow's paste and composite round apart


def banded(path, size=(200, 50)):
  """A wide mid-grey image with a light band down its left edge and a dark one down its right."""
  w, h = size
  arr = np.full((h, w), 128, np.uint8)
  arr[:, :20], arr[:, -20:] = 240, 10
  Image.fromarray(arr, 'L').save(path)
  return path


@pytest.mark.parametrize('resize', ['stretch', 'crop', 'pad'])
def test_resize_modes_are_told_apart_by_border_bands(tmp_path, resize):
  """A 200x50 image with edge bands into 40x40: stretch keeps both bands over the full height, crop (the
  centre 50x50) drops them, pad (letterbox, 40x10 of image) keeps them between fill rows."""
  settings = DecodeSettings(image_size=(40, 40), resize=resize, alpha_background=255)
  out = decode_image(banded(tmp_path / 'wide.png'), settings)[:, :, 0].astype(int)
  assert out.shape == (40, 40)
  left, middle, right = out[:, :2], out[:, 10:30], out[:, -2:]
  if resize == 'stretch':
    assert (left > 200).all() and (right < 50).all() and (abs(middle - 128) <= 2).all()
  elif resize == 'crop':
    assert (abs(out - 128) <= 2).all()
  else:
    rows = np.flatnonzero((out != 255).any(1))  # the image's rows; the rest is the fill
    assert len(rows) == 10 and rows[0] == 15 and (out[:15] == 255).all() and (out[25:] == 255).all()
    assert (out[16:24, :2] > 200).all() and (out[16:24, -2:] < 50).all()
  with Image.open(tmp_path / 'wide.png') as image:  # and the same pixels as Pillow's own operation
    size = (40, 40)
    expected = {'stretch': lambda: image.resize(size, Image.Resampling.BILINEAR),
                'crop': lambda: ImageOps.fit(image, size, Image.Resampling.BILINEAR),
                'pad': lambda: ImageOps.pad(image, size, Image.Resampling.BILINEAR, color=255)}[resize]()
  assert np.array_equal(out, np.asarray(expected))


def test_bad_files_raise_decode_errors_with_reasons(tmp_path):
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'text.png').write_text('not an image at all')
  good = save_image(tmp_path / 'good.png', size=(64, 64))
  (tmp_path / 'truncated.png').write_bytes(good.read_bytes()[:200])
  big = save_image(tmp_path / 'big.png', size=(300, 300), value=0)
  reasons = {}
  for name in ('empty.png', 'text.png', 'truncated.png', 'missing.png', 'big.png'):
    with pytest.raises(DecodeError) as e:
      decode_image(tmp_path / name, DecodeSettings(image_size=(30, 40), max_image_pixels=50_000))
    reasons[name] = str(e.value)
  assert reasons['empty.png'] == 'zero-byte file'
  assert 'identify' in reasons['text.png']
  assert 'corrupt' in reasons['truncated.png']
  assert 'not found' in reasons['missing.png']
  assert 'decompression bomb' in reasons['big.png'] and 'max_image_pixels' in reasons['big.png']
  assert big.exists()


def test_pillow_bomb_error_is_caught(tmp_path, monkeypatch):
  path = save_image(tmp_path / 'b.png', size=(100, 100), value=0)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # Pillow raises above 2x its limit
  # The reason says that Pillow, not the config's larger limit, refused the file.
  with pytest.raises(DecodeError, match=r'decompression bomb: .*2000 pixels.*max_image_pixels=1000000000 allows'):
    decode_image(path, DecodeSettings(image_size=(30, 40), max_image_pixels=10**9))


def test_decode_files_quarantines_and_never_deletes(tmp_path):
  paths = [save_image(tmp_path / f'{i}.png') for i in range(5)]
  (tmp_path / 'bad.png').write_bytes(b'\x89PNG garbage')
  paths.insert(2, tmp_path / 'bad.png')
  before = sorted(p.name for p in tmp_path.iterdir())
  images, ok, problems = decode_files(paths, GREY, split='train', cache_dir=None, progress=False)
  assert images.shape == (6, 30, 40, 1) and ok.tolist() == [True, True, False, True, True, True]
  assert len(problems) == 1 and problems[0].file.endswith('bad.png') and problems[0].split == 'train'
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
  paths = [save_image(tmp_path / f'{i}.png') for i in range(3)]
  cache = tmp_path / 'cache'
  first, _, _ = decode_files(paths, GREY, split='train', cache_dir=cache, progress=False)
  calls = []
  real = decode.decode_image
  monkeypatch.setattr(decode, 'decode_image', lambda p, s: calls.append(p) or real(p, s))
  again, _, _ = decode_files(paths, GREY, split='train', cache_dir=cache, progress=False)
  assert calls == [] and np.array_equal(first, again)
  save_image(paths[1], value=7)
  os.utime(paths[1], ns=(1, 1))
  changed, _, _ = decode_files(paths, GREY, split='train', cache_dir=cache, progress=False)
  assert len(calls) == 3 and changed[1].max() == 7
  # Other settings are another cache entry.
  decode_files(paths, RGB, split='train', cache_dir=cache, progress=False)
  assert len(calls) == 6
