"""Measures fpclass on a lent GPU in one command (issue 45), so that a session's device time goes to measuring.

Six steps, each through launch.py or a bench/ script, each writing <out>/<step>.json (status, seconds, the
device, the software versions, the commands, the results); <out>/session.json sums them up and
<out>/session.log holds every command's output.

    bash bench/gpu_session.sh prepare                          # here, with the network: .whl/ (wheels, hey)
    bash bench/gpu_session.sh --out "$OUT"                     # on the GPU machine, with .whl/ carried
    python bench/gpu_session.py --cpu-dry-run --out /tmp/dry   # here: every step at tiny sizes on the CPU

`prepare` fills .whl/ with the wheels the GPU image lacks (../shared/tools/device_wheels.sh, plus what these
steps and the suite need) and Debian's hey (`apt-get download hey`, unpacked by `dpkg -x` into .whl/hey/).
On the GPU machine the wrapper installs those wheels into /tmp/site, puts .whl/hey/usr/bin on PATH and runs
this script; through the `run` tool: command `bash bench/gpu_session.sh --out $OUT`, carry `.whl`.

Steps (`--steps`, in this order by default):
- keras_recipes: bench/keras_recipes.py, fpclass against Keras 3 on JAX, epoch 1 and the steady epochs;
- footprint: bench/footprint_end_to_end.py, the README's main job cold and warm, with the programs compiled
  (read back from each workdir's timings.json);
- serve: bench/serve_load.py at 64 clients with hey, on the footprint step's trained workdir;
- sharing: two `--mode serve` servers under hey while a training run shares the device;
- precision: the transfer recipes through launch.py with train.precision fp32 and bf16 (speed, accuracy);
- pytest: the suite, `pytest -n 4` (the dry run: one small file, without xdist's workers).
Each step has its own time cap within `--budget` (the suite gets what is left), and a step that fails or runs
past its cap records that in its JSON while the others still run. Nothing is downloaded by this script.
"""
import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import keras_recipes  # noqa: E402 - stdlib only at import: its stand-in data and Keras-written weights

STEPS = ('keras_recipes', 'footprint', 'serve', 'sharing', 'precision', 'pytest')
CARRIED_HEY = REPO / '.whl' / 'hey' / 'usr' / 'bin' / 'hey'   # where `bash bench/gpu_session.sh prepare` puts it
MIN_STEP_SECONDS = 20        # a step with less time left than this is skipped
RESERVED_PER_LATER_STEP = 30  # seconds a step leaves for each step after it
LOG_LIMIT_BYTES = 15 * 2**20  # the run tool brings back files up to 16 MiB
VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'keras', 'torch', 'fastapi', 'uvicorn',
             'httpx', 'h5py', 'pytest', 'pytest-xdist')
