"""The shift check (fpclass/deploy/shift.py): a batch flagged by the OOD score far more often than images of the
training kind would be is reported as drawn from elsewhere; end to end through submit in test_submit_shift.py."""
import math

import numpy as np
import pytest

from fpclass.deploy import shift


def scores_with(flagged: int, images: int, threshold: float = 1.0) -> np.ndarray:
  """`images` scores of which exactly `flagged` lie above `threshold`."""
  return np.concatenate([np.full(flagged, threshold + 0.5), np.full(images - flagged, threshold - 0.5)])


def test_a_batch_flagged_at_the_expected_rate_is_not_shifted():
  verdict = shift.compare(scores_with(50, 1000), 1.0, 0.05, 0.04)
  assert (verdict.images, verdict.flagged, verdict.expected) == (1000, 50, 0.05)
  assert not verdict.shifted and verdict.p_value > 0.4
  assert 'no sign that they differ' in verdict.describe('The test images', 'predictions.csv')
  # Fewer flagged than expected is no evidence of a shift: the test is one-sided (two-sided, p would be 1e-6).
  assert shift.compare(scores_with(20, 1000), 1.0, 0.05, 0.04).p_value > 0.99


def test_a_batch_flagged_far_above_the_rate_is_shifted_and_the_line_says_what_to_do():
  verdict = shift.compare(scores_with(300, 1000), 1.0, 0.05, 0.04)
  assert verdict.shifted and verdict.p_value < 1e-6
  line = verdict.describe('The test images', 'predictions.csv')
  assert line.startswith('**The test images may not look like the training images:**')
  assert '300 of 1,000 (30.0%)' in line and '5.0%' in line


def test_the_expected_rate_is_the_larger_of_the_target_and_the_held_out_rate():
  """A held-out rate of 12% (more than the 5% target) is what new images of the training kind are flagged at:
  20% of a batch is then no shift (against the target alone it would be one)."""
  assert shift.compare(scores_with(200, 1000), 1.0, 0.05, 0.12).expected == 0.12
  assert not shift.compare(scores_with(200, 1000), 1.0, 0.05, 0.12).shifted
  assert shift.compare(scores_with(200, 1000), 1.0, 0.05, 0.01).shifted


def test_a_significant_but_small_excess_is_not_a_shift():
  """On 20,000 images 7% flagged against 5% is far beyond chance (p < 1e-30) but under twice the rate."""
  verdict = shift.compare(scores_with(1400, 20000), 1.0, 0.05, 0.05)
  assert verdict.p_value < 1e-30 and not verdict.shifted
  assert shift.compare(scores_with(2000, 20000), 1.0, 0.05, 0.05).shifted


def test_a_few_images_flagged_are_not_evidence():
  """Two images of two flagged: p = 0.05² = 0.0025 > ALPHA, however large the share."""
  verdict = shift.compare(scores_with(2, 2), 1.0, 0.05, 0.05)
  assert verdict.p_value == pytest.approx(0.0025) and not verdict.shifted
  assert 'too few images to tell' in verdict.describe('These images', 'predictions.csv')


def test_no_verdict_without_a_threshold_or_images():
  assert shift.compare(scores_with(5, 10), math.inf, 0.05, 0.0) is None
  assert shift.compare(np.zeros(0), 1.0, 0.05, 0.0) is None


def test_the_auroc_is_of_the_batch_against_the_held_out_scores():
  held_out = np.linspace(0.0, 1.0, 101)
  assert shift.compare(held_out + 5.0, 0.95, 0.05, 0.05, held_out).auroc == 1.0
  assert shift.compare(held_out, 0.95, 0.05, 0.05, held_out).auroc == pytest.approx(0.5)
  assert shift.compare(held_out, 0.95, 0.05, 0.05).auroc is None
