"""Multi-label --mode sweep and --mode probe: launch.py end to end on the quick synthetic shapes (32 px), their
figures recomputed from their own files and a restored fold model, and the one-vs-rest probe against
scikit-learn's OneVsRestClassifier.

The sweep: two variants x 2 per-label stratified folds x 1 seed, 2 epochs each. The probe: a random-init
ResNet-18's pooled features, 3 folds, one C (so the fit is scikit-learn's plain LogisticRegression per class).
"""
import logging

import numpy as np
import pandas as pd
import pytest
import threadpoolctl
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from fpclass.analysis import multilabel_metrics as mlm
from fpclass.analysis import stats
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.models import probe_backbones
from fpclass.modes.sweep import run_sweep
from fpclass.probe import linear_probe, pooled_features
from fpclass.probe import screen as probe_mode
from fpclass.train import sidecar
from tests.conftest import MULTILABEL, launch, load_config
from tests.test_figures_from_definitions import best_label_threshold

CLASSES = ['circle', 'cross', 'ring', 'square', 'triangle']
# The default models_per_chunk (0): the memory rule's planning pass compiles the multi-label train step too.
SWEEP = {'data.num_folds': 2, 'sweep.seeds': (0,)}
PROBE = {'data.num_folds': 3, 'probe.inner_folds': 3, 'probe.c_values': (0.01,), 'probe.backbones': ('resnet18',)}


def flags(overrides: dict) -> list[str]:
  return [f'--config.{k}={v!r}' for k, v in overrides.items()]


def best_threshold(y, p, beta=1.0):
  """`best_label_threshold` (one scikit-learn fbeta_score per distinct cut, 120 cuts a label here) written out
  in NumPy at every cut at once: predicting p >= v, F-beta = (1 + beta^2) TP / (beta^2 positives + predicted
  positives), as scikit-learn computes it from the counts (0 when both are 0); the same cuts, midpoints and
  tie-breaking. `test_the_sweep_summarises_map_and_macro_f1_with_intervals` checks it against
  `best_label_threshold` itself on one label of each variant."""
  y, p = np.asarray(y), np.asarray(p)
  values = np.unique(p)[::-1]                                   # distinct, descending
  positives = np.array([(p >= v).sum() for v in values], np.float64)
  hits = np.array([y[p >= v].sum() for v in values], np.float64)
  denominator = beta ** 2 * float(y.sum()) + positives
  score = np.where(denominator > 0, (1 + beta ** 2) * hits / np.where(denominator > 0, denominator, 1), 0.0)
  cuts = (values + np.append(values[1:], 0.0)) / 2
  return max(zip([round(x, 12) for x in score.tolist()], (-np.abs(cuts - 0.5)).tolist(), cuts.tolist()))[2]


@pytest.fixture(scope='module')
def sweep_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ml-sweep')
  env = {'FPCLASS_CACHE': str(tmp_path_factory.mktemp('ml-sweep-cache'))}
  variants = ('base: train.learning_rate=0.002', 'fast: train.learning_rate=0.01')
  launch(MULTILABEL, f'--workdir={workdir}', '--mode=sweep', *flags({**SWEEP, 'sweep.variants': variants}), env=env)
  return workdir, env


