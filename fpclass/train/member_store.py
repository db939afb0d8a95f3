"""Finished members of a sweep on disk, so a relaunch keeps them and the processes of a job can gather them.

    <experiment>/members/<split>-seed<s>.msgpack     one file per finished member

A file holds the member's result (loop state, selected checkpoint, validation logits, the config it was
trained with, its share of the training time) and its states (last train state, best variables), as flax's
msgpack serialisation. It is written atomically by the process that trained the member, whichever it is (a
process's own share, not a workdir output), and read by every process once all have finished. Orbax is not
used here: its multi-process saves are collective, and each process finishes its own members alone. The
folder is removed once the experiment's results are written, since the kept models are then fold workdirs.
"""
import json
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
from flax import serialization

from fpclass import checkpoint
from fpclass.errors import UserInputError
from fpclass.loop_state import LoopState
from fpclass.train.members import Member, MemberResult

FOLDER = 'members'
SUFFIX = '.msgpack'


def path_of(experiment_dir, member: Member) -> pathlib.Path:
  return pathlib.Path(experiment_dir) / FOLDER / f'{member.name}{SUFFIX}'


def save(experiment_dir, result: MemberResult, config_json: dict, extras: dict) -> None:
  """Writes a finished member (any process may, for the members it trained)."""
  header = dict(split=result.member.split, seed=result.member.seed, loop=result.loop.to_json(),
                checkpoint=result.checkpoint, epoch=result.epoch, config=config_json, **extras)
  payload = {'header': json.dumps(header), 'val_logits': np.asarray(result.val_logits),
             'last': serialization.to_state_dict(jax.device_get(result.last)),
             'best': {} if result.best is None else serialization.to_state_dict(list(result.best))}
  path = path_of(experiment_dir, result.member)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.tmp-', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(serialization.msgpack_serialize(payload))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _read(path: pathlib.Path) -> dict:
  try:
    return serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # a file cut short by a full disk or a kill before the rename cannot exist; others can
    raise UserInputError(f'{path}: cannot be read as a finished sweep member ({type(e).__name__}: {e}); remove it '
                         'to train that member again') from None


def header(experiment_dir, member: Member) -> dict | None:
  """The stored header of `member` (its result without states), or None when it has not finished."""
  path = path_of(experiment_dir, member)
  return json.loads(_read(path)['header']) if path.is_file() else None


def check_config(experiment_dir, member: Member, config_json: dict, ignore) -> bool:
  """Whether `member` finished under this config; a finished member of another config is refused."""
  stored = header(experiment_dir, member)
  if stored is None:
    return False
  diffs = checkpoint.config_differences(stored['config'], config_json, ignore=ignore)
  if diffs:
    raise UserInputError(f'{path_of(experiment_dir, member)} is a member trained with a different config: '
                         + '; '.join(diffs[:10]) + '. Use a new --workdir, or the original flags.')
  return True


def load(experiment_dir, member: Member, abstract_state=None) -> tuple[MemberResult, dict]:
  """(result, header extras) of a finished member; with `abstract_state` (the train state's structure in
  its last phase) the result holds its last state and best variables too."""
  raw = _read(path_of(experiment_dir, member))
  stored = json.loads(raw['header'])
  last = best = None
  if abstract_state is not None:
    last = serialization.from_state_dict(abstract_state, raw['last'])
    if raw['best']:
      best = tuple(serialization.from_state_dict([abstract_state.params, abstract_state.batch_stats], raw['best']))
  result = MemberResult(member, LoopState.from_json(stored['loop']), stored['checkpoint'], int(stored['epoch']),
                        np.asarray(raw['val_logits']), last, best)
  return result, stored


def remove(experiment_dir) -> None:
  """Removes the members folder (fpclass's own intermediate files) once the experiment is written."""
  shutil.rmtree(pathlib.Path(experiment_dir) / FOLDER, ignore_errors=True)
