"""Finished members of a sweep on disk, so a relaunch keeps them and the processes of a job can gather them.

    <experiment>/members/<split>-seed<s>.msgpack     its states: last train state, best variables
    <experiment>/members/<split>-seed<s>.json         its result: loop state, selected checkpoint, validation
                                                      logits, the config it trained with, its share of the time
    <experiment>/members/<split>-seed<s>.epoch.msgpack  a running member after its latest epoch, in plans that
                                                      keep epochs (`Plan.keep_epochs`: a search's rounds): its
                                                      state, best variables, loop state and kept logits, one file

Both are written atomically by the process that trained the member, whichever it is (a process's own share,
not a workdir output), the result last, so a result on disk means a finished member; every process reads them
once all have finished, the states of the kept seeds alone. The states are flax's msgpack serialisation; orbax
is not used here: its multi-process saves are collective, and each process finishes its own members alone.
The folder is removed once the experiment's results are written (the kept models are then fold workdirs).
"""
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
from flax import serialization, traverse_util

from fpclass.errors import UserInputError
from fpclass.train import sidecar
from fpclass.train.loop_state import LoopState
from fpclass.train.members import Member, MemberResult

FOLDER = 'members'
SUFFIX = '.msgpack'
EPOCH = '.epoch.msgpack'


def path_of(experiment_dir, member: Member, suffix: str = '.json') -> pathlib.Path:
  return pathlib.Path(experiment_dir) / FOLDER / f'{member.name}{suffix}'


