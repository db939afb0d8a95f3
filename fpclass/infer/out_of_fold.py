"""A workdir's out-of-fold predictions pooled into one probability row per example, for label-issue finding.

A solo run (`--mode train`, any fold) writes oof_predictions.csv in its workdir, a sweep one per variant folder,
and `--mode auto` one per trial and confirmation member and variant (`fpclass.train.oof`). `find_files` takes
the topmost file of each branch below a workdir: a variant's file already gathers its members' files below it.
`pool` averages every model's probabilities for an example, matched by its id (rows are per member's split).
"""
import dataclasses
import os
import pathlib

import numpy as np
import pandas as pd

from fpclass.errors import UserInputError
from fpclass.train import oof

WRITERS = ('--mode train (every fold: --config.data.fold=k)', '--mode sweep', '--mode auto')


@dataclasses.dataclass
class Pooled:
  """One row per example: ids, given labels (class indices, or a 0/1 matrix), mean probabilities, models."""
  ids: list
  labels: np.ndarray
  probabilities: np.ndarray
  members: np.ndarray
  class_names: list
  task: str
  files: list


def find_files(workdir) -> list[pathlib.Path]:
  """The oof_predictions.csv files standing for everything below `workdir`: a folder's file, else its
  subfolders', in name order."""
  workdir = pathlib.Path(workdir)
  found = []
  for folder, subfolders, files in os.walk(workdir):
    subfolders.sort()
    if oof.FILE in files:
      found.append(pathlib.Path(folder) / oof.FILE)
      subfolders.clear()   # a variant's file gathers its members' files below it
  return found


def pool(workdir) -> Pooled:
  """Every model's out-of-fold probabilities below `workdir`, averaged per example."""
  files = find_files(workdir)
  if not files:
    raise UserInputError(f'{workdir}: no {oof.FILE} in it or below; it holds out-of-fold predictions once trained '
                         f'by {", ".join(WRITERS)}')
  frames, class_names = [], None
  for path in files:
    frame = oof.read(path.parent)
    names = oof.class_names(frame)
    if class_names is not None and names != class_names:
      raise UserInputError(f'{path}: classes {names} differ from {class_names} of {files[0]}; point --workdir at '
                           'the runs of one data set')
    class_names = names
    frames.append(frame.assign(source=str(path)))
  frame = pd.concat(frames, ignore_index=True)
  conflicts = frame.groupby('id', sort=False)[oof.label_columns(frame)].nunique().gt(1).any(axis=1)
  if conflicts.any():
    example = conflicts[conflicts].index[0]
    where = sorted(set(frame.loc[frame['id'] == example, 'source']))
    raise UserInputError(f'{example!r} has different given labels in {where}: they trained on different labels '
                         '(a relabelled run?); point --workdir at the runs of one labelling')
  pooled = oof.mean_by_id(frame)
  labels, probabilities, task = oof.labels_and_probabilities(pooled.reset_index())
  return Pooled(ids=list(pooled.index), labels=labels, probabilities=probabilities,
                members=pooled['models'].to_numpy(np.int64), class_names=class_names, task=task,
                files=[str(p) for p in files])
