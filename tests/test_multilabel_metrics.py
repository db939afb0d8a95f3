"""Multi-label metrics and per-label thresholds (fpclass.analysis.multilabel_metrics) against scikit-learn and brute force."""
import logging
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm

from fpclass.analysis import multilabel_metrics as mm

ATOL = 1e-6
# the same examples on every run (as tests/test_fuzz.py), so CI sees what a developer saw
EXAMPLES = settings(max_examples=100, deadline=None, database=None, derandomize=True)
ZERO_DIVISIONS = (0.0, 1.0, np.nan)


@st.composite
def truth_and_predictions(draw, min_rows=1):
  """(y_true, y_pred, scores): small (N, K) 0/1 matrices, often with empty rows and labels, and scores from a
  few levels so that ties are common."""
  n, k = draw(st.integers(min_rows, 12)), draw(st.integers(2, 5))
  y_true = draw(hnp.arrays(np.uint8, (n, k), elements=st.integers(0, 1)))
  y_pred = draw(hnp.arrays(np.uint8, (n, k), elements=st.integers(0, 1)))
  levels = draw(st.sampled_from([3, 5, 1000]))
  scores = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, levels))) / levels
  return y_true, y_pred, scores


def sk(function, *args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # scikit-learn's ill-defined-metric warnings
    return function(*args, **kwargs)


@EXAMPLES
@given(truth_and_predictions(), st.sampled_from([None, 'micro', 'macro', 'samples']),
       st.sampled_from([1.0, 2.0, 0.5]), st.sampled_from(ZERO_DIVISIONS))
def test_precision_recall_fbeta_match_scikit_learn(data, average, beta, zero_division):
  y_true, y_pred, _ = data
  ours = mm.precision_recall_fbeta_support(y_true, y_pred, beta, average, zero_division)
  theirs = sk(skm.precision_recall_fscore_support, y_true, y_pred, beta=beta, average=average,
              zero_division=zero_division)
  for a, b in zip(ours[:3], theirs[:3]):
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, equal_nan=True)
  if average is None:
    np.testing.assert_array_equal(ours[3], theirs[3])
  np.testing.assert_allclose(mm.fbeta(y_true, y_pred, beta, average, zero_division),
                             sk(skm.fbeta_score, y_true, y_pred, beta=beta, average=average,
                                zero_division=zero_division), atol=ATOL, rtol=0, equal_nan=True)
  np.testing.assert_allclose(mm.f1(y_true, y_pred, average, zero_division),
                             sk(skm.f1_score, y_true, y_pred, average=average, zero_division=zero_division),
                             atol=ATOL, rtol=0, equal_nan=True)


@EXAMPLES
@given(truth_and_predictions())
def test_planet_f2_hamming_subset_accuracy_and_average_precision_match_scikit_learn(data):
  y_true, y_pred, scores = data
  assert abs(mm.planet_f2(y_true, y_pred) - sk(skm.fbeta_score, y_true, y_pred, beta=2, average='samples',
                                               zero_division=0)) < ATOL
  assert abs(mm.hamming_loss(y_true, y_pred) - skm.hamming_loss(y_true, y_pred)) < ATOL
  assert abs(mm.subset_accuracy(y_true, y_pred) - skm.accuracy_score(y_true, y_pred)) < ATOL
  np.testing.assert_allclose(mm.average_precision(y_true, scores),
                             sk(skm.average_precision_score, y_true, scores, average=None), atol=ATOL, rtol=0)
  assert abs(mm.mean_average_precision(y_true, scores)
             - sk(skm.average_precision_score, y_true, scores, average='macro')) < ATOL