DEVICE_PROBE = ('import json, jax; d = jax.devices()[0]; print(json.dumps(dict(backend=jax.default_backend(), '
                'platform=d.platform, name=d.device_kind, count=jax.device_count())))')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What every step runs, at which size, and its time cap: the GPU session's, or the dry run's."""
  stand_in_images: tuple[int, int]   # train and validation images of keras_recipes.py's stand-in data
  keras_args: tuple[str, ...]
  footprint_args: tuple[str, ...]
  served_config: str                 # trained for serving when the footprint step left no workdir
  serve_args: tuple[str, ...]
  share_train_args: tuple[str, ...]
  share_workers: int                 # config.serve.workers of each of the two servers
  share_clients: int                 # hey's connections to each server
  share_turn_requests: int
  share_pause_seconds: float         # between hey's turns (the dry run leaves the CPU to the training run)
  precision_recipes: tuple[tuple[str, str, str, int], ...]   # (name, config, Keras application, image size)
  precision_args: tuple[str, ...]
  pytest_args: tuple[str, ...]
  caps: dict                         # seconds per step at most (the suite: what the budget has left)
  budget: float                      # seconds for every step together


GPU_PLAN = Plan(
    stand_in_images=(256, 64),
    keras_args=('--train', '256', '--val', '64', '--epochs', '3', '--recipes', 'vgg16_aug,inception_mixed7',
                '--arms', 'fpclass,keras_jax'),
    footprint_args=('--experiment', 'exp4', '--epochs', '0', '--no-torch'),
    served_config='configs/footprint.py:exp4,quick',
    serve_args=('--concurrency', '64', '--requests', '6000', '--workers', '1,8', '--batching', 'on',
                '--rounds', '2', '--warmup', '300', '--time-limit', '60'),
    share_train_args=('--config', 'configs/footprint.py:exp4', '--config.train.epochs=10'),
    share_workers=2, share_clients=16, share_turn_requests=1000, share_pause_seconds=0.0,
    precision_recipes=(('vgg16_aug', 'configs/cats_dogs.py:vgg16', 'VGG16', 224),
                       ('inception_mixed7', 'configs/horses_humans.py:inception_mixed7', 'InceptionV3', 150)),
    precision_args=('--config.train.epochs=3',),
    pytest_args=('-n', '4', '-q', '--ignore=tests/test_gpu_session.py'),
    caps=dict(keras_recipes=150, footprint=100, serve=90, sharing=60, precision=110, pytest=600),
    budget=520)   # the run tool's 600 s, less the wheels' install and the device probe

DRY_PLAN = Plan(
    stand_in_images=(8, 4),
    keras_args=('--train', '8', '--val', '4', '--epochs', '2', '--batch-size', '4', '--vgg-size', '32',
                '--recipes', 'vgg16', '--arms', 'fpclass,keras_jax'),
    footprint_args=('--experiment', 'exp4,quick', '--epochs', '2', '--no-torch'),
    served_config='configs/footprint.py:exp4,quick',
    serve_args=('--concurrency', '64', '--requests', '128', '--workers', '1', '--batching', 'on', '--rounds', '1',
                '--warmup', '0', '--overload-requests-per-client', '1', '--time-limit', '60'),
    share_train_args=('--config', 'configs/footprint.py:exp4,quick', '--config.train.epochs=1'),
    # A turn every 2 s, not 0.5: a turn of both servers (two hey processes, /healthz reads, 16 predictions) costs
    # about 0.2 CPU s; 0.5 s apart, the turns cost 3/4 of the training run beside them. A few show both answer.
    share_workers=1, share_clients=2, share_turn_requests=8, share_pause_seconds=2.0,
    precision_recipes=(('vgg16', 'configs/cats_dogs.py:vgg16,quick', 'VGG16', 32),),
    precision_args=(),
    # The lock tests that start no launch.py, in pytest's own process (-n 0: xdist's workers would each import
    # the conftest's JAX and models again, 3x the CPU for the same tests): pytest's counts read back.
    pytest_args=('-n', '0', '-q', 'tests/test_workdir_lock.py', '-k', 'not launch'),
    caps={step: 600 for step in STEPS},   # generous: a busy 2-core machine is slow, and nothing is timed
    budget=3600)


class StepFailed(Exception):
  """A step that did not end ok: `status` ('error', 'timeout', or 'failed': tests failed) and what it measured."""

  def __init__(self, message: str, status: str = 'error', partial: dict | None = None):
    super().__init__(message)
    self.status, self.partial = status, partial or {}


@dataclasses.dataclass
class Finished:
  returncode: int | None   # None: stopped at the step's deadline
  output: str              # what the command wrote (stdout and stderr)


@dataclasses.dataclass
class TrainedRun:
  workdir: pathlib.Path
  data_cache: pathlib.Path   # its FPCLASS_CACHE, where serve_load.footprint_png finds a footprint to upload
  jax_cache: pathlib.Path    # its FPCLASS_JAX_CACHE: the sharing step's training run starts from both


class Session:
  """The output folder, the scratch folder, the plan, the environment every step records, and the trained
  footprint workdir the serving steps share."""

  def __init__(self, args):
    self.dry_run = args.cpu_dry_run
    plan = DRY_PLAN if self.dry_run else GPU_PLAN
    self.plan = dataclasses.replace(plan, caps={**plan.caps, **args.caps})
    self.budget = args.budget or self.plan.budget
    self.out = args.out.absolute()
    self.scratch = (args.scratch or pathlib.Path(tempfile.mkdtemp(prefix='fpclass-gpu-session-'))).absolute()
    self.log_path = self.out / 'session.log'
    self.started = time.monotonic()
    self.trained: TrainedRun | None = None
    self.hey = shutil.which('hey') or (str(CARRIED_HEY) if CARRIED_HEY.exists() else None)
    self.out.mkdir(parents=True, exist_ok=True)
    self.scratch.mkdir(parents=True, exist_ok=True)
    (self.scratch / 'tmp').mkdir(exist_ok=True)
    # Every child inherits this process's environment: the bench scripts' own children (servers, launches) too.
    os.environ.update(self.child_environment())
    self.environment = describe_environment(self)

  def child_environment(self) -> dict:
    env = dict(FPCLASS_CACHE=str(self.scratch / 'data-cache'), FPCLASS_JAX_CACHE=str(self.scratch / 'jax-cache'),
               TMPDIR=str(self.scratch / 'tmp'), PYTHONUNBUFFERED='1')
    if self.dry_run:
      env['JAX_PLATFORMS'] = 'cpu'
    if self.hey:
      env['PATH'] = f'{pathlib.Path(self.hey).parent}{os.pathsep}{os.environ.get("PATH", "")}'
    return env

  def elapsed(self) -> float:
    return time.monotonic() - self.started

  def say(self, message: str) -> None:
    print(message, flush=True)
    with open(self.log_path, 'a') as log:
      log.write(f'\n### {message}\n')


class Step:
  """One step: its deadline, the commands it ran, and `run`, which puts their output into the session log."""

  def __init__(self, session: Session, name: str, limit: float):
    self.session, self.name, self.limit = session, name, limit
    self.deadline = time.monotonic() + limit
    self.commands: list[str] = []

  def remaining(self) -> float:
    return self.deadline - time.monotonic()

  def run(self, command, env: dict | None = None) -> Finished:
    """Runs `command` from the repository root in its own process group until it ends or the step's deadline
    comes (then it gets SIGINT, as Ctrl-C, and SIGKILL if it has not ended 20 s later)."""
    command = [str(c) for c in command]
    self.commands.append(shlex.join(command))
    with open(self.session.log_path, 'a') as log:
      log.write(f'\n$ {shlex.join(command)}\n')
      log.flush()
      start = log.tell()
      process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
      try:
        returncode = process.wait(timeout=max(1.0, self.remaining()))
      except subprocess.TimeoutExpired:
        stop_process_group(process)
        returncode = None
      except BaseException:
        stop_process_group(process)
        raise
    with open(self.session.log_path, 'rb') as log:
      log.seek(start)
      return Finished(returncode, log.read().decode(errors='replace'))

  def check(self, done: Finished, what: str) -> None:
    if done.returncode is None:
      raise StepFailed(f'{what} ran past the step\'s {self.limit:.0f} s', status='timeout')
    if done.returncode:
      raise StepFailed(f'{what} failed (exit status {done.returncode}):\n{tail(done.output)}')


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
  for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, sig)
    try:
      process.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def stop_descendants() -> None:
  """Kills what this process started and still runs (a server stuck in its start-up), by pid (Linux /proc)."""
  pids, queue = [], [os.getpid()]
  while queue:
    pid = queue.pop()
    children = []
    for task in pathlib.Path(f'/proc/{pid}/task').glob('*'):   # every thread's children: servers start on threads
      with contextlib.suppress(OSError):
        children += [int(c) for c in (task / 'children').read_text().split()]
    pids.extend(children)
    queue.extend(children)
  for pid in pids:
    with contextlib.suppress(ProcessLookupError):
      os.kill(pid, signal.SIGKILL)


def tail(text: str, lines: int = 25) -> str:
  return '\n'.join([line for line in text.splitlines() if line.strip()][-lines:])


def read_json(path: pathlib.Path):
  return json.loads(pathlib.Path(path).read_text())


def write_json(path: pathlib.Path, data) -> None:
  """Atomically (a stopped session leaves whole files)."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(data, indent=1, default=str) + '\n')
  os.replace(tmp, path)


