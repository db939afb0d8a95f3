"""Probability calibration maths and decisions: temperature scaling, expected calibration error,
reliability bins, and the F1-maximising threshold for binary tasks. The workflow that fits, stores and
reports them is `fpclass.modes.calibrate`.

Everything is fitted on validation predictions: the out-of-fold predictions of a sweep experiment's fold
models, or a single run's validation split. The temperature and threshold are stored in each model's
sidecar (metadata.json, key `calibration`), and `--mode submit` applies them. The figures reported
"after" are cross-fitted: each fold's predictions are calibrated with a temperature and threshold fitted
on the other folds, so they are not scored on the data they were fitted to.
"""
import dataclasses

import numpy as np
from scipy import optimize
from sklearn import metrics as skm
from sklearn.model_selection import StratifiedKFold

from fpclass.analysis import metrics, multilabel_metrics
from fpclass.errors import UserInputError
from fpclass.models.heads import probabilities

THRESHOLD_METRICS = ('macro_f1', 'f1', 'f2')  # f2: multi-label thresholds only
TEMPERATURE_RANGE = (0.05, 20.0)
CROSSFIT_PARTS = 5  # parts a single validation split is cut into when there are no folds to cross-fit over


def scaled_probabilities(logits: np.ndarray, head: str, temperature: float = 1.0) -> np.ndarray:
  return probabilities(np.asarray(logits, np.float64) / float(temperature), head)


def negative_log_likelihood(logits, labels, head, temperature=1.0) -> float:
  return metrics.log_loss(labels, scaled_probabilities(logits, head, temperature))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, head: str) -> float:
  """The T minimising the NLL of softmax(logits / T) (sigmoid for a one-logit head). The NLL is convex
  in 1/T, so a bounded scalar search on log T finds the optimum."""
  lo, hi = np.log(TEMPERATURE_RANGE)
  result = optimize.minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, head, np.exp(log_t)),
                                    bounds=(lo, hi), method='bounded', options=dict(xatol=1e-6))
  return float(np.exp(result.x))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int):
  """Per equal-width bin of top-class confidence: (count, mean confidence, accuracy). Bin b holds
  confidences in (b/bins, (b+1)/bins], the first also 0."""
  confidence = probs.max(1)
  correct = (probs.argmax(1) == labels).astype(np.float64)
  which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  count = np.bincount(which, minlength=bins).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_conf = np.bincount(which, confidence, minlength=bins) / count
    accuracy = np.bincount(which, correct, minlength=bins) / count
  return count, mean_conf, accuracy


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
  """ECE = sum_b (n_b / n) |accuracy_b - confidence_b| over equal-width top-class confidence bins."""
  count, mean_conf, accuracy = reliability_bins(probs, labels, bins)
  used = count > 0
  return float(np.sum(count[used] / count.sum() * np.abs(accuracy[used] - mean_conf[used])))


def f1_by_threshold(p1: np.ndarray, labels: np.ndarray, metric: str = 'macro_f1'):
  """(thresholds, scores): F1 (positive class) or macro F1 of `predict 1 iff p1 >= t` for every
  distinct decision, t being the midpoints between sorted distinct p1 values (plus both ends)."""
  if metric not in THRESHOLD_METRICS:
    raise UserInputError(f'config.sweep.threshold_metric={metric!r}: choose one of {THRESHOLD_METRICS}')
  values = np.unique(p1)
  thresholds = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]])
  # Positives predicted at threshold t: examples with p1 >= t. Count them via a sorted search.
  order = np.sort(p1)
  pos_sorted = np.sort(p1[labels == 1])
  predicted_pos = len(order) - np.searchsorted(order, thresholds, side='left')
  tp = len(pos_sorted) - np.searchsorted(pos_sorted, thresholds, side='left')
  fp = predicted_pos - tp
  fn = len(pos_sorted) - tp
  tn = len(p1) - tp - fp - fn
  with np.errstate(invalid='ignore', divide='ignore'):
    f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    f1_neg = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
  return thresholds, (f1_pos if metric == 'f1' else (f1_pos + f1_neg) / 2)


def tune_threshold(p1: np.ndarray, labels: np.ndarray, metric: str = 'macro_f1') -> tuple[float, float]:
  """(threshold, score) maximising the metric; among ties, the threshold nearest 0.5."""
  thresholds, scores = f1_by_threshold(p1, labels, metric)
  best = np.flatnonzero(scores >= scores.max() - 1e-12)
  pick = best[np.argmin(np.abs(thresholds[best] - 0.5))]
  return float(np.clip(thresholds[pick], 0.0, 1.0)), float(scores[pick])


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
  """Class predictions: argmax, or for two classes `p1 >= threshold` when a threshold is given."""
  if threshold is None or probs.shape[1] != 2:
    return probs.argmax(1)
  return (probs[:, 1] >= threshold).astype(np.int64)


def decision_score(pred: np.ndarray, labels: np.ndarray, metric: str) -> float:
  """F1 of the positive class, or macro F1, of binary predictions (scikit-learn's definitions)."""
  average = 'binary' if metric == 'f1' else 'macro'
  return float(skm.f1_score(labels, pred, labels=[0, 1], average=average, zero_division=0))


