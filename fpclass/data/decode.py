"""Decode image files once, on threads, into a uint8 cache keyed by the file list and the settings.

A cache entry is two files under <cache root>/decoded/: `<name>.images.npy`, the uint8 (N, H, W, C) array
as a plain .npy that is opened memory-mapped (`np.load(mmap_mode='r')`, so a set larger than memory is
never read whole; files are decoded straight into it), and `<name>.npz` with everything else (ok flags,
reasons, labels, ids). Each is written atomically, the .npz last, so its presence means a whole entry.

Every image goes through one path: Pillow open (lazy, header only) -> pixel-count bomb check -> decode
(a JPEG of more than twice the target size at a reduced scale) -> EXIF transpose -> mode normalisation ->
resize. A file that fails any step is returned as a `Problem` for the quarantine report; nothing on disk is
ever modified or deleted.
"""
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from fpclass import fileio
from fpclass.config.inputs import DecodeSettings
from fpclass.data.rows import ImageRows, RowFile
from fpclass.data.source import Problem

# Bump when decoding or the cache layout changes meaning, so old caches are not reused. 2: images moved out
# of the .npz into a memory-mapped .npy beside it (format 1 entries, images inside the .npz, stay readable).
# 3: large JPEGs are decoded at a reduced scale (`_draft`).
CACHE_FORMAT = 3


class DecodeError(Exception):
  """Why one file could not be decoded."""


def decode_image(path: str | os.PathLike, settings: DecodeSettings) -> np.ndarray:
  """Decodes one file to uint8 (height, width, channels), or raises DecodeError with the reason."""
  path = pathlib.Path(path)
  try:
    if path.stat().st_size == 0:
      raise DecodeError('zero-byte file')
  except FileNotFoundError:
    raise DecodeError('file not found') from None
  return _decode(path, settings)


def decode_bytes(data: bytes, settings: DecodeSettings) -> np.ndarray:
  """Decodes an encoded image held in memory (an upload) exactly as `decode_image` decodes a file."""
  if not data:
    raise DecodeError('zero-byte file')
  return _decode(io.BytesIO(data), settings)


def _decode(source, settings: DecodeSettings) -> np.ndarray:
  """The one decode path for a file path or a binary stream."""
  try:
    # Opening reads only the header, so the pixel count is checked before any pixel is decoded. Pillow's
    # own check runs inside open (a warning between 1x and 2x PIL.Image.MAX_IMAGE_PIXELS, an error above
    # 2x), so ours, named by the config key, decides every size up to 2x Pillow's limit.
    with Image.open(source) as image:
      pixels = image.size[0] * image.size[1]
      if pixels > settings.max_image_pixels:
        raise DecodeError(f'decompression bomb: {image.size[0]}x{image.size[1]} = {pixels} pixels is over '
                          f'config.data.max_image_pixels={settings.max_image_pixels}')
      _draft(image, settings)
      image.load()
      image = ImageOps.exif_transpose(image)
      image = to_mode(image, settings.channels, settings.alpha_background)
      image = _resize(image, settings)
      array = np.asarray(image, dtype=np.uint8)
  except DecodeError:
    raise
  except Image.DecompressionBombError as e:  # over 2x PIL.Image.MAX_IMAGE_PIXELS, whatever the config allows
    raise DecodeError(f'decompression bomb: {e} (Pillow opens nothing larger, whatever '
                      f'config.data.max_image_pixels={settings.max_image_pixels} allows)') from None
  except UnidentifiedImageError:
    raise DecodeError('not an image Pillow can identify') from None
  except FileNotFoundError:
    raise DecodeError('file not found') from None
  except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or malformed data
    raise DecodeError(f'corrupt image: {type(e).__name__}: {e}') from None
  if array.ndim == 2:
    array = array[:, :, None]
  return array


def _draft(image: Image.Image, settings: DecodeSettings) -> None:
  """Lets libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling, Pillow's `draft`): the
  largest reduction that leaves each side at least twice the target's longer side, whatever the EXIF
  orientation, so the bilinear resize that follows still averages. A 12-megapixel photo to 224x224 decodes
  3x faster, within 2 grey levels of the full decode (bench/decode_jpeg.py); smaller images decode as before."""
  if image.format == 'JPEG':
    side = 2 * max(settings.height, settings.width)
    image.draft(image.mode, (side, side))


