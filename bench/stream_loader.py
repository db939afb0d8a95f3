"""The streaming loader alone, and the memory a streamed training run holds (issue 15).

    python bench/stream_loader.py [--images 6000] [--batch-size 256] [--threads 1,2] [--budget-mb 256]
                                  [--skip-rss] [--json bench/results/2026-11-22/stream_loader.json]

1. Loader: a stand-in memory-mapped cache of 224x224x3 uint8 images (an .npy written by the bench), and
   `fpclass.data.stream.device_batches` over one epoch of `batch_order` (random batches): images per
   second delivered to the device, each batch waited for (`block_until_ready`). Measured with the file in
   the page cache (warm) and after asking the kernel to drop its pages (cold: `posix_fadvise DONTNEED`,
   read from the disk again), for each number of read threads; and the host read alone (no device put).
   Target: 3,000 img/s, about what one H100 consumes training ResNet-50.
2. Memory: an ImageFolder of JPEG stand-ins at 224x224x3 whose decoded train + val set is 1.5x
   --budget-mb, decoded once into the cache, then one epoch of footprint_cnn (conv 8,16, fc 32, batch 32,
   validation batch 32) through `fpclass.modes.runner.run('train', ...)` in a child process, twice: with
   data.device_memory_budget = --budget-mb (streamed) and with it 0 (in memory, for contrast). Peak RSS is
   the child's own address space's high-water mark (`VmHWM`, written at exit), so it counts the page-cache
   reads only where a process maps them. Not `wait4`'s ru_maxrss: Linux carries that across execve, so a
   child spawned from this (large) bench process would report the parent's peak.

A figure in docs/ comes from this command; it prints the command it ran and writes the JSON with --json.
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import harness  # noqa: F401  (sets up the path, the allocator and the compilation-cache policy first)
import jax
import numpy as np

from fpclass.data import stream
from fpclass.data.rows import ImageRows
from fpclass.runtime.sharding import DataParallel
from fpclass.train.sampling import batch_order

SHAPE = (224, 224, 3)


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--images', type=int, default=6000, help='images in the loader stand-in (150 KB each)')
  p.add_argument('--batch-size', type=int, default=256)
  p.add_argument('--threads', default='1,2', help='read threads to time, comma-separated')
  p.add_argument('--epochs', type=int, default=2, help='loader epochs timed per setting (median)')
  p.add_argument('--budget-mb', type=float, default=256, help='device budget of the memory part (MiB)')
  p.add_argument('--skip-rss', action='store_true', help='time the loader only')
  p.add_argument('--scratch', type=pathlib.Path, default=None, help='where stand-in data goes (default: a temp dir)')
  p.add_argument('--json', type=pathlib.Path)
  return p.parse_args()


def environment() -> dict:
  cpu = ''
  try:
    cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return dict(date=datetime.date.today().isoformat(), backend=jax.default_backend(),
              device=jax.devices()[0].device_kind, cpu=cpu, cpu_count=os.cpu_count(), jax=jax.__version__,
              load_average_at_start=os.getloadavg()[0], command=command_line())


def command_line() -> str:
  return ' '.join(['python', pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------- loader

def write_stand_in(path: pathlib.Path, n: int) -> None:
  """n images of smooth gradients plus noise, written 500 at a time (never all in memory)."""
  rng = np.random.default_rng(0)
  out = np.lib.format.open_memmap(path, mode='w+', dtype=np.uint8, shape=(n, *SHAPE))
  ramp = np.linspace(0, 200, SHAPE[1], dtype=np.float32)[None, :, None]
  for start in range(0, n, 500):
    k = min(500, n - start)
    noise = rng.integers(0, 55, (k, *SHAPE), dtype=np.uint8)
    out[start:start + k] = (ramp + noise).astype(np.uint8)
  out.flush()
  del out


def drop_page_cache(path: pathlib.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def time_loader(images: ImageRows, batch_size: int, threads: int, epoch: int, device: bool) -> float:
  """Images per second over one epoch of random batches: delivered to the device, or read on the host."""
  labels = np.zeros(len(images), np.int32)
  order = batch_order('uniform', 0, epoch, labels, batch_size)
  parallel = DataParallel.over()
  start = time.perf_counter()
  if device:
    for x, y in stream.device_batches(images, labels, order, parallel.batch, read_threads=threads):
      x.block_until_ready()
      y.block_until_ready()
  else:
    import grain
    source = grain.MapDataset.source(stream.StepBatches(images, labels, order))
    for _ in source.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=stream.HOST_BUFFER)):
      pass
  return order.size / (time.perf_counter() - start)


def loader_part(args, scratch: pathlib.Path) -> dict:
  path = scratch / 'stand_in.npy'
  t = time.perf_counter()
  write_stand_in(path, args.images)
  print(f'stand-in: {args.images} images of {SHAPE} ({path.stat().st_size / 2**30:.2f} GiB) in '
        f'{time.perf_counter() - t:.1f}s', flush=True)
  images = ImageRows(np.load(path, mmap_mode='r'))
  rows = []
  for threads in (int(v) for v in args.threads.split(',')):
    for cache in ('warm', 'cold'):
      for target in ('device', 'host'):
        rates = []
        for epoch in range(args.epochs):
          if cache == 'cold':
            drop_page_cache(path)
          elif epoch == 0:
            time_loader(images, args.batch_size, threads, 99, device=False)  # bring the file into the cache
          rates.append(time_loader(images, args.batch_size, threads, epoch, device=target == 'device'))
        row = dict(threads=threads, page_cache=cache, delivered_to=target, img_per_s=float(np.median(rates)),
                   img_per_s_runs=[round(r, 1) for r in rates], load_average=os.getloadavg()[0])
        rows.append(row)
        print(f'  threads {threads}  {cache:4s}  to {target:6s}: {row["img_per_s"]:8.0f} img/s  '
              f'(runs {row["img_per_s_runs"]}, load {row["load_average"]:.1f})', flush=True)
  path.unlink()
  return dict(images=args.images, image_shape=SHAPE, batch_size=args.batch_size, epochs_per_setting=args.epochs,
              rows=rows, target_img_per_s=3000)


# ---------------------------------------------------------------------------------------------- memory

CHILD = r'''
import json, pathlib, sys
sys.path.insert(0, {repo!r})
from configs import footprint
from fpclass.data import pipeline
from fpclass.modes.runner import run
config = footprint.get_config('exp0')
config.data.source = 'image_folder'
config.data.root = {root!r}
config.data.cache_dir = {cache!r}
config.data.image_size = (224, 224)
config.data.channels = 3
config.data.mean, config.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
config.data.device_memory_budget = {budget}
config.model.conv_channels, config.model.fc_sizes = (8, 16), (32,)
config.train.epochs = 1
config.eval.batch_size = 32  # validation's activations at 224x224 would otherwise dwarf the data
config.explain.after_training = False
if {decode_only}:
  dataset = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False, mapped=True)
  print(json.dumps(dict(train=len(dataset.train), val=len(dataset.val),
                        nbytes=int(dataset.train.images.nbytes + dataset.val.images.nbytes))))
else:
  run('train', config, {workdir!r})
'''


# Prepended to a child's code: at exit it writes its own VmHWM (bytes) to the file named by FPCLASS_BENCH_HWM.
HWM_AT_EXIT = """
import atexit, os
from fpclass.runtime.process import process_memory_bytes
atexit.register(lambda: open(os.environ['FPCLASS_BENCH_HWM'], 'w').write(str(process_memory_bytes('VmHWM'))))
"""


def child(code: str, log: pathlib.Path) -> dict:
  """Runs `code` in a child Python; its wall seconds, peak RSS (its own VmHWM) and stdout."""
  hwm = log.with_suffix('.hwm')
  start = time.perf_counter()
  with open(log, 'w') as err:
    done = subprocess.run([sys.executable, '-c', HWM_AT_EXIT + code], stdout=subprocess.PIPE, stderr=err,
                          text=True, cwd=harness.REPO, env=dict(os.environ, FPCLASS_BENCH_HWM=str(hwm)))
  if done.returncode:
    raise SystemExit(f'child failed ({done.returncode}); see {log}:\n{log.read_text()[-3000:]}')
  return dict(seconds=time.perf_counter() - start, peak_rss_bytes=int(hwm.read_text()),
              stdout=done.stdout)


def write_image_folder(root: pathlib.Path, n: int) -> None:
  from PIL import Image
  rng = np.random.default_rng(1)
  for c in ('dark', 'light'):
    (root / c).mkdir(parents=True, exist_ok=True)
  base = np.linspace(0, 120, SHAPE[1], dtype=np.float32)[None, :, None]
  for i in range(n):
    light = i % 2
    pixels = (base + 80 * light + rng.integers(0, 50, SHAPE)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels, 'RGB').save(root / ('light' if light else 'dark') / f'{i:06d}.jpg', quality=90)


def memory_part(args, scratch: pathlib.Path) -> dict:
  budget = int(args.budget_mb * 2**20)
  n = math.ceil(1.5 * budget / np.prod(SHAPE))
  root, cache = scratch / 'folder', scratch / 'cache'
  t = time.perf_counter()
  write_image_folder(root, n)
  print(f'stand-in folder: {n} JPEGs at {SHAPE} in {time.perf_counter() - t:.1f}s', flush=True)
  fill = dict(repo=str(harness.REPO), root=str(root), cache=str(cache))
  decoded = child(CHILD.format(**fill, budget=budget, decode_only=True, workdir=''), scratch / 'decode.log')
  sizes = json.loads(decoded['stdout'].strip().splitlines()[-1])
  print(f'decoded once into the cache: {sizes} in {decoded["seconds"]:.1f}s, peak RSS '
        f'{decoded["peak_rss_bytes"] / 2**20:.0f} MiB', flush=True)
  arms = {}
  for name, arm_budget in (('streamed', budget), ('in_memory', 0)):
    workdir = scratch / f'run-{name}'
    result = child(CHILD.format(**fill, budget=arm_budget, decode_only=False, workdir=str(workdir)),
                   scratch / f'{name}.log')
    import pandas as pd
    history = pd.read_csv(workdir / 'metrics.csv')
    streamed = 'streaming input' in (scratch / f'{name}.log').read_text()
    arms[name] = dict(device_memory_budget=arm_budget, streamed=streamed, seconds=result['seconds'],
                      epoch_seconds=float(history['seconds'].iloc[0]), peak_rss_bytes=result['peak_rss_bytes'],
                      load_average=os.getloadavg()[0])
    print(f'  {name:9s}: streamed={streamed}  peak RSS {result["peak_rss_bytes"] / 2**20:7.0f} MiB  epoch '
          f'{arms[name]["epoch_seconds"]:.1f}s  (load {arms[name]["load_average"]:.1f})', flush=True)
  return dict(budget_bytes=budget, images=n, decoded=sizes, decoded_over_budget=sizes['nbytes'] / budget,
              decode_peak_rss_bytes=decoded['peak_rss_bytes'], model='footprint_cnn conv (8, 16) fc (32,)',
              batch_size=32, eval_batch_size=32, arms=arms)


def main():
  args = parse_args()
  print(command_line(), flush=True)
  result = dict(environment=environment())
  with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
    scratch = pathlib.Path(scratch)
    result['loader'] = loader_part(args, scratch)
    if not args.skip_rss:
      result['memory'] = memory_part(args, scratch)
  result['environment']['load_average_at_end'] = os.getloadavg()[0]
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
