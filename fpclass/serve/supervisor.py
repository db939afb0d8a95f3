"""Several `--mode serve` worker processes behind one port, started, watched and replaced by a supervisor.

The supervisor is the `launch.py --mode serve` process. It binds the port, then starts each worker as
`python -m fpclass.serve.worker` with the listening socket inherited: the workers accept from one
shared queue, so a connection waiting there goes to whichever worker takes it first, and outlives a
worker that dies. Each worker restores and warms its own model (fpclass.serve.worker); the first
starts alone, so the others load its compiled programs from the persistent compilation cache.

Design notes: docs/modules.md (`fpclass/serve/supervisor.py`).
"""
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

from fpclass.errors import RunInterrupted, UserInputError

WORKER_MODULE = 'fpclass.serve.worker'
MESSAGE_PREFIX = 'fpclass-serve-worker '
PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]  # the folder holding fpclass/, for the workers' path
TAIL_LINES = 12
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 30.0
RETRY_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)   # waits before each further try of a failing replacement
MAX_WORKERS_BY_DEFAULT = 8
HEARTBEAT_SECONDS = 1.0   # how often a ready worker's event loop says it is alive


@dataclasses.dataclass(frozen=True)
class WorkerJob:
  """What a worker process is told on its stdin: the config, the workdir, the listening socket's file
  descriptor (inherited) and its own number among `workers`."""
  config: object
  workdir: str
  fd: int
  index: int
  workers: int


def default_worker_count(requested: int) -> int:
  """config.serve.workers, or for 0 the cores this process may run on, at most MAX_WORKERS_BY_DEFAULT."""
  if requested:
    return requested
  usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  return max(1, min(usable, MAX_WORKERS_BY_DEFAULT))


def read_job(stream) -> WorkerJob:
  """The job the supervisor wrote on a worker's stdin (a length, then the pickle)."""
  size = int.from_bytes(stream.read(8), 'big')
  return pickle.loads(stream.read(size))


def send_message(message: dict) -> None:
  """A worker's message to its supervisor, on one line of stdout."""
  sys.stdout.write(MESSAGE_PREFIX + json.dumps(message) + '\n')
  sys.stdout.flush()


def exit_description(returncode: int) -> str:
  if returncode < 0:
    try:
      return f'killed by {signal.Signals(-returncode).name}'
    except ValueError:
      return f'killed by signal {-returncode}'
  return f'exit status {returncode}'