def mean(values):
  return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------ the environment

def package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def describe_environment(session: Session) -> dict:
  """The device (asked of JAX in a child that takes no GPU memory), the GPU as nvidia-smi names it, the
  software versions, the host and the command."""
  try:
    done = subprocess.run([sys.executable, '-c', DEVICE_PROBE], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false'), cwd=REPO)
    device = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else dict(
        error=f'exit status {done.returncode}: {tail(done.stderr, 5)}')
  except (subprocess.TimeoutExpired, OSError, ValueError, IndexError) as e:
    device = dict(error=f'{type(e).__name__}: {e}')
  if shutil.which('nvidia-smi'):
    device['nvidia_smi'] = command_output(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                                           '--format=csv,noheader'])
  versions = {name: package_version(name) for name in VERSIONED}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower().replace('_', '-')
    if name.startswith('jax-cuda') or name.startswith('jax-rocm'):
      versions[name] = dist.version
  versions.update(python=platform.python_version(), hey=hey_version(session.hey),
                  fpclass_commit=command_output(['git', 'rev-parse', '--short', 'HEAD']))
  cpu = platform.processor() or platform.machine()
  with contextlib.suppress(OSError, StopIteration):
    cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
  return dict(device=device, versions=versions, dry_run=session.dry_run, cpu=cpu, cpu_count=os.cpu_count(),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              command=shlex.join(['python', *sys.argv]))


