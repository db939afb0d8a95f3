"""fpclass entry point.

    python launch.py --config configs/footprint.py:exp4 --workdir runs/fp-exp4 [--mode train]
    python launch.py --workdir runs/fp-exp4 --mode submit          # the workdir's sidecar holds the config
    python launch.py --config configs/climbing.py --workdir runs/climbing --mode clean [--apply]
    python launch.py --mode models --config.models.pattern='convnext*'   # no run folder: it writes nothing

Any config value can be overridden, e.g. --config.train.epochs=10; the config is locked, so a
misspelt key is an error. See README.md for the modes and what a run writes.
"""
import atexit
import os
import pathlib
import signal
import sys

from absl import app, flags, logging

from fpclass.errors import RunInterrupted, UserInputError
from fpclass.modes import MODES, command_line

CONFIGS = pathlib.Path(__file__).resolve().parent / 'configs'
WORKDIR_CONFIG = CONFIGS / 'workdir.py'
MAIN_CONFIG = CONFIGS / 'footprint.py'   # a standalone mode's defaults when no --config is given
FOLDER_CONFIG = CONFIGS / 'folder.py'    # a folder of images and no config file: sized by the images

command_line.define_config_flag(flags.FLAGS)
flags.DEFINE_string('workdir', None, 'run folder: checkpoints, metrics, plots, report.md (required but by '
                    '--mode models)')
flags.DEFINE_enum('mode', 'train', list(MODES), '; '.join(f'{k}: {v.help}' for k, v in MODES.items()))
flags.DEFINE_bool('apply', False, '--mode clean only: move the files clean leaves out into <workdir>/quarantine '
                  '(without it, clean never moves or changes a file)')
FLAGS = flags.FLAGS


def parse_flags(argv):
  """absl's parser, with every config problem as a one-line error naming the flag, not a traceback."""
  try:
    return command_line.parse(FLAGS, with_workdir_config(argv))
  except UserInputError as e:
    _fail(e)


def with_workdir_config(argv):
  """`argv` with `--config configs/workdir.py:<workdir>` added when a mode that reads a trained workdir
  runs without --config (its `--config.x=y` overrides then apply to the training config), with the main
  job's config file for a standalone mode (`--mode models`), or with configs/folder.py when a command names a
  folder of images (`--config.data.root`) and no config file."""
  if any(a == '--config' or a.startswith('--config=') for a in argv):
    return argv
  mode, workdir = _flag_value(argv, 'mode') or 'train', _flag_value(argv, 'workdir')
  if mode in MODES and MODES[mode].standalone:
    return [argv[0], f'--config={MAIN_CONFIG}', *argv[1:]]
  if mode in MODES and MODES[mode].trained and workdir:
    return [argv[0], f'--config={WORKDIR_CONFIG}:{workdir}', *argv[1:]]
  if any(a.startswith('--config.data.root') for a in argv):
    return [argv[0], f'--config={FOLDER_CONFIG}', *argv[1:]]
  return argv


def _flag_value(argv, name):
  for i, a in enumerate(argv):
    if a.startswith(f'--{name}='):
      return a.split('=', 1)[1]
    if a == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _fail(message):
  print(f'fpclass: error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keep the console to progress, warnings and results
  if FLAGS.apply and FLAGS.mode != 'clean':
    _fail(f'--apply is read only by --mode clean, not --mode {FLAGS.mode}')
  if FLAGS.workdir is None and not MODES[FLAGS.mode].standalone:
    _fail(f'--workdir is required for --mode {FLAGS.mode}')
  if FLAGS.config is None:
    _fail(f'--config is required for --mode {FLAGS.mode}' + (
        ' (or a --workdir that holds a trained run)' if MODES[FLAGS.mode].trained else
        ': a config file (configs/*.py), or your images: --config.data.root=<a folder with one subfolder per '
        'class>'))
  # Here, not above: they import jax, which --help need not wait for.
  from fpclass.modes.runner import run
  from fpclass.runtime.timings import process_start_time
  try:
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir, started_at=process_start_time(),
        **({'apply': True} if FLAGS.apply else {}))
  except UserInputError as e:
    _fail(e)
  except RunInterrupted as e:
    print(f'fpclass: {e}', file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:  # Ctrl-C in a mode without its own stop (evaluate, predict, serve after shutdown...)
    print(f'fpclass: interrupted (SIGINT); --mode {FLAGS.mode} stopped (its files are written atomically: none is '
          'left half-written)', file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


def exit_now(code) -> None:
  """Ends the process with `code` (a SystemExit's) after the atexit handlers and a flush of stdout and
  stderr, without the interpreter's finalization: tearing down every module and the XLA client took 1 to 5 s
  after the job had ended (docs/performance.md). Nothing is left to write by then: every file is written
  atomically and the checkpoint saves have been waited for."""
  if code is not None and not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code or 0)


if __name__ == '__main__':
  try:
    app.run(main, flags_parser=parse_flags)
  except SystemExit as done:
    exit_now(done.code)
