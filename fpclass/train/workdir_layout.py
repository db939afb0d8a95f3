"""The folders of an auto workdir, named once: what `--mode auto` writes and what reads it afterwards (the final
stage, a relaunch, `--mode ensemble` and `--mode distill` on the run).

  trials/trial-NNNN      each trial's top-rung members (a search's candidates for an ensemble)
  rounds/measure/...     the measurement round
  rounds/b<B>-r<L>/...   bracket B's lower rungs, level L counted from 0
  confirm/trial-NNNN     the confirmation's members, on fresh folds and seeds
  final/                 the final model: an ordinary workdir (`fpclass.train.sidecar.AUTO_FINAL`, where the
                         stages below the search read it)
"""
import pathlib

TRIALS = 'trials'
ROUNDS = 'rounds'
MEASURE = 'measure'
CONFIRM = 'confirm'
TRIAL_PREFIX = 'trial-'


def trial_name(number: int) -> str:
  """The folder name of trial `number`, in every round that trains it."""
  return f'{TRIAL_PREFIX}{number:04d}'


def is_trial_name(name: str) -> bool:
  return name.startswith(TRIAL_PREFIX)


def rung_folder(workdir: pathlib.Path, bracket: int, level: int) -> pathlib.Path:
  return workdir / ROUNDS / f'b{bracket}-r{level}'


def rung_level(folder: pathlib.Path) -> int:
  """The level of a `rung_folder`."""
  return int(folder.name.rsplit('-r', 1)[1])