def to_mode(image: Image.Image, channels: int, background: int) -> Image.Image:
  """Converts any Pillow mode to L (channels=1) or RGB (channels=3).

  16- and 32-bit integer images are scaled from 0..65535 (Pillow's own convert would clip at 255),
  float images from their own min..max, and transparency is composited onto `background`.
  """
  mode = image.mode
  if mode.startswith('I'):  # I, I;16, I;16B, I;16L, I;16N
    values = np.asarray(image, dtype=np.float64)
    top = max(65535.0, float(values.max(initial=0)))
    image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), 'L')
  elif mode == 'F':
    values = np.asarray(image, dtype=np.float64)
    lo, hi = float(values.min(initial=0)), float(values.max(initial=0))
    if lo >= 0 and hi <= 1:
      lo, hi = 0.0, 1.0
    scaled = (values - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5
    image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), 'L')
  elif mode == 'P' or mode == 'PA':
    image = image.convert('RGBA' if ('transparency' in image.info or mode == 'PA') else 'RGB')
  elif mode in ('1', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
    image = image.convert('L' if mode == '1' else 'RGB')
  elif mode in ('La', 'RGBa'):
    image = image.convert(mode.replace('a', 'A'))

  if image.mode in ('LA', 'RGBA'):
    flat = Image.new(image.mode[:-1], image.size, (background,) * (len(image.mode) - 1))
    flat.paste(image, mask=image.getchannel('A'))
    image = flat
  target = 'L' if channels == 1 else 'RGB'
  return image if image.mode == target else image.convert(target)


def _resize(image: Image.Image, settings: DecodeSettings) -> Image.Image:
  size = (settings.width, settings.height)  # Pillow sizes are (width, height)
  if image.size == size:
    return image
  if settings.resize == 'crop':
    return ImageOps.fit(image, size, Image.Resampling.BILINEAR)
  if settings.resize == 'pad':
    fill = settings.alpha_background if image.mode == 'L' else (settings.alpha_background,) * 3
    return ImageOps.pad(image, size, Image.Resampling.BILINEAR, color=fill)
  return image.resize(size, Image.Resampling.BILINEAR)


def fit_array(images: np.ndarray, settings: DecodeSettings) -> np.ndarray:
  """Brings an in-memory uint8 (N, H, W, C) array to the configured size and channel count."""
  if isinstance(images, ImageRows) and images.shape[1:] == (settings.height, settings.width, settings.channels):
    return images  # already fitted (a memory-mapped cache): leave it unread
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8:
    raise ValueError(f'expected uint8 images, got {images.dtype}')
  n, h, w, c = images.shape
  if (h, w, c) == (settings.height, settings.width, settings.channels):
    return images
  out = np.empty((n, settings.height, settings.width, settings.channels), np.uint8)
  for i in range(n):
    out[i] = fit_image(images[i], settings)
  return out


_ARRAY_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}


def fit_image(image: np.ndarray, settings: DecodeSettings) -> np.ndarray:
  """One decoded uint8 (H, W) or (H, W, C) array (C = 1, 3 or 4) through the same mode conversion and
  resize as a file, to (height, width, channels)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.dtype != np.uint8 or image.shape[2] not in _ARRAY_MODES:
    raise DecodeError(f'expected a uint8 image with 1, 3 or 4 channels, got {image.dtype} {image.shape}')
  if image.shape == (settings.height, settings.width, settings.channels):
    return image
  c = image.shape[2]
  pil = Image.fromarray(image[:, :, 0] if c == 1 else image, _ARRAY_MODES[c])
  array = np.asarray(_resize(to_mode(pil, settings.channels, settings.alpha_background), settings), np.uint8)
  return array[:, :, None] if array.ndim == 2 else array


def cache_key(paths, settings: DecodeSettings) -> str:
  """Hash of the settings and each file's path, size and mtime: an edited file invalidates the cache."""
  digest = hashlib.sha256(json.dumps([CACHE_FORMAT, dataclasses.asdict(settings)]).encode())
  for path in paths:
    try:
      st = os.stat(path)
      stamp = f'{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n'
    except OSError:
      stamp = f'{os.fspath(path)}\0missing\n'
    digest.update(stamp.encode('utf-8', 'surrogateescape'))
  return digest.hexdigest()[:32]


