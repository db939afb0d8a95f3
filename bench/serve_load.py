"""A bounded load test of `--mode serve` on loopback: micro-batching on against off, in the same run.

    python bench/serve_load.py                                   # trains the quick footprint run first
    python bench/serve_load.py --workdir runs/fp-exp4 --requests 2000 --concurrency 1,4,16 --json out.json

Two servers (`launch.py --mode serve --config.serve.port=0`, one with `serve.micro_batching=False`) run as
their own processes; this process is the client: `concurrency` asyncio tasks on one httpx AsyncClient,
each posting a footprint PNG as multipart and waiting for the answer before its next one, until
`--requests` answers have come back (or `--time-limit` seconds pass). Levels alternate between the two
servers in `--rounds` turns, so a burst of machine load hits both alike. Each level starts with a few
unmeasured requests. Reported per server and level, pooled over its turns: p50 and p95 latency (request
sent to answer read), requests/s (answers over the time the turns took), the 4xx, 5xx and
failed-connection counts, images per device call, and the CPU time per request of the server process (all
its threads) and of this client, which share the machine.

Bounded by design: a fixed request count and a time limit per level, loopback only.
"""
import argparse
import asyncio
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK = 'configs/footprint.py:exp4,quick'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--workdir', type=pathlib.Path, help='a trained footprint workdir; default: train the quick run')
  p.add_argument('--requests', type=int, default=2000, help='answers per server and concurrency level')
  p.add_argument('--concurrency', default='1,4,16')
  p.add_argument('--rounds', type=int, default=4, help='turns each server takes per level (requests split evenly)')
  p.add_argument('--warmup', type=int, default=32, help='unmeasured requests before each level')
  p.add_argument('--time-limit', type=float, default=240.0, help='seconds per server and level at most')
  p.add_argument('--batch-window-ms', type=float, default=None, help='serve.batch_window_ms (default: the config)')
  p.add_argument('--json', type=pathlib.Path, help='also write the results here')
  args = p.parse_args()
  levels = [int(c) for c in args.concurrency.split(',')]
  print('command: python ' + ' '.join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), flush=True)

  scratch = pathlib.Path(tempfile.mkdtemp(prefix='fpclass-serve-load-'))
  try:
    workdir = args.workdir or train_quick(scratch)
    images = footprint_pngs(workdir)
    servers = {}
    try:
      for name, batching in (('micro-batching on', True), ('micro-batching off', False)):
        servers[name] = start_server(workdir, batching, args.batch_window_ms)
      results = []
      for level in levels:
        rounds = {name: [] for name in servers}
        for r in range(args.rounds):  # the servers take turns, so a burst of machine load hits both
          for name, (process, url) in servers.items():
            before = cpu_seconds(process.pid)
            count = args.requests // args.rounds + (r < args.requests % args.rounds)
            part = asyncio.run(load(url, images, level, count, args.warmup if r == 0 else 0,
                                    args.time_limit / args.rounds))
            part['server_cpu'] = cpu_seconds(process.pid) - before
            rounds[name].append(part)
        for name, parts in rounds.items():
          result = summarise(parts)
          result.update(server=name, concurrency=level)
          results.append(result)
          print(row(result), flush=True)
    finally:
      for process, _ in servers.values():
        process.terminate()
        process.wait(timeout=30)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  report = {'date': datetime.date.today().isoformat(), 'command': 'python ' + ' '.join(sys.argv),
            'cpu_count': len(os.sched_getaffinity(0)), 'load_average': os.getloadavg()[0],
            'requests_per_level': args.requests, 'results': results, 'speedup': speedups(results)}
  print()
  print(table(results, report['speedup']))
  print(json.dumps(report, indent=2))
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + '\n')


def train_quick(scratch: pathlib.Path) -> pathlib.Path:
  workdir = scratch / 'footprint-quick'
  command = [sys.executable, 'launch.py', f'--config={QUICK}', f'--workdir={workdir}',
             f'--config.data.cache_dir={scratch / "cache"}']
  print('training the quick footprint run: ' + ' '.join(command[1:]), flush=True)
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f'training failed:\n{done.stderr[-3000:]}')
  return workdir


def footprint_pngs(workdir: pathlib.Path, count: int = 8) -> list[bytes]:
  """Footprint PNGs to upload: the test split of the data the workdir trained on."""
  metadata = json.loads((workdir / 'metadata.json').read_text())
  cache = metadata['config']['data'].get('cache_dir') or os.environ.get('FPCLASS_CACHE') or '~/.cache/fpclass'
  found = sorted(pathlib.Path(cache).expanduser().glob('synthetic_footprints/*/test/*.png'))[:count]
  if not found:
    raise SystemExit(f'no synthetic footprint PNGs under {cache}; pass --workdir of a footprint run')
  return [p.read_bytes() for p in found]


