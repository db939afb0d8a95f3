"""The final mix of `--mode auto` (`fpclass.auto.final_mix`): planted out-of-fold predictions, no training. The mix
is kept when its cross-fitted score is ahead of the choice's models alone beyond the paired interval, and the
choice is kept otherwise (a tie is not a lead); a
candidate of one fold (a bottom-rung trial) is compared on the examples it shares, and a candidate that predicted
other examples, or too few, is left out, named; each folder's weight is its share of its candidate."""
import pathlib

import numpy as np
import pandas as pd
import pytest

from fpclass.analysis import metric_registry
from fpclass.auto import final_mix

ACCURACY = metric_registry.REGISTRY['accuracy']


def frame(labels, right, folds, seed=0, sure=0.9, unsure=0.4) -> pd.DataFrame:
  """Out-of-fold rows of a two-class model that gives the true class `sure` where `right` marks the example, and
  `unsure` elsewhere (below 0.5: wrong)."""
  n = len(labels)
  p_true = np.where(right, sure, unsure if np.isscalar(unsure) else np.asarray(unsure))
  p1 = np.where(labels == 1, p_true, 1 - p_true)
  return pd.DataFrame({'id': [f'img{i:03d}' for i in range(n)], 'row': np.arange(n), 'split': folds, 'seed': seed,
                       'label': [str(y) for y in labels], 'p_0': 1 - p1, 'p_1': p1})


