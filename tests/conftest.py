"""Shared fixtures: an isolated cache, image files of every awkward kind, tiny datasets on disk."""
import atexit
import compileall
import contextlib
import fcntl
import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# Before any library that links OpenMP (torch, the reference framework of the parity tests) is imported: its
# threads sleep when idle instead of spinning. The two xdist workers and their launch.py children share two
# cores, where a spinning thread takes a core from the process doing the work (test_cam, test_bn_variance and
# the torchvision and modern ports: 209 -> 184 CPU-s, 121 -> 111 s, 2026-11-26). Setting fewer threads
# (OMP_NUM_THREADS=1) instead cost more than it saved.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest
from jax._src import cache_key
from PIL import Image

from fpclass.data.footprints import FootprintSpec, ensure_synthetic_footprints
from fpclass.models import model_keys
from fpclass.runtime.process import ENV_MEM_FRACTION, ENV_PREALLOCATE, planned_backend
from tests.forkserver import LaunchServer, forkable

REPO = pathlib.Path(__file__).resolve().parents[1]

# On the CPU, the suite compiles hundreds of tiny programs that then run for milliseconds: LLVM's optimisation of
# the generated code is most of the compile time and buys nothing here (-40% CPU time on tests/test_conv.py and
# test_pooling.py at level 0). So this process compiles at level 0: the flag is in XLA_FLAGS only while its
# backend starts (the one time XLA reads the variable). Its child processes (launch.py, servers, bench scripts)
# get FAST_COMPILE_FLAGS in theirs: level 1 and XLA's loop emitters (--xla_cpu_use_fusion_emitters=false). Most
# children compile programs no other process of the session has compiled (a recipe's backbone, a sweep's
# variants), and those compiles are most of their time; these flags compile them fastest of the settings that
# compute XLA's defaults' results (docs/testing.md has the figures). Not level 0 with the loop emitters, which
# compiles faster still but computes wrong gradients on jax 0.11.2. This process keeps the fusion emitters,
# whose rounding tests pin (drop-path scaling to 1e-6). A test comparing a child's bits with this process's
# gives the child `IN_PROCESS_XLA_FLAGS`. A user who sets the level in
# XLA_FLAGS keeps theirs everywhere; a GPU run keeps XLA's. A process that inherits exactly the flags this module
# gave its parent's children (an xdist worker; a script that imports this file) starts from the user's flags,
# kept in USER_FLAGS_VARIABLE; flags a test set itself (a device count) are taken as they are.
OPTIMISATION_FLAG = '--xla_backend_optimization_level'
FAST_COMPILE_FLAGS = f'{OPTIMISATION_FLAG}=1 --xla_cpu_use_fusion_emitters=false'
USER_FLAGS_VARIABLE, CHILD_FLAGS_VARIABLE = 'FPCLASS_TEST_USER_XLA_FLAGS', 'FPCLASS_TEST_CHILD_XLA_FLAGS'
USER_XLA_FLAGS = os.environ.get('XLA_FLAGS', '')
if USER_XLA_FLAGS == os.environ.get(CHILD_FLAGS_VARIABLE) and USER_FLAGS_VARIABLE in os.environ:
  USER_XLA_FLAGS = os.environ[USER_FLAGS_VARIABLE]
IN_PROCESS_XLA_FLAGS = CHILD_XLA_FLAGS = USER_XLA_FLAGS
if planned_backend() == 'cpu' and OPTIMISATION_FLAG not in USER_XLA_FLAGS:
  IN_PROCESS_XLA_FLAGS = f'{USER_XLA_FLAGS} {OPTIMISATION_FLAG}=0'.strip()
  CHILD_XLA_FLAGS = f'{USER_XLA_FLAGS} {FAST_COMPILE_FLAGS}'.strip()
  os.environ['XLA_FLAGS'] = IN_PROCESS_XLA_FLAGS
  jax.devices()   # this process's backend starts now, at level 0
  os.environ['XLA_FLAGS'] = CHILD_XLA_FLAGS
  # JAX keys a cached program by the XLA_FLAGS in the environment as it compiles: the children's flags here, not
  # the ones this backend started with. Its own flags join its keys (JAX's hook for additions to the key), so
  # this process never loads a child's program compiled with the loop emitters, nor a child one of its own.
  cache_key.custom_hook = lambda: IN_PROCESS_XLA_FLAGS