def command_output(command) -> str | None:
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def hey_version(hey: str | None) -> str | None:
  """hey has no --version: the Debian package's version, installed or unpacked by `gpu_session.sh prepare`."""
  if hey is None:
    return None
  carried = CARRIED_HEY.parents[2] / 'VERSION'
  if pathlib.Path(hey).resolve() == CARRIED_HEY.resolve() and carried.exists():
    return carried.read_text().strip()
  return command_output(['dpkg-query', '-W', '-f', '${Version}', 'hey']) or hey


# -------------------------------------------------------------------------------------------------- steps

def keras_recipes_step(session: Session, step: Step) -> dict:
  """bench/keras_recipes.py: seconds per epoch of fpclass and Keras 3 (JAX) on the seed recipes."""
  report_path = session.scratch / 'keras_recipes-report.json'
  done = step.run([sys.executable, 'bench/keras_recipes.py', '--out', session.scratch / 'keras', '--json',
                   report_path, *session.plan.keras_args])
  results = {}
  if report_path.exists():   # the bench writes it after every arm: a stopped run keeps what it measured
    report = read_json(report_path)
    results = dict(epoch_one_and_steady=epoch_one_and_steady(report['results']),
                   summary=report['summary'], sizes=report['sizes'], raw=report['results'])
  try:
    step.check(done, 'bench/keras_recipes.py')
  except StepFailed as e:
    raise StepFailed(str(e), e.status, results) from None
  if not results:
    raise StepFailed('bench/keras_recipes.py wrote no report')
  return results


def epoch_one_and_steady(arms_by_recipe: dict) -> dict:
  """Per recipe and arm: epoch 1 (compiles included) and the mean of the later epochs; Keras-JAX's over
  fpclass's (above 1: fpclass is faster)."""
  table = {}
  for recipe, arms in arms_by_recipe.items():
    rows = {arm: dict(epoch_1_seconds=r['seconds'][0], steady_epoch_seconds=mean(r['seconds'][1:]),
                      last_val_accuracy=r['val_accuracy'][-1]) for arm, r in arms.items() if r['seconds']}
    if 'keras_jax' in rows and 'fpclass' in rows:
      keras, ours = rows['keras_jax'], rows['fpclass']
      rows['keras_jax_over_fpclass'] = {
          key: keras[key] / ours[key] if keras[key] and ours[key] else None
          for key in ('epoch_1_seconds', 'steady_epoch_seconds')}
    table[recipe] = rows
  return table


def footprint_step(session: Session, step: Step) -> dict:
  """bench/footprint_end_to_end.py: the footprint main job through launch.py with a cold and then a warm
  compilation cache; each job's timings.json read back from its workdir."""
  work = session.scratch / 'footprint'
  work.mkdir(exist_ok=True)
  report_path = session.scratch / 'footprint-report.json'
  # The bench makes its workdirs with mkdtemp: under TMPDIR, so they can be found and served afterwards.
  done = step.run([sys.executable, 'bench/footprint_end_to_end.py', *session.plan.footprint_args, '--json',
                   report_path], env=dict(TMPDIR=str(work)))
  step.check(done, 'bench/footprint_end_to_end.py')
  report = read_json(report_path)
  found = sorted(work.glob('fpclass-e2e-*'))
  if not found:
    raise StepFailed(f'bench/footprint_end_to_end.py left no workdir under {work}')
  results = dict(environment_of_bench=report.get('env'), epochs=report.get('epochs'), n_train=report.get('n_train'),
                 n_val=report.get('n_val'))
  for name in ('cold', 'warm'):
    timings = read_json(found[-1] / name / 'timings.json')
    results[name] = dict(report[name], timings_json={key: timings.get(key) for key in (
        'backend', 'programs_compiled', 'programs_loaded', 'compile_seconds', 'total_seconds',
        'outside_epochs_seconds')})
  session.trained = TrainedRun(found[-1] / 'warm', found[-1] / 'cache', found[-1] / 'jax-cache')
  return results


