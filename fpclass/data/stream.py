"""Streaming input: training on decoded data larger than the device budget, in the same batch order.

`place(dataset, config)` decides once per run. When the decoded train + val images fit
`config.data.device_memory_budget` (bytes per device; 0: half the device's free memory, on CPU half the
host's available RAM shared among its CPU devices), they are read into memory and the run is what it
always was: the training set is a device array and each step gathers its batch by index. Otherwise train
and val stay `ImageRows` views of the memory-mapped decode cache and are streamed (`fpclass.train.steps.CompiledSteps.epoch`): for
each step of the epoch's order (`fpclass.train.sampling.batch_order`, the order the in-memory path gathers on
the device) the host reads the step's rows and the devices receive them as one batch-sharded array
before the step needs them. Augmentation stays inside the jitted step, so both paths compute the same.

Design notes: docs/modules.md (`fpclass/data/stream.py`).
"""
import dataclasses
import logging
import os

import jax
import numpy as np

from fpclass.config.inputs import StorageSettings
from fpclass.data.rows import ImageRows
from fpclass.errors import UserInputError

HOST_READ_THREADS = 2    # batches read at once: the reads wait on the page cache or disk, not the GIL
HOST_BUFFER = 4          # batches read ahead on the host
DEVICE_BUFFER = 2        # batches already on the devices ahead of the step


def host_available_memory() -> int:
  """Bytes of RAM the host can give without swapping (Linux MemAvailable), else its free pages."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return 2**62


def memory_budget(configured: int) -> int:
  """config.data.device_memory_budget in bytes: itself when positive, else half of the free memory of this
  process's first device (a CPU device's is the host's available RAM over the CPU devices); with several
  processes, the smallest of theirs."""
  if configured > 0:
    return int(configured)
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and stats.get('bytes_limit'):
    free = int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  else:
    free = host_available_memory() // max(1, jax.local_device_count())
  budget = free // 2
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # only multi-process runs need it
    # In MiB: JAX arrays are 32-bit unless x64 is on, and a byte count over 2 GiB would wrap.
    mib = multihost_utils.process_allgather(np.int32(min(budget >> 20, 2**31 - 1)))
    budget = int(np.min(mib)) << 20
  return budget


def images_bytes(*splits) -> int:
  return sum(int(s.images.nbytes) for s in splits if s is not None)


def is_streamed(split) -> bool:
  """Whether `place` left this split to stream (its images an `ImageRows` view)."""
  return isinstance(split.images, ImageRows)


def place(dataset, storage: StorageSettings):
  """`dataset` ready to train: every split's images in memory when train + val fit the budget, else
  train and val as `ImageRows` to stream. Logs the choice when it streams."""
  (train, val, test), _ = place_splits(storage, dataset.train, dataset.val, dataset.test)
  return dataclasses.replace(dataset, train=train, val=val, test=test)


def place_splits(storage: StorageSettings, train, val, test=None):
  """((train, val, test), budget): the splits in memory when train and val fit the device budget (bytes,
  `memory_budget`), else train and val as `ImageRows` to stream (test as it was)."""
  need = images_bytes(train, val)
  budget = memory_budget(storage.device_memory_budget)
  if need <= budget:
    return (_resident(train), _resident(val), _resident(test)), budget
  logging.warning('streaming input: the decoded train + val images take %.1f MB, over the device budget of '
                  '%.1f MB (config.data.device_memory_budget), so each batch is read on the host (from the '
                  'memory-mapped decode cache) and put on the device ahead of its step', need / 2**20,
                  budget / 2**20)
  return (_streamed(train), _streamed(val), test), budget


def _resident(split):
  if split is None or not isinstance(split.images, (ImageRows, np.memmap)):
    return split
  return dataclasses.replace(split, images=np.array(split.images))


def _streamed(split):
  if split is None or isinstance(split.images, ImageRows):
    return split
  return dataclasses.replace(split, images=ImageRows(np.asarray(split.images)))  # a source's own arrays


# ------------------------------------------------------------------------------------------ batch rows

def batch_share(batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of every batch that process `process_index` of `process_count` reads: its contiguous
  1/process_count of the batch (the devices of one process are together in the default mesh)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not one of {process_count} processes')
  if batch_size % process_count:
    raise UserInputError(f'config.train.batch_size={batch_size}: must be a multiple of the {process_count} '
                         'processes the batch is split across')
  per = batch_size // process_count
  return slice(process_index * per, (process_index + 1) * per)


def process_rows(sharding, batch_size: int, process_index: int) -> np.ndarray:
  """The batch rows the devices of process `process_index` hold under `sharding`, in the order
  `jax.make_array_from_process_local_data` expects a process's data (by position in the batch)."""
  spans = set()
  for device, index in sharding.devices_indices_map((batch_size,)).items():
    if device.process_index == process_index:
      rows = index[0]
      spans.add((rows.start or 0, batch_size if rows.stop is None else rows.stop))
  return np.concatenate([np.arange(a, b) for a, b in sorted(spans)]) if spans else np.zeros(0, np.int64)


