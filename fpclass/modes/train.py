"""`--mode train`, training only: `train(config, workdir)`, the engine (`fpclass.train.engine`) with one
member. The mode runner chains evaluate and explain after it (`fpclass.modes`).

The whole training set is a device array and each step gathers its batch by index, or, when the decoded
set exceeds config.data.device_memory_budget, each batch is streamed from the memory-mapped decode cache in
the same order (`fpclass.train.feed`). Every epoch writes metrics.csv and the `last` checkpoint (with the loop
state, so a killed run resumes where it stopped), and the `best` checkpoint when the monitor improves.

SIGINT (Ctrl-C) or SIGTERM stops the run after the current step: the state in the middle of the epoch is
saved as the `interrupted` checkpoint, with the steps done and their metrics, and launching again continues
from the next step, bit for bit. A second signal acts at once. In a multi-process job every process must
stop at the same step, so there the stop waits for the end of the epoch (process 0's signal decides).
"""
import dataclasses
import logging
import pathlib

import jax
import numpy as np

from fpclass.data import pipeline, stream
from fpclass.runtime import timings
from fpclass.train import checkpoint, optim
from fpclass.train.axis import Split
from fpclass.train.engine import Engine, Start, TrainData
from fpclass.train.loop_state import LoopState
from fpclass.train.members import Member
from fpclass.train.progress import phase_end
from fpclass.train.records import INTERRUPTED, CheckpointRecord, PartialEpoch, StopOnSignals


def train(config, workdir) -> pipeline.Dataset:
  """Trains (resuming from `workdir` when it holds a run); returns the dataset it trained on, so the
  modes chained after it need not decode it again. `config` has been validated by the mode runner."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with timings.phase('data'):
    # In memory when it fits config.data.device_memory_budget, else streamed from the mapped decode cache.
    dataset = stream.place(pipeline.load_dataset(config, mapped=True), config)
    pipeline.write_quarantine_report(workdir / 'quarantine.csv', dataset.quarantine)
  member = Member(int(config.data.fold), int(config.seed), np.arange(len(dataset.train)),
                  np.arange(len(dataset.val)))
  train_data = TrainData(dataset.class_names, Split(dataset.train.images, dataset.train.labels),
                         Split(dataset.val.images, dataset.val.labels))
  store = checkpoint.CheckpointStore(workdir, writer=True)
  try:
    with StopOnSignals() as stop:
      engine = Engine(config, train_data, [member], CheckpointRecord(store, workdir, config.train.tensorboard),
                      stop=stop)
      with timings.phase('model'):
        start = _resume(config, workdir, store, engine)
        normalisation = dataclasses.asdict(engine.task(0).normalisation)
        params = start.state.params if start else jax.eval_shape(
            lambda: engine.task(0).init(jax.random.PRNGKey(0), engine.image_shape)).params
        checkpoint.write_metadata(workdir, checkpoint.build_metadata(
            config, dataset.class_names, optim.count_params(params), normalisation))
      engine.run([start])
  except BaseException:
    store.close(after_error=True)  # the saves in flight complete (or fail) before the process ends
    raise
  with timings.phase('checkpoints'):
    store.close()
  return dataset


def _resume(config, workdir, store, engine: Engine) -> Start | None:
  """The run's `last` checkpoint (and the `interrupted` one that continues its epoch), or None to start."""
  stored = checkpoint.read_metadata(workdir)
  if stored is not None:
    checkpoint.check_resume(workdir, stored, checkpoint.config_as_json(config))
  if stored is None or store.latest_epoch('last') is None:
    return None

  def abstract_state(loop: LoopState):
    task = engine.task(loop.phase)
    return jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), engine.image_shape))

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
  if loop.finished and loop.stop_reason == 'epochs' and loop.epoch < phase_end(loop, config):
    loop.finished = False  # the run was extended with more epochs
  logging.warning('resuming %s after epoch %d%s', workdir, loop.epoch, f', step {partial.step}' if partial else '')
  return Start(loop, engine.parallel.replicate(state), partial)

