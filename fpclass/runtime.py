"""Process-wide JAX settings that launch.py applies once at start-up.

The persistent compilation cache lets a second launch (or a resumed run) load compiled programs from
disk instead of compiling again: on this project's CPU models that is seconds per program.
"""
import os
import pathlib

import jax

ENV_CACHE = 'FPCLASS_JAX_CACHE'  # a folder, or 0 to switch the cache off


def enable_compilation_cache(default_root: str | os.PathLike | None = None) -> pathlib.Path | None:
  setting = os.environ.get(ENV_CACHE, '')
  if setting == '0':
    return None
  root = pathlib.Path(default_root or os.environ.get('FPCLASS_CACHE') or '~/.cache/fpclass').expanduser()
  folder = pathlib.Path(setting).expanduser() if setting else root / 'jax-compilation'
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(folder))
  # Only programs that took a while to compile are worth a disk entry.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return folder
