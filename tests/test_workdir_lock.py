"""The workdir lock, against real second processes: refused while held, stale after kill -9, one winner."""
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from fpclass.errors import UserInputError
from fpclass.runtime import workdir_lock
from fpclass.runtime.workdir_lock import LockHolder, WorkdirLock, lock_path

REPO = pathlib.Path(__file__).resolve().parents[1]

# Takes the lock, says so, and holds it until killed (or for `hold` seconds).
HOLDER = '''
import sys, time
from fpclass.runtime.workdir_lock import WorkdirLock
from fpclass.errors import UserInputError
workdir, hold = sys.argv[1], float(sys.argv[2])
try:
  lock = WorkdirLock(workdir).acquire()
except UserInputError as e:
  print('refused', e, flush=True)
  sys.exit(3)
print('locked', flush=True)
time.sleep(hold)
lock.release()
'''



def training_run(workdir) -> LockHolder | None:
  """The run training in `workdir` now as another process sees it without taking the lock: the OS lock probed and
  the owner record read, a stale record (its process gone, its heartbeat old) taken for no run."""
  try:
    fd = os.open(lock_path(workdir), os.O_RDONLY)
  except OSError:
    return None
  try:
    os_lock = workdir_lock._flock_probe(fd)
    holder = workdir_lock._read_holder(fd)
    if os_lock is False:
      return holder or LockHolder(pid=0, host='?', started=time.time())
    return holder if holder is not None and workdir_lock._looks_alive(holder, os_lock) else None
  finally:
    os.close(fd)

def start_holder(workdir, hold=60.0):
  """A python process holding the lock on `workdir`; returns once it holds it."""
  child = subprocess.Popen([sys.executable, '-c', HOLDER, str(workdir), str(hold)], stdout=subprocess.PIPE,
                           text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
  line = child.stdout.readline()
  assert line.startswith('locked'), line
  return child


def kill9(child):
  child.send_signal(signal.SIGKILL)
  child.wait(10)


def test_second_launch_stops_naming_the_holder_then_takes_over_after_kill_9(tmp_path, caplog):
  child = start_holder(tmp_path)
  try:
    with pytest.raises(UserInputError) as refused:
      WorkdirLock(tmp_path).acquire()
    message = str(refused.value)
    assert f'pid {child.pid}' in message and f'host {socket.gethostname()}' in message
    assert 'running for' in message and str(tmp_path) in message
    assert training_run(tmp_path).pid == child.pid  # what read-only modes see
  finally:
    kill9(child)

  assert training_run(tmp_path) is None  # the kernel dropped the flock; the record alone is stale
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path) as lock:
      assert lock.holder.pid == os.getpid()
      record = json.loads(lock_path(tmp_path).read_text())
      assert record['pid'] == os.getpid() and record['mode'] == 'train'
  stale = [r.getMessage() for r in caplog.records if 'taking over' in r.getMessage()]
  assert len(stale) == 1 and f'pid {child.pid}' in stale[0]


def test_clean_release_is_not_a_stale_lock(tmp_path, caplog):
  with WorkdirLock(tmp_path):
    assert training_run(tmp_path).pid == os.getpid()
  assert lock_path(tmp_path).read_text() == ''  # emptied, not deleted
  assert training_run(tmp_path) is None
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path):
      pass
  assert not caplog.records


# Four launches that try the lock at the same moment: each waits, after its imports, until all four are
# ready, and the winner holds the lock until the other three have tried (so a loaded machine, where one
# child's imports take longer than another's whole run, cannot make two of them win one after the other).
RACER = '''
import pathlib, sys, time
from fpclass.runtime.workdir_lock import WorkdirLock
from fpclass.errors import UserInputError
workdir, marks, n = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
(marks / f'ready-{sys.argv[4]}').touch()
deadline = time.time() + 60
while len(list(marks.glob('ready-*'))) < n and time.time() < deadline:
  time.sleep(0.005)
try:
  lock = WorkdirLock(workdir).acquire()
except UserInputError:
  (marks / f'tried-{sys.argv[4]}').touch()
  print('refused', flush=True)
  sys.exit(3)
while len(list(marks.glob('tried-*'))) < n - 1 and time.time() < deadline:
  time.sleep(0.005)
print('locked', flush=True)
lock.release()
'''


