"""How many files and lines of fpclass/train one training run passes through: the path a reader follows from a
plan to its epochs (issue 53; the table in docs/architecture.md).

Runs a tiny `--mode train` plan (configs/digits.py:quick at 8x8 pixels, 3 epochs) through the training loop's
`run_plan` under `sys.settrace`, and counts the distinct lines of fpclass/train/ that ran: for the whole run (set-up,
epochs, the end) and for the second epoch alone (from the first epoch's metrics row to the second's). Per file:
its length, the functions that ran, and the lines that ran.

    python -m bench.epoch_path
"""
import collections
import pathlib
import sys
import tempfile

from configs.digits import get_config
from fpclass.train import plan as plan_lib
from fpclass.train import validation

try:   # the restructured train/ (issue 53), else the earlier layout
  from fpclass.train.loop import run_plan
except ImportError:
  from fpclass.train.orchestrator import run_plan

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'fpclass' / 'train'


def main() -> None:
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
