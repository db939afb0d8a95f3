"""`run(mode, config, workdir)`: the one way a mode runs, from launch.py or Python.

It applies the process-wide settings for the backend, joins a multi-process job, validates the config once,
checks that the workdir and cache can be written, takes the workdir's lock for a mode that trains, chains
train -> evaluate -> explain, and writes where the job's time went (report.md, timings.json).
"""
import copy
import json
import pathlib

import jax

from fpclass import fileio
from fpclass.config.inputs import DataSettings
from fpclass.config.tracking import TrackSettings
from fpclass.data import profile
from fpclass.data.profile import MIN_SIDE
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk
from fpclass.models import model_keys
from fpclass.modes import MODES, mode_function
from fpclass.runtime import process, report, sharding, timings, tracking, workdir_lock
from fpclass.runtime.sinks import configured
from fpclass.runtime.sinks.sink import Job, flatten
from fpclass.train import sidecar, validation

TIMINGS = 'timings.json'
TIME_SECTION = '90-time'


def run(mode: str, config, workdir, started_at: float | None = None, **options):
  """Validates `config` and runs `mode`; `options` are mode-specific flags (only clean takes one: apply).
  Train is followed by evaluate, and by explain when config.explain.after_training. Returns the mode's
  result (for train: evaluate's scores). `started_at` (a time.time() value, launch.py passes the process's
  start) makes the time before the call the job's 'start-up'. The package API:
  `fpclass.modes.runner.run('train', config, workdir)`."""
  with timings.job(started_at) as clock:
    with timings.phase('start-up'):
      settings = process.setup(MODES[mode].trains, float(config.train.gpu_memory_fraction), config.data.cache_dir,
                               join_job=True)
      if sharding.process_count() > 1 and not MODES[mode].multi_process:
        raise UserInputError(f'--mode {mode} runs on one process; this job has {sharding.process_count()} '
                             '(unset JAX_COORDINATOR_ADDRESS, or run it from one process only)')
      config = model_keys.completed(config)   # every key of its model, as launch.py builds it
      config = sized_by_the_images(config)
      validation.validate(config)
      if workdir is None:   # a standalone mode (models): nothing to write, lock, track or time
        if not MODES[mode].standalone:
          raise UserInputError(f'--mode {mode} needs a --workdir')
        return mode_function(mode)(config, None, **options)
      workdir = pathlib.Path(workdir)
      if fileio.is_primary() and not MODES[mode].read_only:
        fileio.check_writable(workdir, '--workdir')
      lock = _lock(mode, workdir)
    try:
      if MODES[mode].records_config and fileio.is_primary():
        sidecar.write_workdir_record(workdir, mode, config)
      tracker = _tracker(mode, config, workdir)
      with tracking.active(tracker, workdir):
        result = _run_chain(mode, config, workdir, options)
    except jax.errors.JaxRuntimeError as e:
      out_of_memory = _out_of_memory(e, mode)
      if out_of_memory is None:
        raise
      raise out_of_memory from None
    finally:
      if lock is not None:
        lock.release()
    if MODES[mode].timed and fileio.is_primary():
      write_time_report(workdir, mode, clock, settings)
    tracker.finish(workdir)
  return result


def sized_by_the_images(config):
  """`config` with the channels and input size it leaves to the images (`data.channels=0`, `data.image_size` with a
  0: configs/folder.py) read from a sample of them (`fpclass.data.profile`), and a line saying what was chosen;
  `config` itself when it sets both."""
  if int(config.data.channels) and all(int(s) for s in config.data.image_size):
    return config
  provisional = copy.deepcopy(config)
  with provisional.unlocked():   # the decode keys are what the profile chooses: any valid value lists the source
    provisional.data.channels, provisional.data.image_size = 3, (MIN_SIDE, MIN_SIDE)
  found = profile.profile(DataSettings.from_config(provisional.data))
  out = copy.deepcopy(config)
  with out.unlocked():
    if not int(config.data.channels):
      out.data.channels = found.channels
    if not all(int(s) for s in config.data.image_size):
      out.data.image_size = found.image_size
  print(found.describe(config.data.root or config.data.source), flush=True)
  return out


def _tracker(mode: str, config, workdir: pathlib.Path) -> tracking.Tracker:
  """The job's tracking sinks, its root run started: metrics.csv and TensorBoard for the runs it trains, and
  for a mode marked `tracked` the experiment trackers config.track names (MLflow, on process 0)."""
  settings, tracked = TrackSettings.from_config(config.track), MODES[mode].tracked
  job = Job(mode, workdir, settings.experiment or config.name, settings.run_name or workdir.resolve().name,
            {'mode': mode, **flatten(sidecar.config_as_json(config))}, epochs=tracked == 'run')
  return configured.open_tracker(config, job, tracked=bool(tracked))


