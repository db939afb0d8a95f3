"""`--mode train`, training only: `train(config, workdir)`. The mode runner chains evaluate and explain
after it (`fpclass.modes`).

The compiled programs (loop form per backend, data parallel over a device mesh, train state donated)
come from `fpclass.steps.CompiledSteps`; the whole training set is a device array and each step gathers
its batch by index, or, when the decoded set exceeds config.data.device_memory_budget, each batch is
streamed from the memory-mapped decode cache in the same order (`fpclass.feed`). Every epoch writes
metrics.csv and the `last` checkpoint (with the loop state, so a killed run resumes where it stopped),
and the `best` checkpoint when the monitor improves.
Randomness is keyed by (seed, epoch, step), so a resumed run continues exactly as an unbroken one.

SIGINT (Ctrl-C) or SIGTERM stops the run after the current step: the state in the middle of the epoch is
saved as the `interrupted` checkpoint, with the steps done and their metrics, and launching again continues
from the next step, bit for bit. A second signal acts at once. In a multi-process job every process must
stop at the same step, so there the stop waits for the end of the epoch (process 0's signal decides).
"""
import dataclasses
import functools
import logging
import math
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import (
  checkpoint,
  data,
  feature_cache,
  feed,
  fileio,
  metrics,
  models,
  optim,
  sharding,
  tensorboard_log,
  timings,
)
from fpclass.data import stream
from fpclass.errors import RunInterrupted
from fpclass.loop_state import LoopState, SelectionRules, epoch_row
from fpclass.models import transfer
from fpclass.sampling import batch_order
from fpclass.sharding import DataParallel
from fpclass.steps import CompiledSteps, resolve_loop
from fpclass.task import build_task

HISTORY = 'metrics.csv'
INTERRUPTED = 'interrupted'


def phase_config(config, phase: int):
  """The config of training phase `phase`. Phase 1, when config.train.finetune_epochs > 0, fine-tunes:
  model.freeze_till becomes train.finetune_freeze_till, the learning rate is scaled by
  train.finetune_lr_factor, and the schedule spans the fine-tuning epochs."""
  if phase == 0:
    return config
  tuned = ml_collections.ConfigDict(config.to_dict())
  tuned.model.freeze_till = int(config.train.finetune_freeze_till)
  tuned.train.learning_rate = float(config.train.learning_rate) * float(config.train.finetune_lr_factor)
  tuned.train.epochs = int(config.train.finetune_epochs)
  tuned.train.warmup_epochs = 0
  return tuned


def train(config, workdir) -> data.Dataset:
  """Trains (resuming from `workdir` when it holds a run); returns the dataset it trained on, so the
  modes chained after it need not decode it again. `config` has been validated by the mode runner."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with timings.phase('data'):
    # In memory when it fits config.data.device_memory_budget, else streamed from the mapped decode cache.
    dataset = stream.place(data.load_dataset(config, mapped=True), config)
    data.write_quarantine_report(workdir / 'quarantine.csv', dataset.quarantine)
  batch_size = min(int(config.train.batch_size), len(dataset.train))
  steps_per_epoch = math.ceil(len(dataset.train) / batch_size)
  base_key = jax.random.PRNGKey(int(config.seed))
  image_shape = dataset.train.images.shape[1:]
  parallel = DataParallel.over()
  parallel.check_batch_size(batch_size)

  store = checkpoint.CheckpointStore(workdir, writer=True)
  try:
    _train_phases(config, workdir, store, dataset, batch_size, steps_per_epoch, base_key, image_shape, parallel)
  except BaseException:
    store.close(after_error=True)  # the saves in flight complete (or fail) before the process ends
    raise
  with timings.phase('checkpoints'):
    store.close()
  return dataset


def _train_phases(config, workdir, store, dataset, batch_size, steps_per_epoch, base_key, image_shape, parallel):
  """Restores or initialises the model, then trains every phase still to run."""
  with timings.phase('model'):
    loop, task, state, partial, compiled = _start(config, workdir, store, dataset, steps_per_epoch, base_key,
                                                  image_shape, parallel)
  if loop.finished and loop.stop_reason == 'epochs' and loop.epoch < _phase_end(loop, config):
    loop.finished = False  # the run was extended with more epochs
  with _StopOnSignals() as stop:
    while not loop.finished:
      if loop.phase_over:  # phase 0 ended and a fine-tuning phase follows
        state = _start_finetuning(config, store, loop, state)
        task = build_task(phase_config(config, 1), dataset.class_names, dataset.train.labels, steps_per_epoch)
        compiled = CompiledSteps(task, parallel, compiled.form)
        state = parallel.replicate(state.replace(step=jnp.zeros((), jnp.int32),
                                                 opt_state=task.tx.init(state.params)))
      # With the feature cache (fpclass.feature_cache) the phase trains the head on features computed once.
      with timings.phase('epochs'):  # metrics.csv counts the one-time feature pass in the first epoch too
        fit_compiled, fit_data, setup_seconds = feature_cache.for_phase(config, compiled, state, dataset, loop.phase)
      state = _fit(fit_compiled, state, fit_data, config, workdir, store, loop, base_key, batch_size, setup_seconds,
                   partial, stop)
      partial = None


def _start(config, workdir, store, dataset, steps_per_epoch, base_key, image_shape, parallel):
  """(loop, task, state, partial epoch, compiled steps): resumed from the workdir's checkpoints, or fresh."""
  loop = LoopState()
  stored = checkpoint.read_metadata(workdir)
  resume = stored is not None and store.latest_epoch('last') is not None
  if stored is not None:
    checkpoint.check_resume(workdir, stored, checkpoint.config_as_json(config))

  def task_at(loop: LoopState):
    return build_task(phase_config(config, loop.phase), dataset.class_names, dataset.train.labels, steps_per_epoch)

  def restore_last(epoch: int):
    loop = LoopState.from_json(store.loop_state('last', epoch))
    task = task_at(loop)
    abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape))
    state, _ = store.restore('last', abstract, epoch, with_optimizer=True)
    return loop, task, state

  partial = None
  if resume:
    loop, task, state = store.restore_newest_readable('last', restore_last)
    restored = _restore_interrupted(store, loop, task, image_shape)
    if restored is not None:
      state, partial = restored
    state = parallel.replicate(state)
    logging.warning('resuming %s after epoch %d%s', workdir, loop.epoch,
                    f', step {partial.step}' if partial else '')
  else:
    task = task_at(loop)
  compiled = CompiledSteps(task, parallel, resolve_loop(config.train.loop))
  if not resume:
    init_key = jax.random.fold_in(base_key, 0)
    # The file's arrays go into the abstract variables first, so only what it lacks is initialised.
    loaded = transfer.load_pretrained(models.get_spec(config.model.name), config.model,
                                      compiled.variable_shapes(image_shape), fileio.cache_root(config.data.cache_dir))
    variables = compiled.init_variables(init_key, image_shape, loaded)
    state = compiled.init(init_key, image_shape, variables)
  checkpoint.write_metadata(workdir, checkpoint.build_metadata(
      config, dataset.class_names, optim.count_params(state.params), dataclasses.asdict(task.normalisation)))
  return loop, task, state, partial, compiled