def trained_footprint_run(session: Session, step: Step) -> TrainedRun:
  """The footprint step's warm workdir, or, when that step did not run or failed, a quick run trained here."""
  if session.trained is None:
    workdir = session.scratch / 'served'
    done = step.run([sys.executable, 'launch.py', '--config', session.plan.served_config, '--workdir', workdir,
                     '--config.explain.after_training=False'])
    step.check(done, 'training the footprint run to serve')
    session.trained = TrainedRun(workdir, pathlib.Path(os.environ['FPCLASS_CACHE']),
                                 pathlib.Path(os.environ['FPCLASS_JAX_CACHE']))
  return session.trained


def serve_step(session: Session, step: Step) -> dict:
  """bench/serve_load.py: hey against `--mode serve` at 64 clients, on the trained footprint workdir."""
  if session.hey is None:
    raise StepFailed('hey is missing: apt-get install hey, or `bash bench/gpu_session.sh prepare` and carry .whl')
  trained = trained_footprint_run(session, step)
  report_path = session.scratch / 'serve-report.json'
  done = step.run([sys.executable, 'bench/serve_load.py', '--workdir', trained.workdir, '--json', report_path,
                   *session.plan.serve_args], env=dict(FPCLASS_CACHE=str(trained.data_cache)))
  step.check(done, 'bench/serve_load.py')
  report = read_json(report_path)
  for result in report['results']:
    # hey's csv lists every answered request; serve_load counts the rest as failed.
    result['hey_answers'] = result['ok'] + result['http_503'] + result['other_status']
    if result['hey_answers'] + result['failed'] != result['requests']:
      raise StepFailed(f'{result["server"]}: {result["requests"]} requests sent, hey accounts for '
                       f'{result["hey_answers"]} answers and {result["failed"]} failures', partial=report)
    if not result['ok']:
      raise StepFailed(f'{result["server"]}: no request answered 200', partial=report)
  return dict(report, served_workdir=str(trained.workdir))


