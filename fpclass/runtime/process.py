"""Process-wide settings, decided per backend in one place and applied once, before JAX starts a backend.

`decide(backend, trains, ...)` is a pure function from the backend the process will run on to every
process-wide setting; `configure(...)` applies its answer (the mode runner calls it first thing, and serve
workers, bench/ scripts and tests may too). Each decision rests on a measurement on that backend
(docs/performance.md, "Process settings by backend"):

Design notes: docs/modules.md (`fpclass/runtime/process.py`).
"""
import contextlib
import ctypes
import dataclasses
import importlib.metadata
import os
import pathlib
import platform
import sys

import jax
from jax._src import compilation_cache as jax_compilation_cache  # its reset: no public API has one
from jax._src import xla_bridge  # whether a backend has started: no public API says

from fpclass import fileio
from fpclass.errors import UserInputError
from fpclass.runtime import sharding

ENV_CACHE = 'FPCLASS_JAX_CACHE'  # a folder, or 0 to switch the cache off
ENV_ALLOCATOR = 'FPCLASS_HOST_ALLOCATOR'  # 'default' leaves glibc's malloc settings alone
ENV_PREALLOCATE = 'XLA_PYTHON_CLIENT_PREALLOCATE'
ENV_MEM_FRACTION = 'XLA_PYTHON_CLIENT_MEM_FRACTION'
ENV_MIN_COMPILE_TIME = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'
BACKENDS = ('cpu', 'gpu', 'tpu')
CUDA_DEVICE_NODES = ('/dev/nvidia0', '/dev/nvidiactl')
ROCM_DEVICE_NODES = ('/dev/kfd',)

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_kept = False   # whether keep_host_buffers applied its settings in this process (they are process-wide)


# XLA's per-fusion autotuning results, kept with the persistent cache, and not its compiled-kernel cache file
# ('all' adds xla_gpu_kernel_cache_file): on an H200 (jax 0.11.2, 2026-11-26) a loop-axis sweep that loaded a
# cache a vmap-axis sweep had written died with CUDA_ERROR_ILLEGAL_INSTRUCTION, as did --mode serve on it; the
# same sweep ran without the persistent cache (docs/performance.md, "GPU session 2026-11-26").
GPU_XLA_CACHES = 'xla_gpu_per_fusion_autotune_cache_dir'


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
  """Every process-wide setting for one backend; `decide` makes them, `apply` sets them."""
  backend: str
  host_allocator: str              # 'keep' (one arena that keeps large buffers) | 'default' (glibc's own)
  environment: tuple = ()          # (name, value) pairs set before the backend starts, unless already set
  cache_min_compile_seconds: float = 0.0   # programs that compiled faster are not written to the cache
  xla_caches: str = ''             # jax_persistent_cache_enable_xla_caches ('' keeps JAX's default)
  xla_flags: tuple = ()            # added to XLA_FLAGS

  def as_dict(self) -> dict:
    return dict(dataclasses.asdict(self), environment=dict(self.environment))


def planned_backend(environ=None) -> str:
  """The backend JAX will start, found without starting it: JAX_PLATFORMS when set, else 'gpu' when a
  CUDA or ROCm plugin is installed and a device node exists, 'tpu' for libtpu and a TPU node, else 'cpu'.
  Once a backend has started, JAX's own answer."""
  environ = os.environ if environ is None else environ
  if _backend_started():
    return _family(jax.default_backend())
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return _family(platforms.split(',')[0].strip())
  plugins = _gpu_plugins()
  if any('cuda' in name for name in plugins) and _any_path(*CUDA_DEVICE_NODES):
    return 'gpu'
  if any('rocm' in name for name in plugins) and _any_path(*ROCM_DEVICE_NODES):
    return 'gpu'
  if _installed('libtpu') and (_any_path('/dev/vfio') or any(pathlib.Path('/dev').glob('accel*'))):
    return 'tpu'
  return 'cpu'