@dataclasses.dataclass
class PartialEpoch:
  """Where a run stopped by a signal was inside its epoch: the steps done and their metrics."""
  step: int
  step_metrics: list   # one {'loss_sum', 'correct', 'count'} dict of floats per step done


def _restore_interrupted(store, loop: LoopState, task, image_shape):
  """(state, PartialEpoch) from the `interrupted` checkpoint when it continues the epoch after `loop`'s."""
  epochs = store.epochs(INTERRUPTED)
  if not epochs:
    return None
  saved = store.loop_state(INTERRUPTED, epochs[0])
  if saved.get('epoch') != loop.epoch or saved.get('phase') != loop.phase:
    return None  # from an epoch that has been completed (or rolled back) since
  abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape))
  state, _ = store.restore(INTERRUPTED, abstract, epochs[0], with_optimizer=True)
  return state, PartialEpoch(int(saved['interrupted_step']), list(saved['interrupted_metrics']))


class _StopOnSignals:
  """SIGINT and SIGTERM set a flag that the loop reads after each step; the handlers are put back at
  once, so a second signal acts as usual (KeyboardInterrupt, or termination)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signum = signum
    self._restore()

  def _restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()

  def requested(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else 'process 0\'s signal'



def _phase_end(loop: LoopState, config) -> int:
  if loop.phase == 0:
    return int(config.train.epochs)
  return loop.phase_start + int(config.train.finetune_epochs)


def _start_finetuning(config, store, loop, state):
  """Enters phase 1 from the best weights so far when early stopping chose them (as Keras'
  restore_best_weights would), else from the current ones."""
  if int(config.train.early_stopping_patience) > 0 and store.latest_epoch('best') is not None:
    state, _ = store.restore('best', state)
  loop.phase, loop.phase_start, loop.phase_over, loop.wait = 1, loop.epoch, False, 0
  tqdm.write(f'fine-tuning: {config.train.finetune_epochs} epochs with model.freeze_till='
             f'{config.train.finetune_freeze_till}, learning rate x{config.train.finetune_lr_factor}')
  return state


def _fit(compiled, state, dataset, config, workdir, store, loop, base_key, batch_size, setup_seconds=0.0,
         partial: PartialEpoch | None = None, stop: _StopOnSignals | None = None):
  """Runs the epochs of the current phase, updating `loop`; returns the state at the phase's end. The first
  epoch continues `partial` when given; `stop` ends the run after the current step (RunInterrupted)."""
  task = compiled.task
  rules = SelectionRules.from_config(config.train)
  last_phase = loop.phase == 1 or int(config.train.finetune_epochs) == 0
  end = _phase_end(loop, config)
  total = end if last_phase else end + int(config.train.finetune_epochs)
  train_feed = feed.train_feed(compiled, dataset.train)  # resident on the devices, or streamed
  seed, n = int(config.seed), len(dataset.train)
  log_every = max(1, int(config.train.log_every_steps))
  epoch_keys = jax.random.fold_in(base_key, 1)
  schedule = optim.learning_rate_schedule(phase_config(config, loop.phase).train, math.ceil(n / batch_size))

  for epoch in range(loop.epoch, end):
    with timings.phase('epochs'):  # the checkpoint saves inside it count as 'checkpoints'
      start = time.perf_counter() - setup_seconds   # a one-time pass (the feature cache's) counts in the first epoch
      setup_seconds = 0.0
      order = batch_order(config.train.sampler, seed, epoch, dataset.train.labels, batch_size)
      key = jax.random.fold_in(epoch_keys, epoch)
      first, done_before = (partial.step, partial.step_metrics) if partial else (0, [])
      partial = None
      # One process alone may stop mid-epoch; several must agree, which they do at the epoch's end (below).
      should_stop = stop.requested if stop is not None and sharding.process_count() == 1 else None
      bar = tqdm(total=order.shape[0], desc=f'epoch {epoch + 1}/{total}', unit='step', leave=False, disable=None)
      show = _progress(bar, order.shape[0], log_every)

      def on_step(done, step_metrics, show=show):
        store.poll()  # the previous epoch's metrics.csv as soon as its checkpoint is complete
        show(done, step_metrics)
      state, step_metrics = train_feed.run_epoch(state, order, key, on_step, first, should_stop)
      bar.close()
      step_metrics = [{k: np.float32(v) for k, v in m.items()} for m in done_before] + jax.device_get(step_metrics)
      if len(step_metrics) < order.shape[0]:
        _save_interrupted(store, epoch, state, loop, step_metrics, order.shape[0], stop)
      totals = {k: float(sum(np.asarray(m[k]) for m in step_metrics)) for k in step_metrics[0]}
      val_logits = feed.predict_logits(compiled, state, dataset.val.images, int(config.eval.batch_size))
      val = metrics.epoch_metrics(dataset.val.labels, val_logits, task.head, len(dataset.class_names))
      row = epoch_row(epoch + 1, totals, val, float(schedule(int(state.step) - 1)), loop.phase,
                      time.perf_counter() - start)
      improved, stopped_early = loop.record(row, rules, end, last_phase)
      with timings.phase('checkpoints'):
        if improved:
          store.save('best', epoch + 1, state, loop.to_json())
        store.save('last', epoch + 1, state, loop.to_json(),
                   then=functools.partial(_record_epoch, workdir, list(loop.history), config.train.tensorboard))
        store.discard(INTERRUPTED)
      tqdm.write(f'epoch {epoch + 1}/{total}: loss {row["train_loss"]:.4f} acc {row["train_accuracy"]:.3f} | '
                 f'val loss {row["val_loss"]:.4f} acc {row["val_accuracy"]:.3f} f1 {row["val_macro_f1"]:.3f}'
                 f'{" *" if improved else ""} ({row["seconds"]:.1f}s)')
      if stop is not None and not loop.finished and sharding.agree_on(stop.requested()):
        raise RunInterrupted(f'{stop.name}: stopped after epoch {epoch + 1}; its checkpoint is saved. Launch the '
                             'same command again to resume.', stop.signum or signal.SIGTERM)
      if stopped_early:
        tqdm.write(f'early stopping: no {rules.monitor} improvement for {rules.patience} epochs; best epoch '
                   f'{loop.best_epoch}')
        break
  return state


def _record_epoch(workdir, history: list, tensorboard: bool) -> None:
  """metrics.csv (and TensorBoard) after the epoch's `last` checkpoint is complete (saves are asynchronous),
  so a killed run's metrics.csv lists exactly the epochs it resumes after."""
  fileio.write_csv(workdir / HISTORY, pd.DataFrame(history))
  if tensorboard:
    tensorboard_log.write_epoch(workdir / tensorboard_log.FOLDER, history[-1])