def setting(n=300, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  folds = np.arange(n) % 3
  return rng, labels, folds


def test_complementary_configurations_are_mixed_and_a_lone_choice_is_kept_alone():
  """Three configurations each wrong (mildly) on its own third of the images, spread over the folds: any two of
  them outvote the third's errors, so the cross-fitted mix is far ahead of the choice alone and is kept."""
  rng, labels, folds = setting()
  part = rng.permutation(len(labels)) % 3
  candidates = [final_mix.Candidate(name, (frame(labels, part != i, folds, i),), (pathlib.Path(name),))
                for i, name in enumerate(('choice', 'b', 'c'))]
  mix = final_mix.choose(candidates, 'choice', ACCURACY)
  record = mix.record
  assert record['kept'] == 'mix' and record['mixed'] == 1.0 and record['alone'] == pytest.approx(2 / 3, abs=0.05)
  assert len(record['weights']) >= 2 and 'choice' in record['weights']   # any two are right on every image
  assert [f for f, _ in mix.members] == [pathlib.Path(n) for n in ('choice', 'b', 'c') if n in record['weights']]
  assert sum(w for _, w in mix.members) == pytest.approx(1.0)
  assert mix.score == pytest.approx(record['mixed'])


def test_a_worse_candidate_leaves_the_choice_alone_and_the_choice_s_folders_share_by_models():
  """A candidate mildly wrong on every image adds nothing: the selection keeps the choice, and the final model is the
  choice's fold models, each folder weighed by its models' share."""
  rng, labels, folds = setting(seed=1)
  good = rng.random(len(labels)) < 0.9
  second_seed = frame(labels, good, folds, 1)
  choice = final_mix.Candidate('choice', (frame(labels, good, folds, 0), second_seed.iloc[:200]),
                               (pathlib.Path('a'), pathlib.Path('b')))
  worse = final_mix.Candidate('worse', (frame(labels, np.zeros(len(labels), bool), folds, 2, unsure=0.45),),
                              (pathlib.Path('w'),))
  mix = final_mix.choose([choice, worse], 'choice', ACCURACY)
  assert mix.record['kept'] == 'choice'
  # Each folder holds 3 fold models (a model is a split and a seed; b's 200 rows reach the 3 splits too).
  shares = dict(mix.members)
  assert shares[pathlib.Path('a')] == pytest.approx(3 / 6) and shares[pathlib.Path('b')] == pytest.approx(3 / 6)
  assert 'the choice\'s fold models are kept' in final_mix.describe(mix.record, 'accuracy')


def test_a_mix_ahead_on_the_mean_but_within_the_interval_leaves_the_choice():
  """A tie is not a lead: a candidate right on two more images than the choice, one in each of two of the five
  folds, puts the cross-fitted mix ahead on the mean (+1/60 in two folds, 0 in three) but not beyond the paired
  interval, so the final model is the choice's. (Kept on a mean ahead, such a mix scored below the choice's fold
  models on MNIST's test images, 2026-11-29.)"""
  rng = np.random.default_rng(5)
  labels, folds = rng.integers(0, 2, 300), np.arange(300) % 5
  right = np.ones(300, bool)
  right[[0, 4]] = False   # image 0 is in fold 0, image 4 in fold 4
  choice = final_mix.Candidate('choice', (frame(labels, right, folds, 0),), (pathlib.Path('a'),))
  better = final_mix.Candidate('better', (frame(labels, np.ones(300, bool), folds, 1),), (pathlib.Path('b'),))
  mix = final_mix.choose([choice, better], 'choice', ACCURACY)
  record = mix.record
  assert record['mixed'] > record['alone'] and record['difference']['low'] < 0 < record['difference']['mean']
  assert record['kept'] == 'choice' and [f for f, _ in mix.members] == [pathlib.Path('a')]
  assert 'not ahead beyond the interval' in final_mix.describe(record, 'accuracy')


def test_a_candidate_of_other_examples_or_too_few_is_left_out_and_named():
  rng, labels, folds = setting(seed=2)
  choice = final_mix.Candidate('choice', (frame(labels, rng.random(len(labels)) < 0.8, folds, 0),),
                               (pathlib.Path('a'),))
  few = final_mix.Candidate('few', (frame(labels, np.ones(len(labels), bool), folds, 1).iloc[:60],),
                            (pathlib.Path('f'),))
  other = frame(labels, np.ones(len(labels), bool), folds, 1).iloc[:150].assign(id=lambda f: 'new' + f['id'])
  stranger = final_mix.Candidate('stranger', (other,), (pathlib.Path('s'),))
  mix = final_mix.choose([choice, few, stranger], 'choice', ACCURACY)
  assert mix.record['candidates'] == ['choice'] and mix.record['kept'] == 'choice'
  assert mix.record['left_out'] == ['stranger: predicted 150 examples the choice did not',   # the most first
                                    'few: predicted 60 examples, 60 of them shared with the others']
  assert 'no other configuration shared enough examples' in final_mix.describe(mix.record, 'accuracy')
  assert len(mix.predictions) == len(labels)


def test_bottom_rung_trials_of_one_fold_are_mixed_on_the_examples_they_share():
  """Two trials the search trained on fold 0 alone, each wrong (mildly) on another third of its images than the
  choice: on fold 0, the examples every candidate holds out, the cross-fitted mix is right everywhere and is kept;
  its score and written probabilities cover those examples alone. The same trials wrong everywhere leave the
  choice, scored and written on every example."""
  rng, labels, folds = setting(seed=4)
  part = rng.permutation(len(labels)) % 3
  fold0 = folds == 0
  choice = final_mix.Candidate('choice', (frame(labels, part != 0, folds, 0),), (pathlib.Path('a'),))
  trials = [final_mix.Candidate(name, (frame(labels, part != i, folds, i)[fold0],), (pathlib.Path(name),))
            for i, name in ((1, 'b'), (2, 'c'))]
  mix = final_mix.choose([choice, *trials], 'choice', ACCURACY)
  assert mix.record['kept'] == 'mix' and mix.record['pool'] == fold0.sum() and mix.record['examples'] == len(labels)
  assert mix.record['groups'] == 5   # one fold's examples: cross-fitted over random parts of it
  assert mix.record['mixed'] == 1.0 and mix.score == 1.0
  assert set(mix.predictions['id']) == {f'img{i:03d}' for i in np.flatnonzero(fold0)}
  assert 'every candidate held out' in final_mix.describe(mix.record, 'accuracy')

  worse = [final_mix.Candidate(name, (frame(labels, np.zeros(len(labels), bool), folds, i, unsure=0.45)[fold0],),
                               (pathlib.Path(name),)) for i, name in ((1, 'b'), (2, 'c'))]
  alone = final_mix.choose([choice, *worse], 'choice', ACCURACY)
  assert alone.record['kept'] == 'choice' and len(alone.predictions) == len(labels)
  assert alone.score == pytest.approx(np.mean(part != 0), abs=0.02)   # every example, by fold


def test_the_mix_s_out_of_fold_probabilities_are_cross_fitted():
  """Each fold's rows of the written mix come from a selection chosen on the other folds (`cross_fit`): a
  candidate right on every image of fold 0 and badly wrong on the others would win fold 0 in sample, but the
  selection that scores fold 0 was chosen on folds 1 and 2, where it only hurts."""
  rng, labels, folds = setting(seed=3)
  base = rng.random(len(labels)) < 0.75
  leaky = frame(labels, folds == 0, folds, 1, unsure=0.1)
  candidates = [final_mix.Candidate('choice', (frame(labels, base, folds, 0),), (pathlib.Path('a'),)),
                final_mix.Candidate('leaky', (leaky,), (pathlib.Path('t'),))]
  mix = final_mix.choose(candidates, 'choice', ACCURACY)
  fold0 = [r for r in mix.record['rows'] if r['fold'] == 0][0]
  assert fold0['weights'] == {'choice': 1.0}   # chosen on folds 1 and 2, where the tricky one is wrong
  assert mix.record['kept'] == 'choice'
