"""The training loop: `train_and_evaluate(config, workdir)`.

Per-step jit with the train state donated; the whole training set is a device array and each step
gathers its batch by index. Every epoch writes metrics.csv and the `last` checkpoint (with the loop
state, so a killed run resumes where it stopped), and the `best` checkpoint when the monitor improves.
Randomness is keyed by (seed, epoch, step), so a resumed run continues exactly as an unbroken one.
"""
import dataclasses
import logging
import math
import pathlib
import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import checkpoint, data, evaluate, fileio, metrics, optim
from fpclass.config import validate
from fpclass.task import build_task, predict_logits

MONITOR_MODES = {'val_loss': 'min', 'val_accuracy': 'max', 'val_macro_f1': 'max', 'val_roc_auc': 'max'}
HISTORY = 'metrics.csv'


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
  """(steps, batch) example indices: a fresh permutation each epoch; the last batch wraps around to the
  permutation's start, so every example is seen each epoch and every batch has the same shape."""
  steps = math.ceil(n / batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[np.arange(steps * batch_size) % n].reshape(steps, batch_size).astype(np.int32)


def improves(value, best, mode: str, min_delta: float = 0.0) -> bool:
  """Whether a finite monitored value beats the best so far (None: nothing to beat)."""
  if best is None:
    return True
  return value < best - min_delta if mode == 'min' else value > best + min_delta


def record_epoch(loop: dict, row: dict, monitor: str, mode: str, min_delta: float, patience: int,
                 epochs: int) -> tuple[bool, bool]:
  """Appends an epoch's metrics row to the loop state and updates best epoch, patience and the stop
  decision; returns (improved, stop). The one rule for model selection and early stopping, shared by
  `train_and_evaluate` and the many-model trainer (`fpclass.model_axis`)."""
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
    loop.update(finished=True, stop_reason='early_stopping' if stop else 'epochs')
  return improved, stop


def new_loop_state() -> dict:
  return dict(epoch=0, best_value=None, best_epoch=None, wait=0, history=[], finished=False, stop_reason='')


def train_and_evaluate(config, workdir) -> dict:
  """Trains (resuming from `workdir` when it holds a run), then evaluates the selected checkpoint."""
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train_cfg = config.train
  monitor = train_cfg.monitor

  dataset = data.load_dataset(config)
  data.write_quarantine_report(workdir / 'quarantine.csv', dataset.quarantine)
  n_train = len(dataset.train)
  batch_size = min(int(train_cfg.batch_size), n_train)
  steps_per_epoch = math.ceil(n_train / batch_size)
  task = build_task(config, dataset.class_names, dataset.train.labels, steps_per_epoch)
  image_shape = dataset.train.images.shape[1:]

  base_key = jax.random.PRNGKey(int(config.seed))
  state = task.init(jax.random.fold_in(base_key, 0), image_shape)
  store = checkpoint.CheckpointStore(workdir)
  loop = new_loop_state()
  stored = checkpoint.read_metadata(workdir)
  if stored is not None:
    checkpoint.check_resume(workdir, stored, checkpoint.config_as_json(config))
    if store.latest_epoch('last') is not None:
      state, loop = store.restore('last', checkpoint.abstract_like(state), with_optimizer=True)
      logging.warning('resuming %s after epoch %d', workdir, loop['epoch'])
  checkpoint.write_metadata(workdir, checkpoint.build_metadata(
      config, dataset.class_names, optim.count_params(state.params), dataclasses.asdict(task.normalisation)))

  mode, min_delta = MONITOR_MODES[monitor], float(train_cfg.min_delta)
  patience = int(train_cfg.early_stopping_patience)
  epochs = int(train_cfg.epochs)
  if loop['finished'] and loop['epoch'] < epochs and loop['stop_reason'] == 'epochs':
    loop['finished'] = False  # the run was extended with a larger config.train.epochs
  if not loop['finished']:
    state = _fit(task, state, dataset, config, workdir, store, loop, base_key, batch_size, monitor, mode,
                 min_delta, patience, epochs)
  store.close()
  return evaluate.evaluate_workdir(config, workdir, dataset=dataset)


def _fit(task, state, dataset, config, workdir, store, loop, base_key, batch_size, monitor, mode, min_delta,
         patience, epochs):
  train_step = jax.jit(lambda s, x, y, order, i, k: task.train_step(s, x, y, order[i], jax.random.fold_in(k, i)),
                       donate_argnums=0)
  predict_fn = jax.jit(task.predict)
  train_x = jax.device_put(dataset.train.images)
  train_y = jax.device_put(dataset.train.labels)
  seed, n = int(config.seed), len(dataset.train)
  log_every = max(1, int(config.train.log_every_steps))
  epoch_keys = jax.random.fold_in(base_key, 1)

  for epoch in range(loop['epoch'], epochs):
    start = time.perf_counter()
    order = jax.device_put(epoch_order(seed, epoch, n, batch_size))
    key = jax.random.fold_in(epoch_keys, epoch)
    step_metrics = []
    bar = tqdm(range(order.shape[0]), desc=f'epoch {epoch + 1}/{epochs}', unit='step', leave=False,
               disable=None)
    for i in bar:
      state, step_out = train_step(state, train_x, train_y, order, i, key)
      step_metrics.append(step_out)
      if (i + 1) % log_every == 0:
        done = jax.device_get(step_metrics)
        bar.set_postfix(loss=f'{sum(m["loss_sum"] for m in done) / sum(m["count"] for m in done):.4f}',
                        acc=f'{sum(m["correct"] for m in done) / sum(m["count"] for m in done):.3f}')
    totals = {k: float(sum(np.asarray(m[k]) for m in jax.device_get(step_metrics))) for k in step_metrics[0]}
    val_logits = predict_logits(task, state, dataset.val.images, int(config.eval.batch_size), predict_fn)
    val = metrics.epoch_metrics(dataset.val.labels, val_logits, task.head, len(dataset.class_names))
    lr = float(optim.learning_rate_schedule(config.train, order.shape[0])(int(state.step)))
    row = dict(epoch=epoch + 1, train_loss=totals['loss_sum'] / totals['count'],
               train_accuracy=totals['correct'] / totals['count'], **{f'val_{k}': v for k, v in val.items()},
               learning_rate=lr, seconds=time.perf_counter() - start)
    improved, stop = record_epoch(loop, row, monitor, mode, min_delta, patience, epochs)
    if improved:
      store.save('best', epoch + 1, state, dict(loop))
    store.save('last', epoch + 1, state, dict(loop))
    fileio.write_csv(workdir / HISTORY, pd.DataFrame(loop['history']))
    tqdm.write(f'epoch {epoch + 1}/{epochs}: loss {row["train_loss"]:.4f} acc {row["train_accuracy"]:.3f} | '
               f'val loss {row["val_loss"]:.4f} acc {row["val_accuracy"]:.3f} f1 {row["val_macro_f1"]:.3f}'
               f'{" *" if improved else ""} ({row["seconds"]:.1f}s)')
    if stop:
      tqdm.write(f'early stopping: no {monitor} improvement for {patience} epochs; best epoch '
                 f'{loop["best_epoch"]}')
      break
  return state
