"""One training run per workdir: an OS lock on <workdir>/.fpclass.lock, plus JSON naming its holder; and the
owner records (`process_owner`, `owner_alive`) that auto's trials and claims in a shared study carry.

    with WorkdirLock(workdir, mode='train'):
      ...train...

The authority is `fcntl.flock` on an open descriptor: the kernel drops it when the process ends in any
way, kill -9 included, so a lock that can be taken is never held by a live run. The JSON in the same file
(pid, host, start time, mode, command, heartbeat) exists for the message a second launch prints, and to
tell a lock left behind by a killed run (JSON present, lock free: taken over with a warning) from a clean
release (the file is emptied, never deleted, so no other process can be locking a deleted inode).

Design notes: docs/modules.md (`fpclass/runtime/workdir_lock.py`).
"""
import dataclasses
import datetime
import errno
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time

try:
  import fcntl
except ImportError:  # Windows: the JSON fallback decides
  fcntl = None

from fpclass.errors import UserInputError

LOCK_NAME = '.fpclass.lock'
HEARTBEAT_S = 30.0
STALE_AFTER_BEATS = 4  # a heartbeat older than this many beats means the holder on another host is gone
# A read-only mode probing the lock holds it shared for microseconds; a launch retries this long before
# concluding that a run holds it.
_PROBE_GRACE_S = 0.5
_RETRY_S = 0.05


@dataclasses.dataclass(frozen=True)
class LockHolder:
  """Who holds (or last held) a workdir's lock, as its JSON says."""
  pid: int
  host: str
  started: float  # time.time() at acquisition
  mode: str = 'train'
  command: str = ''
  heartbeat: float = 0.0  # time.time() at the last heartbeat
  heartbeat_s: float = HEARTBEAT_S

  def describe(self, now: float | None = None) -> str:
    running = _duration((now or time.time()) - self.started)
    since = datetime.datetime.fromtimestamp(self.started).isoformat(sep=' ', timespec='seconds')
    return (f'pid {self.pid} on host {self.host} (--mode {self.mode}, running for {running}, since {since}'
            + (f', command: {self.command}' if self.command else '') + ')')

  def heartbeat_age(self, now: float | None = None) -> float:
    return (now or time.time()) - (self.heartbeat or self.started)

  def is_local(self) -> bool:
    return self.host == socket.gethostname()


def lock_path(workdir: str | os.PathLike, name: str = LOCK_NAME) -> pathlib.Path:
  return pathlib.Path(workdir) / name


class WorkdirLock:
  """Exclusive use of `workdir` by one training run; a context manager, or `acquire()` / `release()`.

  `acquire` raises UserInputError naming the holder when a live run holds the workdir, and takes over a
  lock left by a killed run with a logging warning.
  """

  def __init__(self, workdir: str | os.PathLike, mode: str = 'train', heartbeat_s: float = HEARTBEAT_S,
               name: str = LOCK_NAME):
    self.workdir = pathlib.Path(workdir)
    self.path = lock_path(workdir, name)
    self.mode = mode
    self.heartbeat_s = float(heartbeat_s)
    self.holder: LockHolder | None = None
    self._fd: int | None = None
    self._stop = threading.Event()
    self._beat: threading.Thread | None = None
    self._write_lock = threading.Lock()  # the heartbeat thread and release both rewrite the file

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> 'WorkdirLock':
    refusal = self.try_acquire()
    if refusal:
      raise UserInputError(refusal)
    return self

  def try_acquire(self) -> str:
    """Takes the lock and returns '', or returns why a live holder keeps it (the message `acquire` raises)."""
    if self._fd is not None:
      raise RuntimeError(f'{self.path}: this WorkdirLock is already held')
    fd = _open_lock_file(self.path)
    try:
      os_lock = _flock_exclusive(fd)
      previous = _read_holder(fd)
      if os_lock is False:
        refusal = _held_message(self.workdir, previous)
      else:
        refusal = _previous_refusal(self.workdir, self.path, previous, os_lock) if previous is not None else ''
        if previous is not None and not refusal:
          logging.warning('%s: taking over the lock of a run that is gone: %s. It was killed or crashed; '
                          'resuming from its last complete checkpoint.', self.path, previous.describe())
      if not refusal:
        now = time.time()
        self.holder = LockHolder(pid=os.getpid(), host=socket.gethostname(), started=now, mode=self.mode,
                                 command=' '.join(sys.argv)[:300], heartbeat=now, heartbeat_s=self.heartbeat_s)
        _write_new_holder(self.path, fd, self.holder)
    except BaseException:
      os.close(fd)  # closing drops the flock too
      raise
    if refusal:
      os.close(fd)
      return refusal
    self._fd = fd
    self._stop.clear()
    if self.heartbeat_s > 0:
      self._beat = threading.Thread(target=self._heartbeat, name='fpclass-workdir-lock', daemon=True)
      self._beat.start()
    return ''

  def release(self) -> None:
    """Empties the lock file (a clean end, not a stale lock) and drops the OS lock."""
    if self._fd is None:
      return
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
      self._beat = None
    try:
      with self._write_lock:
        os.ftruncate(self._fd, 0)
    except OSError as e:  # the next launch then sees a stale lock and takes it over with a warning
      logging.warning('%s: could not clear the lock file (%s)', self.path, e)
    finally:
      os.close(self._fd)
      self._fd = None
      self.holder = None

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        with self._write_lock:
          if self._fd is None or self._stop.is_set():
            return
          self.holder = dataclasses.replace(self.holder, heartbeat=time.time())
          _write_holder(self._fd, self.holder)
      except OSError as e:  # a full disk must not kill training; the next beat tries again
        logging.warning('%s: heartbeat not written (%s)', self.path, e)


