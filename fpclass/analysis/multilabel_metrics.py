"""Multi-label metrics from an (N, K) 0/1 truth matrix and scores or 0/1 predictions, and per-label thresholds.

Per label: precision, recall, F-beta, support, average precision. Overall: micro, macro and samples F1,
mAP (macro average precision), subset accuracy, Hamming loss and Planet's F2 (samples-averaged F-beta,
beta 2). The definitions are scikit-learn's, to 1e-6 (tests/test_multilabel_metrics.py), in NumPy alone so
that serving and the step loop need nothing else. A ratio with a zero denominator is `zero_division`
(default 0, as `fpclass.analysis.metrics` uses): precision with no predicted positive, recall with no true one,
F when neither; the average precision of a label with no positive is 0, as scikit-learn's.

`fit_thresholds` picks one threshold per label maximising that label's F-beta, over every distinct cut of
its validation probabilities (exact: no grid). A cut's threshold is the midpoint between the neighbouring
distinct probabilities, as `fpclass.analysis.calibration` does for two classes; among cuts scoring the same, the
threshold nearest 0.5 wins.
"""
import dataclasses
import logging

import numpy as np

AVERAGES = (None, 'micro', 'macro', 'samples')
TIE = 1e-12  # scores this close count as equal when choosing a threshold


def precision_recall_fbeta_support(y_true, y_pred, beta: float = 1.0, average: str | None = None,
                                   zero_division: float = 0.0):
  """(precision, recall, F-beta, support) as scikit-learn's `precision_recall_fscore_support`: per label
  (K,) arrays for average=None, else floats and support None."""
  y_true = _binary(y_true)
  y_pred = _binary(y_pred, y_true.shape)
  if average not in AVERAGES:
    raise ValueError(f'average={average!r}: choose one of {AVERAGES}')
  axis = 1 if average == 'samples' else 0
  tp = np.sum(y_true & y_pred, axis=axis, dtype=np.float64)
  true = np.sum(y_true, axis=axis, dtype=np.float64)
  pred = np.sum(y_pred, axis=axis, dtype=np.float64)
  if average == 'micro':
    tp, true, pred = tp.sum(keepdims=True), true.sum(keepdims=True), pred.sum(keepdims=True)
  b2 = float(beta) ** 2
  precision = _divide(tp, pred, zero_division)
  recall = _divide(tp, true, zero_division)
  fbeta = _divide((1 + b2) * tp, b2 * true + pred, zero_division)
  if average is None:
    return precision, recall, fbeta, true.astype(np.int64)
  return _mean(precision), _mean(recall), _mean(fbeta), None


def fbeta(y_true, y_pred, beta: float, average: str | None = 'macro', zero_division: float = 0.0):
  return precision_recall_fbeta_support(y_true, y_pred, beta, average, zero_division)[2]


def f1(y_true, y_pred, average: str | None = 'macro', zero_division: float = 0.0):
  return fbeta(y_true, y_pred, 1.0, average, zero_division)


def planet_f2(y_true, y_pred, zero_division: float = 0.0) -> float:
  """The Planet competition's score: F2 per image, averaged over images."""
  return fbeta(y_true, y_pred, 2.0, 'samples', zero_division)


def subset_accuracy(y_true, y_pred) -> float:
  """Share of images whose predicted label set is exactly right."""
  y_true = _binary(y_true)
  return float(np.mean(np.all(y_true == _binary(y_pred, y_true.shape), axis=1)))


def hamming_loss(y_true, y_pred) -> float:
  """Share of (image, label) decisions that are wrong."""
  y_true = _binary(y_true)
  return float(np.mean(y_true != _binary(y_pred, y_true.shape)))


def average_precision(y_true, y_score) -> np.ndarray:
  """(K,) average precision per label, sum_n (R_n - R_{n-1}) P_n over the distinct scores, highest first
  (not interpolated); 0 for a label with no positive."""
  y_true = _binary(y_true)
  y_score = np.asarray(y_score, np.float64)
  if y_score.shape != y_true.shape:
    raise ValueError(f'scores {y_score.shape} and labels {y_true.shape} differ in shape')
  out = np.zeros(y_true.shape[1])
  for k in range(y_true.shape[1]):
    tp, predicted, _ = _cuts(y_true[:, k], y_score[:, k])
    positives = tp[-1]
    if positives:
      recall_gain = np.diff(tp, prepend=0) / positives
      out[k] = float(np.sum(recall_gain * tp / predicted))
  return out


def mean_average_precision(y_true, y_score) -> float:
  """mAP: the unweighted mean of the labels' average precision (labels with no positive count as 0)."""
  return float(np.mean(average_precision(y_true, y_score)))


