"""The training core: losses, class weights, batching order, determinism, resume, checkpoint checks."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk
from fpclass.models import heads
from fpclass.modes.runner import run
from fpclass.train import batches as task_lib_batches
from fpclass.train import class_weights as class_weights_lib
from fpclass.train import oof, sidecar
from fpclass.train import task as task_lib
from fpclass.train.sampling import epoch_order
from tests.conftest import assert_same_bits, load_config


def tiny_digits(**overrides):
  return load_config('configs/digits.py:quick', **{
      'data.image_size': (8, 8), 'augment.rotation': 0.0, 'augment.translate': 0.0,
      'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'train.batch_size': 64, **overrides})


def test_class_weight_specs():
  names = ('cat', 'dog', 'eel')
  labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
  assert class_weights_lib.class_weights('', names, labels) is None
  assert np.allclose(class_weights_lib.class_weights('auto', names, labels), [10 / 18, 10 / 9, 10 / 3])
  assert class_weights_lib.class_weights('dog:2, eel:0.5', names, labels) == (1.0, 2.0, 0.5)
  with pytest.raises(UserInputError, match="'cow:2' is not"):
    class_weights_lib.class_weights('cow:2', names, labels)


def test_weighted_loss_matches_pytorch_semantics():
  # torch.nn.CrossEntropyLoss(weight=w): sum_i w[y_i] * ce_i / sum_i w[y_i]
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  labels = jnp.array([0, 1, 1])
  ce = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
  t = task_lib.Task(model=None, tx=None, normalisation=None, augment_cfg=None, head='softmax', num_classes=2,
                    class_weights=(1.0, 3.0))
  assert np.isclose(t.loss(logits, labels), (ce[0] + 3 * ce[1] + 3 * ce[2]) / 7)


def test_sigmoid_and_softmax_agree_on_probabilities():
  p = heads.probabilities(np.array([[0.0], [2.0]]), 'sigmoid')
  assert np.allclose(p.sum(1), 1) and np.isclose(p[1, 1], 1 / (1 + np.exp(-2)))


def test_epoch_order_covers_every_example_with_fixed_batches():
  order = epoch_order(seed=0, epoch=3, n=70, batch_size=32)
  assert order.shape == (3, 32) and set(order.ravel()) == set(range(70))
  assert not np.array_equal(order, epoch_order(0, 4, 70, 32))
  assert np.array_equal(order, epoch_order(0, 3, 70, 32))


def test_training_is_deterministic_and_resume_equals_an_unbroken_run(tmp_path):
  # Run A: 3 epochs straight. Run B: 1 epoch, then relaunched to 3 (resumes from its checkpoint).
  # A constant schedule, since a cosine one depends on the number of epochs.
  const = {'train.schedule': 'constant', 'augment.rotation': 5.0}
  run('train', tiny_digits(**const, **{'train.epochs': 3}), tmp_path / 'a')
  run('train', tiny_digits(**const, **{'train.epochs': 1}), tmp_path / 'b')
  run('train', tiny_digits(**const, **{'train.epochs': 3}), tmp_path / 'b')
  a = pd.read_csv(tmp_path / 'a' / 'metrics.csv').drop(columns='seconds')
  b = pd.read_csv(tmp_path / 'b' / 'metrics.csv').drop(columns='seconds')
  pd.testing.assert_frame_equal(a, b)
  pa = load_trained(tiny_digits(**const), tmp_path / 'a', 'last').state.params
  pb = load_trained(tiny_digits(**const), tmp_path / 'b', 'last').state.params
  for got, expected in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
    assert_same_bits(got, expected)


def test_evaluate_predicts_every_split_with_one_program(tmp_path):
  """prediction_chunk: one batch shape for val and train (the smaller split padded), so one compiled
  predict serves both; the padding does not change the logits beyond float32 rounding."""
  config = tiny_digits(**{'train.epochs': 1, 'eval.score_train': True, 'eval.batch_size': 2048})
  run('train', config, tmp_path)
  dataset = pipeline.load_dataset(DataSettings.from_config(config.data))
  chunk = prediction_chunk(RunSettings.from_config(config), dataset)
  if jax.default_backend() == 'cpu':   # validation's batch is eval.batch_size: the train split's size, capped
    assert len(dataset.val) < chunk == min(int(config.eval.batch_size), len(dataset.train))
  else:   # validation's batch is the training batch (`validation_batch`): both splits in chunks of it
    assert chunk == int(config.train.batch_size) < len(dataset.val)
  trained = load_trained(config, tmp_path)
  padded = trained.logits(dataset.val.images, int(config.eval.batch_size), chunk)
  trained.logits(dataset.train.images, int(config.eval.batch_size), chunk)
  assert trained.compiled._predict._cache_size() == 1
  alone = trained.logits(dataset.val.images, int(config.eval.batch_size))  # its own batch shape
  assert trained.compiled._predict._cache_size() == 2
  np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """One finished run of tiny_digits(), for the refusal tests: each refuses before training, so each starts
  from its own copy of the same workdir (`copy_of`) instead of training its own. Its data cache is this
  fixture's (the per-test `isolated_cache` is not set up yet at module scope)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('FPCLASS_CACHE', str(tmp_path_factory.mktemp('tiny-run-cache')))
    workdir = tmp_path_factory.mktemp('tiny-run')
    run('train', tiny_digits(), workdir)
  return workdir


