"""Which unlabelled images to label next (`--mode label_next`): uncertainty scores, a diverse pick, foreign apart.

- Uncertainty (higher = a label would teach more): `margin`, 1 - (top probability - second), the smallest gap
  between two classes; `entropy` of the mean probabilities, doubt spread over every class; `disagreement`, the
  weighted mean KL divergence of each model's probabilities from their mix (several models: fold models, an
  ensemble's), where the models learnt different things, whatever each one's confidence.
- Diversity (`rank` with features): the `count x candidates` most uncertain images are the candidates, and greedy
  k-center picks among them on L2-normalised features: first the most uncertain, then each time the candidate
  farthest from every pick so far. Candidates first, so that every pick stays uncertain and no weight trades
  uncertainty against distance; k-center (Sener & Savarese's core set), so that 100 near-copies of one confusing
  image take one place, not 100.
- Foreign images (flagged by the OOD score) are never picked: they are listed after, most foreign first.
"""
import dataclasses

import numpy as np

STRATEGIES = ('margin', 'entropy', 'disagreement')
TINY = 1e-12


def margin(probabilities: np.ndarray) -> np.ndarray:
  """(N,) 1 - (the top class's probability - the second's): 1 for a tie, 0 for a certain image."""
  top = np.sort(np.asarray(probabilities, np.float64), axis=1)
  return 1.0 - (top[:, -1] - top[:, -2])


def entropy(probabilities: np.ndarray) -> np.ndarray:
  """(N,) the entropy of each row, in nats."""
  p = np.asarray(probabilities, np.float64)
  return -np.sum(p * np.log(np.maximum(p, TINY)), axis=1)


def disagreement(member_probabilities: np.ndarray, weights=None) -> np.ndarray:
  """(N,) from (models, N, classes): the weighted mean over models of KL(model || weighted mix), the generalised
  Jensen-Shannon divergence; 0 where every model says the same."""
  members = np.asarray(member_probabilities, np.float64)
  w = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
  w = w / w.sum()
  mix = np.einsum('m,mnk->nk', w, members)
  kl = np.sum(members * (np.log(np.maximum(members, TINY)) - np.log(np.maximum(mix, TINY))[None]), axis=2)
  return np.einsum('m,mn->n', w, kl)


def uncertainty(strategy: str, member_probabilities: np.ndarray, weights=None) -> np.ndarray:
  """(N,) the `strategy`'s score from (models, N, classes); margin and entropy read the models' weighted mix."""
  members = np.asarray(member_probabilities, np.float64)
  if strategy == 'disagreement':
    return disagreement(members, weights)
  w = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
  mix = np.einsum('m,mnk->nk', w / w.sum(), members)
  if strategy == 'margin':
    return margin(mix)
  if strategy == 'entropy':
    return entropy(mix)
  raise ValueError(f'unknown strategy {strategy!r}; one of {STRATEGIES}')


def unit_rows(features: np.ndarray) -> np.ndarray:
  """Rows scaled to length 1 (a zero row stays zero)."""
  f = np.asarray(features, np.float64).reshape(len(features), -1)
  return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), TINY)


def kcenter(features: np.ndarray, scores: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """Greedy k-center over `features` (rows, compared as given): the highest score first, then each time the row
  farthest from its nearest pick so far (ties: the higher score). Returns (picks in order, each pick's distance
  to the picks before it; inf for the first)."""
  features, scores = np.asarray(features, np.float64), np.asarray(scores, np.float64)
  count = min(int(count), len(scores))
  if count == 0:
    return np.zeros(0, np.int64), np.zeros(0)
  first = int(np.lexsort((np.arange(len(scores)), -scores))[0])
  picks, distances = [first], [np.inf]
  nearest = np.linalg.norm(features - features[first], axis=1)
  nearest[first] = -np.inf
  while len(picks) < count:
    best = np.flatnonzero(nearest == nearest.max())
    chosen = int(best[np.argmax(scores[best])])
    picks.append(chosen)
    distances.append(float(nearest[chosen]))
    nearest = np.minimum(nearest, np.linalg.norm(features - features[chosen], axis=1))
    nearest[picks] = -np.inf
  return np.asarray(picks, np.int64), np.asarray(distances)


@dataclasses.dataclass(frozen=True)
class Ranking:
  """What to label next: `picks`, in-distribution image indices, best first, with `distances` (k-center: each
  pick's distance to the picks before it; NaN without diversity); `foreign`, the flagged images, most foreign
  first; `candidates`, how many images k-center chose among."""
  picks: np.ndarray
  distances: np.ndarray
  foreign: np.ndarray
  candidates: int


def rank(scores: np.ndarray, count: int, features: np.ndarray | None = None, foreign=None, ood_scores=None,
         candidates: float = 3.0) -> Ranking:
  """`count` images to label: by `scores` alone (most uncertain first) when `features` is None, else greedy
  k-center on unit-length `features` among the `count x candidates` most uncertain. `foreign` (a boolean mask)
  leaves images out of the picks; they come back in `Ranking.foreign`, by `ood_scores` (highest first)."""
  scores = np.asarray(scores, np.float64)
  foreign = np.zeros(len(scores), bool) if foreign is None else np.asarray(foreign, bool)
  inside = np.flatnonzero(~foreign)
  by_score = inside[np.lexsort((inside, -scores[inside]))]   # most uncertain first; ties by position
  if features is None:
    picks, distances, pool = by_score[:count], np.full(min(count, len(by_score)), np.nan), len(by_score)
  else:
    pool = min(len(by_score), max(int(count), int(np.ceil(count * candidates))))
    chosen = by_score[:pool]
    order, distances = kcenter(unit_rows(np.asarray(features)[chosen]), scores[chosen], count)
    picks = chosen[order]
  outside = np.flatnonzero(foreign)
  if ood_scores is not None and len(outside):
    outside = outside[np.lexsort((outside, -np.asarray(ood_scores, np.float64)[outside]))]
  return Ranking(np.asarray(picks, np.int64), np.asarray(distances, np.float64), outside, int(pool))