class WorkerProcess:
  """One worker: its process and pipes, whether it is ready (and what it said), the tail of its stderr."""

  def __init__(self, job: WorkerJob, sock: socket.socket, command: list[str] | None = None, stderr=None):
    self.index = job.index
    self.tail = collections.deque(maxlen=TAIL_LINES)
    self.ready = threading.Event()
    self.info: dict = {}
    self.user_error: str | None = None
    self.last_beat = time.monotonic()   # its last message (any message is a heartbeat)
    self.killed_as_hung = False
    self._stderr = stderr or sys.stderr
    self._lock = threading.Lock()
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get('PYTHONPATH', '')) if p)
    env.setdefault('PYTHONUNBUFFERED', '1')
    # libuv (uvloop) accepts every pending connection at each wake-up, so on a shared socket the first
    # worker to wake took most of a burst (13 of 16 load-generator connections, measured); one accept per
    # wake-up spreads them (9 and 8 held at most).
    env.setdefault('UV_TCP_SINGLE_ACCEPT', '1')
    self.process = subprocess.Popen(command or [sys.executable, '-m', WORKER_MODULE], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(sock.fileno(),),
                                    start_new_session=True, env=env)
    self.pid = self.process.pid
    self.started_at = time.monotonic()
    payload = pickle.dumps(job)
    self.send_bytes(len(payload).to_bytes(8, 'big') + payload)
    self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                     threading.Thread(target=self._read_stderr, daemon=True)]
    for reader in self._readers:
      reader.start()

  def send_bytes(self, data: bytes) -> bool:
    with self._lock:
      try:
        self.process.stdin.write(data)
        self.process.stdin.flush()
        return True
      except (BrokenPipeError, OSError, ValueError):  # it has exited, or its stdin is closed
        return False

  def tell(self, message: dict) -> None:
    self.send_bytes((json.dumps(message) + '\n').encode())

  def close_stdin(self) -> None:
    with self._lock, contextlib.suppress(OSError, ValueError):
      self.process.stdin.close()

  def _read_stdout(self) -> None:
    for raw in self.process.stdout:
      line = raw.decode(errors='replace').rstrip('\n')
      if not line.startswith(MESSAGE_PREFIX):
        print(line, flush=True)  # the worker printed something of its own: pass it on
        continue
      try:
        message = json.loads(line[len(MESSAGE_PREFIX):])
      except ValueError:
        continue
      self.last_beat = time.monotonic()
      if 'ready' in message:
        self.info = message['ready']
        self.ready.set()
      elif 'error' in message:
        self.user_error = str(message['error'])

  def _read_stderr(self) -> None:
    for raw in self.process.stderr:
      line = raw.decode(errors='replace').rstrip('\n')
      self.tail.append(line)
      print(f'[serve worker {self.index}] {line}', file=self._stderr, flush=True)

  def poll(self) -> int | None:
    return self.process.poll()

  def finish_reading(self, timeout: float = 5.0) -> None:
    """Waits (briefly) until its pipes are drained, so its last words are printed and kept."""
    for reader in self._readers:
      reader.join(timeout)

  def failure(self, returncode: int) -> str:
    """Why it ended before it was ready: its own message for a user's error, else its status and stderr tail."""
    self.finish_reading()
    if self.user_error:
      return self.user_error
    lines = [line for line in self.tail if line.strip()]
    return (f'serve worker {self.index} (pid {self.pid}) ended before it was ready ({exit_description(returncode)})'
            + ('; the last lines of its stderr:\n  ' + '\n  '.join(lines) if lines else '; it wrote nothing to '
               'stderr'))

  def stop(self) -> None:
    self.close_stdin()

  def terminate(self) -> None:
    with contextlib.suppress(ProcessLookupError):
      self.process.terminate()

  def kill(self) -> None:
    with contextlib.suppress(ProcessLookupError):
      self.process.kill()


@dataclasses.dataclass
class Slot:
  """A place for one worker: the current process, and the retry state of a replacement that fails."""
  index: int
  worker: WorkerProcess | None = None
  failures: int = 0
  start_after: float = 0.0
  replacing: bool = False   # its worker replaces one that exited (said when it is ready)


