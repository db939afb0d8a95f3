"""A solo run's checkpoints when the disk falls behind the epochs (`fpclass.train.records.CheckpointRecord`): an
epoch whose `last` save cannot start waits on the device as a copy (the train step donates the state's buffers),
the newest waiting epoch is saved once the disk is free, with the best epoch's own variables, and every epoch's
metrics row reaches the sinks once the checkpoint holding it is complete; a stop's checkpoint and `close` save
the waiting epoch first. The disk's speed is planted (`busy`), so nothing here depends on timing."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from fpclass.errors import RunInterrupted
from fpclass.runtime import sharding, tracking
from fpclass.runtime.sinks.csv_sink import CsvSink
from fpclass.runtime.sinks.sink import Sink
from fpclass.train import checkpoint, records, task
from fpclass.train.loop_state import LoopState

# A donating step, as the training loop's: the state handed in is deleted once it returns.
_step = jax.jit(lambda s: s.replace(step=s.step + 1, params=jax.tree_util.tree_map(lambda p: p + 1.0, s.params)),
                donate_argnums=0)


def _state():
  params = {'w': jnp.zeros(3)}
  return task.TrainState(step=jnp.array(0), params=params, batch_stats={}, opt_state=optax.sgd(0.1).init(params))


class SlowDisk(checkpoint.CheckpointStore):
  """A store whose `last` save is still being written exactly when `behind` says so; `saved` lists its saves."""
  behind = False

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.saved = []

  def busy(self, kind):
    if not self.behind:
      self._wait(kind)   # a real save in flight completes here: the planted disk alone decides
    return self.behind

  def save(self, kind, epoch, *args, **kwargs):
    self.saved.append((kind, epoch))
    super().save(kind, epoch, *args, **kwargs)


class EpochSink(Sink):
  """The epochs the tracking sinks were told of, in order (MLflow's and TensorBoard's log each call's new row)."""

  def __init__(self):
    self.epochs = []

  def epoch(self, rows, folder):
    self.epochs.append(rows[-1]['epoch'])


def _train(tmp_path, epochs, behind_after, improved_at, stop_at=None, free_after=()):
  """Trains `epochs` epochs through the record: the disk is behind at the end of each epoch in `behind_after`
  and at the next epoch's steps, unless the epoch is in `free_after`; the monitor improves at `improved_at`;
  `stop_at` stops the run by a signal in the middle of that epoch. Returns (the store reopened, the saves made,
  the epochs told to the tracking sinks)."""
  store, sink = SlowDisk(tmp_path, writer=True), EpochSink()
  record = records.CheckpointRecord(store, tmp_path)
  loop, state = LoopState(), _state()
  with tracking.active(tracking.Tracker([CsvSink(), sink]), tmp_path):
    try:
      _epochs(store, record, loop, state, epochs, behind_after, improved_at, stop_at, free_after)
    except RunInterrupted:
      pass
    store.behind = False
    record.flush()   # as the workdir's records close
    store.close()
  return checkpoint.CheckpointStore(tmp_path), store.saved, sink.epochs


def _epochs(store, record, loop, state, epochs, behind_after, improved_at, stop_at, free_after):
  for epoch in range(1, epochs + 1):
    state = _step(state)
    if epoch == stop_at:
      stop = type('Stop', (), dict(name='SIGTERM', signum=15))
      record.interrupt(0, epoch, state, loop, [dict(loss_sum=1.0, correct=1.0, count=2.0)], 4, stop)
    loop.history.append(dict(epoch=epoch, val_loss=1.0 / epoch))
    loop.epoch, loop.finished = epoch, epoch == epochs
    if epoch in improved_at:
      loop.best_epoch = epoch
    store.behind = epoch in behind_after
    record.epoch_end(0, epoch, state, loop, epoch in improved_at, {})
    store.behind = store.behind and epoch not in free_after
    record.poll()   # a step of the next epoch


def _weights(store, kind, epoch):
  restored, _ = store.restore(kind, _state(), epoch)
  return float(restored.params['w'][0])


def test_epochs_the_disk_could_not_take_wait_and_the_newest_is_saved_with_the_best(tmp_path):
  store, saved, told = _train(tmp_path, epochs=5, behind_after={2, 3}, improved_at={1, 2, 3})
  assert [e for kind, e in saved if kind == 'last'] == [1, 4, 5]   # 2 and 3 waited; 4 saved the newest
  assert [e for kind, e in saved if kind == 'best'] == [1, 3]      # with the best epoch's variables
  assert store.epochs('last') == [5, 4]
  assert store.epochs('best') == [3]
  assert _weights(store, 'best', 3) == 3.0       # epoch 3's own weights, copied before the next step donated them
  assert _weights(store, 'last', 4) == 4.0
  assert store.loop_state('last', 4)['epoch'] == 4
  rows = pd.read_csv(tmp_path / 'metrics.csv')   # every epoch once, epoch 2 and 3 with epoch 4's save
  assert list(rows['epoch']) == [1, 2, 3, 4, 5] and told == [1, 2, 3, 4, 5]


def test_a_waiting_epoch_is_saved_as_soon_as_the_disk_is_free(tmp_path):
  """Polled at the next epoch's steps, not left until that epoch's end."""
  _, saved, told = _train(tmp_path, epochs=4, behind_after={2}, improved_at={2}, free_after={2})
  assert saved == [('last', 1), ('best', 2), ('last', 2), ('last', 3), ('last', 4)] and told == [1, 2, 3, 4]


def test_a_stop_inside_an_epoch_saves_the_waiting_epoch_first(tmp_path):
  """The interrupted checkpoint continues the epoch before it, which must be the newest `last` (a resume reads
  the interrupted one only then)."""
  store, _, told = _train(tmp_path, epochs=5, behind_after={2, 3}, improved_at={2}, stop_at=4)
  assert store.epochs('last')[0] == 3 and store.epochs(records.INTERRUPTED) == [4]
  assert store.loop_state(records.INTERRUPTED, 4)['epoch'] == store.loop_state('last', 3)['epoch'] == 3
  assert _weights(store, 'best', 2) == 2.0 and _weights(store, 'last', 3) == 3.0
  assert list(pd.read_csv(tmp_path / 'metrics.csv')['epoch']) == [1, 2, 3] and told == [1, 2, 3]


def test_the_last_epoch_and_close_never_leave_an_epoch_unsaved(tmp_path):
  store, _, _ = _train(tmp_path, epochs=3, behind_after={1, 2, 3}, improved_at={1})
  # The run's last epoch saves even with the disk behind (the loop is finished), and flush/close complete it.
  assert store.epochs('last')[0] == 3 and store.epochs('best') == [1]
  assert _weights(store, 'best', 1) == 1.0
  assert list(pd.read_csv(tmp_path / 'metrics.csv')['epoch']) == [1, 2, 3]


def test_several_processes_save_every_epoch(tmp_path, monkeypatch):
  """Orbax's saves are collective across processes, so each must save the same epochs: no waiting there."""
  monkeypatch.setattr(sharding, 'process_count', lambda: 2)
  store, saved, _ = _train(tmp_path, epochs=3, behind_after={1, 2}, improved_at={1})
  assert [e for kind, e in saved if kind == 'last'] == [1, 2, 3]
  assert np.isclose(_weights(store, 'last', 2), 2.0)


def test_the_fine_tuning_phase_starts_from_the_waiting_best_epoch(tmp_path):
  """`best_variables` (a phase's end) reads the best epoch even when it is still waiting on the device."""
  store = SlowDisk(tmp_path, writer=True)
  record, loop = records.CheckpointRecord(store, tmp_path), LoopState(epoch=1)
  loop.history.append(dict(epoch=1, val_loss=1.0))
  store.behind = True
  record.epoch_end(0, 1, _step(_state()), loop, True, {})
  store.behind = False
  best = record.best_variables(0, _state())
  store.close()
  assert best is not None and float(best.params['w'][0]) == 1.0


def test_the_waiting_copy_compiles_nothing():
  """The device copy of a waiting epoch is a transfer: a copy op per leaf would compile one program per leaf
  shape (on the H100 it added 9 programs to the footprint job's 10). Shapes no other test uses, so a program
  compiled earlier in this process cannot hide one."""
  compiled = []

  def on_event(event, duration, **kwargs):
    if event.startswith('/jax/core/compile/'):   # tracing too: a compiled program may come from the disk cache
      compiled.append(event)
  tree = {'a': jnp.ones((3, 7, 11)), 'b': jnp.zeros((13, 5)), 'c': jnp.arange(17)}
  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    copy = records._device_copy(tree)
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert compiled == []
  for key, leaf in tree.items():
    assert copy[key] is not leaf and np.array_equal(copy[key], leaf)
  tree['a'].delete()   # the copy owns its buffers: the original's donation cannot take them
  assert float(copy['a'].sum()) == 3 * 7 * 11
