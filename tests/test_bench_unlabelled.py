"""bench/unlabelled.py's --arms-from: an earlier run's arms are reused only where they trained as this run's would,
and its test listing comes along."""
import argparse
import json

import pandas as pd
import pytest

from bench.unlabelled import arms_from


def earlier_run(root, epochs=100, overrides=('train.early_stopping_patience=0', 'semi.thresholds=adaptive')):
  folder = root / 'mnist'
  (folder / 'f0.1-s0').mkdir(parents=True)
  (folder / 'bench_unlabelled.json').write_text(json.dumps({'epochs': epochs, 'overrides': list(overrides)}))
  pd.DataFrame({'id': ['a'], 'file': ['/x/a.png'], 'label': ['3']}).to_csv(folder / 'test_split.csv', index=False)
  pd.DataFrame({'path': ['/x/a.png']}).to_csv(folder / 'test_images.csv', index=False)
  return root


def args(source, **changes):
  given = dict(arms_from=source, epochs=100, fractions=[0.1], seeds=[0],
               set=['train.early_stopping_patience=0', 'semi.weight=2'])
  return argparse.Namespace(**{**given, **changes})


def test_arms_are_reused_when_only_semi_settings_differ(tmp_path):
  source = earlier_run(tmp_path / 'earlier')
  (tmp_path / 'new').mkdir()
  test = arms_from(args(source), 'mnist', tmp_path / 'new')
  assert test['file'].tolist() == ['/x/a.png'] and test['label'].tolist() == ['3']
  assert (tmp_path / 'new' / 'test_images.csv').read_text() == (source / 'mnist' / 'test_images.csv').read_text()


@pytest.mark.parametrize('changes, message', [
    (dict(epochs=60), 'only semi.'),
    (dict(set=['train.early_stopping_patience=0', 'train.learning_rate=0.003']), 'only semi.'),
    (dict(seeds=[0, 1]), 'no split f0.1-s1'),
])
def test_arms_that_trained_otherwise_are_refused(tmp_path, changes, message):
  source = earlier_run(tmp_path / 'earlier')
  (tmp_path / 'new').mkdir()
  with pytest.raises(SystemExit, match=message):
    arms_from(args(source, **changes), 'mnist', tmp_path / 'new')