os.environ[USER_FLAGS_VARIABLE], os.environ[CHILD_FLAGS_VARIABLE] = USER_XLA_FLAGS, CHILD_XLA_FLAGS

# On a GPU, the xdist workers and every launch.py child they start share one device. Without a cap, the first
# process whose backend starts (a test module's import can start it, before any fixture) takes 75% of the GPU up
# front, and any process's allocator may grow until the others' cuBLAS and autotuner find no memory (on an H200
# with 6 workers, 2026-11-28: 'All configs failed during profiling' and out-of-memory errors on 4-byte buffers in
# 60 tests). So each process allocates as it goes, up to its share: the children inherit both variables, and a
# training launch keeps a value already set (`fpclass.runtime.process.apply`).
if planned_backend() == 'gpu':
  _PROCESSES_PER_WORKER = 3   # the worker, the launch it waits on, and a server or second launch beside it
  _workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
  os.environ.setdefault(ENV_PREALLOCATE, 'false')
  os.environ.setdefault(ENV_MEM_FRACTION, f'{min(0.75, 0.9 / (_PROCESSES_PER_WORKER * _workers)):.3f}')


# Bit for bit only where the programs are the same. On the CPU two compiles of one computation are one program.
# On a GPU each compile autotunes its convolutions (timed, so two compiles may pick other kernels) and some of
# cuDNN's kernels accumulate in no fixed order: a model trained by programs compiled apart matches to float32's
# rounding (an H200, 2026-11-28: at most 5e-6 after 3 epochs of the tiny models). A test that compares such runs
# asserts `assert_same_bits`, exact on the CPU and to `ACCELERATOR_ROUNDING` elsewhere.
EXACT_REPEATS = planned_backend() == 'cpu'
ACCELERATOR_ROUNDING = dict(rtol=1e-4, atol=1e-5)
ONLY_CPU_REPEATS_BITS = pytest.mark.skipif(not EXACT_REPEATS, reason='claims equal bits from programs compiled '
                                           'apart, which only the CPU repeats (conftest.EXACT_REPEATS)')


def assert_same_bits(got, expected) -> None:
  """Equal arrays on the CPU; on an accelerator, equal to float32's rounding (`EXACT_REPEATS`)."""
  if EXACT_REPEATS:
    np.testing.assert_array_equal(got, expected)
  else:
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), **ACCELERATOR_ROUNDING)


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a child process: the environment's own (CHILD_XLA_FLAGS, above) plus `flags`."""
  return ' '.join([os.environ.get('XLA_FLAGS', ''), *flags]).strip()


# The heaviest test files, heaviest first (`python -m pytest --durations=0`, summed per file, 2026-11-25: 249
# down to 33 s on a loaded machine). `--dist loadfile` hands files to the two workers in collection order as they
# come free (with `--no-loadscope-reorder` in pyproject's addopts: xdist's default reorders files by their number
# of tests), so starting with the longest leaves short files to fill the end instead of one worker finishing a
# long file alone (longest-processing-time-first scheduling). Files not listed keep pytest's order after these.
HEAVY_FIRST = ('test_engine.py', 'test_auto.py', 'test_multiprocess.py', 'test_gpu_session.py',
               'test_recipes_transfer_pets.py', 'test_recipes_transfer.py', 'test_recipes.py',
               'test_feature_cache.py', 'test_cam.py', 'test_pretrained_keras_mobile.py', 'test_tracking.py',
               'test_memory_rule.py', 'test_gray_stem.py', 'test_launch.py', 'test_pretrained_keras.py',
               'test_finetune.py', 'test_drop_path.py', 'test_pretrained_torchvision.py',
               'test_pretrained_modern.py', 'test_export.py', 'test_ema.py', 'test_multilabel_sweep_probe.py',
               'test_tta.py', 'test_signals.py', 'test_ensemble.py', 'test_faults.py', 'test_scale.py',
               'test_serve.py', 'test_hub_runs.py', 'test_sweep.py', 'test_probe.py', 'test_models.py',
               'test_lr_find.py', 'test_layer_decay.py', 'test_multilabel_task.py', 'test_cam_keras.py',
               'test_multilabel_predict_submit.py', 'test_conv.py', 'test_randaugment.py', 'test_accumulate.py',
               'test_multilabel_export.py', 'test_pooling.py', 'test_train.py', 'test_label_issues.py',
               'test_hub_timm.py')


