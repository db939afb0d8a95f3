"""Orbax checkpoints (best and last); the run's metadata sidecar beside them is `fpclass.train.sidecar`.

    <workdir>/checkpoints/last/<epoch>/   train state + loop state (resume point), each epoch's end unless the
                                          save before is still being written (`fpclass.train.records`); the two
                                          newest are kept, so a damaged newest one falls back to the one before
    <workdir>/checkpoints/best/<epoch>/   when the monitored metric improves
    <workdir>/metadata.json               class names, image size, channels, normalisation, config

A checkpoint's model variables are those the model is evaluated with: a run that keeps an average of its
weights (config.train.ema_decay) stores the average there, and, in a resume point, its own weights beside it.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a killed run leaves
the previous checkpoint intact; a checkpoint damaged afterwards (truncated, corrupted) is skipped for the
one before it with a warning (`restore_newest_readable`), and never silently replaced by a fresh start.
"""
import contextlib
import datetime
import errno
import logging
import pathlib

import jax
import orbax.checkpoint as ocp

from fpclass.errors import UserInputError
from fpclass.train import orbax_quiet

# The item of a resume point holding the weights the optimizer updates, when the model item is their average.
ONLINE = 'online'
# Checkpoints kept per kind: `last` keeps one to fall back on; `interrupted` holds a run stopped by a signal
# in the middle of an epoch (fpclass.train.resume), until that epoch completes.
KEEP = {'last': 2, 'best': 1, 'interrupted': 1}


