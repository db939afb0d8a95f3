"""Gradient accumulation (config.train.accumulate_steps): k micro-batches make one optimizer update equal to one
step of their union, the schedule counts updates, cycles end with the epoch, and a run killed in the middle of
a cycle resumes bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.config.training import TrainSettings
from fpclass.data import pipeline
from fpclass.errors import RunInterrupted
from fpclass.modes.runner import run
from fpclass.train import accumulation, ema, optim
from fpclass.train import task as task_lib
from tests.conftest import load_config
from tests.test_ema import _restore_last
from tests.test_signals import sigterm_after_step

# The digits CNN at 8x8 without batch norm, dropout or augmentation: then a batch's gradient is the mean of its
# images' and k micro-batches must update as their union does. A cosine schedule with a warmup epoch, so the
# update count shows in the weights; AdamW (its count, decoupled decay, a clipping norm that binds) and SGD
# with momentum and coupled decay (which, unlike Adam, sees the gradient's scale: a sum is not a mean).
PLAIN = {'data.image_size': (8, 8), 'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'model.dropout': 0.0,
         'augment.rotation': 0.0, 'augment.translate': 0.0, 'train.weight_decay': 0.05, 'train.schedule': 'cosine', 'train.warmup_epochs': 1, 'train.epochs': 3,
         'train.learning_rate': 0.01, 'train.tensorboard': False, 'explain.after_training': False}
B, K = 32, 3


def tiny(**overrides):
  return load_config('configs/digits.py:quick', **{**PLAIN, **overrides})


@pytest.fixture(scope='module')
def digits():
  return pipeline.load_dataset(DataSettings.from_config(tiny().data))


def _max_difference(a, b) -> float:
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  return max(jax.tree_util.tree_leaves(diffs))


OPTIMIZERS = {'adamw': {'train.optimizer': 'adamw', 'train.grad_clip_norm': 0.5},
              'sgd': {'train.optimizer': 'sgd', 'train.momentum': 0.9, 'train.learning_rate': 0.1}}


@pytest.mark.parametrize('optimizer', list(OPTIMIZERS))
def test_k_micro_batches_update_as_one_batch_k_times_larger(digits, optimizer):
  """Six updates (two epochs of two, then two of the third) of K micro-batches of B images against six steps
  of K * B images through the task's own train step: the same weights after each update, to float32 noise,
  and none in between. With 2 * K micro-batches per epoch the schedule is built for 2 updates per epoch, as the
  large batch's is."""
  images, labels = jnp.asarray(digits.train.images), jnp.asarray(digits.train.labels)
  classes = digits.class_names
  small = task_lib.build_task(RunSettings.from_config(tiny(**OPTIMIZERS[optimizer], **{'train.batch_size': B, 'train.accumulate_steps': K})),
                              classes, digits.train.labels, steps_per_epoch=2 * K)
  large = task_lib.build_task(RunSettings.from_config(tiny(**OPTIMIZERS[optimizer], **{'train.batch_size': K * B})), classes,
                              digits.train.labels, steps_per_epoch=2)
  key = jax.random.PRNGKey(0)
  shape = digits.train.images.shape[1:]
  a, b = small.init(key, shape), large.init(key, shape)
  step_a, step_b = jax.jit(small.train_step), jax.jit(large.train_step)
  order = np.random.default_rng(0).permutation(len(labels))[:6 * K * B].reshape(6, K * B)
  moved = []
  for update, index in enumerate(order, start=1):
    for i in range(K):
      before = a.params
      a, _ = step_a(a, images, labels, index[i * B:(i + 1) * B], key)
      if i < K - 1:
        assert _max_difference(a.params, before) == 0.0   # no update inside a cycle
    b, _ = step_b(b, images, labels, index, key)
    assert int(small.optimizer_updates(a)) == update == int(large.optimizer_updates(b))
    moved.append(_max_difference(b.params, large.init(key, shape).params))
    worst = _max_difference(a.params, b.params)
    print(f'{optimizer} update {update}: max |accumulated - one large batch| = {worst:.2g}')
    assert worst < 2e-6, update
  assert min(moved[1:]) > 1e-3   # the warmup starts at 0; then the weights move, so the comparison means something


