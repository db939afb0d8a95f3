"""Multi-label training: the loss against torch and timm, the positive weights, mixing label vectors, and the
quick config through launch.py (train, evaluate, calibrate) with scikit-learn recomputing its figures."""
import json
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from fpclass.analysis import multilabel_metrics as mlm
from fpclass.config.inputs import AugmentSettings
from fpclass.config.run import RunSettings
from fpclass.models.heads import binary_cross_entropy, head_of
from fpclass.modes import compare
from fpclass.train import augment
from fpclass.train.class_weights import class_weights
from fpclass.train.task import build_task
from tests.conftest import MULTILABEL, launch, load_config, save_image


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (16, 5)).astype(np.float32)
  targets = (rng.random((16, 5)) < 0.3).astype(np.float32)
  return logits, targets


@pytest.mark.parametrize('pos_weight', [None, (0.5, 1.0, 3.0, 7.5, 1.2)])
def test_binary_cross_entropy_is_torch_binary_cross_entropy_with_logits(batch, pos_weight):
  torch = pytest.importorskip('torch')
  logits, targets = batch
  ours = jnp.mean(binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 0.0, pos_weight))
  ref = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(logits), torch.tensor(targets),
      pos_weight=None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32))
  assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_label_smoothing_is_timm_binary_cross_entropy(batch):
  timm_loss = pytest.importorskip('timm.loss')
  torch = pytest.importorskip('torch')
  logits, _ = batch
  classes = np.arange(16) % 5   # timm smooths integer targets: on 1 - s + s/K, off s/K
  ref = timm_loss.BinaryCrossEntropy(smoothing=0.1)(torch.tensor(logits), torch.tensor(classes))
  ours = jnp.mean(binary_cross_entropy(jnp.asarray(logits), jax.nn.one_hot(classes, 5), 0.1))
  assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_auto_positive_weights_are_negatives_over_positives():
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], np.uint8)
  assert class_weights('auto', ('a', 'b', 'c'), labels) == pytest.approx((1 / 3, 3.0, 1.0))
  assert class_weights('b:2.5', ('a', 'b', 'c'), labels) == (1.0, 2.5, 1.0)


def test_the_task_loss_is_torch_with_the_auto_positive_weights_and_smoothing(batch):
  torch = pytest.importorskip('torch')
  logits, targets = batch
  config = load_config('configs/multilabel.py:quick', **{'train.label_smoothing': 0.2})
  task = build_task(RunSettings.from_config(config), ('a', 'b', 'c', 'd', 'e'), targets.astype(np.uint8), steps_per_epoch=1)
  positives = targets.sum(0)
  pos_weight = torch.tensor((len(targets) - positives) / positives, dtype=torch.float32)
  smoothed = torch.tensor(targets * 0.8 + 0.2 / 5)
  ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), smoothed, pos_weight=pos_weight)
  assert float(task.loss(jnp.asarray(logits), jnp.asarray(targets))) == pytest.approx(float(ref), rel=1e-6)


def test_mixup_mixes_the_label_vectors_in_the_images_proportion(batch):
  _, targets = batch
  images = jnp.asarray(np.random.default_rng(1).random((16, 4, 4, 3)), jnp.float32)
  cfg = AugmentSettings(mixup_alpha=0.4)
  mixed_x, mixed_y = augment.mix_batch(images, jnp.asarray(targets), jax.random.PRNGKey(3), cfg)
  lam = float((mixed_x[0, 0, 0, 0] - images[-1, 0, 0, 0]) / (images[0, 0, 0, 0] - images[-1, 0, 0, 0]))
  np.testing.assert_allclose(mixed_y, lam * targets + (1 - lam) * targets[::-1], atol=1e-5)


def test_the_head_follows_data_task_and_refuses_the_binary_head():
  config = load_config('configs/multilabel.py:quick')
  assert head_of(RunSettings.from_config(config)) == 'multilabel'
  config.model.head = 'sigmoid'
  with pytest.raises(Exception, match='one sigmoid|its own sigmoid'):
    head_of(RunSettings.from_config(config))


