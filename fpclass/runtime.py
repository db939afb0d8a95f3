"""Process-wide settings that launch.py applies once at start-up (bench/ scripts and tests call them too).

- The persistent compilation cache lets a second launch (or a resumed run) load compiled programs from
  disk instead of compiling again: on this project's CPU models that is seconds per program.
- glibc's malloc serves every buffer over 32 MB (its mmap threshold cannot be set higher) with a fresh
  mmap and unmaps it on free, so XLA:CPU's per-step temporaries (~200 MB for the footprint CNN at batch
  32) were page-faulted in from zero on every step: ~100k minor faults and most of the step's time as
  system time. `keep_host_buffers` makes malloc keep and reuse them instead (docs/performance.md).
"""
import ctypes
import os
import pathlib
import platform

import jax

from fpclass import fileio

ENV_CACHE = 'FPCLASS_JAX_CACHE'  # a folder, or 0 to switch the cache off
ENV_ALLOCATOR = 'FPCLASS_HOST_ALLOCATOR'  # 'default' leaves glibc's malloc settings alone

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_kept = False   # whether keep_host_buffers applied its settings in this process (they are process-wide)


def enable_compilation_cache(default_root: str | os.PathLike | None = None) -> pathlib.Path | None:
  setting = os.environ.get(ENV_CACHE, '')
  if setting == '0':
    return None
  root = fileio.cache_root(default_root or '')
  folder = pathlib.Path(setting).expanduser() if setting else root / 'jax-compilation'
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(folder))
  # Only programs that took a while to compile are worth a disk entry, unless JAX's own environment
  # variable says otherwise (the test suite caches everything: its many launches share small programs).
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return folder


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
  it, which the sweep's memory rule counts (fpclass.modes.model_axis)."""
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