def test_edge_cases_follow_scikit_learn_with_zero_division_0_by_default():
  """Label 1 has no positive and is never predicted; image 3 has no label and none predicted; label 2 is
  predicted but never true; image 2 has a label but none predicted."""
  y_true = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]])
  y_pred = np.array([[1, 0, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
  scores = np.array([[.9, .1, .8], [.2, .1, .7], [.3, .1, .2], [.9, .1, .1]])
  precision, recall, f, support = mm.precision_recall_fbeta_support(y_true, y_pred)
  np.testing.assert_allclose(precision, [1, 0, 0])   # label 1: no predicted positive -> 0
  np.testing.assert_allclose(recall, [2 / 3, 0, 0])  # label 2: no true positive -> 0
  np.testing.assert_allclose(f, [0.8, 0, 0])         # label 1: neither -> 0
  assert support.tolist() == [3, 0, 0]
  assert mm.f1(y_true, y_pred, 'macro') == pytest.approx(0.8 / 3)
  # per image: [2/3, 0, 0 (neither), 1]
  assert mm.f1(y_true, y_pred, 'samples') == pytest.approx((2 / 3 + 1) / 4)
  assert mm.average_precision(y_true, scores)[1] == 0.0  # no positive: 0, as scikit-learn's
  for zero_division in ZERO_DIVISIONS:
    for average in (None, 'micro', 'macro', 'samples'):
      np.testing.assert_allclose(
          mm.precision_recall_fbeta_support(y_true, y_pred, 1.0, average, zero_division)[:3],
          sk(skm.precision_recall_fscore_support, y_true, y_pred, average=average,
             zero_division=zero_division)[:3], atol=ATOL, equal_nan=True)
  np.testing.assert_allclose(mm.average_precision(y_true, scores),
                             sk(skm.average_precision_score, y_true, scores, average=None), atol=ATOL)
  # nothing true and nothing predicted anywhere: every F is zero_division
  empty = np.zeros((3, 2), np.uint8)
  assert mm.f1(empty, empty, 'micro') == 0.0 and mm.f1(empty, empty, 'samples', zero_division=1.0) == 1.0


def test_scores_gathers_every_figure():
  y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
  probs = np.array([[.8, .4], [.3, .6], [.6, .2], [.1, .7]])
  out = mm.scores(y_true, probs, ('a', 'b'), thresholds=(0.5, 0.5))
  y_pred = (probs >= 0.5).astype(int)
  assert out['micro_f1'] == pytest.approx(skm.f1_score(y_true, y_pred, average='micro'))
  assert out['samples_f1'] == pytest.approx(sk(skm.f1_score, y_true, y_pred, average='samples', zero_division=0))
  assert out['planet_f2'] == pytest.approx(sk(skm.fbeta_score, y_true, y_pred, beta=2, average='samples',
                                              zero_division=0))
  assert out['mean_average_precision'] == pytest.approx(skm.average_precision_score(y_true, probs))
  assert out['subset_accuracy'] == 0.5 == skm.accuracy_score(y_true, y_pred)
  assert out['hamming_loss'] == pytest.approx(2 / 8) and out['macro_f1'] == pytest.approx(
      skm.f1_score(y_true, y_pred, average='macro'))
  assert out['untagged'] == 1 and out['per_label']['b']['support'] == 2 and out['class_names'] == ['a', 'b']


# --- thresholds --------------------------------------------------------------------------------------------


def brute_force_threshold(y, p, beta):
  """Every distinct cut `p >= v`, scored by scikit-learn; its threshold the midpoint down to the next lower
  distinct value (0 below the lowest); the best score, ties to the threshold nearest 0.5, then the higher."""
  values = sorted(set(p.tolist()), reverse=True)
  best = None
  for i, v in enumerate(values):
    lower = values[i + 1] if i + 1 < len(values) else min(0.0, v)
    t = (v + lower) / 2 if lower < (v + lower) / 2 else v
    score = sk(skm.fbeta_score, y, (p >= v).astype(int), beta=beta, zero_division=0)
    key = (round(score, 12), -abs(t - 0.5), t)
    if best is None or key > best[0]:
      best = (key, t, score)
  return best[1], best[2]


@EXAMPLES
@given(truth_and_predictions(min_rows=2), st.sampled_from([1.0, 2.0]))
def test_thresholds_match_brute_force_and_no_grid_threshold_does_better(data, beta):
  y_true, _, probs = data
  y_true[0] = 1  # every label has a positive
  fit = mm.fit_thresholds(y_true, probs, beta)
  grid = np.linspace(0, 1, 401)
  for k in range(y_true.shape[1]):
    t, score = brute_force_threshold(y_true[:, k], probs[:, k], beta)
    assert fit.thresholds[k] == pytest.approx(t, abs=1e-12) and fit.scores[k] == pytest.approx(score, abs=ATOL)
    reached = sk(skm.fbeta_score, y_true[:, k], mm.predict(probs, fit.thresholds)[:, k], beta=beta)
    assert reached == pytest.approx(fit.scores[k], abs=ATOL)
    taken = probs[:, k, None] >= grid  # (N, grid): F-beta of every grid threshold at once, from the counts
    tp = (taken & (y_true[:, k, None] == 1)).sum(0)
    on_grid = (1 + beta**2) * tp / (beta**2 * y_true[:, k].sum() + taken.sum(0))
    assert on_grid.max() <= fit.scores[k] + ATOL


def test_ties_go_to_the_threshold_nearest_one_half():
  # cuts at 0.9 and at 0.2 both reach F1 2/3; their thresholds 0.85 and 0.1: 0.85 is nearer 0.5
  y = np.array([[1], [0], [0], [1]]).repeat(2, 1)
  p = np.array([[.9], [.8], [.3], [.2]]).repeat(2, 1)
  fit = mm.fit_thresholds(y, p)
  np.testing.assert_allclose(fit.thresholds, [0.85, 0.85])
  np.testing.assert_allclose(fit.scores, [2 / 3, 2 / 3])
  # F2 weighs recall: taking every image (threshold 0.1) now wins outright
  assert mm.fit_thresholds(y, p, beta=2.0).thresholds[0] == pytest.approx(0.1)


def test_thresholds_keep_the_cut_between_adjacent_floats_and_at_zero():
  low = 0.25
  high = np.nextafter(low, 1.0)  # no float between them: their midpoint rounds (to even) onto `low`
  assert (low + high) / 2 == low
  y = np.array([[1, 1], [0, 1], [0, 1]])
  p = np.array([[high, 0.0], [low, 0.0], [0.1, 0.0]])
  fit = mm.fit_thresholds(y, p)
  assert fit.thresholds[0] == high and mm.predict(p, fit.thresholds)[:, 0].tolist() == [1, 0, 0]
  assert fit.thresholds[1] == 0.0 and fit.scores[1] == 1.0  # all probabilities 0, all positive: take all


def test_a_label_with_no_positive_keeps_one_half_with_a_warning(caplog):
  y = np.array([[1, 0], [0, 0], [1, 0]])
  p = np.array([[.7, .6], [.2, .4], [.9, .1]])
  with caplog.at_level(logging.WARNING):
    fit = mm.fit_thresholds(y, p, class_names=('haze', 'cloudy'))
  assert fit.thresholds[1] == 0.5 and np.isnan(fit.scores[1]) and fit.scores[0] == 1.0
  assert "label 'cloudy' has no positive image among the 3" in caplog.text


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match='0/1 matrix'):
    mm.f1(np.array([[2, 0]]), np.array([[1, 0]]))
  with pytest.raises(ValueError, match='differ in shape'):
    mm.f1(np.zeros((2, 2)), np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    mm.fit_thresholds(np.ones((2, 2)), np.array([[0.5, 1.5], [0.1, 0.2]]))