def _save_interrupted(store, epoch: int, state, loop: LoopState, step_metrics: list, steps: int, stop):
  """Saves the middle of epoch `epoch` (0-based) and raises RunInterrupted saying how to resume."""
  done = len(step_metrics)
  store.save(INTERRUPTED, epoch + 1, state, dict(
      loop.to_json(), interrupted_step=done,
      interrupted_metrics=[{k: float(v) for k, v in m.items()} for m in step_metrics]))
  raise RunInterrupted(f'{stop.name}: stopped after step {done} of {steps} in epoch {epoch + 1}; saved in '
                       f'{store.root / INTERRUPTED}. Launch the same command again to resume from step {done + 1}.',
                       stop.signum)


def _progress(bar, steps: int, log_every: int):
  """The per-step callback of `CompiledSteps.run_epoch`: advances `bar`, with the running loss and accuracy
  every `log_every` steps (reading them waits for the device, so not every step)."""
  def show(steps_done, step_metrics):
    bar.update(steps_done - bar.n)
    if steps_done % log_every == 0 or steps_done == steps:
      done = jax.device_get(step_metrics)
      bar.set_postfix(loss=f'{sum(m["loss_sum"] for m in done) / sum(m["count"] for m in done):.4f}',
                      acc=f'{sum(m["correct"] for m in done) / sum(m["count"] for m in done):.3f}')
  return show
