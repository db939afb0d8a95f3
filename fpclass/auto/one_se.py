"""The one-standard-error rule at a rung of `--mode auto`: the config as given goes on unless a trial beats it by
more than the noise of the rung's own evidence.

A cheap rung trains few epochs on one fold, and its values differ by about their noise: picking the best of a
batch of near-equals picks at random among them, and a recipe the user tuned is likely the better one of equals.
So, as Breiman's one-standard-error rule prefers the simplest model within one standard error of the best, a
rung promotes the config as given (the first trial) whenever the best trial beats it by no more than one
standard error of their difference on the images both held out (`rung_se`): the images' noise (a paired
bootstrap) and the training's (each model is one seed, and a seed moves a small fold's score by more than its
images do; docs/auto.md). The bar is one standard error whatever the number of challengers: a bar raised for the
best of several (Sidak's) kept the config as given on MNIST where the learning rate x3 ended best. A challenger
promoted by chance is hedged later: the config as given trains beside an unconfirmed choice, and the cross-fitted
mix weighs both (`fpclass.auto.final`). Where a rung promotes one trial, a tie sends both on: the user's recipe
kept alone on a tie is the one choice a later stage cannot undo (docs/auto.md, test images in another style).
"""
import numpy as np
import pandas as pd

from fpclass.analysis import metric_registry
from fpclass.train import oof

RESAMPLES = 200
# The training's noise a rung reads, as a share of `training_se`'s estimate: over five seeds of two configurations
# on one fold, the paired difference spread 0.48, 0.56, 0.48 and 0.25 times that estimate on the footprints,
# MNIST, Fashion-MNIST and the digits (`bench/seed_noise.py`; docs/auto.md). The seeds a rung pairs share their
# draws (one seed and data order for both), and a model's probabilities spread wider than its decisions do over
# seeds. The largest is kept.
SEED_SHARE = 0.56


def rung_se(first: pd.DataFrame, second: pd.DataFrame, metric: str) -> float:
  """The standard error of metric(first) - metric(second) that a rung's one-SE rule reads: the images' noise and
  the training's (`SEED_SHARE` of `training_se`) together, independent, so their variances add; the images' alone
  for a metric with no decision to redraw; NaN when the images' is unknown."""
  shared = _shared(first, second)
  training = _training_se(shared, metric, RESAMPLES, 0)
  images = _images_se(shared, metric, RESAMPLES, 0)
  return images if np.isnan(training) else float(np.hypot(images, SEED_SHARE * training))


def difference_se(first: pd.DataFrame, second: pd.DataFrame, metric: str, resamples: int = RESAMPLES,
                  seed: int = 0) -> float:
  """The bootstrap standard error of metric(first) - metric(second) over the examples both frames predicted
  (out-of-fold rows: each example's mean over the members that held it out), resampled in pairs; NaN when fewer
  than two examples are shared or the metric is undefined on the resamples."""
  return _images_se(_shared(first, second), metric, resamples, seed)


def training_se(first: pd.DataFrame, second: pd.DataFrame, metric: str, draws: int = RESAMPLES,
                seed: int = 0) -> float:
  """The standard error of metric(first) - metric(second) that retraining both models brings, on the examples both
  predicted: each model's decision on each example is redrawn from its own probabilities (a retrained model's
  chance of each class, or of each label), independently per model and example, and the metric recomputed on each
  draw. NaN for a metric that reads probabilities rather than decisions (`Metric.decided`), or fewer than two
  shared examples. Two seeds of one configuration make the same call on most images a single model gives
  0.6 to 0.9, so the measured spread is half this or less (`SEED_SHARE`)."""
  return _training_se(_shared(first, second), metric, draws, seed)


def _images_se(shared, metric: str, resamples: int, seed: int) -> float:
  if shared is None:
    return float('nan')
  labels, probs_a, probs_b, task = shared
  rng = np.random.default_rng(seed)
  picks = (rng.integers(0, len(labels), len(labels)) for _ in range(resamples))
  return _spread(((labels[p], probs_a[p], probs_b[p]) for p in picks), metric, task)


def _training_se(shared, metric: str, draws: int, seed: int) -> float:
  if shared is None or not metric_registry.REGISTRY[metric].decided:
    return float('nan')
  labels, probs_a, probs_b, task = shared
  rng = np.random.default_rng(seed)
  a, b = _redrawn(probs_a, task, rng), _redrawn(probs_b, task, rng)
  return _spread(((labels, next(a), next(b)) for _ in range(draws)), metric, task)


def _shared(first: pd.DataFrame, second: pd.DataFrame):
  """(labels, first's probabilities, second's, task) on the examples both frames predicted, each example's mean
  over the members that held it out; None when fewer than two are shared."""
  a, b = oof.mean_by_id(first), oof.mean_by_id(second)
  shared = a.index.intersection(b.index)
  if len(shared) < 2:
    return None
  labels, probs_a, task = oof.labels_and_probabilities(a.loc[shared])
  _, probs_b, _ = oof.labels_and_probabilities(b.loc[shared])
  return labels, probs_a, probs_b, task


def _redrawn(probs: np.ndarray, task: str, rng: np.random.Generator):
  """Draws of decisions as 0/1 probabilities, one per `next`: a class per example drawn from its row
  (single-label), or each label drawn from its own probability (multi-label)."""
  if task == metric_registry.MULTI:
    while True:
      yield (rng.random(probs.shape) < probs).astype(np.float64)
  cumulative, one_hot, last = np.cumsum(probs, 1), np.eye(probs.shape[1]), probs.shape[1] - 1
  while True:
    yield one_hot[np.minimum((rng.random((len(probs), 1)) > cumulative).sum(1), last)]


def _spread(samples, metric: str, task: str) -> float:
  """The standard deviation of metric(a) - metric(b) over (labels, a, b) samples where both are defined, drawn one
  at a time (a resample of a large fold holds as much as the fold's predictions)."""
  score = metric_registry.REGISTRY[metric]
  differences = []
  for labels, a, b in samples:
    x, y = score(labels, a, task), score(labels, b, task)
    if x is not None and y is not None and np.isfinite(x) and np.isfinite(y):
      differences.append(x - y)
  return float(np.std(differences, ddof=1)) if len(differences) >= 2 else float('nan')


def promoted(ranked: list, keep: int, baseline, gap: float, se: float) -> list:
  """The trials a rung promotes from `ranked` (best first): the best `keep`, with the config as given (`baseline`)
  in the last place when it is not among them and the best beats it by `gap` (in the metric's better direction)
  of at most one standard error `se` of their difference (NaN: no evidence of the noise, the values rank alone).
  Where one trial goes on (`keep` 1), a tie is not a lead: the best and the config as given both go on, and the
  next rung, at a higher fidelity, decides between them (`fpclass.auto.brackets.widened`)."""
  best = list(ranked[:keep])
  if baseline is None or baseline in best or baseline not in ranked or not gap <= se:
    return best
  return [*best, baseline] if keep == 1 else [*best[:keep - 1], baseline]