def start_server(workdir, micro_batching: bool, window_ms) -> tuple:
  command = [sys.executable, 'launch.py', f'--workdir={workdir}', '--mode=serve', '--config.serve.port=0',
             f'--config.serve.micro_batching={micro_batching}']
  if window_ms is not None:
    command.append(f'--config.serve.batch_window_ms={window_ms}')
  print('server: ' + ' '.join(command[1:]), flush=True)
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  line = process.stdout.readline()
  found = re.search(r'at (http://\S+/)', line)
  if not found:
    process.kill()
    raise SystemExit(f'the server did not start: {line!r}')
  print('  ' + line.strip(), flush=True)
  return process, found.group(1)


async def load(url: str, images: list, concurrency: int, total: int, warmup: int, time_limit: float) -> dict:
  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
    async def one(i):
      start = time.perf_counter()
      try:
        response = await client.post('predict', files={'file': (f'{i}.png', images[i % len(images)], 'image/png')})
        status = response.status_code
        if status == 200:
          response.json()
      except httpx.HTTPError:
        status = None
      return status, time.perf_counter() - start

    await asyncio.gather(*(one(i) for i in range(warmup)))
    issued = 0
    statuses, latencies = [], []
    deadline = time.perf_counter() + time_limit

    async def worker():
      nonlocal issued
      while issued < total and time.perf_counter() < deadline:
        issued += 1
        status, seconds = await one(issued)
        statuses.append(status)
        latencies.append(seconds)

    calls_before = (await client.get('healthz')).json().get('device_calls')
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    calls_after = (await client.get('healthz')).json().get('device_calls')
  return {'statuses': statuses, 'latencies': latencies, 'seconds': wall, 'client_cpu': cpu, 'warmup': warmup,
          'device_calls': None if calls_before is None else calls_after - calls_before}


def summarise(parts: list[dict]) -> dict:
  """One server's figures at one level, from its rounds: latencies pooled, throughput over their summed time."""
  statuses = [s for p in parts for s in p['statuses']]
  ms = np.array([t for p in parts for t in p['latencies']]) * 1e3
  wall = sum(p['seconds'] for p in parts)
  n = len(statuses)
  calls = None if parts[0]['device_calls'] is None else sum(p['device_calls'] for p in parts)
  return {'requests': n, 'seconds': round(wall, 2), 'requests_per_s': round(n / wall, 1),
          'p50_ms': round(float(np.percentile(ms, 50)), 1), 'p95_ms': round(float(np.percentile(ms, 95)), 1),
          'ok': sum(s == 200 for s in statuses), 'http_4xx': sum(s is not None and 400 <= s < 500 for s in statuses),
          'http_5xx': sum(s is not None and s >= 500 for s in statuses), 'failed': sum(s is None for s in statuses),
          'images_per_device_call': None if not calls else round(n / calls, 2),
          'server_cpu_ms_per_request': round(1e3 * sum(p['server_cpu'] for p in parts)
                                             / max(1, n + sum(p['warmup'] for p in parts)), 2),
          'client_cpu_ms_per_request': round(1e3 * sum(p['client_cpu'] for p in parts) / max(1, n), 2)}


def cpu_seconds(pid: int) -> float:
  """User + system CPU time of a process and all its threads so far (Linux /proc)."""
  fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def speedups(results) -> dict:
  by = {(r['server'], r['concurrency']): r for r in results}
  return {c: round(by[('micro-batching on', c)]['requests_per_s'] / by[('micro-batching off', c)]['requests_per_s'], 2)
          for s, c in by if s == 'micro-batching on' and ('micro-batching off', c) in by}


def row(r) -> str:
  return (f'{r["server"]:<19} c={r["concurrency"]:<3} {r["requests"]} requests in {r["seconds"]}s: '
          f'{r["requests_per_s"]} req/s, p50 {r["p50_ms"]} ms, p95 {r["p95_ms"]} ms, 4xx {r["http_4xx"]}, '
          f'5xx {r["http_5xx"]}, failed {r["failed"]}')


def table(results, speedup) -> str:
  lines = ['| server | concurrency | requests | req/s | p50 ms | p95 ms | 4xx | 5xx | failed | on/off req/s | '
           'images per device call | server CPU ms/req | client CPU ms/req |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(results, key=lambda r: (r['concurrency'], r['server'])):
    ratio = speedup.get(r['concurrency']) if r['server'] == 'micro-batching on' else ''
    lines.append(f'| {r["server"]} | {r["concurrency"]} | {r["requests"]} | {r["requests_per_s"]} | {r["p50_ms"]} | '
                 f'{r["p95_ms"]} | {r["http_4xx"]} | {r["http_5xx"]} | {r["failed"]} | '
                 f'{f"{ratio}x" if ratio else ""} | {r["images_per_device_call"] or ""} | '
                 f'{r["server_cpu_ms_per_request"]} | {r["client_cpu_ms_per_request"]} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
