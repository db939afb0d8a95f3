"""Do the images a model is asked about look like the ones it was trained on? The OOD score's flag
(`fpclass.deploy.ood`) answers it for a batch: a conformal threshold flags about `false_rejection` of new images
of the training kind, so a test set flagged far more often than its held-out images were is drawn from elsewhere
(another style, camera or population), and the validation scores may not hold on it. submit and predict say so.

The verdict is a one-sided binomial test of the flagged count against the larger of the target rate and the
cross-fitted held-out rate, at `ALPHA`, and a share at least `FACTOR` times that rate: a large test set makes a
trivial excess significant, and the check is for a difference a user should act on. The AUROC of the batch's
scores against the held-out images' (0.5: alike) says how far apart the two are."""
import dataclasses
import math

import numpy as np
from scipy import stats

from fpclass.config.outputs import OodSettings
from fpclass.deploy import ood, ood_threshold

ALPHA = 0.001   # the binomial test's level: a warning a user sees on every submission must rarely be wrong
FACTOR = 2.0    # and the flagged share at least this many times the expected rate


@dataclasses.dataclass(frozen=True)
class Shift:
  """The flag's count on a batch of images against the rate expected of images of the training kind."""
  images: int
  flagged: int
  expected: float             # the rate new images of the training kind are flagged at (target or held-out)
  p_value: float              # P(at least `flagged` of `images` | `expected`)
  auroc: float | None         # the batch's scores against the held-out images' (None without held-out scores)

  @property
  def share(self) -> float:
    return self.flagged / self.images if self.images else 0.0

  @property
  def shifted(self) -> bool:
    return self.p_value < ALPHA and self.share >= FACTOR * self.expected

  def describe(self, what: str, where: str) -> str:
    """One line on `what` ('The test images'): the verdict, the counts and the test behind it; `where`: what marks
    each image flagged (a shift's advice)."""
    counts = (f'{self.flagged:,} of {self.images:,} ({self.share:.1%}) score as none of the classes, where '
              f'{self.expected:.1%} of new images of the training kind would')
    apart = '' if self.auroc is None else f'; AUROC of their scores against the held-out images\' {self.auroc:.2f}'
    test = f'(one-sided binomial p = {self.p_value:.2g}{apart})'
    if self.shifted:
      return (f'**{what} may not look like the training images:** {counts} {test}. Scores measured on held-out '
              f'training images may not hold on them; {where} marks each image flagged.')
    if self.share >= FACTOR * self.expected:   # flagged often, but too few images for the test to tell
      return f'{what}: {counts} {test}, too few images to tell whether they differ from the training images.'
    return f'{what}: {counts} {test}, no sign that they differ from the training images.'


def compare(scores: np.ndarray, threshold: float, false_rejection: float, held_out_rate: float,
            held_out_scores: np.ndarray | None = None) -> Shift | None:
  """The shift verdict of a batch's OOD `scores` against the score's fitted `threshold`; None where the threshold
  flags nothing (too few held-out images for the rate) or there is no image."""
  scores = np.asarray(scores, np.float64)
  if not math.isfinite(threshold) or len(scores) == 0:
    return None
  flagged = int(ood_threshold.flagged(scores, threshold).sum())
  expected = max(false_rejection, held_out_rate)
  p_value = float(stats.binomtest(flagged, len(scores), expected, alternative='greater').pvalue)
  auroc = (ood_threshold.auroc(np.asarray(held_out_scores, np.float64), scores)
           if held_out_scores is not None and len(held_out_scores) else None)
  return Shift(len(scores), flagged, expected, p_value, auroc)


def of_fitted(fitted, scores: np.ndarray) -> Shift | None:
  """`compare` with a fitted score's own threshold, target, held-out rate and held-out scores
  (`fpclass.deploy.ood.ModelOod` or `EnsembleOod`)."""
  record = fitted.record
  return compare(scores, fitted.threshold, float(record['false_rejection']), float(record['reached']),
                 fitted.held_out_scores)


def of_images(model, workdir, settings: OodSettings, images: np.ndarray, batch_size: int) -> Shift | None:
  """The verdict on `images` for `model` (a restored run, or a `WeightedEnsemble`), with its OOD score fitted and
  stored on first use (`ood.configured_scorer`); None with config.ood off (`settings`)."""
  scorer = ood.configured_scorer(settings, workdir, model)
  if scorer is None:
    return None
  return of_fitted(scorer.fitted, scorer.scores(images, batch_size))
