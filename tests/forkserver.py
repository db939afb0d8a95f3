"""`python launch.py ...` for the tests, forked from a process that has imported launch.py's third-party libraries.

A launch.py child spends 3 to 4 CPU-seconds importing scikit-learn, SciPy, pandas, matplotlib, JAX, Flax, optax
and orbax before it reads its first image, and the suite starts about 150 of them (docs/testing.md, the suite's
clock). `LaunchServer` keeps one process (the server) per test process that has imported those libraries once;
each launch is a fork of it that sets its environment, working folder, argv and standard streams as
`subprocess.run` would, then runs launch.py as `__main__` (`runpy`): fpclass itself is imported afresh in each
child, and JAX starts its backend there, after the child's XLA_FLAGS are in place. So a forked launch runs the
very code `python launch.py` runs, from its flag parsing on, in a real process of its own.

Where a launch's environment differs from the server's in a variable that one of those libraries reads when it
is imported (JAX's `JAX_*` options, matplotlib's `MPL*`), the server's imports would not be the ones the launch
asked for: such a launch runs as a plain `python launch.py` subprocess instead (`forkable`). Launches may run
side by side (`LaunchServer.popen`): the processes of a multi-process job, or a run a test kills.
"""
import contextlib
import io
import json
import os
import pathlib
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback

# What launch.py's modes import on their way to the data: the expensive part of a child's start-up.
PRELOADED = ('numpy', 'scipy.stats', 'pandas', 'sklearn.metrics', 'sklearn.model_selection', 'matplotlib',
             'matplotlib.figure', 'PIL.Image', 'jax', 'jax.numpy', 'flax.linen', 'optax', 'orbax.checkpoint',
             'ml_collections', 'absl.app', 'absl.flags', 'tensorboardX', 'tqdm',
             # the extras' libraries of the modes the suite launches most (auto, export, label_issues); optuna
             # imports SQLAlchemy lazily, auto's study storage at once (0.9 CPU-s of an auto launch's start)
             'optuna', 'sqlalchemy', 'jax2onnx', 'onnxruntime', 'cleanlab.filter')
# Environment variables read by those libraries at import: a launch whose values differ runs as a subprocess.
IMPORT_TIME_PREFIXES = ('JAX_', 'MPL', 'OPENBLAS_', 'OMP_', 'MKL_', 'PYTHON')
# ... except those read when a multi-process job joins (fpclass.runtime.sharding, jax.distributed), not at import.
RUN_TIME_NAMES = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def forkable(server_env: dict, env: dict) -> bool:
  """Whether a launch with `env` may be forked from a server started with `server_env`."""
  names = {n for n in (*server_env, *env) if n.startswith(IMPORT_TIME_PREFIXES) and n not in RUN_TIME_NAMES}
  return all(server_env.get(n) == env.get(n) for n in names)


