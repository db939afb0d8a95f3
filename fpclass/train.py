"""The training loop: `train_and_evaluate(config, workdir)`.

The compiled programs (loop form per backend, data parallel over a device mesh, train state donated)
come from `fpclass.steps.CompiledSteps`; the whole training set is a device array and each step gathers
its batch by index. Every epoch writes metrics.csv and the `last` checkpoint (with the loop
state, so a killed run resumes where it stopped), and the `best` checkpoint when the monitor improves.
Randomness is keyed by (seed, epoch, step), so a resumed run continues exactly as an unbroken one.
"""
import dataclasses
import logging
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import checkpoint, data, evaluate, explain, fileio, metrics, models, optim, tensorboard_log
from fpclass.config import validate
from fpclass.models import transfer
from fpclass.sampling import class_balanced_order
from fpclass.sharding import DataParallel
from fpclass.steps import CompiledSteps, resolve_loop
from fpclass.task import build_task, predict_logits

MONITOR_MODES = {'val_loss': 'min', 'val_accuracy': 'max', 'val_macro_f1': 'max', 'val_roc_auc': 'max'}
HISTORY = 'metrics.csv'


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
  """(steps, batch) example indices: a fresh permutation each epoch; the last batch wraps around to the
  permutation's start, so every example is seen each epoch and every batch has the same shape."""
  steps = math.ceil(n / batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[np.arange(steps * batch_size) % n].reshape(steps, batch_size).astype(np.int32)


def batch_order(sampler: str, seed: int, epoch: int, labels: np.ndarray, batch_size: int) -> np.ndarray:
  """(steps, batch) indices into `labels` for one epoch: `epoch_order`, or the class-balanced order when
  config.train.sampler='balanced'."""
  if sampler == 'balanced':
    return class_balanced_order(seed, epoch, labels, batch_size)
  return epoch_order(seed, epoch, len(labels), batch_size)


def improves(value, best, mode: str, min_delta: float = 0.0) -> bool:
  """Whether a finite monitored value beats the best so far (None: nothing to beat)."""
  if best is None:
    return True
  return value < best - min_delta if mode == 'min' else value > best + min_delta


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


def record_epoch(loop: dict, row: dict, monitor: str, mode: str, min_delta: float, patience: int,
                 epochs: int, last_phase: bool = True) -> tuple[bool, bool]:
  """Appends an epoch's metrics row to the loop state and updates best epoch, patience and the stop
  decision; returns (improved, stop). The one rule for model selection and early stopping, shared by
  `train_and_evaluate` and the many-model trainer (`fpclass.model_axis`). `epochs` is where the current
  phase ends; a phase other than the last ends with `phase_over` instead of `finished`."""
  epoch = int(row['epoch'])
  loop['history'].append(row)
  loop['epoch'] = epoch
  value = row[monitor]
  improved = value is not None and not np.isnan(value) and improves(value, loop['best_value'], mode, min_delta)
  if improved:
    loop.update(best_value=float(value), best_epoch=epoch, wait=0)
  else:
    loop['wait'] += 1
  stop = patience > 0 and loop['wait'] >= patience
  if stop or epoch == epochs:
    if last_phase:
      loop.update(finished=True, stop_reason='early_stopping' if stop else 'epochs')
    else:
      loop['phase_over'] = True
  return improved, stop


def new_loop_state() -> dict:
  return dict(epoch=0, best_value=None, best_epoch=None, wait=0, history=[], finished=False, stop_reason='',
              phase=0, phase_start=0, phase_over=False)


def train_and_evaluate(config, workdir) -> dict:
  """Trains (resuming from `workdir` when it holds a run), then evaluates the selected checkpoint (and
  explains it, with config.explain.after_training)."""
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = data.load_dataset(config)
  data.write_quarantine_report(workdir / 'quarantine.csv', dataset.quarantine)
  batch_size = min(int(config.train.batch_size), len(dataset.train))
  steps_per_epoch = math.ceil(len(dataset.train) / batch_size)
  base_key = jax.random.PRNGKey(int(config.seed))
  image_shape = dataset.train.images.shape[1:]
  parallel = DataParallel.over()
  parallel.check_batch_size(batch_size)

  store = checkpoint.CheckpointStore(workdir)
  loop = new_loop_state()
  stored = checkpoint.read_metadata(workdir)
  resume = stored is not None and store.latest_epoch('last') is not None
  if stored is not None:
    checkpoint.check_resume(workdir, stored, checkpoint.config_as_json(config))
  if resume:
    loop.update(store.loop_state('last'))
  task = build_task(phase_config(config, loop['phase']), dataset.class_names, dataset.train.labels,
                    steps_per_epoch)
  compiled = CompiledSteps(task, parallel, resolve_loop(config.train.loop))
  if resume:
    abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape))
    state, _ = store.restore('last', abstract, with_optimizer=True)
    state = parallel.replicate(state)
    logging.warning('resuming %s after epoch %d', workdir, loop['epoch'])
  else:
    init_key = jax.random.fold_in(base_key, 0)
    variables = transfer.load_pretrained(models.get_spec(config.model.name), config.model,
                                         compiled.init_variables(init_key, image_shape),
                                         data.cache_root(config.data))
    state = compiled.init(init_key, image_shape, variables)
  checkpoint.write_metadata(workdir, checkpoint.build_metadata(
      config, dataset.class_names, optim.count_params(state.params), dataclasses.asdict(task.normalisation)))

  if loop['finished'] and loop['stop_reason'] == 'epochs' and loop['epoch'] < _phase_end(loop, config):
    loop['finished'] = False  # the run was extended with more epochs
  while not loop['finished']:
    if loop['phase_over']:  # phase 0 ended and a fine-tuning phase follows
      state = _start_finetuning(config, store, loop, state)
      task = build_task(phase_config(config, 1), dataset.class_names, dataset.train.labels, steps_per_epoch)
      compiled = CompiledSteps(task, parallel, compiled.form)
      state = parallel.replicate(state.replace(step=jnp.zeros((), jnp.int32), opt_state=task.tx.init(state.params)))
    state = _fit(compiled, state, dataset, config, workdir, store, loop, base_key, batch_size)
  store.close()
  result = evaluate.evaluate_workdir(config, workdir, dataset=dataset)
  if config.explain.after_training:
    explain.explain_workdir(config, workdir, dataset=dataset)
  return result


