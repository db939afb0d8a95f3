"""Decoding: every Pillow mode, EXIF, resizing, bad files (quarantined, never touched), and the cache."""
import os

import numpy as np
import pytest
from PIL import Image

from fpclass.config import DecodeSettings
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


@pytest.mark.parametrize('resize', ['stretch', 'crop', 'pad'])
def test_resize_modes_give_the_configured_size(tmp_path, resize):
  path = save_image(tmp_path / 'wide.png', size=(200, 50))
  out = decode_image(path, DecodeSettings(image_size=(120, 80), resize=resize))
  assert out.shape == (120, 80, 1)


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
  with pytest.raises(DecodeError, match='decompression bomb'):
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