def test_only_one_of_simultaneous_launches_wins(tmp_path):
  marks = tmp_path / 'marks'
  marks.mkdir()
  children = [subprocess.Popen([sys.executable, '-c', RACER, str(tmp_path / 'run'), str(marks), '4', str(i)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
              for i in range(4)]
  outcomes = [c.communicate(timeout=90)[0].split()[0] for c in children]
  assert sorted(outcomes) == ['locked', 'refused', 'refused', 'refused'], outcomes


def test_a_lock_object_is_not_reentrant_and_release_twice_is_harmless(tmp_path):
  lock = WorkdirLock(tmp_path).acquire()
  with pytest.raises(RuntimeError):
    lock.acquire()
  with pytest.raises(UserInputError, match=f'pid {os.getpid()}'):
    WorkdirLock(tmp_path).acquire()  # a second open file in the same process is refused too
  lock.release()
  lock.release()


def test_heartbeat_is_rewritten(tmp_path):
  with WorkdirLock(tmp_path, heartbeat_s=0.05) as lock:
    started = lock.holder.started
    time.sleep(0.3)
    record = json.loads(lock_path(tmp_path).read_text())
  assert record['heartbeat'] > started


def write_record(workdir, **fields):
  now = time.time()
  holder = LockHolder(**{**dict(pid=os.getpid(), host=socket.gethostname(), started=now - 90, heartbeat=now),
                         **fields})
  lock_path(workdir).write_text(json.dumps(holder.__dict__))


def test_a_fresh_record_from_another_host_is_respected_even_where_flock_is_granted(tmp_path, caplog):
  # NFS mounted without shared locking grants flock on every host, so the heartbeat decides.
  write_record(tmp_path, pid=4242, host='node-b.cluster')
  with pytest.raises(UserInputError, match='pid 4242 on host node-b.cluster'):
    WorkdirLock(tmp_path).acquire()
  assert training_run(tmp_path).host == 'node-b.cluster'

  write_record(tmp_path, pid=4242, host='node-b.cluster', heartbeat=time.time() - 3600)
  assert training_run(tmp_path) is None
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path) as lock:
      assert lock.holder.host == socket.gethostname()
  assert any('node-b.cluster' in r.getMessage() for r in caplog.records)


def test_without_flock_a_live_local_pid_holds_and_a_dead_one_is_stale(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(workdir_lock, 'fcntl', None)  # Windows, or a filesystem that refuses locks
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    write_record(tmp_path, pid=sleeper.pid, heartbeat=time.time() - 3600)
    with pytest.raises(UserInputError, match=f'pid {sleeper.pid}'):
      WorkdirLock(tmp_path).acquire()
  finally:
    kill9(sleeper)
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path):
      pass
  assert any(f'pid {sleeper.pid}' in r.getMessage() for r in caplog.records)


def test_unreadable_record_while_held_still_refuses(tmp_path):
  child = start_holder(tmp_path)
  try:
    lock_path(tmp_path).write_text('{not json')  # e.g. caught mid-write
    with pytest.raises(UserInputError, match='in use by a training run'):
      WorkdirLock(tmp_path).acquire()
  finally:
    kill9(child)


def test_read_only_workdir_is_refused_before_work_starts(tmp_path):
  workdir = tmp_path / 'ro'
  workdir.mkdir()
  mounted = False
  if os.geteuid() == 0:  # root ignores permission bits; a read-only mount is the honest test
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(workdir)],
                             capture_output=True).returncode == 0
    if not mounted:
      pytest.skip('running as root without mount: cannot make a read-only folder')
  else:
    workdir.chmod(0o555)
  try:
    with pytest.raises(UserInputError, match='not writable'):
      WorkdirLock(workdir).acquire()
  finally:
    if mounted:
      subprocess.run(['umount', str(workdir)], check=True)
    else:
      workdir.chmod(0o755)


def test_an_owner_record_is_alive_while_its_process_runs_and_always_on_another_host():
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  here = socket.gethostname()
  try:
    assert workdir_lock.owner_alive({'host': here, 'pid': sleeper.pid})
    assert workdir_lock.process_owner() == {'host': here, 'pid': os.getpid()}
  finally:
    kill9(sleeper)
  assert not workdir_lock.owner_alive({'host': here, 'pid': sleeper.pid})
  assert workdir_lock.owner_alive({'host': 'node-b.cluster', 'pid': sleeper.pid})