def crossfit_groups(labels: np.ndarray, groups: np.ndarray | None, seed: int = 0) -> np.ndarray:
  """The groups to cross-fit over: the folds when there are several, else a seeded stratified cut of the
  single validation split into CROSSFIT_PARTS parts."""
  if groups is not None and len(np.unique(groups)) > 1:
    return np.asarray(groups)
  parts = min(CROSSFIT_PARTS, int(np.bincount(labels).min()) if len(labels) else 0)
  if parts < 2:
    return np.zeros(len(labels), int)
  out = np.zeros(len(labels), int)
  for g, (_, test) in enumerate(StratifiedKFold(parts, shuffle=True, random_state=seed).split(labels, labels)):
    out[test] = g
  return out


def calibrate_predictions(logits: np.ndarray, labels: np.ndarray, head: str, groups=None, bins: int = 15,
                          threshold_metric: str = 'macro_f1') -> tuple[dict, np.ndarray]:
  """Fits the temperature (and, for two classes, the threshold) on all predictions; reports ECE, NLL and
  F1 before and after, the "after" figures cross-fitted over `groups`. Returns (summary, cross-fitted
  calibrated probabilities)."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  temperature = fit_temperature(logits, labels, head)
  before = scaled_probabilities(logits, head)
  binary = before.shape[1] == 2
  parts = crossfit_groups(labels, groups)
  crossfit = np.zeros_like(before)
  crossfit_pred = before.argmax(1)
  for g in np.unique(parts):
    held, rest = parts == g, parts != g
    if not rest.any():  # too few examples to cut: fitted and scored on the same predictions
      rest = held
    t = fit_temperature(logits[rest], labels[rest], head)
    crossfit[held] = scaled_probabilities(logits[held], head, t)
    if binary:
      threshold_g, _ = tune_threshold(scaled_probabilities(logits[rest], head, t)[:, 1], labels[rest],
                                      threshold_metric)
      crossfit_pred[held] = decide(crossfit[held], threshold_g)
  after = scaled_probabilities(logits, head, temperature)
  out = dict(temperature=temperature, n=int(len(labels)), bins=int(bins), head=head,
             crossfit_groups=int(len(np.unique(parts))),
             ece_before=expected_calibration_error(before, labels, bins),
             ece_after=expected_calibration_error(crossfit, labels, bins),
             ece_after_in_sample=expected_calibration_error(after, labels, bins),
             nll_before=metrics.log_loss(labels, before), nll_after=metrics.log_loss(labels, crossfit),
             threshold=None, threshold_metric=None)
  if binary:
    threshold, _ = tune_threshold(after[:, 1], labels, threshold_metric)
    out.update(threshold=threshold, threshold_metric=threshold_metric,
               f1_argmax=decision_score(before.argmax(1), labels, threshold_metric),
               f1_tuned=decision_score(crossfit_pred, labels, threshold_metric))
  return out, crossfit


@dataclasses.dataclass(frozen=True)
class Decision:
  """How logits become the reported probabilities and classes: the stored calibration, or none.

  Multi-label (head 'multilabel'): each class's sigmoid probability, and the classes whose probability is at
  least their threshold: the stored per-label `thresholds` (`--mode calibrate`), else 0.5."""
  head: str
  temperature: float = 1.0
  threshold: float | None = None
  thresholds: tuple | None = None   # multi-label: one per class, in class order

  @classmethod
  def for_model(cls, trained, calibrated: bool) -> 'Decision':
    """From a restored model (`fpclass.infer.inference.Trained`) and its stored calibration."""
    stored = (trained.metadata.get('calibration') or {}) if calibrated else {}
    return cls.from_stored(trained.task.head, stored, trained.class_names)

  @classmethod
  def from_stored(cls, head: str, stored: dict, class_names) -> 'Decision':
    """From a sidecar's `calibration` entry ({} for none); multi-label thresholds are stored by class name."""
    thresholds = None
    if head == 'multilabel':
      by_name = stored.get('thresholds') or {}
      thresholds = tuple(float(by_name.get(name, 0.5)) for name in class_names)
    return cls(head, float(stored.get('temperature') or 1.0), stored.get('threshold'), thresholds)

  def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, classes), predicted class indices (N,), or multi-label (N, classes) 0/1 rows)."""
    probs = scaled_probabilities(logits, self.head, self.temperature)
    if self.head == 'multilabel':
      return probs, multilabel_metrics.predict(probs, self.label_thresholds(probs.shape[1]))
    return probs, decide(probs, self.threshold)

  def label_thresholds(self, num_classes: int) -> np.ndarray:
    """(K,) the multi-label decision thresholds (0.5 for every class when none is stored)."""
    return np.asarray(self.thresholds if self.thresholds is not None else (0.5,) * num_classes, np.float64)

  def describe(self) -> str:
    if self.head == 'multilabel':
      tuned = self.thresholds is not None and any(t != 0.5 for t in self.thresholds)
      return ('sigmoid probability per class; a class is predicted when its probability reaches '
              + ('its fitted threshold (--mode calibrate)' if tuned else '0.5'))
    if self.temperature == 1.0 and self.threshold is None:
      return 'uncalibrated probabilities, the most probable class'
    return (f'temperature-scaled probabilities (T = {self.temperature:.3f}), '
            + (f'class 1 when its probability is at least {self.threshold:.3f}' if self.threshold is not None
               else 'the most probable class'))


