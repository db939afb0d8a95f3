"""Where each member of a plan starts, and where what it trains is kept: the one resume path.

A plan keeps its members in one of two records (`fpclass.train.plan.Plan.layout`):
- `WorkdirEpochs` (solo): the member's every epoch in the workdir's checkpoint store, the `last` checkpoint with
  its loop state and the `interrupted` one of a run stopped inside an epoch; a relaunch continues from there,
  bit for bit. A finished run relaunched with more epochs continues too.
- `FinishedMembers` (experiments): each member in `<experiment>/members/` once it has finished
  (`fpclass.train.member_store`); a relaunch keeps those and trains the rest from their start, which is the
  same training, so the results equal an unbroken run's. A variant whose experiment.json matches the config
  is finished as a whole.
Either way a record made under a config that would train something else is refused, naming the differences.
"""
import dataclasses
import json
import logging
import pathlib

import jax
import numpy as np

from fpclass.errors import UserInputError
from fpclass.train import batches, checkpoint, member_store, optim, sidecar
from fpclass.train.loop_state import LoopState, phase_end
from fpclass.train.members import Member
from fpclass.train.plan import EXPERIMENT_FILE, Variant
from fpclass.train.records import INTERRUPTED, CheckpointRecord, MemoryRecord, PartialEpoch, Start

# Keys that do not change what a finished member or variant trained, so its results are kept across them.
REUSABLE_CHANGES = ('name', 'eval.', 'submit.', 'data.cache_dir', 'data.decode_workers', 'train.log_every_steps',
                    'sweep.variants', 'sweep.baseline', 'sweep.model_axis', 'sweep.models_per_chunk',
                    'sweep.memory_fraction', 'sweep.ece_bins', 'sweep.threshold_metric')


class WorkdirEpochs:
  """A solo member's epochs in the workdir itself (`CheckpointRecord`)."""
  keeps_finished_members = False

  def __init__(self, workdir, variant: Variant):
    self.workdir, self.config, self.run = pathlib.Path(workdir), variant.config, variant.settings
    self.store = checkpoint.CheckpointStore(self.workdir, writer=True)
    self._record = None

  def todo(self, members: list[Member]) -> list[Member]:
    return members   # a finished run resumes as finished: the loop returns its result at once

  def record(self, extras: dict | None = None) -> CheckpointRecord:
    self._record = CheckpointRecord(self.store, self.workdir)
    return self._record

  def begin(self, cohort, starts: list, class_names) -> None:
    """metadata.json, the sidecar every later mode reads, before the first epoch."""
    self.cohort = cohort
    start = starts[0]
    normalisation = dataclasses.asdict(cohort.task(0).normalisation)
    params = start.state.params if start else jax.eval_shape(
        lambda: cohort.task(0).init(jax.random.PRNGKey(0), cohort.image_shape)).params
    sidecar.write_metadata(self.workdir, sidecar.build_metadata(
        self.config, self.run, class_names, optim.count_params(params), normalisation))

  def starts(self, cohort, record=None) -> list[Start | None]:
    """The run's `last` checkpoint (and the `interrupted` one that continues its epoch), or None to start."""
    config, store = self.config, self.store
    stored = sidecar.read_metadata(self.workdir)
    if stored is not None:
      sidecar.check_resume(self.workdir, stored, sidecar.config_as_json(config))
    if stored is None or store.latest_epoch('last') is None:
      return [None]

    def abstract_state(loop: LoopState):
      task = cohort.task(loop.phase)
      return jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), cohort.image_shape))

    def restore_last(epoch: int):
      loop = LoopState.from_json(store.loop_state('last', epoch))
      state, _ = store.restore('last', abstract_state(loop), epoch, with_optimizer=True)
      return loop, state

    loop, state = store.restore_newest_readable('last', restore_last)
    partial = None
    epochs = store.epochs(INTERRUPTED)
    if epochs:
      saved = store.loop_state(INTERRUPTED, epochs[0])
      if saved.get('epoch') == loop.epoch and saved.get('phase') == loop.phase:  # else from an epoch completed since
        state, _ = store.restore(INTERRUPTED, abstract_state(loop), epochs[0], with_optimizer=True)
        partial = PartialEpoch(int(saved['interrupted_step']), list(saved['interrupted_metrics']))
    if loop.finished and loop.stop_reason == 'epochs' and loop.epoch < phase_end(loop, self.run.train):
      loop.finished = False  # the run was extended with more epochs
    logging.warning('resuming %s after epoch %d%s', self.workdir, loop.epoch,
                    f', step {partial.step}' if partial else '')
    return [Start(loop, cohort.parallel.replicate(state), partial)]

  def selected_logits(self, cohort, val_images) -> np.ndarray:
    """The validation logits of the checkpoint config.train.select_checkpoint selects, predicted again: what a
    run that had finished before this launch needs for its out-of-fold predictions."""
    store = checkpoint.CheckpointStore(self.workdir)   # after `close`: every save has completed
    try:
      kind = 'best' if self.run.train.select_checkpoint == 'best' and store.latest_epoch('best') else 'last'
      task = cohort.task(0)
      state, _ = store.restore(kind, jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), cohort.image_shape)))
    finally:
      store.close()
    return batches.predict_logits(task, state, val_images, cohort.validation_batch)   # training's batch

  def close(self, after_error: bool = False) -> None:
    """Saves the epoch still waiting on the device; the saves in flight complete (or fail) before it returns.
    `after_error`: the run's own error is the one reported (`CheckpointStore.close`)."""
    try:
      if self._record is not None:
        self._record.flush()
    except Exception:  # noqa: BLE001 -- a device or disk that failed the run fails this save too
      if not after_error:
        raise
    self.store.close(after_error=after_error)


