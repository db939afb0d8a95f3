"""Load on `--mode serve` from an established generator (`hey`), on loopback: 1 worker against N, and
micro-batching on against off, in the same run.

    python bench/serve_load.py                                 # trains the quick footprint run first
    python bench/serve_load.py --workdir runs/fp-exp4 --requests 3000 --concurrency 1,16,64,256 --json out.json

Needs Debian's `hey` (apt-get install hey). Each server is `launch.py --mode serve --config.serve.port=0`
with its `--config.serve.workers` and `--config.serve.micro_batching`, its own process tree. At each
concurrency level the servers take turns (`--rounds` turns each, the requests split evenly), so a burst of
load from elsewhere on the machine hits them alike. Per turn, hey posts a footprint PNG as multipart from
`concurrency` connections (keep-alive) until `--requests / --rounds` answers are in, and writes every
request's status and latency (`-o csv`); a warm-up turn of unmeasured requests comes first at each level.

Reported per server and level, pooled over its turns: requests/s (answers over the turns' time), p50, p95
and p99 latency of all answers and the p95 of the accepted ones (200), the 200 / 503 / other-status /
failed counts (failed: no HTTP answer), images per device call (the workers' /healthz counters), and CPU
milliseconds per request of the server (its supervisor and every worker, from /proc) and of hey itself
(getrusage of the child), since the generator shares the machine. The load average before each turn is
recorded beside the figures.

Bounded by design: a fixed request count and a time limit per turn, loopback only.
"""
import argparse
import csv
import datetime
import io
import json
import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque

import httpx
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK = 'configs/footprint.py:exp4,quick'
BOUNDARY = 'fpclass-load-boundary'
STDERR_LINES = 15


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--workdir', type=pathlib.Path, help='a trained footprint workdir; default: train the quick run')
  p.add_argument('--requests', type=int, default=3000, help='answers per server and concurrency level')
  p.add_argument('--concurrency', default='1,16,256')
  p.add_argument('--workers', default=f'1,{min(8, len(os.sched_getaffinity(0)))}',
                 help='config.serve.workers of the servers compared')
  p.add_argument('--batching', default='on,off', help='config.serve.micro_batching of the servers compared')
  p.add_argument('--rounds', type=int, default=2, help='turns each server takes per level (requests split evenly)')
  p.add_argument('--overload-requests-per-client', type=int, default=60,
                 help='at least this many requests per client at a level (for the levels past the queue)')
  p.add_argument('--warmup', type=int, default=200, help='unmeasured requests before each level')
  p.add_argument('--time-limit', type=float, default=120.0, help='seconds per server and level at most')
  p.add_argument('--serve-config', action='append', default=[],
                 help='extra --config.serve.KEY=VALUE for every server (repeatable), e.g. max_queue=16')
  p.add_argument('--json', type=pathlib.Path, help='also write the results here')
  args = p.parse_args()
  hey = shutil.which('hey')
  if hey is None:
    raise SystemExit('bench/serve_load.py needs the load generator hey: apt-get install hey')
  levels = [int(c) for c in args.concurrency.split(',')]
  variants = [(int(w), b == 'on') for w in args.workers.split(',') for b in args.batching.split(',')]
  print('command: python ' + ' '.join([pathlib.Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), flush=True)

  scratch = pathlib.Path(tempfile.mkdtemp(prefix='fpclass-serve-load-'))
  try:
    workdir = args.workdir or train_quick(scratch)
    body = multipart_body(footprint_png(workdir))
    body_file = scratch / 'body.bin'
    body_file.write_bytes(body)
    servers = {}
    try:
      for workers, batching in variants:
        name = f'{workers} worker{"s" if workers > 1 else ""}, batching {"on" if batching else "off"}'
        servers[name] = Server(workdir, workers, batching, args.serve_config)
      results = []
      for level in levels:
        rounds = {name: [] for name in servers}
        for r in range(args.rounds):  # the servers take turns, so a burst of machine load hits all alike
          for name, server in servers.items():
            if r == 0 and args.warmup:
              run_hey(hey, server.url, body_file, level, max(args.warmup, level), args.time_limit)
            # Past the queue most answers are quick 503s: more requests, so the turn lasts long enough.
            requests = max(args.requests, args.overload_requests_per_client * level)
            count = max(level, requests // args.rounds + (r < requests % args.rounds))
            calls_before = server.device_calls()
            load_average = os.getloadavg()[0]
            before = server.cpu_seconds()
            part = run_hey(hey, server.url, body_file, level, count, args.time_limit / args.rounds)
            part['server_cpu'] = server.cpu_seconds() - before
            part['load_average'] = load_average
            calls_after = server.device_calls()
            part['device_calls'] = (None if calls_before is None or calls_after is None
                                    else calls_after - calls_before)
            rounds[name].append(part)
        for name, parts in rounds.items():
          result = summarise(parts)
          result.update(server=name, workers=servers[name].workers, batching=servers[name].batching,
                        concurrency=level)
          results.append(result)
          print(row(result), flush=True)
    finally:
      for server in servers.values():
        server.stop()
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  report = {'date': datetime.date.today().isoformat(), 'command': 'python ' + ' '.join(sys.argv),
            'cpu_count': len(os.sched_getaffinity(0)), 'generator': hey_version(hey),
            'requests_per_level': args.requests, 'results': results}
  print()
  print(table(results))
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
    raise SystemExit(f'training failed (exit status {done.returncode}):\n{tail(done.stderr)}')
  return workdir


def footprint_png(workdir: pathlib.Path) -> bytes:
  """A footprint PNG to upload: the first of the test split of the data the workdir trained on."""
  metadata = json.loads((workdir / 'metadata.json').read_text())
  cache = metadata['config']['data'].get('cache_dir') or os.environ.get('FPCLASS_CACHE') or '~/.cache/fpclass'
  found = sorted(pathlib.Path(cache).expanduser().glob('synthetic_footprints/*/test/*.png'))
  if not found:
    raise SystemExit(f'no synthetic footprint PNGs under {cache}; pass --workdir of a footprint run')
  return found[0].read_bytes()


def multipart_body(png: bytes) -> bytes:
  return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="footprint.png"\r\n'
          'Content-Type: image/png\r\n\r\n').encode() + png + f'\r\n--{BOUNDARY}--\r\n'.encode()


def tail(text: str, lines: int = STDERR_LINES) -> str:
  kept = [line for line in text.splitlines() if line.strip()][-lines:]
  return '\n'.join('  ' + line for line in kept) or '  (nothing on stderr)'


class Server:
  """One `launch.py --mode serve` process tree on a free loopback port; its stderr kept in a file."""

  def __init__(self, workdir, workers: int, batching: bool, extra: list[str]):
    self.workers, self.batching = workers, batching
    command = [sys.executable, 'launch.py', f'--workdir={workdir}', '--mode=serve', '--config.serve.port=0',
               f'--config.serve.workers={workers}', f'--config.serve.micro_batching={batching}',
               *(f'--config.serve.{setting}' for setting in extra)]
    print('server: ' + ' '.join(command[1:]), flush=True)
    self.stderr = tempfile.TemporaryFile('w+')
    self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
    line = self.process.stdout.readline()
    found = re.search(r'at (http://\S+/)', line)
    if not found:
      self.process.kill()
      self.process.wait()
      self.stderr.seek(0)
      raise SystemExit(f'the server did not start (exit status {self.process.returncode}); the last lines of '
                       f'its stderr:\n{tail(self.stderr.read())}')
    print('  ' + line.strip(), flush=True)
    self.url = found.group(1)

  def pids(self) -> list[int]:
    """The supervisor and its workers (Linux /proc)."""
    found, queue = [], deque([self.process.pid])
    while queue:
      pid = queue.popleft()
      found.append(pid)
      try:
        queue.extend(int(c) for c in pathlib.Path(f'/proc/{pid}/task/{pid}/children').read_text().split())
      except OSError:
        pass
    return found

  def cpu_seconds(self) -> float:
    return sum(cpu_seconds(pid) for pid in self.pids())

  def device_calls(self) -> int | None:
    """The device calls of every worker so far: /healthz over fresh connections until each worker answered."""
    seen = {}
    for _ in range(20 * self.workers):
      try:
        health = httpx.get(self.url + 'healthz', timeout=10).json()
      except httpx.HTTPError:
        continue
      if health.get('device_calls') is None:
        return None
      seen[health['worker']['pid']] = health['device_calls']
      if len(seen) >= health['workers']['up']:
        return sum(seen.values())
    return None

  def stop(self) -> None:
    self.process.terminate()
    try:
      self.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    self.stderr.close()


def run_hey(hey: str, url: str, body_file, concurrency: int, count: int, time_limit: float) -> dict:
  """One turn of hey: `count` POSTs from `concurrency` keep-alive connections; every request's status and
  latency, the turn's wall time, and hey's own CPU seconds."""
  count = max(1, count // concurrency) * concurrency  # hey sends count // concurrency from each connection
  command = [hey, '-n', str(count), '-c', str(concurrency), '-t', '30', '-m', 'POST', '-D', str(body_file),
             '-T', f'multipart/form-data; boundary={BOUNDARY}', '-o', 'csv', url + 'predict']
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, timeout=time_limit + 60)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode:
    raise SystemExit(f'hey failed (exit status {done.returncode}):\n{tail(done.stderr)}')
  rows = list(csv.DictReader(io.StringIO(done.stdout)))
  statuses = [int(r['status-code']) for r in rows]
  latencies = [float(r['response-time']) for r in rows]
  # hey's csv holds answered requests only; the rest got no HTTP answer (refused, reset, timed out).
  return {'statuses': statuses, 'latencies': latencies, 'failed': count - len(rows), 'seconds': wall,
          'client_cpu': (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)}


def summarise(parts: list[dict]) -> dict:
  """One server's figures at one level, from its turns: latencies pooled, throughput over their summed time."""
  statuses = np.array([s for p in parts for s in p['statuses']])
  ms = np.array([t for p in parts for t in p['latencies']]) * 1e3
  accepted = ms[statuses == 200]
  wall = sum(p['seconds'] for p in parts)
  n = len(statuses)
  failed = sum(p['failed'] for p in parts)
  calls = [p['device_calls'] for p in parts]
  images = int((statuses == 200).sum())

  def pct(values, q):
    return round(float(np.percentile(values, q)), 1) if len(values) else None

  return {'requests': n + failed, 'seconds': round(wall, 2), 'requests_per_s': round(n / wall, 1),
          'ok_per_s': round(images / wall, 1),
          'p50_ms': pct(ms, 50), 'p95_ms': pct(ms, 95), 'p99_ms': pct(ms, 99), 'accepted_p95_ms': pct(accepted, 95),
          'ok': images, 'http_503': int((statuses == 503).sum()),
          'other_status': int(((statuses != 200) & (statuses != 503)).sum()), 'failed': failed,
          'images_per_device_call': (None if None in calls or not sum(calls) else round(images / sum(calls), 2)),
          'server_cpu_ms_per_request': round(1e3 * sum(p['server_cpu'] for p in parts) / max(1, n), 2),
          'client_cpu_ms_per_request': round(1e3 * sum(p['client_cpu'] for p in parts) / max(1, n), 3),
          'load_average': round(float(np.mean([p['load_average'] for p in parts])), 1)}


def cpu_seconds(pid: int) -> float:
  """User + system CPU time of a process and all its threads so far (Linux /proc); 0 once it is gone."""
  try:
    fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  except OSError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def hey_version(hey: str) -> str:
  try:
    out = subprocess.run(['dpkg-query', '-W', '-f', '${Version}', 'hey'], capture_output=True, text=True, timeout=10)
    return f'hey {out.stdout.strip()}' if out.returncode == 0 else hey
  except OSError:
    return hey


def row(r) -> str:
  return (f'{r["server"]:<26} c={r["concurrency"]:<4} {r["requests"]} requests in {r["seconds"]}s: '
          f'{r["requests_per_s"]} answers/s ({r["ok_per_s"]} ok/s), p50 {r["p50_ms"]} ms, p95 {r["p95_ms"]} ms '
          f'(accepted {r["accepted_p95_ms"]}), 503 {r["http_503"]}, other {r["other_status"]}, failed '
          f'{r["failed"]}; server {r["server_cpu_ms_per_request"]} / hey {r["client_cpu_ms_per_request"]} CPU '
          f'ms/req; load {r["load_average"]}')


def table(results) -> str:
  lines = ['| server | clients | answers/s | 200/s | p50 ms | p95 ms | p99 ms | p95 of 200s ms | 200 / 503 / other / '
           'failed | images per device call | server CPU ms/req | hey CPU ms/req | load avg |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(results, key=lambda r: (r['concurrency'], -r['workers'], not r['batching'])):
    lines.append(f'| {r["server"]} | {r["concurrency"]} | {r["requests_per_s"]} | {r["ok_per_s"]} | {r["p50_ms"]} | '
                 f'{r["p95_ms"]} | {r["p99_ms"]} | {r["accepted_p95_ms"]} | {r["ok"]} / {r["http_503"]} / '
                 f'{r["other_status"]} / {r["failed"]} | {r["images_per_device_call"] or ""} | '
                 f'{r["server_cpu_ms_per_request"]} | {r["client_cpu_ms_per_request"]} | {r["load_average"]} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
