"""Rows of a uint8 image array, read on demand: a split of a memory-mapped decode cache without a copy.

`ImageRows(array, index)` stands for `array[index]` without reading it. Taking a subset (a holdout split,
the quarantine filter) composes the index, so splitting a cache larger than memory costs an index array.
Rows are read when asked for: by `os.preadv` from the cache file when `array` is a memory-mapped .npy
(`np.load(mmap_mode='r')`), else by numpy indexing (an in-memory array, e.g. a source that yields arrays).

Why read the file instead of the mapping: the pages a process touches through a mapping count in its
resident memory until the kernel reclaims them, so an epoch over a mapped set larger than RAM would show
the whole set as resident. Reads copy from the page cache into fresh buffers; the page cache stays the
kernel's to evict. Both give the same bytes.
"""
import mmap
import os

import numpy as np


class ImageRows:
  """`array[index]` (uint8, rows first), read on demand; enough of numpy's interface for the modes.

  Indexing returns numpy arrays: an int a row, a slice or an integer/boolean array a batch, a tuple indexes
  the batch further (`rows[:, :, ::-1]`). `np.asarray(rows)` reads every row.
  """

  def __init__(self, array, index=None):
    self.array = array
    self.index = (np.arange(len(array), dtype=np.int64) if index is None
                  else np.asarray(index, np.int64).reshape(-1))
    self._file = mapped_file(array)

  @property
  def shape(self) -> tuple:
    return (len(self.index), *self.array.shape[1:])

  @property
  def dtype(self):
    return self.array.dtype

  @property
  def ndim(self) -> int:
    return self.array.ndim

  @property
  def row_bytes(self) -> int:
    return int(np.prod(self.array.shape[1:], dtype=np.int64)) * self.array.dtype.itemsize

  @property
  def nbytes(self) -> int:
    return len(self.index) * self.row_bytes

  def __len__(self) -> int:
    return len(self.index)

  def __repr__(self) -> str:
    where = self._file[0] if self._file else 'memory'
    return f'ImageRows({self.shape}, {self.dtype}, from {where})'

  def rows(self, index) -> 'ImageRows':
    """The subset at `index` (numpy semantics: ints, negatives, slices or a boolean mask), still unread."""
    return ImageRows(self.array, self.index[index])

  def read(self, positions) -> np.ndarray:
    """The rows at integer `positions` of this view, as a fresh (len(positions), ...) array."""
    return read_rows(self.array, self.index[np.asarray(positions, np.int64)], self._file)

  def __getitem__(self, key):
    if isinstance(key, tuple):
      if not key or key[0] is Ellipsis:
        return np.asarray(self)[key]
      head = self[key[0]]
      return head[key[1:]] if np.ndim(key[0]) == 0 and not isinstance(key[0], slice) else \
          head[(slice(None), *key[1:])]
    source_rows = self.index[key]
    if np.ndim(source_rows) == 0:
      return read_rows(self.array, source_rows.reshape(1), self._file)[0]
    return read_rows(self.array, source_rows, self._file)

  def __array__(self, dtype=None, copy=None):
    out = read_rows(self.array, self.index, self._file)
    return out if dtype is None else out.astype(dtype, copy=False)

  def __iter__(self):
    chunk = max(1, (64 << 20) // max(1, self.row_bytes))  # read 64 MB at a time, hand out rows
    for start in range(0, len(self), chunk):
      yield from self.read(np.arange(start, min(start + chunk, len(self))))


def mapped_file(array) -> tuple[str, int] | None:
  """(path, byte offset of row 0) when `array` is a whole C-ordered memory-mapped file, else None.

  Only a top-level np.memmap qualifies: numpy copies `offset` and `filename` onto slices and views
  unchanged, so theirs would point at the wrong bytes.
  """
  if (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous
          and getattr(array, 'filename', None)):
    return str(array.filename), int(array.offset)
  return None


def read_rows(array, source_rows: np.ndarray, file: tuple[str, int] | None = None) -> np.ndarray:
  """`array[source_rows]` as a fresh array. From a file: one read for consecutive rows, else one read per
  row in file order (sequential reads let the kernel read ahead)."""
  source_rows = np.asarray(source_rows, np.int64)
  n = len(array)
  if source_rows.size and (source_rows.min() < -n or source_rows.max() >= n):
    raise IndexError(f'row index out of range for {n} rows')
  source_rows = np.where(source_rows < 0, source_rows + n, source_rows)
  k = len(source_rows)
  consecutive = k > 0 and source_rows[-1] - source_rows[0] == k - 1 and bool(np.all(np.diff(source_rows) == 1))
  if file is None:
    return np.array(array[source_rows[0]:source_rows[0] + k]) if consecutive else np.asarray(array[source_rows])
  out = np.empty((k, *array.shape[1:]), array.dtype)
  row_bytes = out[0].nbytes if k else 0
  path, offset = file
  fd = os.open(path, os.O_RDONLY)
  try:
    if consecutive:
      _read_exactly(fd, out.reshape(-1).view(np.uint8), offset + int(source_rows[0]) * row_bytes, path)
    else:
      for j in np.argsort(source_rows, kind='stable'):
        _read_exactly(fd, out[j].reshape(-1).view(np.uint8), offset + int(source_rows[j]) * row_bytes, path)
  finally:
    os.close(fd)
  return out


def _read_exactly(fd: int, buffer: np.ndarray, position: int, path: str) -> None:
  view, done = memoryview(buffer), 0
  while done < len(view):  # one read may return less (Linux caps a read at about 2 GB)
    got = os.preadv(fd, [view[done:]], position + done)
    if got <= 0:
      raise OSError(f'{path}: ends before byte {position + len(view)}; the decode cache was truncated, '
                    'delete it to decode again')
    done += got


class RowFile:
  """A new .npy file of `shape`, written a row at a time by position (`rows[i] = image`, from any thread):
  decoding straight to the cache file, a set larger than memory never has to fit in it, and the written
  pages are the kernel's page cache to flush, not the process's (as a writable mapping's would be)."""

  def __init__(self, path, shape: tuple, dtype=np.uint8):
    header = np.lib.format.open_memmap(path, mode='w+', dtype=dtype, shape=shape)  # the header; sized file
    self.offset, self.row_shape, self.dtype = int(header.offset), tuple(shape[1:]), np.dtype(dtype)
    del header
    self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
    self.path, self._fd = str(path), os.open(path, os.O_WRONLY)

  def __setitem__(self, i: int, row) -> None:
    row = np.ascontiguousarray(row, self.dtype)
    if row.shape != self.row_shape:
      raise ValueError(f'{self.path}: row {i} has shape {row.shape}, expected {self.row_shape}')
    view, done = memoryview(row.reshape(-1).view(np.uint8)), 0
    while done < self.row_bytes:
      done += os.pwrite(self._fd, view[done:], self.offset + int(i) * self.row_bytes + done)

  def close(self) -> None:
    if self._fd >= 0:
      os.close(self._fd)
      self._fd = -1


def take_rows(images, index):
  """`images[index]`: an unread `ImageRows` when `images` is one or is memory-mapped, else a copy."""
  if isinstance(images, ImageRows):
    return images.rows(index)
  if mapped_file(images) is not None:
    return ImageRows(images, index)
  return images[index]


def in_memory(images):
  """`images` as an ordinary in-memory numpy array (what every run had before the cache was mapped)."""
  if isinstance(images, (ImageRows, np.memmap)):
    return np.array(images)
  return images