def scores(y_true, probs, class_names, thresholds=0.5, zero_division: float = 0.0) -> dict:
  """What a multi-label scores.json would hold: per-label figures and every overall one."""
  y_true = _binary(y_true)
  probs = np.asarray(probs, np.float64)
  thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (y_true.shape[1],))
  y_pred = predict(probs, thresholds)
  precision, recall, f1_k, support = precision_recall_fbeta_support(y_true, y_pred, 1.0, None, zero_division)
  ap = average_precision(y_true, probs)
  return dict(
      n=int(len(y_true)), untagged=int(np.sum(~y_true.any(1))), zero_division=float(zero_division),
      micro_f1=f1(y_true, y_pred, 'micro', zero_division), macro_f1=f1(y_true, y_pred, 'macro', zero_division),
      samples_f1=f1(y_true, y_pred, 'samples', zero_division), planet_f2=planet_f2(y_true, y_pred, zero_division),
      mean_average_precision=float(np.mean(ap)), subset_accuracy=subset_accuracy(y_true, y_pred),
      hamming_loss=hamming_loss(y_true, y_pred),
      per_label={name: dict(precision=float(precision[k]), recall=float(recall[k]), f1=float(f1_k[k]),
                            support=int(support[k]), average_precision=float(ap[k]),
                            threshold=float(thresholds[k])) for k, name in enumerate(class_names)},
      class_names=list(class_names))


def predict(probs, thresholds) -> np.ndarray:
  """(N, K) uint8 decisions: label k where its probability is at least thresholds[k]."""
  probs = np.asarray(probs, np.float64)
  return (probs >= np.asarray(thresholds, np.float64)).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Per label: the threshold, the F-beta it reaches on the data it was fitted to (nan: no positive)."""
  thresholds: np.ndarray
  scores: np.ndarray
  beta: float


def fit_thresholds(y_true, probs, beta: float = 1.0, class_names=None) -> Thresholds:
  """Per label, the threshold maximising its F-beta on (y_true, probs); see the module docstring. A label
  with no positive scores 0 at every threshold: it keeps 0.5, with score nan and a logged warning."""
  y_true = _binary(y_true)
  probs = np.asarray(probs, np.float64)
  if probs.shape != y_true.shape:
    raise ValueError(f'probabilities {probs.shape} and labels {y_true.shape} differ in shape')
  if probs.size and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0):
    raise ValueError('probabilities must lie in [0, 1]')
  k_labels = y_true.shape[1]
  names = list(class_names) if class_names is not None else [str(k) for k in range(k_labels)]
  thresholds, best = np.full(k_labels, 0.5), np.full(k_labels, np.nan)
  for k in range(k_labels):
    if not y_true[:, k].any():
      logging.warning('label %r has no positive image among the %d to fit its threshold on: it keeps 0.5',
                      names[k], len(y_true))
      continue
    cut_thresholds, cut_scores = fbeta_by_threshold(y_true[:, k], probs[:, k], beta)
    tied = np.flatnonzero(cut_scores >= cut_scores.max() - TIE)
    # nearest 0.5; at equal distance the higher threshold (argmin keeps the first, and cuts run high to low)
    pick = tied[np.argmin(np.abs(cut_thresholds[tied] - 0.5))]
    thresholds[k], best[k] = cut_thresholds[pick], cut_scores[pick]
  return Thresholds(thresholds=thresholds, scores=best, beta=float(beta))


def fbeta_by_threshold(y_true, probs, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """(thresholds, F-beta) of one label for each cut `probs >= threshold` that predicts at least one
  positive, highest threshold first: one cut per distinct probability, at the midpoint below it."""
  y_true = np.asarray(y_true).astype(bool)
  probs = np.asarray(probs, np.float64)
  tp, predicted, values = _cuts(y_true, probs)
  below = np.append(values[1:], min(0.0, values[-1]))  # the next lower distinct value (0 below the lowest)
  thresholds = (values + below) / 2
  # adjacent floats can round their midpoint onto the lower one, which would change the cut: use the value
  thresholds = np.where(thresholds > below, thresholds, values)
  b2 = float(beta) ** 2
  return thresholds, (1 + b2) * tp / (b2 * tp[-1] + predicted)


def _cuts(y_true, y_score):
  """For each distinct score, high to low: (true positives, predicted positives) of `scores >= it`, and
  the distinct scores themselves."""
  order = np.argsort(-y_score, kind='stable')
  ranked, hits = y_score[order], y_true[order].astype(np.float64)
  last = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # the last position of each value
  return np.cumsum(hits)[last], last + 1.0, ranked[last]


def _binary(y, shape=None) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 2 or not np.isin(y, (0, 1)).all():
    raise ValueError(f'expected an (N, K) 0/1 matrix, got shape {y.shape}')
  if shape is not None and y.shape != tuple(shape):
    raise ValueError(f'predictions {y.shape} and labels {tuple(shape)} differ in shape')
  return y.astype(bool)


def _divide(numerator, denominator, zero_division):
  out = np.full(np.shape(numerator), float(zero_division))
  np.divide(numerator, denominator, out=out, where=denominator != 0)
  return out


def _mean(values) -> float:
  """scikit-learn's average: nan entries (zero_division=nan) are left out; all nan gives nan."""
  values = values[~np.isnan(values)]
  return float(np.mean(values)) if values.size else float('nan')