class CheckpointStore:
  """The workdir's checkpoints. Only the training run (`writer=True`, the holder of the workdir lock) creates
  folders and clears orbax's temporary folders of interrupted saves; a reader (evaluate, serve, ...) beside a
  running training must not, or it would delete the save in progress."""

  def __init__(self, workdir: str | pathlib.Path, writer: bool = False):
    self.root = pathlib.Path(workdir).absolute() / 'checkpoints'
    self.writer = writer
    self._managers = {}
    self._pending = {}   # kind -> (epoch, then) of its save in flight (the writer saves asynchronously)

  def _manager(self, kind: str) -> ocp.CheckpointManager:
    if kind not in self._managers:
      # A reader passes what read_only implies (orbax would otherwise override the values with a warning).
      options = ocp.CheckpointManagerOptions(max_to_keep=KEEP[kind] if self.writer else None,
                                             save_interval_steps=1 if self.writer else 0, create=self.writer,
                                             cleanup_tmp_directories=self.writer,
                                             enable_async_checkpointing=self.writer,
                                             read_only=not self.writer)
      self._managers[kind] = ocp.CheckpointManager(self.root / kind, options=options)
    return self._managers[kind]

  def latest_epoch(self, kind: str) -> int | None:
    if not (self.root / kind).is_dir():
      return None
    return self._manager(kind).latest_step()

  def save(self, kind: str, epoch: int, state, loop_state: dict, then=None) -> None:
    """Saves the model variables as evaluated (`TrainState.for_evaluation`: with an average of the weights,
    the average) and the loop state; `last` also keeps the optimizer state for resuming, and the weights the
    optimizer updates (item 'online') when the model variables are their average.

    The writer saves asynchronously: orbax copies the arrays off the device, returns, and writes the files
    on a thread of its own while training goes on (22 saves were 6.9 s of a footprint job on this CPU).
    The next save of the same kind, and `close`, wait for it, and a save that failed (a full disk) is
    reported there. A save still in flight when the process dies leaves only orbax's temporary folder,
    and a resumed run starts after the newest complete checkpoint, as before. `then()` runs once the save
    is complete (training writes metrics.csv then, so the file never lists an epoch no checkpoint holds)."""
    items = dict(model=ocp.args.StandardSave(model_variables(state.for_evaluation())),
                 loop=ocp.args.JsonSave(loop_state))
    if kind != 'best':  # a resume point
      items['optimizer'] = ocp.args.StandardSave(_optimizer_item(state))
      if state.ema is not None:
        items[ONLINE] = ocp.args.StandardSave(model_variables(state))
    manager = self._manager(kind)
    # Across processes orbax names its save barriers by step alone, so the `best` and `last` saves of one
    # epoch in flight together collide ("Barrier _async_write_complete.N is already ongoing") and the job
    # hangs: there, one save is in flight at a time. One process has no barriers and keeps both overlapping.
    for pending in (list(self._pending) if jax.process_count() > 1 else [kind]):
      self._wait(pending)
    if epoch in manager.all_steps():
      # Training again from an earlier checkpoint (a damaged newest one was skipped) reaches an epoch saved
      # before: the new save replaces the old one.
      manager.delete(epoch)
    with self._disk_full_is_clear(kind, epoch):
      manager.save(epoch, args=ocp.args.Composite(**items), force=True)
    self._pending[kind] = (epoch, then)

  def busy(self, kind: str) -> bool:
    """Whether a `kind` save is still being written (the saves that finished are completed first)."""
    self.poll()
    return kind in self._pending

  def poll(self) -> None:
    """Completes the saves that have finished in the background (their `then` runs now), waiting for none."""
    for kind in [k for k in self._pending if not self._managers[k].is_saving_in_progress()]:
      self._wait(kind)

  def _wait(self, kind: str) -> None:
    """Waits for the `kind` save in flight, if any; a failed one raises (a full disk as UserInputError)."""
    if kind not in self._pending:
      return
    epoch, then = self._pending.pop(kind)
    with self._disk_full_is_clear(kind, epoch):
      self._managers[kind].wait_until_finished()
    if then is not None:
      then()

  @contextlib.contextmanager
  def _disk_full_is_clear(self, kind: str, epoch: int):
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- orbax and tensorstore wrap the OS error in their own types
      if 'No space left on device' not in str(e) and getattr(e, 'errno', None) != errno.ENOSPC:
        raise
      kept = [k for k in self.epochs(kind) if k != epoch]
      raise UserInputError(f'{self.root / kind}: the disk is full (no space left on device) while saving epoch '
                           f'{epoch}; ' + (f'the previous checkpoint (epoch {kept[0]}) is intact' if kept else
                                           'no earlier checkpoint exists') +
                           '. Free some space and launch again: the run resumes from its last checkpoint') from None

  def restore(self, kind: str, abstract_state, epoch: int | None = None, with_optimizer: bool = False):
    """(state, loop_state) from the `kind` checkpoint; a clear error if it is absent or does not fit.

    Without `with_optimizer` only the model variables are read, so evaluation does not depend on the
    optimizer settings; `abstract_state` may then come from `jax.eval_shape`, and the state returned holds the
    variables as evaluated (the average, for a run that kept one) and no average. With it, the whole train
    state of a resume point: its own weights, the average when `abstract_state` has one, the optimizer.
    """
    self._wait(kind)
    epoch = self.latest_epoch(kind) if epoch is None else epoch
    if epoch is None:
      raise UserInputError(f'{self.root / kind}: no {kind!r} checkpoint; train this workdir first '
                           '(--mode train)')
    target = jax.tree_util.tree_map(_placed_here, abstract_state)
    averaged = with_optimizer and target.ema is not None
    items = dict(model=ocp.args.StandardRestore(model_variables(target.for_evaluation())),
                 loop=ocp.args.JsonRestore())
    if with_optimizer:
      items['optimizer'] = ocp.args.StandardRestore(_optimizer_item(target))
    if averaged:
      items[ONLINE] = ocp.args.StandardRestore(model_variables(target))
    try:
      restored = self._manager(kind).restore(epoch, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 -- whatever failed, orbax's other reads of it end unobserved
      orbax_quiet.drop_orbax_read_aftermath()
      if not isinstance(e, (ValueError, KeyError, TypeError)):
        raise  # a damaged file (orbax's bare Exception, tensorstore's errors): the caller decides
      raise UserInputError(f'{self.root / kind}/{epoch}: the checkpoint is damaged or does not match the model '
                           f'built from this config ({type(e).__name__}: {orbax_quiet.summary(e, 500)})') from None
    model = dict(params=restored.model['params'], batch_stats=restored.model.get('batch_stats', {}))
    if averaged:
      online = restored[ONLINE]
      state = abstract_state.replace(params=online['params'], batch_stats=online.get('batch_stats', {}), ema=model)
    else:
      state = abstract_state.replace(ema=None, **model)
    state = state.replace(semi=None)
    if with_optimizer:
      state = state.replace(step=restored.optimizer['step'], opt_state=restored.optimizer['opt_state'],
                            semi=restored.optimizer.get('semi'))
    return state, restored.loop

  def loop_state(self, kind: str = 'last', epoch: int | None = None) -> dict | None:
    """The loop state (history, best epoch, stop reason) of the `kind` checkpoint at `epoch` (default:
    the newest), if any."""
    epoch = self.latest_epoch(kind) if epoch is None else epoch
    if epoch is None:
      return None
    return self._manager(kind).restore(epoch, args=ocp.args.Composite(loop=ocp.args.JsonRestore())).loop

  def discard(self, kind: str) -> None:
    """Deletes every `kind` checkpoint (the `interrupted` one, once its epoch has completed)."""
    self._wait(kind)
    for epoch in self.epochs(kind):
      self._manager(kind).delete(epoch)

  def epochs(self, kind: str) -> list[int]:
    """The epochs of the kept `kind` checkpoints, newest first."""
    if not (self.root / kind).is_dir():
      return []
    return sorted(self._manager(kind).all_steps(), reverse=True)

  def restore_newest_readable(self, kind: str, restore_at):
    """`restore_at(epoch)` for the newest `kind` checkpoint it can read, falling back to older ones with a
    warning; when none can be read, the newest one's error (a run is never silently restarted)."""
    errors = []
    for epoch in self.epochs(kind):
      try:
        result = restore_at(epoch)
      except Exception as e:  # noqa: BLE001 -- a damaged checkpoint fails in many ways (orbax, tensorstore, json)
        errors.append((epoch, e))
        continue
      for bad, error in errors:
        where = ''
        if self.writer:  # set aside, not deleted: the next save of that epoch needs the name
          aside = self.root / 'unreadable' / f'{kind}-{bad}-{datetime.datetime.now():%Y%m%d-%H%M%S}'
          aside.parent.mkdir(exist_ok=True)
          (self.root / kind / str(bad)).rename(aside)
          where = f' (the unreadable one is kept in {aside})'
        logging.warning('%s/%d could not be read (%s: %s); using epoch %d instead%s', self.root / kind, bad,
                        type(error).__name__, orbax_quiet.summary(error, 300), epoch, where)
      if errors and self.writer:
        self._managers.pop(kind).close()  # it listed the set-aside steps
      return result
    if not errors:
      raise UserInputError(f'{self.root / kind}: no {kind!r} checkpoint; train this workdir first (--mode train)')
    epoch, error = errors[0]
    raise UserInputError(f'{self.root / kind}: no readable {kind!r} checkpoint (epoch {epoch}: '
                         f'{type(error).__name__}: {orbax_quiet.summary(error, 500)}); the run is left as it is: restore the '
                         'folder from a backup, or train in a new --workdir') from None

  def close(self, after_error: bool = False):
    """Waits for the saves in flight (raising if one failed), then closes the managers. `after_error`: the
    run is already failing with an error of its own, the one to report, so a save that failed too (a full
    disk fails both) is not raised over it."""
    try:
      for kind in list(self._pending):
        self._wait(kind)
      for manager in self._managers.values():
        manager.close()
    except Exception:  # noqa: BLE001 -- whatever orbax raises here, the run's own error comes first
      if not after_error:
        raise


def model_variables(state) -> dict:
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def _placed_here(leaf):
  """The leaf's own sharding, else the first local device: orbax would otherwise restore onto the devices
  the checkpoint was saved from (a 4-device run's checkpoint then fails to load on 1 device)."""
  sharding = getattr(leaf, 'sharding', None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _optimizer_item(state) -> dict:
  """A resume point's training state beside the model: the step, the optimizer's state, and the adaptive
  thresholds' running means when the run keeps them (config.semi.thresholds='adaptive')."""
  item = dict(step=state.step, opt_state=state.opt_state)
  if state.semi is not None:
    item['semi'] = state.semi
  return item