def test_the_last_cycle_of_an_epoch_is_shorter_and_bn_sees_every_micro_batch(digits):
  """5 steps an epoch with k=2: updates after micro-batches 2, 4, 5, 7, 9, 10 (no cycle spans an epoch).
  BatchNorm's statistics move at every micro-batch, and the average of the weights at every update only."""
  config = tiny(**{'train.batch_size': B, 'train.accumulate_steps': 2, 'model.batch_norm': True,
                   'train.ema_decay': 0.9})
  task = task_lib.build_task(RunSettings.from_config(config), digits.class_names, digits.train.labels, steps_per_epoch=5)
  images, labels = jnp.asarray(digits.train.images), jnp.asarray(digits.train.labels)
  key = jax.random.PRNGKey(0)
  state = task.init(key, digits.train.images.shape[1:])
  step = jax.jit(task.train_step)
  updates = []
  for i in range(10):
    before = state
    state, _ = step(state, images, labels, np.arange(i * B, (i + 1) * B), key)
    updates.append(int(task.optimizer_updates(state)))
    assert _max_difference(state.batch_stats, before.batch_stats) > 0
    if updates[-1] == (updates[-2] if i else 0):   # no update: neither the weights nor their average move
      assert _max_difference(state.params, before.params) == 0 and _max_difference(state.ema, before.ema) == 0
    else:
      average = ema.update(before.ema, {'params': state.params, 'batch_stats': state.batch_stats},
                           1.0 - ema.decay_at(updates[-1], 0.9, True))
      assert _max_difference(state.ema, average) < 1e-6   # outside the jitted step: float32 rounding apart
  assert updates == [0, 1, 1, 2, 3, 3, 4, 4, 5, 6]
  assert accumulation.updates_per_epoch(5, 2) == 3


def history(workdir):
  return pd.read_csv(workdir / 'metrics.csv').drop(columns='seconds')


def test_a_run_killed_in_the_middle_of_a_cycle_resumes_bit_for_bit(tmp_path, monkeypatch):
  """3 steps an epoch (batch 479 of the 1437 training images) with k=2: cycles of 2 and 1. A SIGTERM after
  step 1 of epoch 2 stops the run with one micro-batch's gradient accumulated; the relaunch continues from
  it and ends as the unbroken run, weights, average, optimizer and metrics. The learning rate logged is the
  schedule's at the last update, for 2 updates per epoch."""
  config = tiny(**{'train.batch_size': 479, 'train.accumulate_steps': 2, 'model.batch_norm': True,
                   'train.ema_decay': 0.5, 'train.epochs': 2})
  run('train', config, tmp_path / 'unbroken')
  sigterm_after_step(monkeypatch, step=1, epoch=2)
  with pytest.raises(RunInterrupted, match=r'stopped after step 1 of 3 in epoch 2'):
    run('train', config, tmp_path / 'resumed')
  monkeypatch.undo()
  run('train', config, tmp_path / 'resumed')
  pd.testing.assert_frame_equal(history(tmp_path / 'resumed'), history(tmp_path / 'unbroken'))
  resumed, _ = _restore_last(config, tmp_path / 'resumed')
  unbroken, _ = _restore_last(config, tmp_path / 'unbroken')
  for part in ('params', 'batch_stats', 'ema', 'opt_state'):
    assert _max_difference(getattr(resumed, part), getattr(unbroken, part)) == 0.0, part
  assert int(unbroken.opt_state.gradient_step) == 4 and int(unbroken.opt_state.mini_step) == 0
  schedule = optim.learning_rate_schedule(TrainSettings.from_config(config.train), 2)
  assert history(tmp_path / 'unbroken')['learning_rate'].tolist() == pytest.approx(
      [float(schedule(1)), float(schedule(3))], rel=1e-6)