def test_the_sweep_summarises_map_and_macro_f1_with_intervals(sweep_run):
  workdir, _ = sweep_run
  models = pd.read_csv(workdir / 'sweep_models.csv')
  assert len(models) == 2 * 2 and models['kept'].all()    # one seed: every model is its fold's kept one
  # Multi-label 'accuracy' is subset accuracy (the registry's); ROC AUC is single-label's.
  assert {'map', 'macro_f1', 'micro_f1', 'accuracy'} <= set(models) and 'roc_auc' not in models
  assert models.groupby('experiment')['n_val'].sum().tolist() == [240, 240]   # every image validated once
  # Each model ranks better than no information: the mAP of a constant score is each label's positive rate.
  for variant in ('base', 'fast'):
    saved = pd.read_csv(workdir / variant / 'calibration_predictions.csv')
    for fold in (0, 1):
      chance = saved.loc[saved['member'] == f'fold{fold}', [f'label_{c}' for c in CLASSES]].mean().mean()
      assert models.set_index(['experiment', 'split']).loc[(variant, fold), 'map'] > chance, (variant, fold)
  summary = pd.read_csv(workdir / 'sweep_results.csv')
  assert summary['experiment'].tolist() == ['base', 'fast'] and 'roc_auc_mean' not in summary
  for metric in ('map', 'macro_f1'):
    for name, rows in models.groupby('experiment'):
      s = summary.set_index('experiment').loc[name]
      ci = stats.corrected_interval(rows[metric], 1.0)   # 2 folds: n_val / n_train = 1
      assert (s[f'{metric}_mean'], s[f'{metric}_ci_low'], s[f'{metric}_ci_high']) == pytest.approx(
          (ci.mean, ci.low, ci.high))
      assert s[f'{metric}_ci_low'] < s[f'{metric}_mean'] < s[f'{metric}_ci_high']
  # Tuned: each fold decided at the per-label thresholds that maximise F1 on the other fold (cross-fitted).
  for variant, s in summary.set_index('experiment').iterrows():
    saved = pd.read_csv(workdir / variant / 'calibration_predictions.csv')
    labels, probs = (saved[[f'{p}_{c}' for c in CLASSES]].to_numpy() for p in ('label', 'p'))
    rest = (saved['member'] != 'fold0').to_numpy()
    assert best_threshold(labels[rest, 0], probs[rest, 0]) == best_label_threshold(labels[rest, 0], probs[rest, 0], 1.0)
    held_out = np.zeros_like(labels)
    for fold in (0, 1):
      held, rest = (saved['member'] == f'fold{fold}').to_numpy(), (saved['member'] != f'fold{fold}').to_numpy()
      for k in range(len(CLASSES)):
        held_out[held, k] = probs[held, k] >= best_threshold(labels[rest, k], probs[rest, k])
    assert s['macro_f1_tuned'] == pytest.approx(skm.f1_score(labels, held_out, average='macro', zero_division=0),
                                                abs=1e-12), variant
  differences = pd.read_csv(workdir / 'sweep_differences.csv')
  assert differences['metric'].tolist() == ['map', 'macro_f1'] and (differences['pairs'] == 2).all()
  by_split = models.set_index(['experiment', 'split'])['map']
  assert differences.loc[0, 'mean_difference'] == pytest.approx((by_split['fast'] - by_split['base']).mean())
  table = (workdir / 'sweep_results.md').read_text()
  assert '| variant | changes | models | mAP | macro F1 | macro F1 at 0.5 → thresholds |' in table
  assert '| variant | pairs | Δ mAP | Δ macro F1 | mAP wins/losses |' in table and 'per-label stratified' in table
  # Each fold model holds its per-label thresholds, fitted by the calibration on the out-of-fold predictions.
  thresholds = sidecar.read_metadata(workdir / 'base' / 'fold1')['calibration']['thresholds']
  saved = pd.read_csv(workdir / 'base' / 'calibration_predictions.csv')
  assert list(thresholds) == CLASSES
  assert list(thresholds.values()) == pytest.approx([best_threshold(
      saved[f'label_{c}'].to_numpy(), saved[f'p_{c}'].to_numpy()) for c in CLASSES], abs=1e-6)   # the CSV's digits


