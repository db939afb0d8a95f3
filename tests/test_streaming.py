"""Streaming input: the memory-mapped decode cache, unread row views, each process's share of a batch, the
prefetching loader, and a streamed run equal bit for bit to the in-memory one."""
import os
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fpclass.config.inputs import DataSettings, DecodeSettings
from fpclass.data import decode, pipeline, stream
from fpclass.data.rows import ImageRows, mapped_file, take_rows
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.modes.runner import run
from fpclass.runtime.sharding import DataParallel
from tests.conftest import REPO, load_config, xla_flags

GREY = DecodeSettings(image_size=(6, 5), channels=1)


def mapped_array(tmp_path, n=10, shape=(4, 3, 2)) -> tuple[np.ndarray, np.ndarray]:
  """(the array, the same array as a read-only memory map of an .npy file)."""
  array = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', array)
  return array, np.load(tmp_path / 'images.npy', mmap_mode='r')


def test_the_decode_cache_is_a_memory_map_and_old_entries_stay_readable(tmp_path):
  paths = []
  for i in range(3):
    paths.append(tmp_path / f'{i}.png')
    Image.fromarray(np.full((12, 10), 40 * i, np.uint8), 'L').save(paths[-1])
  images, ok, _ = decode.decode_files(paths, GREY, split='train', cache_dir=tmp_path / 'cache', progress=False)
  assert isinstance(images, np.memmap) and mapped_file(images) is not None and not images.flags.writeable
  entry = next((tmp_path / 'cache' / 'decoded').glob('train-*.npz'))
  assert decode.images_file(entry).exists() and 'images' not in np.load(entry).files
  again, _, _ = decode.decode_files(paths, GREY, split='train', cache_dir=tmp_path / 'cache', progress=False)
  assert np.array_equal(images, again) and ok.all() and images[2].max() == 80
  # A format-1 entry (images inside the .npz) is still read; format 2 keys never name it.
  old = tmp_path / 'old.npz'
  np.savez(old, images=np.asarray(images), ok=ok, reasons=np.array(['', '', '']))
  assert np.array_equal(decode.read_cache(old)['images'], images)
  # Half an entry (the images of another write) is not trusted.
  np.save(decode.images_file(entry), np.zeros((2, 6, 5, 1), np.uint8))
  assert decode.read_cache(entry) is None


@pytest.mark.parametrize('from_file', [True, False])
def test_image_rows_index_as_numpy_does(tmp_path, from_file):
  array, mapped = mapped_array(tmp_path)
  rows = ImageRows(mapped if from_file else array, [7, 2, 9, 2, 0, 5])
  expected = array[[7, 2, 9, 2, 0, 5]]
  assert (rows._file is not None) == from_file
  assert rows.shape == expected.shape and len(rows) == 6 and rows.nbytes == expected.nbytes
  for key in (3, -1, slice(1, 4), slice(None, None, -2), [5, 0, 0], np.array([True, False] * 3),
              (slice(None), slice(None), slice(None, None, -1)), (2, 1)):
    assert np.array_equal(rows[key], expected[key]), key
  assert np.array_equal(np.asarray(rows), expected) and np.array_equal(np.stack(list(rows)), expected)
  assert np.array_equal(np.asarray(rows.rows([4, 1]).rows([1])), expected[[4, 1]][[1]])
  assert np.array_equal(rows.read([5, 1]), expected[[5, 1]])
  with pytest.raises(IndexError):
    rows[6]
  # Subsets of a mapped array stay unread views; an in-memory array is copied, as before.
  assert isinstance(take_rows(mapped, [1, 2]), ImageRows) and isinstance(take_rows(array, [1, 2]), np.ndarray)


def test_a_mapped_dataset_stays_unread_and_holds_the_in_memory_images():
  config = load_config('configs/footprint.py:exp4,quick')
  mapped, resident = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False, mapped=True), pipeline.load_dataset(DataSettings.from_config(config.data), progress=False)
  assert isinstance(mapped.train.images, ImageRows) and mapped.train.images._file is not None
  assert type(resident.train.images) is np.ndarray and type(resident.val.images) is np.ndarray
  for name in ('train', 'val'):
    assert np.array_equal(np.asarray(getattr(mapped, name).images), getattr(resident, name).images)
    assert getattr(mapped, name).ids == getattr(resident, name).ids
  placed = stream.place(mapped, DataSettings.from_config(load_config('configs/footprint.py:exp4,quick', **{'data.device_memory_budget': 1}).data).storage)
  assert stream.is_streamed(placed.train) and stream.is_streamed(placed.val)
  kept = stream.place(mapped, DataSettings.from_config(config.data).storage)  # 0: half the free memory, far more than these images
  assert stream.memory_budget(0) > 0 and type(kept.train.images) is np.ndarray
  assert np.array_equal(kept.train.images, resident.train.images)


@pytest.mark.parametrize('processes', [1, 2, 4])
def test_each_process_reads_only_its_share_of_every_batch(tmp_path, processes):
  array, mapped = mapped_array(tmp_path, n=20)
  labels = np.arange(20, dtype=np.int32) % 3
  order = np.random.default_rng(1).permutation(20)[:16].reshape(2, 8)
  shares = [stream.batch_share(8, p, processes) for p in range(processes)]
  assert np.array_equal(np.concatenate([np.arange(8)[s] for s in shares]), np.arange(8))
  read = []

  class CountingRows(ImageRows):
    def read(self, positions):
      read.append(np.asarray(positions).tolist())
      return super().read(positions)

  for share in shares:
    source = stream.StepBatches(CountingRows(mapped), labels, order, share)
    for step in range(2):
      images, step_labels = source[step]
      assert np.array_equal(images, array[order[step, share]]) and np.array_equal(step_labels, labels[order[step, share]])
      assert read[-1] == order[step, share].tolist()  # this process's rows, nothing else
  with pytest.raises(UserInputError, match='multiple of the 3 processes'):
    stream.batch_share(8, 0, 3)