class Supervisor:
  """Starts `count` workers on `sock`, keeps them up, and stops them on SIGINT/SIGTERM (see the module doc).

  `job(index)` makes each worker's WorkerJob; `command` starts a worker (default: this Python, `-m
  fpclass.serve.worker`); `log` prints the supervisor's own lines (stderr by default);
  `worker_timeout_s` (0: never) is the silence after which a ready worker is killed as hung.
  """

  def __init__(self, job: Callable[[int], WorkerJob], count: int, sock: socket.socket,
               command: list[str] | None = None, log=None, worker_timeout_s: float = 0.0):
    self.job, self.count, self.sock, self.command = job, count, sock, command
    self.worker_timeout_s = worker_timeout_s
    self.slots = [Slot(i) for i in range(count)]
    self.log = log or (lambda line: print(f'fpclass serve: {line}', file=sys.stderr, flush=True))
    self.signum: int | None = None
    self.wake = threading.Event()
    self._up_told = None   # the (count, pids) of ready workers last told to every live worker

  # ---- the life of the server

  def run(self, on_ready: Callable[[dict], None]) -> None:
    """Starts the workers (the first alone), calls `on_ready(first worker's info)` once all are ready, then
    tends them until a signal; raises KeyboardInterrupt (SIGINT) or RunInterrupted (SIGTERM) after stopping
    them, or UserInputError when a worker cannot start."""
    with self._signal_handlers():
      try:
        self._start(self.slots[0])
        self._await_ready(self.slots[:1])
        for slot in self.slots[1:]:
          self._start(slot)
        self._await_ready(self.slots[1:])
        if self.signum is None:
          self._tell_workers_up()
          on_ready(self.slots[0].worker.info)
        while self.signum is None:
          self.wake.wait(POLL_SECONDS)
          self.tend()
      finally:
        self.stop_all()
    if self.signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.signum is not None:
      name = signal.Signals(self.signum).name
      raise RunInterrupted(f'{name}: the server stopped its workers and shut down', self.signum)

  def _start(self, slot: Slot) -> None:
    slot.worker = WorkerProcess(self.job(slot.index), self.sock, self.command)

  def _await_ready(self, slots: list[Slot]) -> None:
    """Until each worker in `slots` is ready; a worker that ends first stops the server with its reason."""
    while self.signum is None and not all(s.worker.ready.is_set() for s in slots):
      for s in slots:
        returncode = s.worker.poll()
        if returncode is not None and not s.worker.ready.is_set():
          raise UserInputError(s.worker.failure(returncode))
      self.wake.wait(POLL_SECONDS)

  def up(self) -> int:
    return sum(1 for s in self.slots if s.worker is not None and s.worker.ready.is_set()
               and s.worker.poll() is None)

  def tend(self) -> None:
    """One look at every worker: replaces those that exited, retries failed replacements, tells the count."""
    now = time.monotonic()
    for slot in self.slots:
      worker = slot.worker
      if worker is None:
        if now >= slot.start_after:
          self._start(slot)
          self.log(f'worker {slot.index}: starting a replacement (try {slot.failures + 1})')
        continue
      returncode = worker.poll()
      if returncode is None:
        silence = now - worker.last_beat
        if (self.worker_timeout_s and worker.ready.is_set() and not worker.killed_as_hung
                and silence > self.worker_timeout_s):
          self.log(f'worker {slot.index} (pid {worker.pid}) sent no heartbeat for {silence:.1f} s '
                   f'(config.serve.worker_timeout_s={self.worker_timeout_s:g}): killing it as hung')
          worker.killed_as_hung = True
          worker.kill()   # the next look finds it exited and replaces it
          continue
        if worker.ready.is_set() and slot.replacing:
          slot.failures, slot.replacing = 0, False
          self.log(f'worker {slot.index} (pid {worker.pid}) is ready; {self.up()} of {self.count} workers up')
        continue
      if worker.ready.is_set():
        self.log(f'worker {slot.index} (pid {worker.pid}) exited ({exit_description(returncode)}); starting a '
                 'replacement')
        worker.finish_reading(1.0)
        slot.failures, slot.replacing = 0, True
        self._start(slot)
        continue
      slot.failures, slot.replacing = slot.failures + 1, True
      wait = RETRY_SECONDS[min(slot.failures - 1, len(RETRY_SECONDS) - 1)]
      reason = worker.failure(returncode)
      slot.worker, slot.start_after = None, now + wait
      if self.up() == 0:
        raise UserInputError(f'no serve worker is up, and a replacement failed to start: {reason}')
      self.log(f'{reason}\nfpclass serve: worker {slot.index}: trying again in {wait:g} s')
    self._tell_workers_up()

  def _tell_workers_up(self) -> None:
    live = [slot.worker for slot in self.slots if slot.worker is not None and slot.worker.poll() is None]
    pids = sorted(worker.pid for worker in live if worker.ready.is_set())
    up = len(pids)
    if (up, pids) == self._up_told:
      return
    self._up_told = (up, pids)
    for worker in live:
      worker.tell({'workers_up': up, 'workers': self.count, 'worker_pids': pids})

  def stop_all(self) -> None:
    """Asks every worker to finish and exit (its stdin closes), kills those still running after
    STOP_GRACE_SECONDS (or at once on a second signal), and waits for them."""
    workers = [s.worker for s in self.slots if s.worker is not None]
    for worker in workers:
      worker.stop()
      if not worker.ready.is_set():  # still restoring or compiling: nothing to finish
        worker.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
      while worker.poll() is None and time.monotonic() < deadline and not self._forced:
        with contextlib.suppress(subprocess.TimeoutExpired):
          worker.process.wait(POLL_SECONDS)
      if worker.poll() is None:
        worker.kill()
      worker.process.wait()
      worker.finish_reading()

  # ---- signals

  _forced = False

  def _on_signal(self, signum, frame) -> None:
    if self.signum is not None:  # a second signal: stop waiting for the workers to finish
      self._forced = True
    self.signum = self.signum or signum
    self.wake.set()

  @contextlib.contextmanager
  def _signal_handlers(self):
    """The supervisor's own SIGINT/SIGTERM handlers while it runs (the previous ones restored after); none
    when it runs off the main thread, where Python cannot install them."""
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