class FinishedMembers:
  """An experiment's members, each kept in `<experiment>/members/` as it finishes (`MemoryRecord`); with
  `keep_epochs` (a search's rounds) each running member's latest epoch too, so a relaunch resumes it there."""
  keeps_finished_members = True

  def __init__(self, experiment_dir, variant: Variant, keep_epochs: bool = False):
    self.experiment_dir, self.config = pathlib.Path(experiment_dir), variant.config
    self.config_json = sidecar.config_as_json(variant.config)
    self.keep_epochs = keep_epochs
    self._members = []   # the chunk being trained (`starts`), which the record's member indices refer to

  def todo(self, members: list[Member]) -> list[Member]:
    """The members not finished before (a finished member of another config is refused)."""
    return [m for m in members
            if not member_store.check_config(self.experiment_dir, m, self.config_json, REUSABLE_CHANGES)]

  def record(self, extras: dict | None = None) -> MemoryRecord:
    extras = dict(extras or {})

    def keep_epoch(m, state, loop, best, logits):
      member_store.save_epoch(self.experiment_dir, self._members[m], state, loop, best, logits, self.config_json,
                              extras)
    return MemoryRecord(on_finished=lambda r: member_store.save(
        self.experiment_dir, r, self.config_json, dict(extras, train_seconds=r.train_seconds)),
        on_epoch=keep_epoch if self.keep_epochs else None)

  def starts(self, cohort, record) -> list[Start | None]:
    """Each member's latest kept epoch (plans that keep epochs), else None: it trains from its start."""
    self._members = list(cohort.members)
    if not self.keep_epochs:
      return [None] * len(cohort.members)

    def abstract_state(loop: LoopState):
      task = cohort.task(loop.phase)
      return jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), cohort.image_shape))

    starts = []
    for m, member in enumerate(cohort.members):
      kept = member_store.load_epoch(self.experiment_dir, member, self.config_json, REUSABLE_CHANGES, abstract_state)
      if kept is None:
        starts.append(None)
        continue
      loop, state, best, logits = kept
      record.resume(m, best)
      logging.warning('resuming %s after epoch %d', member_store.path_of(self.experiment_dir, member).stem, loop.epoch)
      starts.append(Start(loop, cohort.parallel.replicate(state), logits=logits))
    return starts

  def begin(self, cohort, starts: list, class_names) -> None:
    pass   # its kept members' workdirs are written once the experiment has finished

  def load(self, member: Member, abstract_state=None):
    return member_store.load(self.experiment_dir, member, abstract_state)

  def remove(self) -> None:
    member_store.remove(self.experiment_dir)

  def close(self, after_error: bool = False) -> None:
    pass


def finished_variant(experiment_dir, config) -> dict | None:
  """A variant's stored experiment.json when it finished under this config, else None; one of a different
  config is refused."""
  path = pathlib.Path(experiment_dir) / EXPERIMENT_FILE
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  diffs = sidecar.config_differences(stored['config'], sidecar.config_as_json(config),
                                        ignore=REUSABLE_CHANGES)
  if diffs:
    raise UserInputError(f'{experiment_dir} holds results of a different config for this variant: '
                         + '; '.join(diffs[:10]) + '. Use a new --workdir, or the original flags.')
  return stored
