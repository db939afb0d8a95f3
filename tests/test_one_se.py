"""The one-standard-error rule at a rung of `--mode auto` (`fpclass.auto.one_se`): the standard error of a
paired difference from the rung's out-of-fold predictions, and the config as given promoted when the best beats it
within it. No training: the predictions and values are made by hand."""
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from fpclass.auto import first_trials, one_se
from fpclass.auto import search as auto
from fpclass.auto.population import Outcome
from fpclass.train import oof
from tests.test_auto_choices import THREE_RUNGS, PlannedRounds, _search_context

N = 400


def _frame(correct: np.ndarray, labels: np.ndarray, confidence=0.8) -> pd.DataFrame:
  """Out-of-fold rows of a two-class model that is right exactly where `correct` says (`confidence` on its answer:
  one number, or one per image)."""
  answer = np.where(correct, labels, 1 - labels)
  return pd.DataFrame({'id': [f'img{i:04d}' for i in range(len(labels))], 'row': np.arange(len(labels)), 'split': 0,
                       'seed': 0, 'label': labels.astype(str), 'p_0': np.where(answer == 0, confidence, 1 - confidence),
                       'p_1': np.where(answer == 1, confidence, 1 - confidence)})


def _pair(agree: float, seed: int = 1):
  """Two models right on about 80% and 82% of N images, making the same call on a share `agree` of them."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, N)
  first = rng.random(N) < 0.82
  second = np.where(rng.random(N) < agree, first, rng.random(N) < 0.80)
  return _frame(first, labels), _frame(second, labels), first, second


@pytest.mark.parametrize('agree', [0.95, 0.5])
def test_the_standard_error_is_the_paired_difference_s_and_not_the_unpaired_one(agree):
  a, b, first, second = _pair(agree)
  se = one_se.difference_se(a, b, 'accuracy')
  d = first.astype(float) - second.astype(float)
  paired = d.std(ddof=1) / math.sqrt(N)   # the standard error of a mean of paired differences
  unpaired = math.sqrt(first.var(ddof=1) / N + second.var(ddof=1) / N)
  assert se == pytest.approx(paired, rel=0.2)   # 200 resamples: the bootstrap's own spread
  if agree > 0.9:   # models that mostly agree: the paired error is far below the unpaired one
    assert se < 0.5 * unpaired


def test_the_standard_error_uses_the_shared_examples_each_averaged_over_its_members():
  a, b, _, _ = _pair(0.5)
  doubled = pd.concat([a, a.assign(seed=1)])   # two members of one model: the mean per example is the same
  assert one_se.difference_se(doubled, b, 'accuracy') == one_se.difference_se(a, b, 'accuracy')
  assert math.isnan(one_se.difference_se(a.iloc[:1], b, 'accuracy'))   # one shared example: no spread


def test_the_training_noise_is_each_model_s_decisions_redrawn_from_its_own_probabilities():
  """Accuracy's redrawn decisions spread as a Poisson binomial: the variance of the difference is the sum over
  images of q(1 - q) for both models, q each one's probability of the label; sure models add nothing."""
  rng = np.random.default_rng(2)
  labels, correct = rng.integers(0, 2, N), rng.random(N) < 0.8
  unsure, other = rng.uniform(0.5, 0.9, N), rng.uniform(0.5, 0.9, N)
  a, b = _frame(correct, labels, unsure), _frame(correct, labels, other)
  q = [np.where(correct, c, 1 - c) for c in (unsure, other)]
  expected = math.sqrt(sum(np.sum(x * (1 - x)) for x in q)) / N
  assert one_se.training_se(a, b, 'accuracy', draws=2000) == pytest.approx(expected, rel=0.1)
  assert one_se.training_se(a, b, 'macro_f1') > 0.5 * expected   # any metric of decisions
  sure = _frame(correct, labels, 0.99999)
  assert one_se.training_se(sure, sure, 'accuracy') < 0.001
  assert math.isnan(one_se.training_se(a, b, 'loss'))   # a metric of probabilities: no decision to redraw
  images = one_se.difference_se(a, b, 'accuracy')
  assert one_se.rung_se(a, b, 'accuracy') == pytest.approx(
      math.hypot(images, one_se.SEED_SHARE * one_se.training_se(a, b, 'accuracy')))
  assert one_se.rung_se(a, b, 'loss') == one_se.difference_se(a, b, 'loss')