def test_each_model_scores_what_its_saved_validation_predictions_give(sweep_run, monkeypatch):
  """Per model: mAP and macro F1 recomputed from the calibration's out-of-fold predictions (the members' own
  validation logits), on the very images and labels a solo run of that fold validates on; and fold 1 of
  `base` restored from its workdir and scored again."""
  workdir, env = sweep_run
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  models = pd.read_csv(workdir / 'sweep_models.csv').set_index(['experiment', 'split'])
  for variant in ('base', 'fast'):
    saved = pd.read_csv(workdir / variant / 'calibration_predictions.csv')
    for fold in (0, 1):
      rows = saved[saved['member'] == f'fold{fold}']
      labels = rows[[f'label_{c}' for c in CLASSES]].to_numpy()
      probs = rows[[f'p_{c}' for c in CLASSES]].to_numpy()
      row = models.loc[(variant, fold)]
      assert row['n_val'] == len(rows)
      assert row['map'] == pytest.approx(mlm.mean_average_precision(labels, probs), abs=1e-9)
      assert row['map'] == pytest.approx(skm.average_precision_score(labels, probs, average='macro'), abs=1e-6)
      assert row['macro_f1'] == pytest.approx(skm.f1_score(labels, probs >= 0.5, average='macro', zero_division=0))
      config = load_config(MULTILABEL.split('=', 1)[1], **SWEEP, **{'data.fold': fold})
      val = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False).val
      assert rows['id'].tolist() == list(val.ids) and np.array_equal(labels, val.labels)
  trained = load_trained(config, workdir / 'base' / 'fold1')   # config: fold 1
  probs = trained.probabilities(val.images, 64)
  assert models.loc[('base', 1), 'map'] == pytest.approx(mlm.mean_average_precision(val.labels, probs), abs=1e-5)


@pytest.fixture(scope='module')
def probe_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ml-probe')
  env = {'FPCLASS_CACHE': str(tmp_path_factory.mktemp('ml-probe-cache'))}
  launch(MULTILABEL, f'--workdir={workdir}', '--mode=probe', *flags(PROBE), env=env)
  return workdir, env


def test_the_probe_is_scikit_learns_one_vs_rest_logistic_regression(probe_run, monkeypatch):
  workdir, env = probe_run
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  folds_table = pd.read_csv(workdir / 'probe_folds.csv')
  predictions = pd.read_csv(workdir / 'probe_predictions.csv', keep_default_na=False)
  results = pd.read_csv(workdir / 'probe_results.csv')
  assert len(folds_table) == 3 and 'accuracy' not in folds_table and (folds_table['c'] == 0.01).all()
  assert results['map_mean'].iloc[0] == pytest.approx(folds_table['map'].mean())
  assert results['map_ci_low'].iloc[0] < results['map_mean'].iloc[0] < results['map_ci_high'].iloc[0]
  report = (workdir / 'probe_results.md').read_text()
  assert '| backbone | weights | features | folds | mAP | macro F1 | log loss |' in report
  assert 'one-vs-rest logistic regressions' in report

  config = load_config(MULTILABEL.split('=', 1)[1], **PROBE)
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  images, labels, ids, _ = probe_mode.labelled_set(decoded)
  run, probe = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  (backbone,) = probe_backbones.parse_backbones(probe, run.model)
  found = pooled_features.features(run, probe, backbone, images, CLASSES, pooled_features.images_digest(images))
  assert found.cached   # written by the launch
  position = {image_id: i for i, image_id in enumerate(ids)}
  for split in probe_mode.outer_folds(labels, run.data.split, probe):
    rows = predictions[predictions['fold'] == split.fold]
    assert [position[i] for i in rows['id']] == split.val_index.tolist()
    truth = labels[split.val_index]
    assert rows['label'].tolist() == [' '.join(c for c, y in zip(CLASSES, row) if y) for row in truth]
    probs = rows[[f'p_{c}' for c in CLASSES]].to_numpy()
    row = folds_table[folds_table['fold'] == split.fold].iloc[0]
    assert row['map'] == pytest.approx(mlm.mean_average_precision(truth, probs), abs=1e-9)
    assert row['macro_f1'] == pytest.approx(skm.f1_score(truth, probs >= 0.5, average='macro', zero_division=0))
    # scikit-learn on the same cached features: standardised, one LogisticRegression per class.
    scaler = StandardScaler().fit(found.values[split.train_index])
    with threadpoolctl.threadpool_limits(1, user_api='blas'):
      model = OneVsRestClassifier(LogisticRegression(C=0.01, max_iter=5000)).fit(
          scaler.transform(found.values[split.train_index]), labels[split.train_index])
    expected = model.predict_proba(scaler.transform(found.values[split.val_index]))
    assert np.abs(probs - expected).max() < 2e-3
    assert row['map'] == pytest.approx(skm.average_precision_score(truth, expected, average='macro'), abs=2e-3)