def test_the_loader_puts_the_epoch_order_on_the_devices(tmp_path):
  array, mapped = mapped_array(tmp_path, n=20)
  labels = np.arange(20, dtype=np.int32)
  order = np.random.default_rng(2).permutation(20)[:12].reshape(3, 4)
  parallel = DataParallel.over()
  assert np.array_equal(stream.process_rows(parallel.batch, 4, jax.process_index()), np.arange(4))
  batches = list(stream.device_batches(ImageRows(mapped), labels, order, parallel.batch, host_buffer=1, device_buffer=1))
  assert len(batches) == 3
  for step, (x, y) in enumerate(batches):
    assert x.sharding == parallel.batch and np.array_equal(np.asarray(x), array[order[step]])
    assert np.array_equal(np.asarray(y), order[step])
  with pytest.raises(UserInputError, match='the mesh gives its devices rows'):
    stream.device_batches(ImageRows(mapped), labels, order, parallel.batch, process_index=0, process_count=2)


def test_two_devices_each_get_their_half_of_the_batch(tmp_path):
  """A process with two CPU devices: each device's shard is its half of the step's rows."""
  script = f"""
import numpy as np
from fpclass.data import stream
from fpclass.data.rows import ImageRows
from fpclass.runtime.sharding import DataParallel
array = np.arange(12 * 2 * 2, dtype=np.uint8).reshape(12, 2, 2, 1)
np.save({str(tmp_path / 'a.npy')!r}, array)
parallel = DataParallel.over()
assert parallel.size == 2
order = np.array([[5, 1, 9, 0], [3, 11, 2, 7]])
for step, (x, y) in enumerate(stream.device_batches(ImageRows(np.load({str(tmp_path / 'a.npy')!r}, mmap_mode='r')),
                                                    np.arange(12, dtype=np.int32), order, parallel.batch)):
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
  assert [np.asarray(s.data).tolist() for s in shards] == [array[order[step, :2]].tolist(), array[order[step, 2:]].tolist()]
print('ok')
"""
  env = dict(os.environ, XLA_FLAGS=xla_flags('--xla_force_host_platform_device_count=2'), JAX_PLATFORMS='cpu',
             PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]


EVAL_CHUNK = 4   # the validation split is not a multiple of it: its last chunk is partial


def test_a_streamed_run_equals_the_in_memory_run_bit_for_bit(tmp_path):
  """The footprint quick config (decoded through the mapped cache, flip/brightness/contrast augmentation
  in the step, its classes weighted: the weights an argument of either feed's program), trained in memory and
  with a 1-byte device budget. Validation and evaluation predict in chunks of EVAL_CHUNK images, so the streamed
  split ends in a partial chunk."""
  runs = {}
  for budget in (0, 1):
    # 24x16 images and a 4-filter CNN on both sides alike (and no TensorBoard files, which nothing reads): both
    # runs still compile the same programs on the same shapes, and the streamed one still gathers every batch and
    # chunk from the host.
    config = load_config('configs/footprint.py:exp4,quick', **{'data.device_memory_budget': budget,
                                                              'explain.after_training': False,
                                                              'eval.batch_size': EVAL_CHUNK,
                                                              'data.image_size': (24, 16), 'train.tensorboard': False,
                                                              'model.conv_channels': (4,), 'model.fc_sizes': (8,),
                                                              'train.class_weights': 'auto'})
    workdir = tmp_path / f'budget-{budget}'
    run('train', config, workdir)
    runs[budget] = (pd.read_csv(workdir / 'metrics.csv').drop(columns='seconds'),
                    load_trained(config, workdir, 'last').state.params, (workdir / 'scores.json').read_text(),
                    pd.read_csv(workdir / 'val_predictions.csv'))
  pd.testing.assert_frame_equal(runs[0][0], runs[1][0], check_exact=True)
  same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), runs[0][1], runs[1][1])
  assert all(jax.tree_util.tree_leaves(same))
  assert runs[0][2] == runs[1][2]  # evaluation after training read the streamed split chunk by chunk
  val = len(pipeline.load_dataset(DataSettings.from_config(config.data), progress=False).val)
  assert val % EVAL_CHUNK and len(runs[1][3]) == val   # every image of the partial chunk was predicted
  pd.testing.assert_frame_equal(runs[0][3], runs[1][3], check_exact=True)


def test_host_chunks_pad_the_last_partial_chunk(tmp_path):
  array, mapped = mapped_array(tmp_path, n=10)
  chunks = list(stream.host_chunks(ImageRows(mapped), 4))
  assert [len(c) for c in chunks] == [4, 4, 4]
  assert np.array_equal(np.concatenate(chunks)[:10], array) and not np.concatenate(chunks)[10:].any()


def test_mapped_file_refuses_views_whose_offset_numpy_does_not_update(tmp_path):
  _, mapped = mapped_array(tmp_path)
  assert mapped_file(mapped) == (os.path.abspath(tmp_path / 'images.npy'), mapped.offset)
  assert mapped_file(mapped[2:]) is None and mapped_file(np.asarray(mapped)) is None