def _write(path: pathlib.Path, content: bytes) -> None:
  """Atomically (a temporary name, then a rename). Not synced to the disk: these are scratch files a relaunch
  re-creates, and a file a power cut leaves torn fails to read with a message naming it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.tmp-', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(content)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def save(experiment_dir, result: MemberResult, config_json: dict, extras: dict) -> None:
  """Writes a finished member (any process may, for the members it trained)."""
  last = jax.device_get(result.last)
  states = {'last': serialization.to_state_dict(last),
            'best': {} if result.best is None else _changed(list(result.best), [last.params, last.batch_stats])}
  _write_finished(experiment_dir, result.member, states, result.loop, result.checkpoint, result.epoch,
                  result.val_logits, config_json, extras)


def _write_finished(experiment_dir, member: Member, states: dict, loop: LoopState, checkpoint: str, epoch: int,
                    val_logits, config_json: dict, extras: dict) -> None:
  """A finished member's states, then its result (a result on disk means a finished member); its running state
  goes."""
  _write(path_of(experiment_dir, member, SUFFIX), serialization.msgpack_serialize(states))
  header = dict(split=member.split, seed=member.seed, loop=loop.to_json(), checkpoint=checkpoint, epoch=epoch,
                config=config_json, val_logits=np.asarray(val_logits, np.float32).tolist(), **extras)
  _write(path_of(experiment_dir, member), json.dumps(header).encode())
  path_of(experiment_dir, member, EPOCH).unlink(missing_ok=True)   # its running state, now finished


def save_epoch(experiment_dir, member: Member, state, loop: LoopState, best, logits: dict, config_json: dict,
               extras: dict | None = None) -> None:
  """A running member after an epoch, in one file written atomically (so the state, the loop state and the kept
  logits are always of the same epoch): a relaunch resumes it there (`load_epoch`), or a deadline finishes it
  there (`finish_running`; `extras`: what its result's header would hold beside the loop's)."""
  state = jax.device_get(state)
  record = {'state': serialization.to_state_dict(state),
            'best': {} if best is None else _changed(list(jax.device_get(best)), [state.params, state.batch_stats]),
            'logits': {k: np.asarray(v, np.float32) for k, v in logits.items() if v is not None},
            'header': json.dumps(dict(loop=loop.to_json(), config=config_json, extras=extras or {}))}
  _write(path_of(experiment_dir, member, EPOCH), serialization.msgpack_serialize(record))


def finish_running(experiment_dir, member: Member, select_checkpoint: str, least_epochs: int) -> bool:
  """Makes a running member that the deadline cut after at least `least_epochs` epochs a finished one, at the
  checkpoint `select_checkpoint` chooses among the epochs it completed (its best, else its last), as the loop
  would have finished it had it stopped there; its stop reason 'deadline'. The states are copied as stored, so
  no model is built. False (nothing changed) when it has no kept epoch, fewer epochs, or is of another config."""
  path = path_of(experiment_dir, member, EPOCH)
  if not path.is_file():
    return False
  raw = _read(path, serialization.msgpack_restore)
  header = json.loads(raw['header'])
  loop = LoopState.from_json(header['loop'])
  if loop.epoch < max(1, least_epochs) or 'extras' not in header:
    return False
  checkpoint, epoch = loop.selected(select_checkpoint if raw['logits'].get('best') is not None else 'last')
  logits = raw['logits'].get(checkpoint)
  if logits is None:
    return False
  _write_finished(experiment_dir, member, {'last': raw['state'], 'best': raw['best']},
                  dataclasses.replace(loop, finished=True, stop_reason='deadline'), checkpoint, epoch, logits,
                  header['config'], {'train_seconds': 0.0, **header['extras']})
  return True


def load_epoch(experiment_dir, member: Member, config_json: dict, ignore, abstract_state_of):
  """(loop state, train state, best variables or None, {'last'/'best': logits}) of a member a killed plan left
  running under this config, else None (one of another config is trained again, from its start).
  `abstract_state_of(loop)`: the train state's structure in the loop's phase."""
  path = path_of(experiment_dir, member, EPOCH)
  if not path.is_file():
    return None
  raw = _read(path, serialization.msgpack_restore)
  header = json.loads(raw['header'])
  if sidecar.config_differences(header['config'], config_json, ignore=ignore):
    return None
  loop = LoopState.from_json(header['loop'])
  state = serialization.from_state_dict(abstract_state_of(loop), raw['state'])
  best = tuple(_unchanged_from([state.params, state.batch_stats], raw['best'])) if raw['best'] else None
  logits = {k: raw['logits'].get(k) for k in ('last', 'best')}
  return loop, state, best, logits


def _changed(best: list, last: list) -> dict:
  """`best`'s leaves that differ from `last`'s, by path: a frozen backbone's are the same arrays, so a member's
  best variables take the bytes of its head alone."""
  flat_best = traverse_util.flatten_dict(serialization.to_state_dict(best), sep='/')
  flat_last = traverse_util.flatten_dict(serialization.to_state_dict(last), sep='/')
  return {k: v for k, v in flat_best.items() if not np.array_equal(np.asarray(v), np.asarray(flat_last.get(k)))} or {
      'same': True}


def _unchanged_from(last: list, changed: dict) -> list:
  flat = traverse_util.flatten_dict(serialization.to_state_dict(last), keep_empty_nodes=True, sep='/')
  flat.update({k: v for k, v in changed.items() if k != 'same'})
  return serialization.from_state_dict(last, traverse_util.unflatten_dict(flat, sep='/'))


def _read(path: pathlib.Path, read):
  try:
    return read(path.read_bytes())
  except Exception as e:  # a file cut short by a full disk or a kill before the rename cannot exist; others can
    raise UserInputError(f'{path}: cannot be read as a finished sweep member ({type(e).__name__}: {e}); remove it '
                         'to train that member again') from None


def header(experiment_dir, member: Member) -> dict | None:
  """The stored result of `member` (without its states), or None when it has not finished."""
  path = path_of(experiment_dir, member)
  return _read(path, json.loads) if path.is_file() else None


def check_config(experiment_dir, member: Member, config_json: dict, ignore) -> bool:
  """Whether `member` finished under this config; a finished member of another config is refused."""
  stored = header(experiment_dir, member)
  if stored is None:
    return False
  diffs = sidecar.config_differences(stored['config'], config_json, ignore=ignore)
  if diffs:
    raise UserInputError(f'{path_of(experiment_dir, member)} is a member trained with a different config: '
                         + '; '.join(diffs[:10]) + '. Use a new --workdir, or the original flags.')
  return True


def load(experiment_dir, member: Member, abstract_state=None) -> tuple[MemberResult, dict]:
  """(result, header extras) of a finished member; with `abstract_state` (the train state's structure in
  its last phase) the result holds its last state and best variables too."""
  stored = header(experiment_dir, member)
  last = best = None
  if abstract_state is not None:
    raw = _read(path_of(experiment_dir, member, SUFFIX), serialization.msgpack_restore)
    last = serialization.from_state_dict(abstract_state, raw['last'])
    if raw['best']:
      best = tuple(_unchanged_from([last.params, last.batch_stats], raw['best']))
  result = MemberResult(member, LoopState.from_json(stored['loop']), stored['checkpoint'], int(stored['epoch']),
                        np.asarray(stored['val_logits'], np.float32), last, best)
  return result, stored


def remove(experiment_dir) -> None:
  """Removes the members folder (fpclass's own intermediate files) once the experiment is written."""
  shutil.rmtree(pathlib.Path(experiment_dir) / FOLDER, ignore_errors=True)