def sharing_step(session: Session, step: Step) -> dict:
  """Two `--mode serve` servers under hey while a footprint training run shares the device: whether all three
  run, the training's epochs and the servers' answers meanwhile (bench/serve_load.py's server and hey)."""
  if session.hey is None:
    raise StepFailed('hey is missing: apt-get install hey, or `bash bench/gpu_session.sh prepare` and carry .whl')
  from bench import serve_load  # lazy: it imports httpx, which the GPU image gets from .whl/
  plan = session.plan
  trained = trained_footprint_run(session, step)
  with data_cache(trained):
    body = serve_load.multipart_body(serve_load.footprint_png(trained.workdir))
  body_file = session.scratch / 'sharing-body.bin'
  body_file.write_bytes(body)
  servers, training, gpu_memory = {}, None, None
  try:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      starting = {f'server {i}': pool.submit(serve_load.Server, trained.workdir, plan.share_workers, True, [])
                  for i in (1, 2)}
      _, late = concurrent.futures.wait(starting.values(), timeout=max(1.0, step.remaining()))
      if late:
        stop_descendants()   # a server still starting: its read of the address line then ends
    not_started = []
    for name, future in starting.items():
      try:
        servers[name] = future.result()
      except SystemExit as e:   # serve_load's way of reporting a server that did not start
        not_started.append(f'{name}: {e}')
    if late:
      raise StepFailed(f'the servers did not start within the step\'s {step.limit:.0f} s', status='timeout')
    if not_started:
      raise StepFailed('\n'.join(not_started))
    workdir = session.scratch / 'sharing-training'
    command = [sys.executable, 'launch.py', *plan.share_train_args, '--workdir', str(workdir),
               '--config.explain.after_training=False']
    step.commands.append(shlex.join(command))
    log = open(session.log_path, 'a')
    log.write(f'\n$ {shlex.join(command)}   (beside the two servers)\n')
    log.flush()
    # The served run's data and compiled programs: the training run's time goes to its epochs.
    env = dict(os.environ, FPCLASS_CACHE=str(trained.data_cache), FPCLASS_JAX_CACHE=str(trained.jax_cache))
    training = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    turns = {name: [] for name in servers}
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
      while True:   # both servers under load at once, turn after turn, until the training run ends
        running = {name: pool.submit(hey_turn, serve_load, session.hey, server, body_file, plan.share_clients,
                                     plan.share_turn_requests, step.remaining()) for name, server in servers.items()}
        for name, future in running.items():
          try:
            turns[name].append(future.result())
          except SystemExit as e:   # serve_load.run_hey's way of saying hey failed
            raise StepFailed(f'hey against {name}: {e}') from None
        if gpu_memory is None:
          gpu_memory = gpu_memory_in_use()
        if training.poll() is not None or step.remaining() < 5:
          break
        time.sleep(plan.share_pause_seconds)
    try:
      training.wait(timeout=max(1.0, step.remaining()))
    except subprocess.TimeoutExpired:
      stop_process_group(training)
      raise StepFailed(f'the training run beside the servers ran past the step\'s {step.limit:.0f} s',
                       status='timeout') from None
    results = dict(training=training_run_record(workdir, training.returncode),
                   servers={name: dict(serve_load.summarise(parts), workers=plan.share_workers,
                                       clients=plan.share_clients, turns=len(parts),
                                       alive_after=servers[name].process.poll() is None)
                            for name, parts in turns.items()},
                   gpu_memory_during_training=gpu_memory)
  finally:
    if training is not None and training.poll() is None:
      stop_process_group(training)
    for server in servers.values():
      server.stop()
  if training.returncode:
    raise StepFailed(f'the training run beside the servers failed (exit status {training.returncode}); see '
                     'session.log', partial=results)
  for name, result in results['servers'].items():
    if not result['ok'] or not result['alive_after']:
      raise StepFailed(f'{name}: {result["ok"]} answers 200, alive after: {result["alive_after"]}', partial=results)
  return results


@contextlib.contextmanager
def data_cache(trained: TrainedRun):
  """FPCLASS_CACHE of `trained` while serve_load.footprint_png looks for its data."""
  before = os.environ.get('FPCLASS_CACHE')
  os.environ['FPCLASS_CACHE'] = str(trained.data_cache)
  try:
    yield
  finally:
    if before is None:
      os.environ.pop('FPCLASS_CACHE', None)
    else:
      os.environ['FPCLASS_CACHE'] = before


def hey_turn(serve_load, hey: str, server, body_file, clients: int, requests: int, time_limit: float) -> dict:
  """One turn of hey against `server`, with the figures serve_load.summarise pools (as serve_load.main does)."""
  calls_before, cpu_before, load_average = server.device_calls(), server.cpu_seconds(), os.getloadavg()[0]
  part = serve_load.run_hey(hey, server.url, body_file, clients, requests, max(5.0, time_limit))
  calls_after = server.device_calls()
  part.update(server_cpu=server.cpu_seconds() - cpu_before, load_average=load_average,
              device_calls=None if calls_before is None or calls_after is None else calls_after - calls_before)
  return part


def gpu_memory_in_use() -> dict | None:
  if not shutil.which('nvidia-smi'):
    return None
  return dict(device=command_output(['nvidia-smi', '--query-gpu=memory.used,memory.total,utilization.gpu',
                                     '--format=csv,noheader']),
              processes=command_output(['nvidia-smi', '--query-compute-apps=pid,used_memory',
                                        '--format=csv,noheader']))


def training_run_record(workdir: pathlib.Path, returncode: int | None) -> dict:
  """A launch.py training job's figures from its workdir: metrics.csv's epochs, scores.json, timings.json."""
  record = dict(workdir=str(workdir), exit_status=returncode)
  with contextlib.suppress(OSError):
    with open(workdir / 'metrics.csv') as f:
      seconds = [float(row['seconds']) for row in csv.DictReader(f)]
    record.update(epochs=len(seconds), epoch_seconds=seconds, first_epoch_seconds=seconds[0] if seconds else None,
                  steady_epoch_seconds=statistics.median(seconds[1:]) if len(seconds) > 1 else None)
  with contextlib.suppress(OSError, ValueError):
    scores = read_json(workdir / 'scores.json')
    record.update(val_accuracy=scores.get('accuracy'), val_loss=scores.get('loss'))
  with contextlib.suppress(OSError, ValueError):
    timings = read_json(workdir / 'timings.json')
    record.update({key: timings.get(key) for key in ('backend', 'total_seconds', 'outside_epochs_seconds',
                                                     'programs_compiled', 'programs_loaded')})
  return record