def check_share(sharding, batch_size: int, share: slice, process_index: int) -> None:
  held = process_rows(sharding, batch_size, process_index)
  if not np.array_equal(held, np.arange(batch_size)[share]):
    raise UserInputError(f'streaming input: process {process_index} reads rows {share.start}..{share.stop - 1} '
                         f'of each batch, but the mesh gives its devices rows {held.tolist()}; build the '
                         "mesh with each process's devices together (fpclass.runtime.sharding.DataParallel.over())")


class StepBatches:
  """A grain random-access source: element `step` is (images, labels) of that step's batch, only the rows
  `rows` of it (this process's share; every row for one process)."""

  def __init__(self, images: ImageRows, labels, order: np.ndarray, rows: slice | np.ndarray = slice(None)):
    self.images, self.labels = images, np.asarray(labels)
    self.order = np.asarray(order)[:, rows]

  def __len__(self) -> int:
    return len(self.order)

  def __getitem__(self, step: int):
    index = self.order[step]
    return self.images.read(index), self.labels[index]


def device_batches(images: ImageRows, labels, order: np.ndarray, sharding, *, process_index: int | None = None,
                   process_count: int | None = None, read_threads: int = HOST_READ_THREADS,
                   host_buffer: int = HOST_BUFFER, device_buffer: int = DEVICE_BUFFER):
  """Iterator over the steps of `order` (steps, batch): (images, labels) as global arrays split along the
  batch by `sharding`, read on the host and put on the devices ahead of their step. This process reads
  only its share of each batch (`batch_share`)."""
  grain = _grain()
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = order.shape[1]
  share = batch_share(batch_size, process_index, process_count)
  check_share(sharding, batch_size, share, process_index)
  image_shape = (batch_size, *images.shape[1:])

  def put(batch):
    x, y = batch
    return (jax.make_array_from_process_local_data(sharding, x, image_shape),
            jax.make_array_from_process_local_data(sharding, y, (batch_size,)))

  ds = grain.MapDataset.source(StepBatches(images, labels, order, share))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=host_buffer))
  ds = grain.experimental.ThreadPrefetchIterDataset(ds.map(put), prefetch_buffer_size=device_buffer)
  return iter(ds)


class PaddedChunks:
  """A grain random-access source: element i is images[i * size:(i + 1) * size], zero-padded to `size`
  rows (the chunks `fpclass.train.batches.predict_logits` predicts)."""

  def __init__(self, images: ImageRows, size: int):
    self.images, self.size = images, size

  def __len__(self) -> int:
    return -(-len(self.images) // self.size)

  def __getitem__(self, i: int) -> np.ndarray:
    chunk = self.images[i * self.size:(i + 1) * self.size]
    if len(chunk) < self.size:
      chunk = np.concatenate([chunk, np.zeros((self.size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
    return chunk


def host_chunks(images: ImageRows, size: int, *, read_threads: int = HOST_READ_THREADS,
                host_buffer: int = HOST_BUFFER):
  """Iterator over `PaddedChunks(images, size)`, read ahead on threads."""
  grain = _grain()
  ds = grain.MapDataset.source(PaddedChunks(images, size))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=host_buffer)))


def _grain():
  try:
    import grain  # an optional extra: only streaming runs need it
  except ImportError:
    raise UserInputError("streaming input (data over config.data.device_memory_budget) needs grain: "
                         "pip install 'fpclass[stream]', or raise the budget") from None
  return grain