def pytest_configure(config):
  """Compiles the package's bytecode once, in the controller before any worker starts: with
  PYTHONDONTWRITEBYTECODE set (as in many CI images) every launch.py child would otherwise compile fpclass's ~200
  modules from source again (0.7 CPU-s a process, over the suite's few hundred processes)."""
  if not hasattr(config, 'workerinput'):
    compileall.compile_dir(REPO / 'fpclass', quiet=1)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))  # stable: order within a file kept


def session_root(tmp_path_factory) -> pathlib.Path:
  """The temporary folder of the whole test session: with pytest-xdist, the parent of every worker's own
  base folder, so the workers can share what they build (see `build_once`)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@contextlib.contextmanager
def build_once(tmp_path_factory, name: str):
  """Yields (folder, built): `built` is False for the first process of the session to ask for `name`,
  which must fill `folder`; later askers, in this worker or another, wait for it and get True. A build
  that raised leaves no mark, so the next asker builds again (and sees the same error)."""
  root = session_root(tmp_path_factory)
  folder, done = root / name, root / f'{name}.done'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
    built = done.exists()
    if not built and folder.exists():
      shutil.rmtree(folder)  # what a failed build left
    folder.mkdir(exist_ok=True)
    yield folder, built
    done.touch()


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent JAX compilation cache for the session, shared by the xdist workers and their launch.py
  subprocesses, so the many tiny runs that share shapes compile once. JAX writes an entry in place (no
  rename), but entries are compressed, so one still being written by another process fails to decompress,
  which JAX turns into a warning and a fresh compile (jax._src.compiler._cache_read)."""
  from fpclass.runtime.process import ENV_CACHE, configure, enable_compilation_cache
  # The settings of a mode that does not train: on a GPU, the test processes and the launch.py children they
  # start (which inherit the environment) allocate as they go, so the xdist workers share the device.
  configure(trains=False)
  folder = session_root(tmp_path_factory) / 'jax-cache'
  folder.mkdir(exist_ok=True)
  os.environ[ENV_CACHE] = str(folder)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # small programs too: launches share them
  enable_compilation_cache()
  import jax
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)  # this process read the variable earlier
  return folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
  """Every test gets a private decode/synthetic-data cache, never the user's ~/.cache."""
  cache = tmp_path_factory.mktemp('fpclass-cache')
  monkeypatch.setenv('FPCLASS_CACHE', str(cache))
  return cache


def draw_footprints(folder: pathlib.Path, synthetic) -> pathlib.Path:
  """The synthetic footprints a config's `data.synthetic` names, drawn into `folder` as a run draws them into its
  cache: their folder, which `seed_cache` copies into a test's own cache (a module draws them once, 1.3 to 1.5
  CPU-s a draw)."""
  spec = FootprintSpec(seed=synthetic.seed, n_class0=synthetic.n_class0, n_class1=synthetic.n_class1,
                       n_test=synthetic.n_test)
  return ensure_synthetic_footprints(folder, spec, progress=False)


def seed_cache(cache: pathlib.Path, footprints: pathlib.Path) -> pathlib.Path:
  """`cache` (a FPCLASS_CACHE folder) holding a copy of drawn `footprints` where a run finds them."""
  copy = cache / footprints.parent.name / footprints.name
  if not copy.exists():
    shutil.copytree(footprints, copy)
  return cache


