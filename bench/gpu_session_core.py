"""The GPU session's parts that every step uses (bench/gpu_session.py runs them, bench/gpu_steps.py has the
steps): the plans (the GPU's and the CPU dry run's), the session with its folders and environment, a step with
its deadline and commands, and the records' helpers."""
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

STEPS = ('startup', 'keras_recipes', 'footprint', 'semi', 'ood', 'population', 'serve', 'sharing', 'precision',
         'pytest')
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
  population_sweep_config: str      # one variant: its 5 folds x 3 seeds are the sweep of 15 members
  population_auto_config: str
  population_auto_budget: str        # each axis's --mode auto gets this config.auto.time_budget
  population_auto_axes: tuple[str, ...]
  population_sweeps: tuple[str, ...]  # of bench/gpu_population.SWEEPS
  population_args: tuple[str, ...]   # for every launch of the population step
  population_serve_args: tuple[str, ...]
  semi_args: tuple[str, ...]         # both arms of the semi step: the same config, epochs and checks
  ood_args: tuple[str, ...]          # bench/ood_cost.py's sizes and scores
  pytest_args: tuple[str, ...]
  caps: dict                         # seconds per step at most (the suite: what the budget has left)
  budget: float                      # seconds for every step together


GPU_PLAN = Plan(
    stand_in_images=(256, 64),
    keras_args=('--train', '256', '--val', '64', '--epochs', '5', '--recipes', 'vgg16_aug,inception_mixed7',
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
    population_sweep_config='configs/footprint_sweep.py:exp4', population_auto_config='configs/footprint.py:exp4',
    population_auto_budget='40s', population_auto_axes=('vmap', 'loop'),
    population_sweeps=('one_member', 'vmap_15', 'loop_15'), population_args=('--config.train.epochs=5',),
    population_serve_args=('--concurrency', '64', '--requests', '3000', '--workers', '8', '--batching', 'on',
                           '--rounds', '1', '--warmup', '200', '--time-limit', '30'),
    semi_args=('--config', 'configs/footprint.py:exp4', '--config.train.epochs=6',
               '--config.train.early_stopping_patience=0', '--config.explain.after_training=False'),
    ood_args=('--images', '1024', '--rounds', '7', '--batch', '64',
              '--scores', 'combined', 'mahalanobis_energy', 'knn', 'vim', 'energy'),
    # Issue 80's files: those the GPU can break (scale, train, engine, auto) and this round's new ones.
    # --dist load: after a worker crashed (a segfault in XLA's compile, 2026-11-28) loadfile's scheduler raised
    # pytest's INTERNALERROR and no failure was listed; load's replaces the worker and goes on.
    pytest_args=('-n', '4', '--dist', 'load', '--max-worker-restart=8', '-q', '--tb=short', 'tests/test_scale.py',
                 'tests/test_train.py', 'tests/test_engine.py', 'tests/test_auto.py', 'tests/test_semi.py',
                 'tests/test_final_mix.py', 'tests/test_ood.py', 'tests/test_label_next.py'),
    # From the H100 sessions of 2026-11-26 and 27: footprint 69-70 s, population 194 with a warm cache and past
    # 200 and 230 cold (its one-member sweep compiles cold first, the served ensemble comes last), serve 58,
    # sharing 33, keras_recipes 110-120, precision past 100-110 (Inception in bf16).
    caps=dict(startup=40, keras_recipes=150, footprint=100, semi=90, ood=60, population=260, serve=90, sharing=60,
              precision=170, pytest=600),
    budget=520)   # the run tool's 600 s, less the wheels' install and the device probe

DRY_PLAN = Plan(
    # One training batch of 4 images an epoch (a Keras-JAX step on the CPU costs about a CPU-second); the 4
    # validation images are what precision's accuracy counts.
    stand_in_images=(4, 4),
    keras_args=('--train', '4', '--val', '4', '--epochs', '2', '--batch-size', '4', '--vgg-size', '32',
                '--recipes', 'vgg16', '--arms', 'fpclass,keras_jax'),
    # One epoch, without the Grad-CAM figures: the step's claim is the programs compiled cold and loaded warm
    # (timings.json), which the first epoch, the evaluation and the checkpoints already compile. At the semi and
    # population steps' 24x16 (not 120x80): the model this run trains is what the ood, serve and sharing steps
    # load, score and serve, each a smaller compile and checkpoint (about 5 CPU-s of the four steps together).
    footprint_args=('--experiment', 'exp4,quick', '--epochs', '1', '--no-torch', '--set',
                    'explain.after_training=False', '--set', 'data.image_size=(24,16)'),
    served_config='configs/footprint.py:exp4,quick',
    # Each server (this step's, sharing's two, which take its --serve-config, and the population step's) compiles
    # one batch size, not six: a worker's start-up is mostly compiling config.serve.warm_batch_sizes (the auto
    # ensemble's 5 to 7 fold models: 16 CPU-s a worker at six sizes, 6 at one). Batches of up to 4 still gather
    # concurrent requests (micro-batching on).
    serve_args=('--concurrency', '64', '--requests', '128', '--workers', '1', '--batching', 'on', '--rounds', '1',
                '--warmup', '0', '--overload-requests-per-client', '1', '--time-limit', '60',
                '--serve-config', 'max_batch=4', '--serve-config', 'warm_batch_sizes=(4,)'),
    # The footprint step's image size: the training run starts from that run's compiled programs.
    share_train_args=('--config', 'configs/footprint.py:exp4,quick', '--config.train.epochs=1',
                      '--config.data.image_size=(24,16)'),
    # A turn every 4 s, not 0.5: a turn of both servers (two hey processes, /healthz reads, 16 predictions) costs
    # about 0.2 CPU s; 0.5 s apart, the turns cost 3/4 of the training run beside them. A few show both answer
    # (the first turn comes as the training run starts, so there is always one).
    share_workers=1, share_clients=2, share_turn_requests=8, share_pause_seconds=4.0,
    precision_recipes=(('vgg16', 'configs/cats_dogs.py:vgg16,quick', 'VGG16', 32),),
    precision_args=(),
    # Tiny sizes: the step's claim on the CPU is that every launch and the server run and their files are read.
    population_sweep_config='configs/footprint_sweep.py:exp4,quick', population_auto_config='configs/footprint.py:quick',
    population_auto_budget='15s', population_auto_axes=('loop',),   # the CPU's own axis (auto): auto once
    population_sweeps=('vmap_3', 'loop_3'),   # one member alone is the same launch as 15: its ratio is the GPU's
    # auto.trials=1 (read by auto alone): the budget's rest trains the choice's missing folds, not seed after seed
    # of it. The budget is wall time, so on an idle machine auto filled its 15 s on both cores with 13 seeds, and
    # the served ensemble was 24 fold models (61 CPU-s for the step; 46 to 54 with at most 5). A loaded machine
    # trains one either way.
    population_args=('--config.train.epochs=1', '--config.data.image_size=(24,16)', '--config.auto.trials=1'),
    population_serve_args=('--concurrency', '4', '--requests', '32', '--workers', '1', '--batching', 'on',
                           '--rounds', '1', '--warmup', '0', '--overload-requests-per-client', '1',
                           '--time-limit', '60', '--serve-config', 'max_batch=4',
                           '--serve-config', 'warm_batch_sizes=(4,)'),
    semi_args=('--config', 'configs/footprint.py:exp4,quick', '--config.train.epochs=2',
               '--config.train.early_stopping_patience=0', '--config.explain.after_training=False',
               '--config.data.image_size=(24,16)', '--config.semi.ratio=2'),
    ood_args=('--images', '32', '--rounds', '2', '--batch', '16', '--scores', 'combined', 'energy'),
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
    self.plan = dataclasses.replace(plan, **args.plan, caps={**plan.caps, **args.caps})
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
    self.costs: list[dict] = []   # per command of `run`: its wall seconds and its process tree's CPU seconds

  def remaining(self) -> float:
    return self.deadline - time.monotonic()

  def run(self, command, env: dict | None = None) -> Finished:
    """Runs `command` from the repository root in its own process group until it ends or the step's deadline
    comes (then it gets SIGINT, as Ctrl-C, and SIGKILL if it has not ended 20 s later)."""
    command = [str(c) for c in command]
    self.commands.append(shlex.join(command))
    started, cpu_before = time.monotonic(), children_cpu_seconds()
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
      # CPU of the children reaped meanwhile: this command's tree, and a server another thread reaped with it
      cost = dict(command=len(self.commands) - 1, wall_seconds=round(time.monotonic() - started, 2),
                  cpu_seconds=round(children_cpu_seconds() - cpu_before, 2))
      self.costs.append(cost)
      log.write(f'# exit status {returncode}: {cost["wall_seconds"]} s, {cost["cpu_seconds"]} CPU-s\n')
    with open(self.session.log_path, 'rb') as log:
      log.seek(start)
      return Finished(returncode, log.read().decode(errors='replace'))

  def check(self, done: Finished, what: str) -> None:
    if done.returncode is None:
      raise StepFailed(f'{what} ran past the step\'s {self.limit:.0f} s', status='timeout')
    if done.returncode:
      raise StepFailed(f'{what} failed (exit status {done.returncode}):\n{tail(done.output)}')


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


def children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


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


def accounted_serve_report(report_path: pathlib.Path) -> dict:
  """bench/serve_load.py's report, each result's answers accounted for: hey's csv lists every answered request
  and serve_load counts the rest as failed; a StepFailed when they do not add up or nothing answered 200."""
  report = read_json(report_path)
  for result in report['results']:
    result['hey_answers'] = result['ok'] + result['http_503'] + result['other_status']
    if result['hey_answers'] + result['failed'] != result['requests']:
      raise StepFailed(f'{result["server"]}: {result["requests"]} requests sent, hey accounts for '
                       f'{result["hey_answers"]} answers and {result["failed"]} failures', partial=report)
    if not result['ok']:
      raise StepFailed(f'{result["server"]}: no request answered 200', partial=report)
  return report


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