def precision_step(session: Session, step: Step) -> dict:
  """The transfer recipes through launch.py in fp32 and in bf16 (train.precision), on keras_recipes.py's
  stand-in data and Keras-written weights: seconds per epoch and validation scores."""
  train, val = session.plan.stand_in_images
  stand_in = argparse.Namespace(out=session.scratch / 'keras', train=train, val=val)   # as keras_recipes' arms
  results = {}
  for recipe, config, application, size in session.plan.precision_recipes:
    data = keras_recipes.prepare_data(stand_in, size)   # made once: the keras_recipes step's, when it ran
    weights = keras_recipes.write_keras_weights(stand_in, application, size)
    runs = {}
    for precision in ('fp32', 'bf16'):
      workdir = session.scratch / 'precision' / f'{recipe}-{precision}'
      done = step.run([sys.executable, 'launch.py', '--config', config, '--workdir', workdir,
                       '--config.data.source=image_folder', f'--config.data.root={data}',
                       f'--config.model.pretrained={weights}', f'--config.train.precision={precision}',
                       '--config.explain.after_training=False', '--config.train.tensorboard=False',
                       *session.plan.precision_args],
                      env=dict(FPCLASS_JAX_CACHE='0'))   # cold compiles in both, so epoch 1 compares
      runs[precision] = training_run_record(workdir, done.returncode)
      results[recipe] = runs
      try:
        step.check(done, f'{recipe} in {precision}')
      except StepFailed as e:
        raise StepFailed(str(e), e.status, results) from None
    fp32, bf16 = runs['fp32'], runs['bf16']
    runs['bf16_computed'] = bf16.get('backend') not in (None, 'cpu')   # the CPU trains a bf16 request in fp32
    runs['fp32_over_bf16_seconds'] = {
        key: fp32[key] / bf16[key] if fp32.get(key) and bf16.get(key) else None
        for key in ('first_epoch_seconds', 'steady_epoch_seconds')}
    runs['val_accuracy_bf16_minus_fp32'] = (bf16['val_accuracy'] - fp32['val_accuracy']
                                            if None not in (bf16.get('val_accuracy'), fp32.get('val_accuracy'))
                                            else None)
  return results


PYTEST_COUNT = re.compile(r'(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)')
PYTEST_SUMMARY = re.compile(r'^=*\s*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s\b.*$', re.MULTILINE)


def pytest_step(session: Session, step: Step) -> dict:
  """The suite (`pytest -n 4`); at the step's deadline pytest gets Ctrl-C and reports what ran so far."""
  done = step.run([sys.executable, '-m', 'pytest', *session.plan.pytest_args, '-p', 'no:cacheprovider',
                   f'--basetemp={session.scratch / "pytest"}'])
  summaries = PYTEST_SUMMARY.findall(done.output)
  results = dict(exit_status=done.returncode, stopped_at_deadline=done.returncode is None,
                 not_passed=re.findall(r'^(?:FAILED|ERROR) (\S+)', done.output, re.MULTILINE)[:100])
  if summaries:
    counts, seconds = summaries[-1]
    for number, kind in PYTEST_COUNT.findall(counts):
      results[kind.rstrip('s') if kind in ('errors', 'warnings') else kind] = int(number)
    results['pytest_seconds'] = float(seconds)
  if done.returncode is None:
    raise StepFailed(f'the suite ran past the step\'s {step.limit:.0f} s', status='timeout', partial=results)
  if done.returncode == 1:
    raise StepFailed(f'tests failed: {", ".join(results["not_passed"][:10])}', status='failed', partial=results)
  if done.returncode:
    raise StepFailed(f'pytest exit status {done.returncode}:\n{tail(done.output)}', partial=results)
  return results


STEP_FUNCTIONS = dict(keras_recipes=keras_recipes_step, footprint=footprint_step, serve=serve_step,
                      sharing=sharing_step, precision=precision_step, pytest=pytest_step)


