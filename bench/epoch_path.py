"""How many files and lines of fpclass/train one training run passes through: the path a reader follows from a
plan to its epochs (issues 53 and 76; the tables in docs/architecture.md).

1. The call path: `python launch.py --config configs/digits.py:quick --mode train` (8x8 pixels, 2 epochs) run in
   this process under `sys.settrace`; the Python stack, from launch.py, where the optimizer's update is first
   traced (`optax.apply_updates`, inside the jitted step) and where the first epoch's metrics row is made
   (`fpclass.train.loop_state.epoch_row`): each frame's file and function, the fpclass files on the way below
   the loop (`fpclass/train/loop.py`) and their lengths.
2. The lines that ran: a tiny `--mode train` plan (the same config, 3 epochs) through the training loop's
   `run_plan`, counting the distinct lines of fpclass/train/ that ran: for the whole run (set-up, epochs, the
   end) and for the second epoch alone (from the first epoch's metrics row to the second's). Per file: its
   length, the functions that ran, and the lines that ran.

    python -m bench.epoch_path
"""
import collections
import pathlib
import runpy
import sys
import tempfile

from configs.digits import get_config
from fpclass.train import plan as plan_lib
from fpclass.train import validation

try:   # the restructured train/ (issue 53), else the earlier layout
  from fpclass.train.loop import run_plan
except ImportError:
  from fpclass.train.orchestrator import run_plan

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOT = REPO / 'fpclass' / 'train'
TARGETS = {'the update': ('optax', 'apply_updates'), 'the metrics row': ('loop_state.py', 'epoch_row')}


def _frames(frame) -> list[tuple[str, str, int]]:
  """(file relative to the repository, function, line) of each frame from launch.py's down to `frame`."""
  out = []
  while frame is not None:
    path = pathlib.Path(frame.f_code.co_filename)
    if path.is_relative_to(REPO / 'fpclass') or path == REPO / 'launch.py':
      out.append((path.relative_to(REPO).as_posix(), frame.f_code.co_qualname, frame.f_lineno))
    frame = frame.f_back
  out = out[::-1]
  start = next((i for i, (f, _, _) in enumerate(out) if f == 'launch.py'), 0)
  return out[start:]


def call_path() -> dict:
  """{target: its stack from launch.py} for each of TARGETS, the first time it is called in a launch."""
  found = {}

  def trace(frame, event, arg):
    if event == 'call':
      for name, (where, function) in TARGETS.items():
        if name not in found and frame.f_code.co_name == function and where in frame.f_code.co_filename:
          found[name] = _frames(frame)
    return None

  with tempfile.TemporaryDirectory() as workdir:
    argv = sys.argv
    sys.argv = ['launch.py', '--config=configs/digits.py:quick', f'--workdir={workdir}', '--mode=train',
                '--config.data.image_size=(8, 8)', '--config.train.epochs=2', '--config.train.tensorboard=False',
                '--config.explain.after_training=False']
    launch = runpy.run_path(str(REPO / 'launch.py'), run_name='launch')   # its flags, not its exit
    sys.settrace(trace)
    try:
      launch['app'].run(launch['main'], flags_parser=launch['parse_flags'])
    except SystemExit:
      pass
    finally:
      sys.settrace(None)
      sys.argv = argv
  return found


def print_path(found: dict) -> None:
  for name, frames in found.items():
    files = list(dict.fromkeys(f for f, _, _ in frames))
    below = files[files.index('fpclass/train/loop.py') + 1:] if 'fpclass/train/loop.py' in files else files
    lines = {f: len((REPO / f).read_text().splitlines()) for f in files}
    print(f'\n### from launch.py to {name}\n')
    print(' -> '.join(f'{pathlib.Path(f).stem}.{fn}' for f, fn, _ in frames))
    print(f'\n{len(frames)} calls in {len(files)} files ({sum(lines.values())} lines); below the loop: '
          f'{len(below)} files ({", ".join(f"{pathlib.Path(f).name} {lines[f]}" for f in below)})')


def main() -> None:
  print_path(call_path())
  config = get_config('quick')
  with config.unlocked():
    config.data.image_size = (8, 8)
    config.train.epochs = 3
    config.train.tensorboard = False
  validation.validate(config)
  whole, epoch = collections.defaultdict(set), collections.defaultdict(set)
  functions, epoch_functions, rows = collections.defaultdict(set), collections.defaultdict(set), []

  def local(frame, event, arg):
    if event == 'line':
      name = pathlib.Path(frame.f_code.co_filename).name
      whole[name].add(frame.f_lineno)
      functions[name].add(frame.f_code.co_name)
      if len(rows) == 1:   # after epoch 1's metrics row, until epoch 2's: one steady epoch
        epoch[name].add(frame.f_lineno)
        epoch_functions[name].add(frame.f_code.co_name)
    return local

  def trace(frame, event, arg):
    if event == 'call' and pathlib.Path(frame.f_code.co_filename).is_relative_to(ROOT):
      if frame.f_code.co_name == 'epoch_row':
        rows.append(frame.f_lineno)
      return local
    return None

  with tempfile.TemporaryDirectory() as workdir:
    sys.settrace(trace)
    try:
      run_plan(plan_lib.solo_plan(config), workdir)
    finally:
      sys.settrace(None)
  for title, lines, names in (('the whole run', whole, functions), ('one epoch (the second)', epoch, epoch_functions)):
    print(f'\n### {title}\n')
    print('| file | lines in the file | functions that ran | lines that ran |')
    print('|---|---|---|---|')
    for name in sorted(lines, key=lambda n: -len(lines[n])):
      print(f'| {name} | {len((ROOT / name).read_text().splitlines())} | {len(names[name])} | {len(lines[name])} |')
    total = sum(len((ROOT / name).read_text().splitlines()) for name in lines)
    print(f'\n{len(lines)} files of fpclass/train ({total} lines in them); {sum(map(len, names.values()))} '
          f'functions and {sum(map(len, lines.values()))} lines ran')


if __name__ == '__main__':
  main()
