"""Decoding a photo-sized JPEG upload: fpclass's decode (libjpeg's reduced-scale decode, Pillow's draft)
against a full decode followed by the same resize, and how far apart their pixels are.

    python bench/decode_jpeg.py                        # a 4000x3000 photo to 224x224 RGB
    python bench/decode_jpeg.py --size 1600x1200 --target 120x80 --channels 1

The photo is synthetic (smooth gradients plus mild noise, JPEG quality 90), made in memory. Each decode is
timed by CPU time over `--repeats` runs, the two alternating, the median reported.
"""
import argparse
import io
import pathlib
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from fpclass.config.inputs import DecodeSettings  # noqa: E402
from fpclass.data.decode import decode_bytes  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--size', default='4000x3000', help='the photo, WIDTHxHEIGHT')
  p.add_argument('--target', default='224x224', help='config.data.image_size as HEIGHTxWIDTH')
  p.add_argument('--channels', type=int, default=3)
  p.add_argument('--repeats', type=int, default=7)
  args = p.parse_args()
  width, height = (int(v) for v in args.size.split('x'))
  settings = DecodeSettings(image_size=tuple(int(v) for v in args.target.split('x')), channels=args.channels)
  data = photo_jpeg(width, height)

  def full():
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      mode = 'L' if settings.channels == 1 else 'RGB'
      array = np.asarray(image.convert(mode).resize((settings.width, settings.height), Image.Resampling.BILINEAR))
    return array[:, :, None] if array.ndim == 2 else array

  def fpclass_decode():
    return decode_bytes(data, settings)

  times = {'full decode + resize': [], 'fpclass (draft + resize)': []}
  for _ in range(args.repeats):
    for name, function in zip(times, (full, fpclass_decode)):
      start = time.process_time()
      function()
      times[name].append(time.process_time() - start)
  difference = np.abs(full().astype(int) - fpclass_decode().astype(int))
  print(f'{width}x{height} JPEG ({len(data) / 1e6:.1f} MB) to {settings.height}x{settings.width}x{settings.channels}:')
  for name, seconds in times.items():
    print(f'  {name:26} {1e3 * statistics.median(seconds):7.1f} ms CPU')
  ratio = statistics.median(times['full decode + resize']) / statistics.median(times['fpclass (draft + resize)'])
  print(f'  speed-up {ratio:.2f}x; pixels differ by {difference.mean():.3f} grey levels on average, '
        f'{difference.max()} at most')


def photo_jpeg(width: int, height: int) -> bytes:
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:height, :width].astype(np.float32)
  rgb = np.stack([np.sin(x / (width / 13)) * 100 + 128, np.cos(y / (height / 15)) * 100 + 128,
                  (x + y) / (width + height) * 255], -1)
  rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


if __name__ == '__main__':
  main()