def test_a_multilabel_rung_redraws_each_label_on_its_own():
  """Multi-label decisions are one per label: each drawn from its own sigmoid. Sure labels add nothing; mAP reads
  probabilities, so its rung reads the images' noise alone."""
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 2, (N, 3))

  def frame(p):
    return pd.DataFrame({'id': [f'img{i:04d}' for i in range(N)], 'row': np.arange(N), 'split': 0, 'seed': 0,
                         **{f'label_{c}': labels[:, k] for k, c in enumerate('abc')},
                         **{f'p_{c}': p[:, k] for k, c in enumerate('abc')}})
  unsure = frame(np.where(labels == 1, 0.7, 0.3))
  sure = frame(np.where(labels == 1, 0.99999, 0.00001))
  assert one_se.training_se(unsure, unsure, 'micro_f1') > 0.01
  assert one_se.training_se(sure, sure, 'micro_f1') < 0.001
  assert math.isnan(one_se.training_se(unsure, unsure, 'map'))


def test_two_near_identical_models_lead_by_chance_when_a_seed_moves_them_more_than_the_images_do():
  """The footprints' bottom rung (2026-11-29): two models of one seed and data order disagreed on 2 of 252
  images, both in the challenger's favour, at probabilities a retrained model would not repeat. The bootstrap over
  the images alone (0.006) let the 0.008 through; over five seeds the challenger was the worse one. The rung's
  standard error holds the training's noise, and the config as given goes on."""
  n = 252
  rng = np.random.default_rng(3)
  labels, correct = rng.integers(0, 2, n), rng.random(n) < 0.84
  better = correct.copy()
  better[np.flatnonzero(~correct)[:2]] = True   # the two discordant images
  confidence = rng.uniform(0.55, 0.99, n)
  challenger, given = _frame(better, labels, confidence), _frame(correct, labels, confidence)
  gap = 2 / n
  assert one_se.difference_se(challenger, given, 'accuracy') < gap   # the images' noise alone: a lead
  se = one_se.rung_se(challenger, given, 'accuracy')
  assert one_se.promoted([1, 2, 0], 2, 0, gap, se) == [1, 0]


@pytest.mark.parametrize('gap, se, promoted', [(0.02, 0.03, True), (0.02, 0.02, True), (0.03, 0.02, False),
                                               (0.02, math.nan, False)])
def test_the_config_as_given_takes_the_last_place_when_the_best_beats_it_within_one_standard_error(gap, se,
                                                                                               promoted):
  # Where one goes on, a tie is not a lead: the best and the config as given both go on, the next rung decides.
  assert one_se.promoted([1, 0], 1, 0, gap, se) == ([1, 0] if promoted else [1])
  assert one_se.promoted([1, 2, 0], 2, 0, gap, se) == ([1, 0] if promoted else [1, 2])   # two: the same bar
  assert one_se.promoted([0, 1, 2, 3], 2, 0, gap, se) == [0, 1]   # among the best already
  assert one_se.promoted([1, 2, 3], 2, None, gap, se) == [1, 2]   # no config as given in the rung


def test_the_bar_is_one_standard_error_whatever_the_number_of_challengers():
  """MNIST's bottom rung (2026-11-28): the learning rate x3 beat the config as given by 1.42 standard errors among
  three challengers and ended best; a bar raised with their number (1.59, Sidak's) kept the config as given."""
  assert one_se.promoted([2, 1, 3, 0], 1, 0, 0.0075, 0.0053) == [2]
  assert one_se.promoted([2, 1, 3, 4, 5, 6, 7, 8, 0], 1, 0, 0.0075, 0.0053) == [2]
  assert one_se.promoted([2, 1, 3, 0], 1, 0, 0.0050, 0.0053) == [2, 0]


class RoundsWithPredictions(PlannedRounds):
  """Planned rounds that also write each trial's out-of-fold predictions where a round writes them."""

  def __init__(self, frames: dict, outcomes: dict):
    super().__init__(outcomes)
    self.frames = frames

  def __call__(self, ctx, base, entries, folds, seeds, epochs, folder, stop, keep_ended=False, keep_cut_from=0):
    for e in entries:
      frame = self.frames.get((len(self.calls), int(e.name.removeprefix('trial-'))))
      if frame is not None:
        (folder / e.name).mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / e.name / oof.FILE, index=False)
    return super().__call__(ctx, base, entries, folds, seeds, epochs, folder, stop)