def test_one_vs_rest_chooses_each_class_c_as_logistic_regression_cv_and_warns_of_an_absent_class(caplog):
  """Synthetic features, no backbone: each class's C and probabilities are those of scikit-learn's
  OneVsRestClassifier(LogisticRegressionCV) on the same inner folds; a class with no positive in a fold's
  training rows is named in a warning and predicted 0 there (OneVsRestClassifier's constant), not a crash."""
  rng = np.random.default_rng(1)
  n, k = 90, 3
  labels = (rng.random((n, k)) < [0.5, 0.3, 0.0]).astype(np.uint8)
  labels[60:68, 2] = 1     # 'rare': every positive in fold 2's validation rows, none among its training rows
  features = rng.normal(size=(n, 40)) + labels @ (0.4 * rng.normal(size=(k, 40)))
  parts = np.arange(n) // 30
  folds = [linear_probe.OuterFold(0, f, np.flatnonzero(parts != f), np.flatnonzero(parts == f)) for f in range(3)]
  c_values = ProbeSettings().c_values
  names = ['common', 'middling', 'rare']
  with caplog.at_level(logging.WARNING):
    fits = linear_probe.fit_folds(features, labels, folds, num_classes=k, c_values=c_values, inner=3,
                                  class_names=names)
  assert "class 'rare' has no positive in the training rows of outer fold 2 (seed 0)" in caplog.text
  assert 'outer fold 0' not in caplog.text and 'outer fold 1' not in caplog.text
  assert np.isnan(fits[2].label_c[2]) and (fits[2].probabilities[:, 2] == 0).all()
  assert np.isfinite(fits[2].label_c[:2]).all() and np.isfinite(fits[0].label_c).all()
  for fit in fits:
    train, val = fit.split.train_index, fit.split.val_index
    scaler = StandardScaler().fit(features[train])
    estimator = LogisticRegressionCV(Cs=list(c_values), cv=linear_probe.multilabel_inner_folds(labels[train], 3, 0),
                                     scoring='neg_log_loss', l1_ratios=(0.0,), max_iter=5000,
                                     use_legacy_attributes=False)
    with threadpoolctl.threadpool_limits(1, user_api='blas'):
      model = OneVsRestClassifier(estimator).fit(scaler.transform(features[train]), labels[train])
    expected = model.predict_proba(scaler.transform(features[val]))
    # Both solvers stop at their tolerance: at C near 3 each is about 5e-3 from the exact optimum (measured
    # against tol=1e-10), as the single-label binary probe is.
    assert np.abs(fit.probabilities - expected).max() < 1e-2
    chosen = [getattr(e, 'C_', np.nan) for e in model.estimators_]
    np.testing.assert_allclose(fit.label_c, np.asarray(chosen, float))
  assert fits[0].probabilities.shape == (30, k) and fits[0].inner_log_loss.shape == (len(c_values), k)
  # config.probe.solver='sklearn': one LogisticRegressionCV per class, the same choices.
  for fit, other in zip(fits, linear_probe.fit_folds(features, labels, folds, num_classes=k, c_values=c_values,
                                                     inner=3, solver='sklearn', max_iter=5000, class_names=names)):
    np.testing.assert_allclose(other.label_c, fit.label_c)
    assert np.abs(other.probabilities - fit.probabilities).max() < 1e-2 and other.c == fit.c


def test_a_sweep_refuses_to_mix_single_and_multi_label_variants(tmp_path):
  config = load_config(MULTILABEL.split('=', 1)[1], **{'sweep.variants': (
      'multi:', "single: data.task='single_label'; train.monitor='val_loss'; train.class_weights='none'")})
  with pytest.raises(UserInputError, match=r'config.sweep.variants: single-label and multi-label variants cannot'):
    run_sweep(config, tmp_path)
  assert not list(tmp_path.iterdir())
