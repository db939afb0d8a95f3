"""The metric registry (fpclass/analysis/metric_registry.py): each metric recomputed from its definition on
hand-made data where the wrong variant gives another number, and a metric added to the registry alone reaches
training's monitor, the epoch row, a plan's member scores, the tables and scores.json."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from fpclass.analysis import metric_registry as registry
from fpclass.analysis import metrics, sweep_report
from fpclass.errors import UserInputError
from fpclass.modes import compare

# Three classes; class 2 is never predicted, so macro F1 (a zero for it) differs from micro F1 and accuracy.
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([[.7, .2, .1], [.4, .5, .1], [.2, .7, .1], [.1, .8, .1], [.5, .3, .2], [.3, .6, .1]])
# Multi-label: image 1 has one of its two labels wrong at 0.5, so subset accuracy (1/3) differs from the share of
# right labels (5/6).
ML_LABELS = np.array([[1, 0], [1, 1], [0, 1]])
ML_PROBS = np.array([[.9, .2], [.8, .4], [.3, .7]])


def test_single_label_metrics_are_their_definitions():
  s = registry.score(LABELS, PROBS, registry.SINGLE)
  assert s['accuracy'] == pytest.approx(3 / 6)            # rows 0, 2, 3 right
  assert s['loss'] == pytest.approx(-np.mean(np.log([.7, .4, .7, .8, .2, .1])))
  f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 2 + 0), 0.0]   # per class 2TP / (2TP + FP + FN)
  assert s['macro_f1'] == pytest.approx(np.mean(f1)) and s['macro_f1'] != pytest.approx(s['accuracy'])
  assert s['roc_auc'] == pytest.approx(skm.roc_auc_score(LABELS, PROBS, multi_class='ovr', average='macro'))
  binary = registry.score(np.array([0, 1, 1, 0]), np.array([[.8, .2], [.3, .7], [.6, .4], [.4, .6]]), registry.SINGLE)
  assert binary['roc_auc'] == pytest.approx(0.75)   # of the second class: 3 of 4 positive-negative pairs ordered
  assert registry.score(np.array([0, 0]), np.array([[.6, .4], [.7, .3]]), registry.SINGLE)['roc_auc'] is None


def test_multi_label_metrics_are_their_definitions():
  s = registry.score(ML_LABELS, ML_PROBS, registry.MULTI)
  assert s['accuracy'] == pytest.approx(2 / 3)   # subset accuracy: images 0 and 2 have every label right
  assert s['macro_f1'] == pytest.approx(np.mean([1.0, 2 * 1 / (2 * 1 + 0 + 1)]))
  assert s['micro_f1'] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
  assert s['map'] == pytest.approx(np.mean([skm.average_precision_score(ML_LABELS[:, k], ML_PROBS[:, k])
                                            for k in range(2)]))
  y, p = ML_LABELS.astype(float), ML_PROBS
  assert s['loss'] == pytest.approx(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
  assert 'roc_auc' not in s and 'map' not in registry.score(LABELS, PROBS, registry.SINGLE)


def test_the_monitor_s_direction_and_task_come_from_the_registry():
  assert registry.monitor_mode('val_loss') == 'min' and registry.monitor_mode('val_map', registry.MULTI) == 'max'
  with pytest.raises(UserInputError, match=r"config.train.monitor='val_lss': must be one of \('val_loss'"):
    registry.monitor_mode('val_lss')
  with pytest.raises(UserInputError, match="has no figure for config.data.task='multilabel'"):
    registry.monitor_mode('val_roc_auc', registry.MULTI)


def test_tables_take_the_summarised_metrics_headline_first():
  assert registry.summarised(registry.SINGLE) == ('accuracy', 'macro_f1', 'roc_auc')
  assert registry.summarised(registry.MULTI) == ('map', 'macro_f1')


@pytest.fixture
def kappa(monkeypatch):
  """Cohen's kappa registered as a new metric would be: one entry, nothing else changed."""
  metric = registry.Metric('kappa', "Cohen's kappa", True,
                           {registry.SINGLE: lambda y, p: float(skm.cohen_kappa_score(y, p.argmax(1)))},
                           summarised=(registry.SINGLE,))
  monkeypatch.setitem(registry.REGISTRY, 'kappa', metric)
  return metric


def test_a_new_metric_reaches_every_consumer(kappa, tmp_path):
  expected = skm.cohen_kappa_score(LABELS, PROBS.argmax(1))
  logits = np.log(PROBS)
  assert metrics.model_scores(LABELS, logits, 'softmax')['kappa'] == pytest.approx(expected)   # metrics.csv, sweep rows
  assert registry.monitor_mode('val_kappa', registry.SINGLE) == 'max'            # config.train.monitor
  assert 'kappa' in registry.summarised(registry.SINGLE)                          # sweep and auto tables
  scores = metrics.scores(LABELS, PROBS, ['a', 'b', 'c'])                          # scores.json
  assert scores['kappa'] == pytest.approx(expected)
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'scores.json').write_text(json.dumps(dict(scores, checkpoint='best', epoch=1)))
  (run / 'metadata.json').write_text(json.dumps({'config': {'model': {'name': 'footprint_cnn'}}}))
  table = compare.comparison_table([run])                                          # --mode compare
  assert table.loc[0, 'kappa'] == pytest.approx(expected)
  summary = sweep_report.summarise([dict(name='v', changes={}, rows=[dict(kappa=0.5, accuracy=.5, macro_f1=.5,
                                                                          roc_auc=.5, loss=1.0, epochs_trained=1)] * 3,
                                         test_train_ratio=0.25, calibration=dict(ece_before=0, ece_after=0,
                                                                                 temperature=1, threshold=None),
                                         num_params=1, timing=dict(seconds_per_model_epoch=1, train_seconds=1,
                                                                   wall_seconds=1))])
  assert isinstance(summary, pd.DataFrame) and summary.loc[0, 'kappa_mean'] == pytest.approx(0.5)