def copy_of(tiny_run, tmp_path):
  shutil.copytree(tiny_run, tmp_path, dirs_exist_ok=True)
  return tmp_path


def test_resume_with_a_different_config_is_refused(tiny_run, tmp_path):
  tmp_path = copy_of(tiny_run, tmp_path)
  with pytest.raises(UserInputError, match=r'train.learning_rate: 0.001 -> 0.1'):
    run('train', tiny_digits(**{'train.learning_rate': 0.1}), tmp_path)


def test_restoring_into_another_architecture_is_refused(tiny_run, tmp_path):
  tmp_path = copy_of(tiny_run, tmp_path)
  with pytest.raises(UserInputError, match=r'--config.model.fc_sizes=\(32,\) \(trained with \(16,\)\)'):
    load_trained(tiny_digits(**{'model.fc_sizes': (32,)}), tmp_path)


def test_a_checkpoint_that_does_not_fit_gives_a_clear_error(tiny_run, tmp_path):
  tmp_path = copy_of(tiny_run, tmp_path)
  meta = sidecar.read_metadata(tmp_path)
  meta['config']['model']['fc_sizes'] = [32]  # a sidecar edited to lie about the checkpoint
  sidecar.write_metadata(tmp_path, meta)
  with pytest.raises(UserInputError, match='does not match the model'):
    load_trained(tiny_digits(**{'model.fc_sizes': (32,)}), tmp_path)


def test_early_stopping_restores_the_best_epoch(tmp_path):
  # A learning rate this high diverges after the first epochs, so val loss stops improving.
  config = tiny_digits(**{'train.epochs': 12, 'train.learning_rate': 0.05, 'train.early_stopping_patience': 2,
                          'train.select_checkpoint': 'best'})
  scores = run('train', config, tmp_path)
  history = pd.read_csv(tmp_path / 'metrics.csv')
  best = int(history['val_loss'].idxmin()) + 1
  assert len(history) == best + 2 < 12
  assert scores['epoch'] == best and np.isclose(scores['loss'], history['val_loss'].min(), atol=1e-5)
  # Relaunched, a run that stopped early stays stopped: no epoch is trained again (only a run that ran out of
  # epochs continues, when given more), the checkpoints and the selected epoch are the same.
  last = load_trained(config, tmp_path, 'last').state.params
  again = run('train', config, tmp_path)
  pd.testing.assert_frame_equal(pd.read_csv(tmp_path / 'metrics.csv'), history)
  assert again['epoch'] == best and again['loss'] == scores['loss']
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      np.array_equal, load_trained(config, tmp_path, 'last').state.params, last)))


def test_a_finished_run_missing_its_predictions_writes_them_again_on_relaunch(tmp_path, monkeypatch):
  """A run that finished in a launch which stopped before writing oof_predictions.csv: the next launch predicts
  the selected checkpoint again, at the batch training validated in (one program, the same logits)."""
  config = tiny_digits(**{'train.epochs': 1, 'eval.validation_batch_size': 7})
  run('train', config, tmp_path)
  path = tmp_path / oof.FILE
  before = pd.read_csv(path)
  path.unlink()
  batches = []
  original = task_lib_batches.predict_logits
  monkeypatch.setattr(task_lib_batches, 'predict_logits',
                      lambda task, state, images, batch, *a, **k: batches.append(batch) or original(task, state, images, batch, *a, **k))
  run('train', config, tmp_path)
  assert 7 in batches
  pd.testing.assert_frame_equal(pd.read_csv(path), before, check_exact=False, rtol=1e-5)
