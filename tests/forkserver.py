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
asked for: such a launch runs as a plain `python launch.py` subprocess instead (`forkable`).
"""
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
             # the extras' libraries of the modes the suite launches most (auto, export, label_issues)
             'optuna', 'jax2onnx', 'onnxruntime', 'cleanlab.filter')
# Environment variables read by those libraries at import: a launch whose values differ runs as a subprocess.
IMPORT_TIME_PREFIXES = ('JAX_', 'MPL', 'OPENBLAS_', 'OMP_', 'MKL_', 'PYTHON')


def forkable(server_env: dict, env: dict) -> bool:
  """Whether a launch with `env` may be forked from a server started with `server_env`."""
  names = {n for n in (*server_env, *env) if n.startswith(IMPORT_TIME_PREFIXES)}
  return all(server_env.get(n) == env.get(n) for n in names)


class LaunchServer:
  """One server process and the launches forked from it (one at a time: `run` waits for its launch)."""

  def __init__(self, repo: pathlib.Path):
    self.repo, self.env = repo, dict(os.environ)
    self.process = subprocess.Popen([sys.executable, '-m', 'tests.forkserver'], cwd=repo, env=self.env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready = self.process.stdout.readline()
    if ready.strip() != 'ready':
      raise RuntimeError(f'the launch server did not start: {ready!r}')

  def alive(self) -> bool:
    return self.process.poll() is None

  def run(self, args: list, cwd, env: dict, timeout: float, folder: pathlib.Path) -> subprocess.CompletedProcess:
    """`python launch.py *args` as `subprocess.run(..., capture_output=True, text=True, timeout=timeout)` gives
    it; its output passes through files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f'launch-{os.getpid()}-{time.monotonic_ns()}'
    out, err = stem.with_suffix('.out'), stem.with_suffix('.err')
    request = dict(argv=[str(self.repo / 'launch.py'), *args], cwd=str(cwd), env=env, stdout=str(out),
                   stderr=str(err))
    self.process.stdin.write(json.dumps(request) + '\n')
    pid = int(self.process.stdout.readline())
    deadline = time.monotonic() + timeout
    timed_out = False
    while not select.select([self.process.stdout], [], [], max(0.0, min(1.0, deadline - time.monotonic())))[0]:
      if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
        timed_out = True
        break
    returncode = int(self.process.stdout.readline())
    stdout, stderr = out.read_text(errors='replace'), err.read_text(errors='replace')
    out.unlink()
    err.unlink()
    argv = [sys.executable, *request['argv']]
    if timed_out:
      raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)

  def close(self) -> None:
    if self.alive():
      self.process.stdin.close()
      self.process.wait(timeout=30)


def _child(request: dict) -> None:
  """In the forked child: the environment, folder, streams and argv of the request, then launch.py as __main__.
  Never returns."""
  try:
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
      os.dup2(fd, target)
      os.close(fd)
    sys.stdin, sys.stdout, sys.stderr = (open(0, closefd=False), open(1, 'w', closefd=False),
                                         open(2, 'w', closefd=False))
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


def _serve() -> None:
  """The server: imports `PRELOADED`, then forks a child per request line and answers its pid, then its return
  code (negative: the signal that ended it), as subprocess does."""
  import importlib
  for name in PRELOADED:
    importlib.import_module(name)
  channel = sys.stdout
  print('ready', file=channel, flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
      _child(request)
    print(pid, file=channel, flush=True)
    _, status = os.waitpid(pid, 0)
    print(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), file=channel, flush=True)


if __name__ == '__main__':
  _serve()
