"""Means, spreads and confidence intervals over repeated runs (folds x seeds).

Runs that share training data are not independent, so the plain t-interval over k folds x s seeds is too
narrow. The interval here is the corrected resampled t-interval of Nadeau & Bengio (2003), as used by
Bouckaert & Frank (2004) for repeated k-fold cross-validation:

    mean +- t(0.975, J - 1) * sqrt((1 / J + n_val / n_train) * s^2)

over the J = k x s per-run values, with s^2 their sample variance and n_val / n_train the validation to
training size ratio (1 / (k - 1) for k folds). With a single fixed split (seeds only) the ratio is 0:
the interval then covers seed-to-seed variation only, not the choice of validation images.
The same formula applies to paired differences (the per-run difference between two configs trained on
the same split with the same seed), which removes the fold-to-fold variation the two share.
"""
import dataclasses
import math

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class Interval:
  mean: float
  std: float
  low: float
  high: float
  n: int

  def format(self, digits: int = 3) -> str:
    if self.n == 0:
      return 'n/a'
    if math.isnan(self.low):
      return f'{self.mean:.{digits}f}'
    return f'{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]'


def corrected_interval(values, test_train_ratio: float = 0.0, level: float = 0.95) -> Interval:
  """Mean, sample std and the corrected t-interval of `values` (NaN and None dropped)."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  x = x[~np.isnan(x)]
  n = len(x)
  if n == 0:
    return Interval(math.nan, math.nan, math.nan, math.nan, 0)
  mean = float(x.mean())
  if n < 2:
    return Interval(mean, math.nan, math.nan, math.nan, n)
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt((1.0 / n + test_train_ratio) * std ** 2))
  return Interval(mean, std, mean - half, mean + half, n)


def share_interval(lift, gain, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
  """Percentile-bootstrap interval of sum(lift) / sum(gain), resampling the units (images) of the two paired
  per-unit arrays: how far this many units pin a share down, as "the student keeps 60% of the teacher's gain".

  A resample whose gain is zero has an infinite share, of its lift's sign, and sorts to an end; one with neither
  gain nor lift has no share and is dropped. Percentiles without interpolation, so infinities stay ends."""
  lift, gain = np.asarray(lift, np.float64), np.asarray(gain, np.float64)
  rng, lifts, gains = np.random.default_rng(seed), np.empty(resamples), np.empty(resamples)
  chunk = max(1, 2 ** 22 // max(len(gain), 1))   # resamples drawn at a time: memory bounded for any unit count
  for start in range(0, resamples, chunk):
    draws = rng.integers(0, len(gain), (min(chunk, resamples - start), len(gain)))
    lifts[start:start + len(draws)], gains[start:start + len(draws)] = lift[draws].sum(1), gain[draws].sum(1)
  no_gain, no_lift = np.isclose(gains, 0.0, rtol=0.0, atol=1e-9), np.isclose(lifts, 0.0, rtol=0.0, atol=1e-9)
  shares = np.where(no_gain, np.copysign(np.inf, lifts), lifts / np.where(no_gain, 1.0, gains))[~(no_gain & no_lift)]
  if not len(shares):
    return math.nan, math.nan
  tail = (1.0 - level) / 2
  return tuple(float(np.quantile(shares, q, method='inverted_cdf')) for q in (tail, 1.0 - tail))


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict:
  """Mean of a - b over paired per-image values (two models on the same images), with the plain t-interval of
  the differences: the images are the sample here, not runs that share training data."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  mean = float(d.mean())
  half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
  return {'mean': mean, 'low': mean - half, 'high': mean + half, 'level': level, 'n': int(len(d))}