def launch_as_script(script: str, name: str, args: list, env: dict, log: pathlib.Path, fallback: list):
  """`python launch.py *args` run by `script` (a Python file's text that runs argv[1] as `__main__`), its stdout and
  stderr together in `log` (as 2>&1): forked from the launch server where `env` allows, else `fallback` (the
  command's start: an interpreter, or a shell before it) with launch.py and `args`, as a subprocess. A process with
  pid, poll, wait, send_signal, kill and communicate, as Popen's."""
  server = launch_server()
  if server is not None and forkable(server.env, env):
    path = log.with_name(f'{log.stem}-{name}.py')
    path.write_text(script)
    return server.popen([path, REPO / 'launch.py', *args], REPO, env,
                        pathlib.Path(tempfile.gettempdir()) / 'fpclass-launch', output=log)
  with open(log, 'w') as out:   # the child holds its own descriptor
    return subprocess.Popen([*fallback, str(REPO / 'launch.py'), *args], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def load_config(spec: str, **overrides):
  """configs/<file>.py[:arg] -> locked ConfigDict, as launch.py builds it, with dotted overrides."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('cfg_' + pathlib.Path(path).stem, REPO / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = model_keys.completed(module.get_config(arg) if arg else module.get_config(), overrides.get('model.name'))
  config.lock()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def torchvision_weights(folder: pathlib.Path, name: str = 'resnet18', layers: tuple | None = None) -> pathlib.Path:
  """A torchvision model's state_dict, written by torch itself with its random initialisation (seed 0), for
  the tests that load pretrained weights: nothing can be downloaded here. `layers`: a basic-block ResNet with
  these block counts instead (fpclass's `model.layers`), a smaller model of resnet18's layout."""
  import torch  # a test dependency, imported only by the tests that need the reference framework
  import torchvision
  path = folder / f'{name}.pth'
  torch.manual_seed(0)
  model = (torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, list(layers)) if layers
           else getattr(torchvision.models, name)(weights=None))
  torch.save(model.state_dict(), path)
  return path


_launch_server = None


def launch_server() -> LaunchServer | None:
  """This test process's launch server (`tests.forkserver`), started at its first launch; None when
  FPCLASS_TEST_FORK=0 asks for every launch as a plain `python launch.py` subprocess."""
  global _launch_server
  if os.environ.get('FPCLASS_TEST_FORK', '1') == '0':
    return None
  if _launch_server is None or not _launch_server.alive():
    _launch_server = LaunchServer(REPO)
    atexit.register(_launch_server.close)
  return _launch_server


def launch(*args, cwd=REPO, env=None, check=True, timeout=600, cold=False):
  """Runs `python launch.py ...` in a process of its own (`launch_process`) and waits for it, as
  `subprocess.run(..., capture_output=True, text=True, timeout=timeout)` does; returns the CompletedProcess."""
  process = launch_process(*args, cwd=cwd, env=env, cold=cold)
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    stdout, stderr = process.communicate()
    raise subprocess.TimeoutExpired(process.args, timeout, stdout, stderr) from None
  if check and process.returncode != 0:
    raise AssertionError(f'launch.py {" ".join(args)} failed ({process.returncode}):\n{stderr[-4000:]}')
  return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def launch_process(*args, cwd=REPO, env=None, new_session=False, output: pathlib.Path | None = None, cold=False):
  """`python launch.py ...` started and not waited for: a `tests.forkserver.ForkedLaunch`, forked from the launch
  server, where its environment allows, else (or `cold`) a plain `subprocess.Popen`; either has pid, args, poll,
  wait, kill and communicate. Its stdout and stderr come back as text from communicate, or go together into
  `output` (as Popen's stderr=STDOUT into a file)."""
  full_env = dict(os.environ, **(env or {}))
  server = None if cold else launch_server()
  if server is not None and forkable(server.env, full_env):
    return server.popen([REPO / 'launch.py', *args], cwd, full_env, pathlib.Path(tempfile.gettempdir()) /
                        'fpclass-launch', new_session=new_session, output=output)
  command = [sys.executable, str(REPO / 'launch.py'), *args]
  if output is None:
    return subprocess.Popen(command, cwd=cwd, env=full_env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=new_session)
  with open(output, 'w') as out:   # the child holds its own descriptor
    return subprocess.Popen(command, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=new_session)


QUICK = '--config=configs/footprint.py:exp4,quick'


def trained_once(tmp_path_factory, name: str, config_flag: str):
  """A quick run of `config_flag` (train, evaluate, and whatever its config chains), trained once per session
  by whichever worker asks first and copied into each worker: (workdir, env, the launch's CompletedProcess).
  `env` points FPCLASS_CACHE at the cache holding its synthetic data (read only after training). Tests share
  the worker's copy: one that runs a mode writing into the workdir copies it first."""
  with build_once(tmp_path_factory, name) as (shared, built):
    env = {'FPCLASS_CACHE': str(shared / 'cache')}
    if not built:   # cold: test_launch.py compares a forked launch with this one
      result = launch(config_flag, f'--workdir={shared / "run"}', env=env, cold=True)
      (shared / 'launch.json').write_text(json.dumps([result.args, result.returncode, result.stdout, result.stderr]))
  result = subprocess.CompletedProcess(*json.loads((shared / 'launch.json').read_text()))
  workdir = tmp_path_factory.mktemp(name)
  shutil.copytree(shared / 'run', workdir, dirs_exist_ok=True)
  return workdir, env, result


@pytest.fixture(scope='session')
def trained_quick(tmp_path_factory):
  """One quick footprint run (train, evaluate, explain) for the tests that only read its outputs or run other
  modes on it (`trained_once`)."""
  return trained_once(tmp_path_factory, 'fp-quick', QUICK)


MULTILABEL = '--config=configs/multilabel.py:quick'


@pytest.fixture(scope='session')
def trained_multilabel(tmp_path_factory):
  """One quick multi-label run on the synthetic shapes (train, evaluate; 240 images of 32 px, 2 epochs), as
  `trained_quick`; its cache also holds the set's solution.csv (the test tags)."""
  return trained_once(tmp_path_factory, 'ml-quick', MULTILABEL)


def save_image(path, mode='L', size=(40, 30), value=None, fmt=None, **save_kwargs):
  """Writes a deterministic test image of `mode`; returns its path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  w, h = size
  rng = np.random.default_rng(abs(hash((str(path.name), mode))) % 2**32)
  if mode in ('L', 'P', '1'):
    arr = rng.integers(0, 256, (h, w), dtype=np.uint8) if value is None else np.full((h, w), value, np.uint8)
    image = Image.frombytes('L', size, arr.tobytes())
    image = image.convert(mode) if mode != 'L' else image
  elif mode == 'I;16':
    arr = rng.integers(0, 65536, (h, w), dtype=np.uint16) if value is None else np.full((h, w), value, np.uint16)
    image = Image.frombytes('I;16', size, arr.astype('<u2').tobytes())
  else:
    channels = len(mode)
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    image = Image.frombytes(mode, size, arr.tobytes())
  image.save(path, format=fmt, **save_kwargs)
  return path


def png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


@pytest.fixture
def kaggle_root(tmp_path):
  """A small Kaggle-layout folder: 12 labelled images (classes 0/1) and 4 test images."""
  root = tmp_path / 'kaggle'
  rows = []
  for i in range(12):
    name = f'img_{i:02d}.png'
    save_image(root / 'train' / name, value=40 + 10 * i)
    rows.append(f'{name},{i % 2}')
  (root / 'train.csv').write_text('filename,SEX\n' + '\n'.join(rows) + '\n')
  for i in range(4):
    save_image(root / 'test' / f'test_{i}.png', value=100 + i)
  (root / 'sample_submission.csv').write_text(
      'filename,SEX\n' + '\n'.join(f'test_{i}.png,0' for i in (3, 1, 0, 2)) + '\n')
  return root