def _run_chain(mode: str, config, workdir: pathlib.Path, options: dict):
  if mode != 'train':
    with timings.phase(mode):
      return mode_function(mode)(config, workdir, **options)
  dataset = mode_function('train')(config, workdir, **options)  # its own phases: data, model, epochs, ...
  with timings.phase('evaluate'):
    # Restored once, and the validation split predicted once, for evaluate and explain.
    trained = load_trained(config, workdir)
    val_probabilities = trained.probabilities(dataset.val.images, int(config.eval.batch_size),
                                              prediction_chunk(trained.settings, dataset))
    result = mode_function('evaluate')(config, workdir, dataset=dataset, trained=trained,
                                       val_probabilities=val_probabilities)
  if config.explain.after_training:
    with timings.phase('explain'):
      mode_function('explain')(config, workdir, dataset=dataset, trained=trained, val_probabilities=val_probabilities)
  return result


def write_time_report(workdir, mode: str, clock: timings.JobClock, settings: process.ProcessSettings) -> None:
  """timings.json and report.md's 'Where the time went' section. The file's top level is the job that ran
  last in `workdir` (with the process settings it ran under); `modes` keeps the latest job of each mode, so
  the training job's phases stay beside those of the modes run on its workdir later. The section has one
  line per mode, then their phases side by side."""
  summary = dict(mode=mode, backend=jax.default_backend(), settings=settings.as_dict(), **clock.summary())
  modes = {**_stored_modes(pathlib.Path(workdir) / TIMINGS), mode: summary}
  fileio.write_json(pathlib.Path(workdir) / TIMINGS, dict(summary, modes=modes))
  names = sorted(modes, key=lambda m: (m != 'train', m))
  report.write_section(workdir, TIME_SECTION, '\n'.join([
      '## Where the time went', '',
      'The latest job of each mode run on this workdir. Each phase\'s seconds exclude the phases nested in it; '
      'start-up runs from the process\'s start (interpreter, imports, flags, settings).', '',
      *[_mode_line(m, modes[m]) for m in names], '',
      *_modes_table(modes, names),
      f'Machine-readable: [{TIMINGS}]({TIMINGS}).']))


def _mode_line(mode: str, job: dict) -> str:
  return (f'- `--mode {mode}` on {job.get("backend", "?")}: {job["total_seconds"]:.1f} s wall, of which '
          f'{job["outside_epochs_seconds"]:.1f} s outside the training epochs; XLA compiled '
          f'{job["programs_compiled"]} programs ({job["compile_seconds"]:.1f} s) and loaded '
          f'{job["programs_loaded"]} from the persistent compilation cache.')


def _stored_modes(path: pathlib.Path) -> dict:
  """The latest job of each mode that timings.json holds ({} when it is missing or unreadable)."""
  try:
    stored = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  if not isinstance(stored, dict):
    return {}
  modes = stored.get('modes')
  if isinstance(modes, dict):
    return modes
  return {stored['mode']: stored} if 'mode' in stored and 'rows' in stored else {}


def _modes_table(modes: dict, names: list[str]) -> list[str]:
  """Seconds per phase (rows) and mode (columns), the training job first."""
  phases = list(dict.fromkeys(r['phase'] for m in names for r in modes[m]['rows']))
  seconds = {m: {r['phase']: r['seconds'] for r in modes[m]['rows']} for m in names}
  rows = [dict(phase=phase, **{f'--mode {m}': f'{seconds[m][phase]:.2f}' if phase in seconds[m] else ''
                               for m in names}) for phase in phases]
  rows.append(dict(phase='total', **{f'--mode {m}': f'{modes[m]["total_seconds"]:.2f}' for m in names}))
  return [report.table(rows, ['phase', *[f'--mode {m}' for m in names]]), '']


def _out_of_memory(error: Exception, mode: str) -> UserInputError | None:
  """A device out-of-memory error as one line naming the keys that size the job's memory, else None."""
  message = str(error)
  if 'RESOURCE_EXHAUSTED' not in message and 'Out of memory' not in message:
    return None
  first = message.strip().splitlines()[0][:300]
  keys = ('config.train.gpu_memory_fraction (the share of the GPU training takes), config.train.batch_size'
          if MODES[mode].trains else 'config.eval.batch_size (the other modes allocate as they go)')
  return UserInputError(f'the device ran out of memory in --mode {mode} ({first}); lower {keys}, or free the '
                        'device of other processes')


def _lock(mode: str, workdir: pathlib.Path) -> workdir_lock.WorkdirLock | None:
  """The workdir's lock for a mode that trains, taken by process 0 alone; the other processes of a
  multi-process job learn whether it succeeded, so they stop too instead of waiting in a collective."""
  if not MODES[mode].trains or MODES[mode].shared_workdir:
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