def process_owner() -> dict:
  """This process as an owner record names it (host and pid): an Optuna trial's owner, say."""
  return {'host': socket.gethostname(), 'pid': os.getpid()}


def owner_alive(owner: dict) -> bool:
  """Whether the process an owner record names may be running: on this host its pid tells; on another host it
  cannot be told, so it may."""
  return owner.get('host') != socket.gethostname() or pid_alive(int(owner.get('pid', -1)))


def _open_lock_file(path: pathlib.Path) -> int:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise UserInputError(f'--workdir={str(path.parent)!r} is not writable ({e.strerror}); training writes '
                           'checkpoints and metrics there, so choose a writable folder') from None
    raise


def _flock_exclusive(fd: int) -> bool | None:
  """True if taken, False if another open file holds it, None where flock is unavailable."""
  deadline = time.monotonic() + _PROBE_GRACE_S
  while True:
    result = _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) if fcntl else None
    if result is not False or time.monotonic() >= deadline:
      return result
    time.sleep(_RETRY_S)


def _flock_probe(fd: int) -> bool | None:
  """Takes and at once drops a shared lock: True if free, False if held, None where flock is unavailable."""
  if fcntl is None:
    return None
  result = _flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  if result:
    fcntl.flock(fd, fcntl.LOCK_UN)
  return result


def _flock(fd: int, operation: int) -> bool | None:
  try:
    fcntl.flock(fd, operation)
    return True
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      logging.warning('the filesystem refuses file locks (%s); the workdir lock falls back to its pid and '
                      'heartbeat record', e.strerror)
      return None
    raise


def _previous_refusal(workdir: pathlib.Path, path: pathlib.Path, previous: LockHolder, os_lock: bool | None) -> str:
  """Why a lock whose flock was free is still refused: its holder may be alive where flock cannot see it ('' if
  not)."""
  if not _looks_alive(previous, os_lock):
    return ''
  age = previous.heartbeat_age()
  return (_held_message(workdir, previous)
          + f'. Its heartbeat is {age:.0f} s old; this filesystem does not share file locks with host '
          f'{previous.host}, so if that run is gone, wait {_stale_after(previous):.0f} s after its last '
          f'heartbeat or remove {path}')


def _looks_alive(holder: LockHolder, os_lock: bool | None) -> bool:
  """Whether a holder the OS lock did not show may still be running (see the module docstring)."""
  if holder.is_local():
    # Same host with working flock: the kernel's answer is final. Without flock, ask about the pid (our own
    # pid in the record is a previous incarnation: containers restart with the same small pids).
    return os_lock is None and holder.pid != os.getpid() and pid_alive(holder.pid)
  return holder.heartbeat_age() < _stale_after(holder)


def _stale_after(holder: LockHolder) -> float:
  return STALE_AFTER_BEATS * (holder.heartbeat_s or HEARTBEAT_S)


def pid_alive(pid: int) -> bool:
  """Whether process `pid` of this host is running."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  except OSError:
    return False
  return True


def _held_message(workdir: pathlib.Path, holder: LockHolder | None) -> str:
  who = holder.describe() if holder else 'another process (its lock record is being written or unreadable)'
  return (f'--workdir={str(workdir)!r} is in use by a training run: {who}. Wait for it to finish, stop it, or '
          'choose another --workdir; evaluate, explain, submit, predict, serve and export can run beside it')


def _read_holder(fd: int) -> LockHolder | None:
  """The JSON record, or None for an empty file; retries a record caught mid-rewrite."""
  for _ in range(3):
    data = os.pread(fd, 1 << 16, 0)
    if not data.strip():
      return None
    try:
      record = json.loads(data)
      fields = {f.name for f in dataclasses.fields(LockHolder)}
      return LockHolder(**{k: v for k, v in record.items() if k in fields})
    except (ValueError, TypeError, AttributeError):
      time.sleep(_RETRY_S)
  return None


def _write_new_holder(path: pathlib.Path, fd: int, holder: LockHolder) -> None:
  try:
    _write_holder(fd, holder)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise UserInputError(f'{path}: the disk is full (no space left on device); nothing was changed. '
                         'Free some space and launch again') from None


def _write_holder(fd: int, holder: LockHolder) -> None:
  # Written in place (a rename would move the name to a new, unlocked inode); new bytes first, then the
  # truncate, so a reader never sees an empty file.
  data = (json.dumps(dataclasses.asdict(holder), sort_keys=True) + '\n').encode()
  os.pwrite(fd, data, 0)
  os.ftruncate(fd, len(data))
  os.fsync(fd)


def _duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'