@pytest.mark.parametrize('noisy', [True, False])
def test_a_rung_keeps_the_config_as_given_when_its_deficit_is_within_the_noise_of_its_evidence(tmp_path, noisy):
  # Rung 0: trial 1 best (0.82), 2 next (0.815), the config as given (trial 0) third at 0.80. Where trial 1 and
  # the config disagree on a third of their images the 0.02 is noise and the config goes on in the last place;
  # where the config is trial 1 with 8 of its 400 right answers wrong the 0.02 is evidence and trial 2 goes on.
  rng = np.random.default_rng(0)
  labels, first = rng.integers(0, 2, N), rng.random(N) < 0.82
  second = rng.random(N) < 0.80 if noisy else first & ~np.isin(np.arange(N), np.flatnonzero(first)[:8])
  confidence = 0.8 if noisy else 0.995   # sure models: a retrained one would make the same calls
  frames = {(0, 1): _frame(first, labels, confidence), (0, 0): _frame(second, labels, confidence)}
  se = one_se.rung_se(frames[0, 1], frames[0, 0], 'accuracy')
  assert (0.02 <= se) is noisy   # the planted pairs fall either side of the rule
  values = {0: 0.80, 1: 0.82, 2: 0.815, 3: 0.5}
  rounds = RoundsWithPredictions(frames, {(0, n): Outcome(v) for n, v in values.items()})
  ctx = _search_context(tmp_path, rounds=rounds)
  bracket = ctx.budget.new_bracket(THREE_RUNGS)
  auto._run_bracket(ctx, bracket, ctx.budget.costs)
  assert ctx.trials()[0].user_attrs[first_trials.BASELINE] is True
  assert bracket['promoted'][0] == ([1, 0] if noisy else [1, 2])


@pytest.mark.parametrize('noisy', [True, False])
def test_a_tie_where_one_goes_on_sends_both_to_the_top_rung_on_the_folds_that_fit(tmp_path, monkeypatch, noisy):
  """A bracket whose top rung holds one configuration: where the best beats the config as given within one
  standard error both go on, on the most folds that the budget left affords two (2 of 3 here), and the top rung
  decides; where the lead is evidence the best goes on alone, on every fold (MNIST, 2026-11-29: the config as
  given, kept alone on a tie, ended behind the learning rate x3 the hand sweep chose)."""
  rng = np.random.default_rng(0)
  labels, first = rng.integers(0, 2, N), rng.random(N) < 0.82
  second = rng.random(N) < 0.80 if noisy else first & ~np.isin(np.arange(N), np.flatnonzero(first)[:8])
  confidence = 0.8 if noisy else 0.995
  frames = {(0, 1): _frame(first, labels, confidence), (0, 0): _frame(second, labels, confidence)}
  outcomes = {(0, 0): Outcome(0.80), (0, 1): Outcome(0.82), (0, 2): Outcome(0.5),
              (1, 0): Outcome(0.9), (1, 1): Outcome(0.85)}
  rounds = RoundsWithPredictions(frames, outcomes)
  rounds.spend = {0: 1.0}   # the bottom rung takes 1 s of the 6.5 left
  ctx = _search_context(tmp_path, rounds=rounds, seconds=6.0)
  # A clock that moves only with the rounds: the test holds on a busy machine.
  monkeypatch.setattr(ctx.budget, 'left', lambda: 6.5 - ctx.budget.used_before)
  # The cost model refitted on the bottom rung: a set-up of 1.5 and 0.5 a member, so two configurations on f folds
  # cost 3 + f: on 2 folds 5 of the 5.38 left after the report's tail, on 3 folds 6.
  bracket = ctx.budget.new_bracket([dict(configs=3, folds=1, epochs=1), dict(configs=1, folds=3, epochs=4)])
  auto._run_bracket(ctx, bracket, ctx.budget.costs)
  top = rounds.calls[-1]
  if noisy:
    assert bracket['promoted'] == [[1, 0]] and top['names'] == ['trial-0001', 'trial-0000']
    assert top['folds'] == (0, 1) and bracket['rungs'][1] == dict(configs=2, folds=2, epochs=4, warm=0)
    assert ctx.trials()[0].state == optuna.trial.TrialState.COMPLETE   # the top rung's values rank them
  else:
    assert bracket['promoted'] == [[1]] and top['names'] == ['trial-0001'] and top['folds'] == (0, 1, 2)
