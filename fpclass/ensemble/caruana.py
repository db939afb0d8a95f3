"""Caruana et al.'s (2004) ensemble selection, and its honest score: the maths over (M, N, K) candidate probabilities
that `--mode ensemble` (`fpclass.ensemble.selection`'s pools) and `--mode auto`'s final mix share.

`caruana` is selection with replacement, as AutoGluon and auto-sklearn run it: each round adds the candidate whose
addition scores best, for `max_size` rounds, and the rounds up to the first best score are kept. `cross_fit` scores
it honestly: the selection, and the best single candidate it is compared with, are chosen on K-1 groups' examples
and scored on the held-out group, in turn; the paired per-group differences get the corrected interval of
`fpclass.analysis.stats` (ratio 1/(K-1)).
"""
import dataclasses
import math

import numpy as np

from fpclass.analysis import metric_registry, stats

PARTS = 5   # cross-fitting groups a single validation split (no folds) is cut into
TIE = 1e-12  # score differences below this are rounding, not an improvement


def score(metric: metric_registry.Metric, labels, probs, task: str) -> float:
  """The metric, NaN where it has no figure (a class absent from the examples)."""
  value = metric(labels, probs, task) if len(labels) else None
  return math.nan if value is None else float(value)


def key_of(metric, value: float) -> float:
  """Larger is better, NaN worst."""
  return -math.inf if math.isnan(value) else value if metric.higher_is_better else -value


@dataclasses.dataclass
class Selection:
  counts: np.ndarray          # (M,) how often each candidate was picked in the kept rounds
  path: list                  # the candidate picked in each round, all rounds
  scores: list                # the ensemble's score after each round
  rounds: int                 # the rounds kept: up to the first best score

  @property
  def weights(self) -> np.ndarray:
    return self.counts / self.counts.sum()

  def mix(self, probs: np.ndarray) -> np.ndarray:
    """The weighted mean of (M, N, K) candidate probabilities."""
    return np.tensordot(self.weights, probs, axes=1)


def caruana(probs: np.ndarray, labels, task: str, metric, max_size: int = 25) -> Selection:
  """Greedy selection with replacement over (M, N, K) candidate probabilities: `max_size` rounds, each adding
  the candidate whose addition scores best (ties: the first), kept up to the first round with the best score."""
  total, path, scores = np.zeros(probs.shape[1:]), [], []
  for r in range(max_size):
    trial = [score(metric, labels, (total + p) / (r + 1), task) for p in probs]
    pick = int(np.argmax([key_of(metric, s) for s in trial]))
    total += probs[pick]
    path.append(pick)
    scores.append(trial[pick])
  keys = [key_of(metric, s) for s in scores]
  rounds = next(r for r, k in enumerate(keys) if k >= max(keys) - TIE) + 1   # float noise is no improvement
  counts = np.bincount(path[:rounds], minlength=len(probs))
  return Selection(counts, path, scores, rounds)


def best_single(probs: np.ndarray, labels, task: str, metric) -> tuple[int, list]:
  """(index of the best candidate, every candidate's score)."""
  scores = [score(metric, labels, p, task) for p in probs]
  return int(np.argmax([key_of(metric, s) for s in scores])), scores


def crossfit_groups(folds: np.ndarray, seed: int = 0) -> np.ndarray:
  """The folds, or for a single validation split PARTS seeded parts of it."""
  if len(np.unique(folds)) > 1:
    return folds
  return np.random.default_rng(seed).permutation(len(folds)) % PARTS


@dataclasses.dataclass
class CrossFit:
  rows: list                  # per group: fold, n, ensemble, best_single, single (name), difference, weights
  ensemble: np.ndarray        # (N, K) each group's rows predicted by the selection fitted on the others
  single: np.ndarray          # (N, K) the same for the best single candidate
  ratio: float                # the held-out to fitting size ratio, 1 / (K - 1)

  def interval(self, column: str) -> stats.Interval:
    return stats.corrected_interval([r[column] for r in self.rows], self.ratio)


def cross_fit(probs: np.ndarray, labels, groups: np.ndarray, task: str, metric, max_size: int = 25,
              names=None) -> CrossFit:
  """Selection and best single fitted on every group but one and scored on that one, in turn."""
  names = names or [str(i) for i in range(len(probs))]
  labels = np.asarray(labels)
  ensemble, single, rows = np.zeros(probs.shape[1:]), np.zeros(probs.shape[1:]), []
  parts = np.unique(groups)
  for g in parts:
    held, fit = groups == g, groups != g
    selection = caruana(probs[:, fit], labels[fit], task, metric, max_size)
    best, _ = best_single(probs[:, fit], labels[fit], task, metric)
    ensemble[held] = selection.mix(probs[:, held])
    single[held] = probs[best, held]
    e, s = score(metric, labels[held], ensemble[held], task), score(metric, labels[held], single[held], task)
    rows.append(dict(fold=int(g), n=int(held.sum()), ensemble=e, best_single=s, single=names[best],
                     difference=e - s, weights={names[i]: float(w) for i, w in enumerate(selection.weights) if w}))
  return CrossFit(rows, ensemble, single, 1.0 / max(1, len(parts) - 1))


def paired(values: list, baseline: list, ratio: float) -> stats.Interval:
  return stats.corrected_interval([a - b for a, b in zip(values, baseline)], ratio)


def group_scores(metric, labels, probs: np.ndarray, groups: np.ndarray, task: str) -> list[float]:
  """The metric of `probs` on each group's rows, in group order."""
  return [score(metric, np.asarray(labels)[groups == g], probs[groups == g], task) for g in np.unique(groups)]