def decide(backend: str, trains: bool, gpu_memory_fraction: float = 0.75) -> ProcessSettings:
  """The settings for a process on `backend` ('cpu', 'gpu' or 'tpu'); `trains`: a mode that trains, which
  takes `gpu_memory_fraction` of a GPU up front (config.train.gpu_memory_fraction), where any other mode
  allocates as it goes so that several processes share one device."""
  if backend not in BACKENDS:
    raise ValueError(f'backend {backend!r}: one of {BACKENDS}')
  if not 0.0 < float(gpu_memory_fraction) <= 1.0:
    raise UserInputError(f'config.train.gpu_memory_fraction={gpu_memory_fraction}: a share of the GPU in (0, 1]')
  if backend == 'cpu':
    return ProcessSettings(backend, host_allocator='keep')
  environment = ()
  if backend == 'gpu':
    environment = (((ENV_PREALLOCATE, 'true'), (ENV_MEM_FRACTION, f'{float(gpu_memory_fraction):g}')) if trains
                   else ((ENV_PREALLOCATE, 'false'),))
  return ProcessSettings(backend, host_allocator='default', environment=environment,
                         xla_caches=GPU_XLA_CACHES if backend == 'gpu' else '')


def apply(settings: ProcessSettings) -> ProcessSettings:
  """Sets the environment and the host allocator of `settings` in this process (idempotent). Both must be
  set before JAX starts its backend; a variable already in the environment is left as the user set it. The
  compilation cache follows once its folder is known to be writable (`enable_compilation_cache`)."""
  for name, value in settings.environment:
    os.environ.setdefault(name, value)
  if settings.xla_flags:
    present = os.environ.get('XLA_FLAGS', '').split()
    os.environ['XLA_FLAGS'] = ' '.join([*present, *(f for f in settings.xla_flags if f not in present)])
  if settings.host_allocator == 'keep':
    keep_host_buffers()
  return settings


def gpu_plugin_without_gpu(environ=None) -> str:
  """The GPU plugin's name when JAX would load one with no GPU device to drive (a login node, a container
  started without --gpus), the user has not chosen JAX_PLATFORMS and no backend has started; else ''.
  JAX's CUDA plugin crashes the process at its first device query there."""
  environ = os.environ if environ is None else environ
  if environ.get('JAX_PLATFORMS', '').strip() or _backend_started():
    return ''
  for name in sorted(_gpu_plugins()):
    nodes = CUDA_DEVICE_NODES if 'cuda' in name else ROCM_DEVICE_NODES
    if not _any_path(*nodes):
      return name
  return ''


def fall_back_to_cpu(environ=None) -> bool:
  """Runs on the CPU, with a one-line warning, where `gpu_plugin_without_gpu` finds a plugin."""
  plugin = gpu_plugin_without_gpu(environ)
  if not plugin:
    return False
  (os.environ if environ is None else environ)['JAX_PLATFORMS'] = 'cpu'
  jax.config.update('jax_platforms', 'cpu')   # jax read the variable when it was imported
  print(f'fpclass: warning: JAX\'s GPU plugin ({plugin}) is installed but no GPU device is visible; running on '
        'the CPU (set JAX_PLATFORMS to choose)', file=sys.stderr, flush=True)
  return True


def configure(trains: bool, gpu_memory_fraction: float = 0.75) -> ProcessSettings:
  """`apply(decide(planned_backend(), ...))`: what a process does before its first JAX computation, after
  falling back to the CPU where a GPU plugin has no GPU to drive."""
  fall_back_to_cpu()
  return apply(decide(planned_backend(), trains, gpu_memory_fraction))


def setup(trains: bool, gpu_memory_fraction: float = 0.75, cache_dir: str | None = None,
          join_job: bool = False) -> ProcessSettings:
  """The one process setup, shared by a launch (`fpclass.modes.runner`) and a server worker
  (`fpclass.serve.worker`): the per-backend settings first, before JAX starts a backend or sees another process;
  with `join_job` the multi-process job the environment describes (a no-op without one), process 0 the one that
  writes; then the persistent compilation cache in a folder checked to be writable."""
  settings = configure(trains, gpu_memory_fraction)
  if join_job:
    sharding.initialize_distributed()
    fileio.set_primary(sharding.is_primary_process())
  if fileio.is_primary():
    fileio.check_writable(fileio.cache_root(cache_dir or ''), 'the cache folder (config.data.cache_dir, '
                          '$FPCLASS_CACHE or ~/.cache/fpclass)')
  enable_compilation_cache(cache_dir or None, settings)
  return settings


