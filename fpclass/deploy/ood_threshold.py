"""The threshold that turns an out-of-distribution score into the `unknown` flag, and the rate it flags.

The threshold is the conformal quantile of held-out in-distribution scores: a new in-distribution image exceeds
it with probability at most the target false-rejection rate. No figure is in-sample: a combined score's parts
are standardised on one half of the held-out images and thresholded on the other (`fit_held_out`), and the rate
a report gives is cross-fitted, each image flagged by a fit made without it. The scores themselves are
`fpclass.deploy.ood_scores`'.
"""
import dataclasses
import math

import numpy as np
from sklearn.metrics import roc_auc_score

from fpclass.deploy.ood_scores import PARTS, Statistics, scores, standardised


def _conformal_rank(count: int, false_rejection: float) -> int:
  """The rank, from 1, of the conformal quantile among `count` held-out scores: ceil((n + 1)(1 - rate))."""
  return math.ceil((count + 1) * (1.0 - false_rejection))


def reaches_rate(count: int, false_rejection: float) -> bool:
  """Whether `count` held-out scores are enough for a threshold at the rate (19 for 5%); with fewer, none is set."""
  return 1 <= _conformal_rank(count, false_rejection) <= count


def conformal_threshold(held_out: np.ndarray, false_rejection: float) -> float:
  """The threshold t over held-out in-distribution scores such that an exchangeable new one exceeds t with
  probability at most `false_rejection`: the ceil((n + 1)(1 - rate))-th smallest score (inf when n is too
  small for the rate: nothing is rejected)."""
  held_out = np.sort(np.asarray(held_out, np.float64))
  if not reaches_rate(len(held_out), false_rejection):
    return math.inf
  return float(held_out[_conformal_rank(len(held_out), false_rejection) - 1])


@dataclasses.dataclass(frozen=True)
class HeldOutFit:
  """A score fitted on held-out images: its statistics (a combined score standardised on them), the threshold
  (on scores each standardised without its own image), and the rate the procedure flags on images that set
  nothing (`rate`: each image flagged by a fit made without it, `CROSS_FOLDS` folds)."""
  statistics: Statistics
  threshold: float
  rate: float
  roles: str   # which images did what, for the record


CROSS_FOLDS = 5


def _cross_folds(order: np.ndarray):
  """(the others, the fold) for each of `CROSS_FOLDS` folds of `order` (a permutation of the held-out images)."""
  for fold in np.array_split(order, CROSS_FOLDS):
    yield order[~np.isin(order, fold)], fold


def fit_held_out(statistics: Statistics, logits: np.ndarray, features: np.ndarray, false_rejection: float,
                 seed: int, images: np.ndarray | None = None) -> HeldOutFit:
  """The threshold procedure on held-out in-distribution images (their logits and features): a combined score's
  parts standardised on all of them for new images, and its conformal threshold on cross-fitted scores (two
  halves, seeded, each scored with the other's standardisation), so that no score that sets the threshold was
  standardised on its own image; a single score's threshold on all of them. Its false-rejection rate is
  measured, not assumed: each image is flagged or not by the same procedure fitted on the other folds."""
  order = np.random.default_rng(seed).permutation(len(logits))
  pick = lambda x, index: None if x is None else x[index]   # noqa: E731

  def scored(fitted: Statistics, index: np.ndarray) -> np.ndarray:
    return scores(fitted, logits[index], pick(features, index), images=pick(images, index))

  def standard_on(index: np.ndarray) -> Statistics:
    return standardised(statistics, logits[index], pick(features, index), pick(images, index))

  def procedure(index: np.ndarray) -> tuple[Statistics, float]:
    if statistics.score not in PARTS:
      return statistics, conformal_threshold(scored(statistics, index), false_rejection)
    # Two halves, each scored with the standardisation of the other: every score the threshold reads comes from
    # an image that did not standardise it, and the threshold still reads them all (a half alone made the rate
    # reached swing: 10.8% of unseen digits for a 5% target).
    first, second = index[:len(index) // 2], index[len(index) // 2:]
    crossed = np.concatenate([scored(standard_on(second), first), scored(standard_on(first), second)])
    return standard_on(index), conformal_threshold(crossed, false_rejection)

  if not reaches_rate(len(order), false_rejection):
    # Too few held-out images for the rate: nothing is flagged, and halves and folds of
    # so few would be empty. The parts are standardised on what there is, where there are two to spread.
    final = standard_on(order) if len(order) >= 2 else statistics
    return HeldOutFit(final, math.inf, 0.0, f'{len(order)} held-out images, too few for the rate: no threshold')
  final, threshold = procedure(order)
  flags = []
  for others, fold in _cross_folds(order):
    fitted, cut = procedure(others)
    flags.extend(flagged(scored(fitted, fold), cut).tolist())
  roles = ('threshold set on the held-out images, each scored with the parts standardised on the other half'
           if statistics.score in PARTS else 'threshold set on the held-out images')
  return HeldOutFit(final, threshold, float(np.mean(flags)) if flags else 0.0,
                    roles + f'; the rate flagged is cross-fitted ({CROSS_FOLDS} folds): each image by a fit without it')


def cross_fitted_rate(held_out: np.ndarray, false_rejection: float, seed: int) -> float:
  """The rate a conformal threshold flags on held-out scores that set nothing: each fold's scores against the
  threshold of the other folds'."""
  if not reaches_rate(len(held_out), false_rejection):
    return 0.0   # too few held-out scores for the rate: nothing is flagged
  order = np.random.default_rng(seed).permutation(len(held_out))
  flags = [flagged(held_out[fold], conformal_threshold(held_out[others], false_rejection))
           for others, fold in _cross_folds(order)]
  return float(np.mean(np.concatenate(flags))) if len(held_out) else 0.0


def flagged(scores_: np.ndarray, threshold: float) -> np.ndarray:
  """The `unknown` flag: a score above the threshold."""
  return np.asarray(scores_, np.float64) > threshold


def auroc(in_distribution: np.ndarray, other: np.ndarray) -> float:
  """The probability that an image of the other set scores above an in-distribution one (ties half)."""
  values = np.concatenate([in_distribution, other])
  truth = np.concatenate([np.zeros(len(in_distribution)), np.ones(len(other))])
  return float(roc_auc_score(truth, values))