def decode_files(paths, settings: DecodeSettings, *, split: str, cache_dir=None, workers: int = 0,
                 labels_for=None, progress: bool = True):
  """Decodes `paths` into uint8 (N, H, W, C).

  Returns (images, ok, problems): `ok[i]` is False for a file that failed, whose row in `images` is zeros
  and whose reason is in `problems`. `labels_for(i)` may name the file for messages; default its path.
  With `cache_dir`, `images` is a read-only memory map of the cache entry.
  """
  paths = [pathlib.Path(p) for p in paths]
  shape = (len(paths), settings.height, settings.width, settings.channels)
  if cache_dir and paths:
    cache_file = pathlib.Path(cache_dir) / 'decoded' / f'{split}-{cache_key(paths, settings)}.npz'
    cached = read_cache(cache_file)
    if cached is not None:
      return cached['images'], cached['ok'], _problems(paths, cached['ok'], cached['reasons'], split)
    # Decode straight into the cache file, so a set larger than memory never has to fit in it.
    with fileio.atomic_path(images_file(cache_file)) as tmp:
      rows = RowFile(tmp, shape)
      try:
        ok, reasons = _decode_into(rows, paths, settings, split, workers, progress)
      finally:
        rows.close()
    write_cache(cache_file, ok=ok, reasons=np.array(reasons, dtype=str))
    return np.load(images_file(cache_file), mmap_mode='r'), ok, _problems(paths, ok, reasons, split)

  images = np.zeros(shape, np.uint8)
  ok, reasons = _decode_into(images, paths, settings, split, workers, progress)
  return images, ok, _problems(paths, ok, reasons, split)


def _decode_into(images, paths, settings, split, workers, progress):
  """Decodes `paths` into the rows of `images` (an array or a `RowFile`); returns (ok, reasons)."""
  ok = np.zeros(len(paths), bool)
  reasons = [''] * len(paths)

  def work(i):
    try:
      images[i] = decode_image(paths[i], settings)
      ok[i] = True
    except DecodeError as e:
      reasons[i] = str(e)

  workers = workers or 2 * (os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
    jobs = pool.map(work, range(len(paths)))
    for _ in tqdm(jobs, total=len(paths), desc=f'decode {split}', unit='img', disable=not progress or None,
                  leave=False):
      pass
  return ok, reasons


def images_file(cache_file: pathlib.Path) -> pathlib.Path:
  """The memory-mapped images of the cache entry `cache_file` (<name>.npz -> <name>.images.npy)."""
  cache_file = pathlib.Path(cache_file)
  return cache_file.with_name(f'{cache_file.stem}.images.npy')


def read_cache(cache_file: pathlib.Path, keys=('images', 'ok', 'reasons')) -> dict | None:
  """The arrays `keys` of a decode cache entry, or None when it is absent or unreadable. `images` is a
  read-only memory map (np.memmap) of the entry's .npy file."""
  if not cache_file.exists():
    return None
  try:
    with np.load(cache_file, allow_pickle=False) as cached:
      arrays = {k: cached[k] for k in keys if k != 'images' or 'images' in cached.files}
    if 'images' in keys and 'images' not in arrays:
      arrays['images'] = np.load(images_file(cache_file), mmap_mode='r', allow_pickle=False)
      rows = {len(v) for k, v in arrays.items() if k in ('ok', 'labels', 'ids')}
      if rows and rows != {len(arrays['images'])}:
        return None  # the two files come from different writes: decode again
    return arrays
  except (OSError, ValueError, KeyError):
    return None  # unreadable cache: decode again and overwrite it


def write_cache(cache_file: pathlib.Path, **arrays) -> None:
  """Writes a cache entry: `images` (if given) to the memory-mappable .npy, the rest to the .npz, last."""
  images = arrays.pop('images', None)
  if images is not None:
    with fileio.atomic_path(images_file(cache_file)) as tmp:
      with open(tmp, 'wb') as f:
        np.save(f, np.ascontiguousarray(images, np.uint8))
  with fileio.atomic_path(cache_file) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)


def _problems(paths, ok, reasons, split):
  return [Problem(file=str(paths[i]), split=split, reason=str(reasons[i])) for i in np.flatnonzero(~ok)]