class LaunchServer:
  """One server process and the launches forked from it (`popen`), any number at a time: the tests wait for one,
  start several (a multi-process job) or stop one (a kill -9)."""

  def __init__(self, repo: pathlib.Path):
    self.repo, self.env = repo, dict(os.environ)
    self.process = subprocess.Popen([sys.executable, '-m', 'tests.forkserver'], cwd=repo, env=self.env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready = self.process.stdout.readline()
    if ready.strip() != 'ready':
      raise RuntimeError(f'the launch server did not start: {ready!r}')

  def alive(self) -> bool:
    return self.process.poll() is None

  def popen(self, argv: list, cwd, env: dict, folder: pathlib.Path, new_session: bool = False,
            output: pathlib.Path | None = None) -> 'ForkedLaunch':
    """`python *argv` (argv[0]: the script, launch.py) forked now; its output and exit status pass through files
    in `folder`. `new_session`: as Popen's start_new_session (its own process group, for os.killpg). `output`:
    stdout and stderr together in that file instead (as Popen's stderr=STDOUT into it)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f'launch-{os.getpid()}-{time.monotonic_ns()}'
    stdout, stderr = (output, output) if output else (stem.with_suffix('.out'), stem.with_suffix('.err'))
    request = dict(argv=[str(a) for a in argv], cwd=str(cwd), env=env, stdout=str(stdout), stderr=str(stderr),
                   status=str(stem.with_suffix('.status')), new_session=new_session)
    self.process.stdin.write(json.dumps(request) + '\n')
    pid = int(self.process.stdout.readline())
    return ForkedLaunch(pid, [sys.executable, *request['argv']], stem)

  def close(self) -> None:
    if self.alive():
      self.process.stdin.close()
      self.process.wait(timeout=60)


class ForkedLaunch:
  """A forked launch as the tests use a `subprocess.Popen`: pid, args, returncode, poll, wait, kill,
  send_signal and communicate (its whole stdout and stderr, as text, once it has ended)."""

  POLL_SECONDS = 0.02

  def __init__(self, pid: int, args: list, stem: pathlib.Path):
    self.pid, self.args, self._stem, self.returncode = pid, args, stem, None

  def poll(self) -> int | None:
    if self.returncode is None:
      status = self._stem.with_suffix('.status')
      if status.exists():   # written whole (renamed into place) by the server once the child ended
        self.returncode = int(status.read_text())
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while self.poll() is None:
      if deadline is not None and time.monotonic() >= deadline:
        raise subprocess.TimeoutExpired(self.args, timeout)
      time.sleep(self.POLL_SECONDS)
    return self.returncode

  def send_signal(self, sig: int) -> None:
    if self.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        os.kill(self.pid, sig)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def communicate(self, timeout: float | None = None) -> tuple[str, str]:
    """(stdout, stderr) once it has ended; ('', '') where they went to a file of the caller's (`output`)."""
    self.wait(timeout)
    out, err, status = (self._stem.with_suffix(suffix) for suffix in ('.out', '.err', '.status'))
    outputs = tuple(path.read_text(errors='replace') if path.exists() else '' for path in (out, err))
    for path in (out, err, status):
      path.unlink(missing_ok=True)
    return outputs


def _child(request: dict) -> None:
  """In the forked child: the environment, folder, streams and argv of the request, then the script as __main__.
  Never returns."""
  try:
    if request['new_session']:
      os.setsid()
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = (os.dup(stdout) if request['stderr'] == request['stdout']   # one file, one offset: as 2>&1
              else os.open(request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
      os.dup2(fd, target)
      os.close(fd)
    # As the interpreter opens them (a process killed with SIGKILL has written what `python launch.py` would have)
    unbuffered = bool(request['env'].get('PYTHONUNBUFFERED'))
    sys.stdin, sys.stdout, sys.stderr = (open(0, closefd=False), _output_stream(1, unbuffered, 'strict'),
                                         _output_stream(2, unbuffered, 'backslashreplace'))
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    script = request['argv'][0]
    sys.argv = list(request['argv'])
    sys.path[0] = os.path.dirname(script)   # as `python launch.py` has it
    runpy.run_path(script, run_name='__main__')
    code = 0
  except SystemExit as done:
    code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    if done.code is not None and not isinstance(done.code, int):
      print(done.code, file=sys.stderr)
  except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _output_stream(fd: int, unbuffered: bool, errors: str) -> io.TextIOWrapper:
  """stdout (1) or stderr (2) as the interpreter opens them on a file: written through with PYTHONUNBUFFERED
  (`python -u`), else stdout block-buffered and stderr line-buffered."""
  if unbuffered:
    return io.TextIOWrapper(io.FileIO(fd, 'w', closefd=False), errors=errors, write_through=True)
  return open(fd, 'w', buffering=1 if fd == 2 else -1, closefd=False, errors=errors)


def _reap(running: dict, block: bool) -> None:
  """Writes the exit status of each ended child (negative: the signal that ended it, as subprocess has it) to
  its status file, whole: written beside it, then renamed into place."""
  while running:
    pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
    if pid == 0:
      return
    path = pathlib.Path(running.pop(pid))
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    path.with_suffix('.partial').write_text(str(code))
    os.replace(path.with_suffix('.partial'), path)


def _serve() -> None:
  """The server: imports `PRELOADED` (those installed), then forks a child per request line and answers its pid
  at once; each child's exit status goes to the request's status file when it ends."""
  import importlib
  import logging
  handlers = list(logging.root.handlers)
  for name in PRELOADED:
    try:
      importlib.import_module(name)
    except ImportError:   # an extra this machine lacks (the GPU image has no jax2onnx): its launches import it
      pass
  # orbax.checkpoint's import adds a stderr handler to the root logger (logging.basicConfig). absl's app.run removes
  # such a handler only while its stream is sys.stderr, which a child replaces: each record would print twice.
  logging.root.handlers[:] = handlers
  channel, running, pending, ended = sys.stdout, {}, b'', False
  print('ready', file=channel, flush=True)
  while not ended:
    # The raw descriptor (a request is one line, read whole below); with children running, woken every 50 ms
    # to reap those that ended, else asleep until the next request.
    if select.select([0], [], [], 0.05 if running else None)[0]:
      chunk = os.read(0, 1 << 16)
      ended, pending = not chunk, pending + chunk
      while b'\n' in pending:
        line, pending = pending.split(b'\n', 1)
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
          _child(request)
        running[pid] = request['status']
        print(pid, file=channel, flush=True)
    _reap(running, block=False)
  _reap(running, block=True)


if __name__ == '__main__':
  _serve()
