"""The class-balanced batch order keeps epoch_order's contract and balances the classes."""
import numpy as np
import pytest

from fpclass.errors import UserInputError
from fpclass.train.sampling import class_balanced_order, epoch_order
from fpclass.train.validation import validate
from tests.conftest import load_config


def test_balanced_order_has_the_epoch_order_contract_and_equal_class_shares():
  labels = np.array([0] * 50 + [1] * 8 + [2] * 12)
  order = class_balanced_order(seed=3, epoch=2, labels=labels, batch_size=16)
  assert order.shape == epoch_order(3, 2, len(labels), 16).shape == (5, 16) and order.dtype == np.int32
  assert np.array_equal(order, class_balanced_order(3, 2, labels, 16))
  assert not np.array_equal(order, class_balanced_order(3, 3, labels, 16))
  shares = np.bincount(labels[order.ravel()], minlength=3)
  assert shares.max() - shares.min() <= 1 and shares.sum() == 80
  minority = order.ravel()[labels[order.ravel()] == 1]
  assert set(minority) == set(range(50, 58)) and np.bincount(minority - 50).max() - np.bincount(minority - 50).min() <= 1
  majority = order.ravel()[labels[order.ravel()] == 0]
  assert len(set(majority)) == len(majority)  # subsampled without replacement


def test_sampler_is_validated():
  with pytest.raises(UserInputError, match="config.train.sampler='weighted'"):
    validate(load_config('configs/digits.py:quick', **{'train.sampler': 'weighted'}))


def test_training_draws_batches_from_the_balanced_order(tmp_path, monkeypatch):
  from fpclass.modes import evaluate
  from fpclass.modes.runner import run
  from fpclass.train import sampling
  from tests.test_train import tiny_digits
  calls = []

  def spy(seed, epoch, labels, batch_size):
    calls.append((epoch, len(labels), batch_size))
    return class_balanced_order(seed, epoch, labels, batch_size)

  monkeypatch.setattr(sampling, 'class_balanced_order', spy)
  monkeypatch.setattr(evaluate, 'evaluate_workdir', lambda *args, **kwargs: {})  # not what is tested
  config = tiny_digits(**{'train.sampler': 'balanced', 'train.epochs': 1})
  run('train', config, tmp_path)
  assert calls == [(0, 1437, 64)]