def test_train_evaluate_and_calibrate_through_launch(trained_multilabel, tmp_path):
  shared, env, result = trained_multilabel
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)  # calibrate and evaluate write into it; the session's copy stays as trained
  history = pd.read_csv(workdir / 'metrics.csv')
  assert {'val_loss', 'val_accuracy', 'val_macro_f1', 'val_map'} <= set(history) and 'val_roc_auc' not in history
  assert 'val mAP' in result.stdout
  meta = json.loads((workdir / 'metadata.json').read_text())
  assert meta['head'] == 'multilabel' and meta['class_names'] == ['circle', 'cross', 'ring', 'square', 'triangle']

  # evaluate's figures are scikit-learn's on its own saved predictions
  scores = json.loads((workdir / 'scores.json').read_text())
  frame = pd.read_csv(workdir / 'val_predictions.csv', keep_default_na=False)
  names = meta['class_names']
  truth = np.array([[name in row.split() for name in names] for row in frame['label']], np.uint8)
  probs = frame[[f'p_{name}' for name in names]].to_numpy()
  pred = (probs >= 0.5).astype(np.uint8)
  assert [' '.join(n for n, p in zip(names, row) if p) for row in pred] == list(frame['predicted'])
  assert scores['macro_f1'] == pytest.approx(skm.f1_score(truth, pred, average='macro', zero_division=0), abs=1e-6)
  assert scores['micro_f1'] == pytest.approx(skm.f1_score(truth, pred, average='micro', zero_division=0), abs=1e-6)
  assert scores['hamming_loss'] == pytest.approx(skm.hamming_loss(truth, pred), abs=1e-6)
  present = truth.any(0)
  assert scores['mean_average_precision'] == pytest.approx(
      np.sum(skm.average_precision_score(truth[:, present], probs[:, present], average=None)) / len(names), abs=1e-6)
  # the selected epoch's validation mAP in metrics.csv is what evaluate recomputes from the checkpoint
  selected = history.set_index('epoch').loc[scores['epoch']]
  assert selected['val_map'] == pytest.approx(scores['mean_average_precision'], abs=1e-5)
  assert np.sum(frame['loss']) == pytest.approx(
      -np.sum(truth * np.log(probs) + (1 - truth) * np.log1p(-probs)), rel=1e-6)

  out = launch(MULTILABEL, f'--workdir={workdir}', '--mode=calibrate', env=env)
  stored = json.loads((workdir / 'metadata.json').read_text())['calibration']
  assert set(stored['thresholds']) == set(names) and 'per-label thresholds' in out.stdout
  fitted = mlm.fit_thresholds(truth, probs, 1.0, names)
  assert [stored['thresholds'][n] for n in names] == pytest.approx(list(fitted.thresholds), abs=1e-6)
  assert stored['macro_f1_at_half'] == pytest.approx(scores['macro_f1'], abs=1e-9)
  # evaluate now decides with the stored thresholds
  launch(MULTILABEL, f'--workdir={workdir}', '--mode=evaluate', env=env)
  rescored = json.loads((workdir / 'scores.json').read_text())
  tuned = mlm.predict(probs, fitted.thresholds)
  assert rescored['macro_f1'] == pytest.approx(skm.f1_score(truth, tuned, average='macro', zero_division=0), abs=1e-6)
  assert rescored['per_label']['circle']['threshold'] == pytest.approx(stored['thresholds']['circle'])


def _tags_root(tmp_path, rows, columns=('image_name', 'tags')):
  root = tmp_path / 'planet'
  for i in range(len(rows)):
    save_image(root / 'train' / f'im{i}.png', mode='RGB', size=(8, 8))
  frame = pd.DataFrame([(f'im{i}', *row) for i, row in enumerate(rows)], columns=list(columns))
  frame.to_csv(root / 'train.csv', index=False)
  return root


@pytest.mark.parametrize('case, flags, message', [
    ('unknown tag', ['--config.data.class_names=("a","b")'], r"train.csv: .*not in config.data.class_names.*row 4 \('c'\)"),
    ('missing column', ['--config.data.label_column=labels'], r"train.csv: missing column 'labels' \(config.data.label_column\)"),
    ('folder source', ['--config.data.source=image_folder'], r"source='image_folder'.* cannot say several"),
    ('roc monitor', ['--config.train.monitor=val_roc_auc'], r"monitor='val_roc_auc' has no figure for config.data.task='multilabel'"),
])
def test_bad_multilabel_input_is_one_line_naming_the_row_or_key(tmp_path, case, flags, message):
  root = _tags_root(tmp_path, [('a',), ('a b',), ('c',), ('b',)])
  result = launch(MULTILABEL, f'--workdir={tmp_path / "run"}', f'--config.data.root={root}', *flags, check=False)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert re.search(message, last), (case, last)
  assert 'Traceback' not in result.stderr


def test_compare_and_clean_read_multilabel_runs(trained_multilabel, tmp_path):
  workdir, env, _ = trained_multilabel
  shutil.copytree(workdir, tmp_path / 'runs' / 'shapes', ignore=shutil.ignore_patterns('checkpoints'))
  table = compare.comparison_table(compare.find_runs(tmp_path / 'runs'))
  scores = json.loads((workdir / 'scores.json').read_text())
  assert table.loc[0, 'mean_average_precision'] == pytest.approx(scores['mean_average_precision'])
  assert table.loc[0, 'f1_ring'] == pytest.approx(scores['per_label']['ring']['f1'])

  launch(MULTILABEL, f'--workdir={tmp_path / "clean"}', '--mode=clean', env=env)
  files = pd.read_csv(tmp_path / 'clean' / 'clean_files.csv', keep_default_na=False)
  solution = pd.read_csv(next(pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_multilabel/*/train.csv')),
                         keep_default_na=False).set_index('image_name')['tags']
  train = files[files['split'] == 'train']
  assert len(train) == 240
  assert all(label == solution[pathlib.Path(path).stem] for path, label in zip(train['path'], train['label']))
