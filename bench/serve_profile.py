"""Where a served request's CPU goes: one `--mode serve` worker under `hey`, its CPU split between the
event loop's thread (HTTP, multipart, decode, JSON) and the others (the model: XLA's threads and the device
thread), and the compiled model alone per batch size.

    python bench/serve_profile.py                      # trains the quick footprint run first
    python bench/serve_profile.py --workdir runs/fp-exp4 --requests 3000 --concurrency 16

CPU per thread comes from /proc/<worker>/task (Linux); the event loop runs on the worker's main thread. The
model alone is the workdir's predict program (`Trained.predict_fn`) on zeros, timed by this process's CPU
time (all threads) over about a second per batch size. For a profile by function, point
`py-spy record --native -p <worker pid>` at the worker while hey runs.
"""
import argparse
import collections
import os
import pathlib
import shutil
import sys
import tempfile
import time

import httpx
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import serve_load  # noqa: E402 - bench/serve_load.py: the server, hey and the quick run

from fpclass.config.inputs import DecodeSettings  # noqa: E402
from fpclass.infer.inference import load_trained  # noqa: E402
from fpclass.runtime import process  # noqa: E402
from fpclass.train.sidecar import stored_config  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--workdir', type=pathlib.Path, help='a trained footprint workdir; default: train the quick run')
  p.add_argument('--requests', type=int, default=3000)
  p.add_argument('--concurrency', type=int, default=16)
  p.add_argument('--batch-sizes', default='1,2,4,8,16,32', help='for the model alone')
  args = p.parse_args()
  hey = shutil.which('hey')
  if hey is None:
    raise SystemExit('bench/serve_profile.py needs the load generator hey: apt-get install hey')
  print('command: python ' + ' '.join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), flush=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix='fpclass-serve-profile-'))
  try:
    workdir = args.workdir or serve_load.train_quick(scratch)
    body_file = scratch / 'body.bin'
    body_file.write_bytes(serve_load.multipart_body(serve_load.footprint_png(workdir)))
    server = serve_load.Server(workdir, 1, True, [])
    try:
      worker = httpx.get(server.url + 'healthz', timeout=30).json()['worker']['pid']
      serve_load.run_hey(hey, server.url, body_file, args.concurrency, 200, 120)  # warm-up
      calls_before, before = server.device_calls(), thread_cpu(worker)
      turn = serve_load.run_hey(hey, server.url, body_file, args.concurrency, args.requests, 600)
      after, calls = thread_cpu(worker), server.device_calls() - calls_before
    finally:
      server.stop()
    n = len(turn['statuses'])
    loop_ms = 1e3 * (after[worker][1] - before.get(worker, ('', 0.0))[1]) / n
    others = collections.Counter()
    for tid, (name, seconds) in after.items():
      if tid != worker:
        others[name] += seconds - before.get(tid, (name, 0.0))[1]
    print(f'\none worker, {args.concurrency} clients, {n} requests at {n / turn["seconds"]:.1f}/s, '
          f'{n / max(1, calls):.2f} images per device call:')
    print(f'  event loop thread (HTTP, multipart, decode, JSON): {loop_ms:.2f} ms CPU a request')
    for name, seconds in others.most_common():
      print(f'  {name} threads: {1e3 * seconds / n:.2f} ms CPU a request')
    print(f'  all other threads (the model): {1e3 * sum(others.values()) / n:.2f} ms CPU a request')
    model_alone(workdir, [int(b) for b in args.batch_sizes.split(',')])
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def thread_cpu(pid: int) -> dict:
  """{thread id: (name, user + system CPU seconds)} of a process (Linux /proc)."""
  out = {}
  for task in pathlib.Path(f'/proc/{pid}/task').iterdir():
    try:
      name = (task / 'comm').read_text().strip()
      fields = (task / 'stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
      continue
    out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK'))
  return out


def model_alone(workdir: pathlib.Path, sizes: list[int]) -> None:
  process.enable_compilation_cache(None, process.configure(trains=False))
  config = stored_config(workdir)
  trained = load_trained(config, workdir)
  settings = DecodeSettings.from_config(config.data)
  print('the model alone (the predict program on zeros):')
  for size in sizes:
    images = np.zeros((size, settings.height, settings.width, settings.channels), np.uint8)
    trained.predict_fn(trained.state.params, trained.state.batch_stats, images)
    cpu, wall, calls = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - wall < 1.0:
      np.asarray(trained.predict_fn(trained.state.params, trained.state.batch_stats, images))
      calls += 1
    per_call = 1e3 * (time.process_time() - cpu) / calls
    print(f'  batch {size:3}: {per_call:7.2f} ms CPU a call, {per_call / size:5.2f} ms an image')


if __name__ == '__main__':
  main()