# ---------------------------------------------------------------------------------------------- the session

def step_limit(session: Session, name: str, steps_after: int) -> float:
  """The step's cap, within what the budget has left after keeping some for each later step."""
  left = session.budget - session.elapsed()
  return min(session.plan.caps[name], left - RESERVED_PER_LATER_STEP * steps_after)


def run_step(session: Session, name: str, steps_after: int) -> dict:
  limit = step_limit(session, name, steps_after)
  record = dict(step=name, status='ok', error=None, limit_seconds=round(limit, 1), seconds=0.0,
                environment=dict(session.environment, load_average_at_start=os.getloadavg()[0]),
                commands=[], results={})
  if limit < MIN_STEP_SECONDS:
    record.update(status='skipped', error=f'the session\'s budget of {session.budget:.0f} s is spent')
  else:
    session.say(f'step {name}: at most {limit:.0f} s')
    step = Step(session, name, limit)
    record['commands'] = step.commands
    start = time.monotonic()
    try:
      record['results'] = STEP_FUNCTIONS[name](session, step)
    except StepFailed as e:
      record.update(status=e.status, error=str(e), results=e.partial)
    except (Exception, SystemExit) as e:   # a step's failure is its record; the next step still runs
      record.update(status='error', error=f'{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}')
    record['seconds'] = round(time.monotonic() - start, 2)
  write_json(session.out / f'{name}.json', record)
  session.say(f'step {name}: {record["status"]} in {record["seconds"]:.1f} s'
              + (f': {record["error"].splitlines()[0]}' if record['error'] else ''))
  return record


def trim_log(path: pathlib.Path) -> None:
  """Keeps the log under the run tool's file size limit: its start and its end."""
  if path.exists() and path.stat().st_size > LOG_LIMIT_BYTES:
    data = path.read_bytes()
    keep = LOG_LIMIT_BYTES // 2
    path.write_bytes(data[:keep] + b'\n[... trimmed ...]\n' + data[-keep:])


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', type=pathlib.Path, required=True, help='the step JSONs, session.json and session.log')
  p.add_argument('--cpu-dry-run', action='store_true', help='every step at tiny sizes on the CPU')
  p.add_argument('--steps', default=','.join(STEPS), help='steps to run, in this order')
  p.add_argument('--budget', type=float, help='seconds for all steps (default: 520 on the GPU, 3600 dry)')
  p.add_argument('--caps', default='', help='STEP=SECONDS,... to change steps\' time caps, e.g. keras_recipes=400')
  p.add_argument('--scratch', type=pathlib.Path, help='data, workdirs and caches (default: a temporary folder, '
                 'removed at the end; a folder given here is kept)')
  args = p.parse_args(argv)
  args.steps = [s.strip() for s in args.steps.split(',') if s.strip()]
  unknown = sorted(set(args.steps) - set(STEPS))
  try:
    args.caps = {step: float(seconds) for step, seconds in (c.split('=') for c in args.caps.split(',') if c)}
  except ValueError:
    p.error(f'--caps {args.caps!r}: STEP=SECONDS, comma-separated')
  unknown += sorted(set(args.caps) - set(STEPS))
  if unknown:
    p.error(f'unknown steps {unknown}; the steps: {", ".join(STEPS)}')
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  session = Session(args)
  device = session.environment['device']
  session.say(f'GPU session{" (CPU dry run)" if session.dry_run else ""}: {device.get("name", device)}, '
              f'{session.budget:.0f} s for {", ".join(args.steps)}; scratch {session.scratch}')
  summary = dict(environment=session.environment, budget_seconds=session.budget, steps={})
  try:
    for i, name in enumerate(args.steps):
      record = run_step(session, name, len(args.steps) - i - 1)
      summary['steps'][name] = {key: record[key] for key in ('status', 'seconds', 'limit_seconds', 'error')}
      summary['total_seconds'] = round(session.elapsed(), 1)
      write_json(session.out / 'session.json', summary)
  finally:
    trim_log(session.log_path)
    if args.scratch is None:
      shutil.rmtree(session.scratch, ignore_errors=True)
  failed = [name for name, step in summary['steps'].items() if step['status'] != 'ok']
  print(f'done in {session.elapsed():.0f} s; ' + (f'not ok: {", ".join(failed)}' if failed else 'every step ok')
        + f'; written to {session.out}', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
