"""`run(mode, config, workdir)`: the one way a mode runs, from launch.py or Python.

It applies the process-wide settings, joins a multi-process job, validates the config once, checks that the
workdir and cache can be written, takes the workdir's lock for a mode that trains, and chains train ->
evaluate -> explain.
"""
import pathlib

from fpclass import fileio, runtime, sharding, validation, workdir_lock
from fpclass.errors import UserInputError
from fpclass.modes import MODES, mode_function


def run(mode: str, config, workdir, **options):
  """Validates `config` and runs `mode`; `options` are mode-specific flags (only clean takes one: apply).
  Train is followed by evaluate, and by explain when config.explain.after_training. Returns the mode's
  result (for train: evaluate's scores). The package API: `fpclass.modes.runner.run('train', config, workdir)`."""
  # Process-wide settings first, before JAX runs anything or sees another process.
  runtime.keep_host_buffers()
  sharding.initialize_distributed()  # a no-op unless the environment describes a multi-process job
  fileio.set_primary(sharding.is_primary_process())
  if sharding.process_count() > 1 and not MODES[mode].multi_process:
    raise UserInputError(f'--mode {mode} runs on one process; this job has {sharding.process_count()} '
                         '(unset JAX_COORDINATOR_ADDRESS, or run it from one process only)')
  validation.validate(config)
  workdir = pathlib.Path(workdir)
  if fileio.is_primary():
    if not MODES[mode].read_only:
      fileio.check_writable(workdir, '--workdir')
    fileio.check_writable(fileio.cache_root(config.data.cache_dir), 'the cache folder (config.data.cache_dir, '
                          '$FPCLASS_CACHE or ~/.cache/fpclass)')
  runtime.enable_compilation_cache(config.data.cache_dir or None)
  lock = _lock(mode, workdir)
  try:
    result = mode_function(mode)(config, workdir, **options)
    if mode == 'train':
      dataset = result
      result = mode_function('evaluate')(config, workdir, dataset=dataset)
      if config.explain.after_training:
        mode_function('explain')(config, workdir, dataset=dataset)
  finally:
    if lock is not None:
      lock.release()
  return result


def _lock(mode: str, workdir: pathlib.Path) -> workdir_lock.WorkdirLock | None:
  """The workdir's lock for a mode that trains, taken by process 0 alone; the other processes of a
  multi-process job learn whether it succeeded, so they stop too instead of waiting in a collective."""
  if not MODES[mode].trains:
    return None
  lock, error = None, None
  if fileio.is_primary():
    try:
      lock = workdir_lock.WorkdirLock(workdir, mode).acquire()
    except UserInputError as e:
      error = e
  if not sharding.agree_on(error is None):
    raise error or UserInputError(f'{workdir}: process 0 could not take the workdir lock (its message says why)')
  return lock
