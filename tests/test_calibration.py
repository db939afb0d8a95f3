"""Calibration, decision thresholds, intervals and sweep variant parsing: pure functions, no training."""
import numpy as np
import pytest
from scipy import special
from scipy import stats as scipy_stats
from sklearn.metrics import f1_score

from fpclass.analysis import calibration, stats
from fpclass.config.settings import ConfigError
from fpclass.config.variants import parse_variant, variant_spec
from fpclass.errors import UserInputError
from fpclass.train.plan import apply_changes
from tests.conftest import load_config


def _labels_from(logits, rng):
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  return np.array([rng.choice(probs.shape[1], p=p) for p in probs])


@pytest.mark.parametrize('true_temperature', [0.5, 3.0])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature):
  # Labels drawn from softmax(z); the model reports z * T, so dividing by T is the right correction.
  rng = np.random.default_rng(0)
  z = rng.normal(0, 1.5, (20000, 3))
  labels = _labels_from(z, rng)
  fitted = calibration.fit_temperature(z * true_temperature, labels, 'softmax')
  assert fitted == pytest.approx(true_temperature, rel=0.05)
  assert calibration.negative_log_likelihood(z * true_temperature, labels, 'softmax', fitted) < \
      calibration.negative_log_likelihood(z * true_temperature, labels, 'softmax', 1.0)


def test_temperature_for_a_sigmoid_head():
  rng = np.random.default_rng(1)
  z = rng.normal(0, 2.0, (20000, 1))
  labels = (rng.uniform(size=20000) < 1 / (1 + np.exp(-z[:, 0]))).astype(int)
  assert calibration.fit_temperature(z * 2.0, labels, 'sigmoid') == pytest.approx(2.0, rel=0.05)


def test_expected_calibration_error_on_a_hand_case():
  # 4 bins of width 0.25. Bin (0.5, 0.75]: confidences 0.6, 0.7, one right -> |0.5 - 0.65| = 0.15, weight 2/5.
  # Bin (0.75, 1]: 0.8, 0.9, 1.0, all right -> |1 - 0.9| = 0.1, weight 3/5. ECE = 0.06 + 0.06 = 0.12.
  p1 = np.array([0.6, 0.7, 0.8, 0.9, 1.0])
  probs = np.stack([1 - p1, p1], 1)
  labels = np.array([1, 0, 1, 1, 1])
  assert calibration.expected_calibration_error(probs, labels, bins=4) == pytest.approx(0.12)
  count, confidence, accuracy = calibration.reliability_bins(probs, labels, 4)
  assert count.tolist() == [0, 0, 2, 3] and accuracy[2] == 0.5 and confidence[3] == pytest.approx(0.9)
  perfect = np.array([[0.0, 1.0]] * 3)
  assert calibration.expected_calibration_error(perfect, np.array([1, 1, 1]), bins=10) == 0.0


@pytest.mark.parametrize('metric, average', [('macro_f1', 'macro'), ('f1', 'binary')])
def test_threshold_tuning_finds_the_best_f1(metric, average):
  rng = np.random.default_rng(2)
  labels = (rng.uniform(size=400) < 0.3).astype(int)
  # Scores shifted low, so the 0.5 threshold misses many positives.
  p1 = np.clip(rng.normal(0.2 + 0.25 * labels, 0.12), 0, 1)
  threshold, score = calibration.tune_threshold(p1, labels, metric)
  brute = max(f1_score(labels, (p1 >= t).astype(int), average=average) for t in np.unique(p1))
  assert score == pytest.approx(brute)
  assert f1_score(labels, calibration.decide(np.stack([1 - p1, p1], 1), threshold), average=average) == \
      pytest.approx(brute)
  assert threshold < 0.5 and score > f1_score(labels, (p1 >= 0.5).astype(int), average=average)


def test_calibration_summary_is_cross_fitted():
  rng = np.random.default_rng(3)
  z = rng.normal(0, 2, (3000, 2))
  labels = _labels_from(z, rng)
  groups = np.arange(3000) % 5
  summary, crossfit = calibration.calibrate_predictions(z * 4, labels, 'softmax', groups, bins=15)
  assert summary['temperature'] == pytest.approx(4, rel=0.1) and summary['crossfit_groups'] == 5
  assert summary['ece_after'] < summary['ece_before'] / 2 and summary['nll_after'] < summary['nll_before']
  assert summary['ece_after'] == pytest.approx(calibration.expected_calibration_error(crossfit, labels, 15))
  assert summary['threshold_metric'] == 'macro_f1'
  # The threshold: the macro-F1 maximiser on the calibrated probabilities over every distinct cut (ties: the one
  # nearest 0.5), counted out here for all cuts at once.
  p1 = special.softmax(z * 4 / summary['temperature'], axis=1)[:, 1]
  values = np.unique(p1)
  cuts = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]])
  ones = np.sort(p1[labels == 1])
  zeros = np.sort(p1[labels == 0])
  tp = len(ones) - np.searchsorted(ones, cuts)          # class 1 predicted where p1 >= cut
  fp = len(zeros) - np.searchsorted(zeros, cuts)
  fn, tn = len(ones) - tp, len(zeros) - fp
  macro = (2 * tp / (2 * tp + fp + fn) + 2 * tn / (2 * tn + fn + fp)) / 2
  tied = cuts[macro >= macro.max() - 1e-12]
  assert summary['threshold'] == pytest.approx(tied[np.argmin(np.abs(tied - 0.5))], abs=1e-9)
  assert f1_score(labels, (p1 >= summary['threshold']).astype(int), average='macro') == pytest.approx(macro.max())


def test_corrected_interval():
  values = np.array([0.80, 0.82, 0.78, 0.85, 0.81, 0.79])
  plain = stats.corrected_interval(values, 0.0)
  low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values))
  assert plain.low == pytest.approx(low) and plain.high == pytest.approx(high)
  corrected = stats.corrected_interval(values, 0.25)  # 5 folds: n_val / n_train = 1/4
  widening = np.sqrt((1 / 6 + 0.25) / (1 / 6))
  assert corrected.high - corrected.mean == pytest.approx((plain.high - plain.mean) * widening)
  assert np.isnan(stats.corrected_interval([0.8], 0.25).low) and stats.corrected_interval([], 0).n == 0


def test_variants_round_trip_and_bad_ones_name_the_flag():
  changes = {'model.dropout': 0.5, 'model.fc_sizes': (32,), 'train.select_checkpoint': 'best'}
  assert parse_variant(variant_spec('exp', changes)) == ('exp', changes)
  assert parse_variant('size150: data.image_size=(150, 150)') == ('size150', {'data.image_size': (150, 150)})
  config = load_config('configs/footprint.py:exp0')
  assert apply_changes(config, changes, 'x').model.fc_sizes == (32,)
  with pytest.raises(UserInputError, match="config.sweep.variants .*'train.dropoutt' is not a config key"):
    apply_changes(config, {'train.dropoutt': 0.5}, 'config.sweep.variants (exp)')
  # A model field is the model's own, checked by name when the variant is validated (tests/test_sweep.py).
  with pytest.raises(ConfigError, match='config.sweep.variants: .*not "name: key=value'):
    parse_variant('no colon here')