def enable_compilation_cache(default_root: str | os.PathLike | None = None,
                             settings: ProcessSettings | None = None) -> pathlib.Path | None:
  """Points JAX's persistent compilation cache at $FPCLASS_JAX_CACHE or <cache root>/jax-compilation
  (FPCLASS_JAX_CACHE=0 switches it off), with the cache settings of `settings` (default: this process's
  planned backend); returns the folder."""
  setting = os.environ.get(ENV_CACHE, '')
  if setting == '0':
    return None
  settings = settings or decide(planned_backend(), trains=False)
  root = fileio.cache_root(default_root or '')
  folder = pathlib.Path(setting).expanduser() if setting else root / 'jax-compilation'
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(folder))
  if ENV_MIN_COMPILE_TIME not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', float(settings.cache_min_compile_seconds))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if settings.xla_caches:
    jax.config.update('jax_persistent_cache_enable_xla_caches', settings.xla_caches)
  return folder


@contextlib.contextmanager
def compilation_cache_off():
  """Every program compiled inside compiles afresh, and the persistent cache works again after it.
  JAX decides once per process whether it uses the cache (`is_cache_used` keeps its first answer), so the
  flag alone would either not switch it off or switch it off for good; resetting its state around the
  flag makes the next compilation ask again."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  jax_compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update('jax_enable_compilation_cache', enabled)
    jax_compilation_cache.reset_cache()


def keep_host_buffers() -> bool:
  """Stops glibc's malloc from returning large freed buffers to the OS; True when applied.

  Three mallopt settings, all needed: no mmap for large blocks (M_MMAP_MAX=0), one arena (M_ARENA_MAX=1:
  glibc's per-thread arenas mmap any block over 64 MB regardless of M_MMAP_MAX, and XLA allocates on its
  worker threads), and no trimming of the heap top below 2 GB (M_TRIM_THRESHOLD). The cost: freed memory
  stays in the process (its resident size holds the peak). Call it before JAX runs anything, so XLA's
  threads attach to the single arena. A no-op off glibc (macOS, musl) or with FPCLASS_HOST_ALLOCATOR=default.
  """
  if os.environ.get(ENV_ALLOCATOR, '') == 'default' or platform.libc_ver()[0] != 'glibc':
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  global _kept
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  applied = all(mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings)
  _kept = _kept or applied
  return applied


def host_buffers_kept() -> bool:
  """Whether `keep_host_buffers` applied its settings in this process: freed host buffers then stay in
  it, which the sweep's memory rule counts (fpclass.train.memory_plan)."""
  return _kept


def process_memory_bytes(field: str = 'VmRSS') -> int:
  """A memory field of /proc/self/status in bytes, 0 where /proc is absent: 'VmRSS' (resident now) or
  'VmHWM' (this address space's high-water mark; it starts afresh at execve, unlike getrusage's ru_maxrss,
  which Linux carries over from the process that exec'd)."""
  try:
    with open('/proc/self/status') as status:
      return next(int(line.split()[1]) * 1024 for line in status if line.startswith(f'{field}:'))
  except (OSError, StopIteration, ValueError):
    return 0


def _family(platform_name: str) -> str:
  """'cuda', 'rocm' and 'gpu' are the GPU family; 'cpu' and 'tpu' are themselves."""
  name = platform_name.lower()
  return 'gpu' if name in ('cuda', 'rocm', 'gpu') else name if name in BACKENDS else 'cpu'


def _backend_started() -> bool:
  return xla_bridge.backends_are_initialized()


def _gpu_plugins() -> set:
  return {entry.name for entry in importlib.metadata.entry_points(group='jax_plugins')
          if 'cuda' in entry.name or 'rocm' in entry.name}


def _any_path(*paths) -> bool:
  return any(pathlib.Path(p).exists() for p in paths)


def _installed(distribution: str) -> bool:
  try:
    importlib.metadata.distribution(distribution)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False