def _phase_end(loop, config) -> int:
  if loop['phase'] == 0:
    return int(config.train.epochs)
  return loop['phase_start'] + int(config.train.finetune_epochs)


def _start_finetuning(config, store, loop, state):
  """Enters phase 1 from the best weights so far when early stopping chose them (as Keras'
  restore_best_weights would), else from the current ones."""
  if int(config.train.early_stopping_patience) > 0 and store.latest_epoch('best') is not None:
    state, _ = store.restore('best', state)
  loop.update(phase=1, phase_start=loop['epoch'], phase_over=False, wait=0)
  tqdm.write(f'fine-tuning: {config.train.finetune_epochs} epochs with model.freeze_till='
             f'{config.train.finetune_freeze_till}, learning rate x{config.train.finetune_lr_factor}')
  return state


def _fit(compiled, state, dataset, config, workdir, store, loop, base_key, batch_size):
  """Runs the epochs of the current phase, updating `loop`; returns the state at the phase's end."""
  task = compiled.task
  monitor = config.train.monitor
  mode, min_delta = MONITOR_MODES[monitor], float(config.train.min_delta)
  patience = int(config.train.early_stopping_patience)
  last_phase = loop['phase'] == 1 or int(config.train.finetune_epochs) == 0
  end = _phase_end(loop, config)
  total = end if last_phase else end + int(config.train.finetune_epochs)
  train_x, train_y = compiled.parallel.replicate((dataset.train.images, dataset.train.labels))
  seed, n = int(config.seed), len(dataset.train)
  log_every = max(1, int(config.train.log_every_steps))
  epoch_keys = jax.random.fold_in(base_key, 1)
  schedule = optim.learning_rate_schedule(phase_config(config, loop['phase']).train, math.ceil(n / batch_size))

  for epoch in range(loop['epoch'], end):
    start = time.perf_counter()
    order = compiled.parallel.replicate(batch_order(config.train.sampler, seed, epoch, dataset.train.labels,
                                                    batch_size))
    key = jax.random.fold_in(epoch_keys, epoch)
    bar = tqdm(total=order.shape[0], desc=f'epoch {epoch + 1}/{total}', unit='step', leave=False, disable=None)

    def show_progress(steps_done, step_metrics):
      bar.update(steps_done - bar.n)
      if steps_done % log_every == 0 or steps_done == order.shape[0]:
        done = jax.device_get(step_metrics)
        bar.set_postfix(loss=f'{sum(m["loss_sum"] for m in done) / sum(m["count"] for m in done):.4f}',
                        acc=f'{sum(m["correct"] for m in done) / sum(m["count"] for m in done):.3f}')

    state, step_metrics = compiled.run_epoch(state, train_x, train_y, order, key, show_progress)
    bar.close()
    totals = {k: float(sum(np.asarray(m[k]) for m in jax.device_get(step_metrics))) for k in step_metrics[0]}
    val_logits = predict_logits(task, state, dataset.val.images, int(config.eval.batch_size), compiled.predict)
    val = metrics.epoch_metrics(dataset.val.labels, val_logits, task.head, len(dataset.class_names))
    row = dict(epoch=epoch + 1, train_loss=totals['loss_sum'] / totals['count'],
               train_accuracy=totals['correct'] / totals['count'], **{f'val_{k}': v for k, v in val.items()},
               learning_rate=float(schedule(int(state.step) - 1)), phase=loop['phase'],
               seconds=time.perf_counter() - start)
    improved, stop = record_epoch(loop, row, monitor, mode, min_delta, patience, end, last_phase)
    if improved:
      store.save('best', epoch + 1, state, dict(loop))
    store.save('last', epoch + 1, state, dict(loop))
    fileio.write_csv(workdir / HISTORY, pd.DataFrame(loop['history']))
    if config.train.tensorboard:
      tensorboard_log.write_epoch(workdir / tensorboard_log.FOLDER, row)
    tqdm.write(f'epoch {epoch + 1}/{total}: loss {row["train_loss"]:.4f} acc {row["train_accuracy"]:.3f} | '
               f'val loss {row["val_loss"]:.4f} acc {row["val_accuracy"]:.3f} f1 {row["val_macro_f1"]:.3f}'
               f'{" *" if improved else ""} ({row["seconds"]:.1f}s)')
    if stop:
      tqdm.write(f'early stopping: no {monitor} improvement for {patience} epochs; best epoch '
                 f'{loop["best_epoch"]}')
      break
  return state
