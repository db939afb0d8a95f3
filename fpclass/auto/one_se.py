"""The one-standard-error rule at a rung of `--mode auto`: the config as given goes on unless a trial beats it by
more than the noise of the rung's own evidence.

A cheap rung trains few epochs on one fold, and its values differ by about their noise: picking the best of a
batch of near-equals picks at random among them, and a recipe the user tuned is likely the better one of equals.
So, as Breiman's one-standard-error rule prefers the simplest model within one standard error of the best, a
rung promotes the config as given (the first trial) whenever the best trial beats it by no more than one
standard error of their difference. The standard error comes from the rung's out-of-fold predictions: a paired
bootstrap over the images both held out, the metric recomputed on each resample (`difference_se`). The bar is
one standard error whatever the number of challengers: a bar raised for the best of several (Sidak's
correction) kept the config as given on MNIST where the learning rate x3 ended best (docs/auto.md). A challenger
promoted by chance is hedged later: the config as given trains beside an unconfirmed choice, and the cross-fitted
mix weighs both (`fpclass.auto.final`). Where a rung promotes one trial, a tie sends both on: the user's recipe
kept alone on a tie is the one choice a later stage cannot undo (docs/auto.md, test images in another style).
"""
import numpy as np
import pandas as pd

from fpclass.analysis import metric_registry
from fpclass.train import oof

RESAMPLES = 200


def difference_se(first: pd.DataFrame, second: pd.DataFrame, metric: str, resamples: int = RESAMPLES,
                  seed: int = 0) -> float:
  """The bootstrap standard error of metric(first) - metric(second) over the examples both frames predicted
  (out-of-fold rows: each example's mean over the members that held it out), resampled in pairs; NaN when fewer
  than two examples are shared or the metric is undefined on the resamples."""
  a, b = oof.mean_by_id(first), oof.mean_by_id(second)
  shared = a.index.intersection(b.index)
  if len(shared) < 2:
    return float('nan')
  labels, probs_a, task = oof.labels_and_probabilities(a.loc[shared])
  _, probs_b, _ = oof.labels_and_probabilities(b.loc[shared])
  score = metric_registry.REGISTRY[metric]
  rng = np.random.default_rng(seed)
  differences = []
  for _ in range(resamples):
    pick = rng.integers(0, len(shared), len(shared))
    x, y = score(labels[pick], probs_a[pick], task), score(labels[pick], probs_b[pick], task)
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
