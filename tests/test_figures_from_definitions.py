"""Every figure a report prints, recomputed from its definition on small hand-made data (issue 47).

The data are chosen so that the plausible wrong variant gives another number: pairs matched per split and seed
where the runs vary far more between splits than between variants (the interval pairing narrows), groups whose
own thresholds differ from the others' (in-sample and cross-fitted figures far apart), labels with no positive
and with no negative. The references are scikit-learn, scipy and plain NumPy written out here, never the module
under test. Pure functions on arrays: milliseconds each.
"""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special
from scipy import stats as scipy_stats
from sklearn import metrics as skm
from sklearn.model_selection import StratifiedKFold

from fpclass.analysis import calibration, metric_registry, metrics, multilabel_calibration, stats, sweep_report
from fpclass.analysis import multilabel_metrics as mm
from fpclass.config.variants import describe_changes
from fpclass.errors import UserInputError
from fpclass.probe import screen

EXACT = 1e-12


def sk(function, *args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # scikit-learn's ill-defined-metric warnings
    return function(*args, **kwargs)


def corrected(values, ratio, level=0.95):
  """(mean, std, low, high) of the Nadeau-Bengio corrected t-interval, written out from its formula."""
  x = np.asarray(values, np.float64)
  n, mean, std = len(x), float(np.mean(x)), float(np.std(x, ddof=1))
  half = scipy_stats.t.ppf((1 + level) / 2, n - 1) * math.sqrt((1 / n + ratio) * std ** 2)
  return mean, std, mean - half, mean + half


# --- the corrected interval ----------------------------------------------------------------------------------


@pytest.mark.parametrize('ratio, level', [(0.0, 0.95), (0.25, 0.95), (1 / 3, 0.9)])
def test_corrected_interval_is_its_formula(ratio, level):
  values = [0.70, 0.74, 0.69, 0.81, 0.77]
  ci = stats.corrected_interval(values, ratio, level)
  assert (ci.mean, ci.std, ci.low, ci.high) == pytest.approx(corrected(values, ratio, level), abs=EXACT)
  assert ci.n == 5
  # 1 - level would be a 5% interval; a two-sided 95% one reaches further than the t quantile at 0.95
  assert ci.high - ci.mean > scipy_stats.t.ppf(level, 4) * ci.std * math.sqrt(1 / 5 + ratio)


def test_corrected_interval_of_two_values_and_by_default_the_plain_95_percent_t_interval():
  two = stats.corrected_interval([0.5, 0.7], 0.25)
  assert (two.mean, two.std, two.low, two.high) == pytest.approx(corrected([0.5, 0.7], 0.25), abs=EXACT)
  values = [0.70, 0.74, 0.69, 0.81, 0.77]
  low, high = scipy_stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy_stats.sem(values))
  ci = stats.corrected_interval(values)
  assert (ci.low, ci.high) == pytest.approx((low, high), abs=EXACT)


def test_corrected_interval_drops_missing_values_and_needs_two():
  ci = stats.corrected_interval([0.5, None, float('nan'), 0.7, 0.9], 0.25)
  assert ci.n == 3 and (ci.mean, ci.std, ci.low, ci.high) == pytest.approx(corrected([0.5, 0.7, 0.9], 0.25))
  one = stats.corrected_interval([0.8, None], 0.25)
  assert one.n == 1 and one.mean == 0.8 and all(math.isnan(v) for v in (one.std, one.low, one.high))
  none = stats.corrected_interval([None, float('nan')])
  assert none.n == 0 and all(math.isnan(v) for v in (none.mean, none.std, none.low, none.high))


def test_an_interval_prints_its_own_numbers():
  assert stats.Interval(0.81234, 0.0234, 0.7912, 0.8334, 5).format() == '0.812 ± 0.023 [0.791, 0.833]'
  assert stats.Interval(0.81234, 0.0234, 0.7912, 0.8334, 5).format(2) == '0.81 ± 0.02 [0.79, 0.83]'
  assert stats.Interval(0.8, math.nan, math.nan, math.nan, 1).format() == '0.800'
  assert stats.Interval(math.nan, math.nan, math.nan, math.nan, 0).format() == 'n/a'


# --- the paired table (sweep, auto, probe) -------------------------------------------------------------------

# (split, seed) -> baseline accuracy: the splits differ by 0.15, far more than the variant moves a run
BASE = {(0, 0): 0.60, (0, 1): 0.62, (1, 0): 0.75, (1, 1): 0.73, (2, 0): 0.90, (2, 1): 0.88}
# the variant minus the baseline on each pair: three wins, one tie, two losses
DIFF = {(0, 0): 0.02, (0, 1): 0.03, (1, 0): 0.0, (1, 1): -0.01, (2, 0): 0.04, (2, 1): -0.02}


def sweep_models():
  """The members' table sweep_report reads: the variant's rows shuffled, one pair on other validation images
  (excluded), one split the baseline never ran (excluded), a missing ROC AUC in one pair."""
  rows = []
  for (split, seed), base in BASE.items():
    rows.append(dict(experiment='base', split=split, seed=seed, val_hash=f'h{split}', accuracy=base,
                     macro_f1=base - 0.1, roc_auc=base + 0.05))
  variant = []
  for (split, seed), d in DIFF.items():
    variant.append(dict(experiment='wide', split=split, seed=seed, val_hash=f'h{split}', accuracy=BASE[split, seed] + d,
                        macro_f1=BASE[split, seed] - 0.1 + 2 * d,
                        roc_auc=None if (split, seed) == (0, 1) else BASE[split, seed] + 0.05 - d))
  variant.append(dict(experiment='wide', split=3, seed=0, val_hash='h3', accuracy=0.99, macro_f1=0.99, roc_auc=0.99))
  variant.append(dict(experiment='wide', split=1, seed=2, val_hash='h1', accuracy=0.10, macro_f1=0.1, roc_auc=0.1))
  rows += [variant[i] for i in (4, 0, 6, 2, 5, 1, 3, 7)]
  rows.append(dict(experiment='base', split=1, seed=2, val_hash='other', accuracy=0.95, macro_f1=0.9, roc_auc=0.9))
  return pd.DataFrame(rows)


EXPERIMENTS = [dict(name='base', test_train_ratio=0.25), dict(name='wide', test_train_ratio=0.25)]


def test_paired_differences_are_formed_per_split_and_seed():
  table = sweep_report.paired_differences(sweep_models(), EXPERIMENTS, 'base').set_index('metric')
  assert list(table.index) == ['accuracy', 'macro_f1', 'roc_auc'] and set(table['experiment']) == {'wide'}
  pairs = sorted(DIFF)  # (3, 0) has no baseline run and (1, 2) was validated on other images
  expected = {'accuracy': [DIFF[p] for p in pairs], 'macro_f1': [2 * DIFF[p] for p in pairs],
              'roc_auc': [-DIFF[p] for p in pairs if p != (0, 1)]}
  for metric, diffs in expected.items():
    row = table.loc[metric]
    mean, std, low, high = corrected(diffs, 0.25)
    assert row['pairs'] == len(diffs) and row['baseline'] == 'base'
    assert (row['mean_difference'], row['std'], row['ci_low'], row['ci_high']) == pytest.approx(
        (mean, std, low, high), abs=1e-9), metric
    assert row['wins'] == sum(d > 0 for d in diffs) and row['losses'] == sum(d < 0 for d in diffs), metric
  assert (table.loc['accuracy', 'wins'], table.loc['accuracy', 'losses']) == (3, 2)
  assert (table.loc['roc_auc', 'wins'], table.loc['roc_auc', 'losses']) == (2, 2)   # the missing pair counts neither


def test_pairing_is_what_narrows_the_interval():
  """The same values unpaired (each variant run against the baseline's mean) give a std ten times wider: a
  table that lost the pairing would print another interval, though its mean difference is the same."""
  table = sweep_report.paired_differences(sweep_models(), EXPERIMENTS, 'base').set_index('metric')
  pairs = sorted(DIFF)
  unpaired = [BASE[p] + DIFF[p] - np.mean([BASE[q] for q in pairs]) for p in pairs]
  assert table.loc['accuracy', 'mean_difference'] == pytest.approx(np.mean(unpaired), abs=1e-9)
  assert np.std(unpaired, ddof=1) > 5 * table.loc['accuracy', 'std']
  shuffled = sweep_models()
  wide = shuffled['experiment'] == 'wide'
  shuffled.loc[wide, 'seed'] = 1 - shuffled.loc[wide, 'seed']   # pairs matched on the wrong seed
  shuffled.loc[wide & (shuffled['seed'] == -1), 'seed'] = 2
  other = sweep_report.paired_differences(shuffled, EXPERIMENTS, 'base').set_index('metric')
  assert other.loc['accuracy', 'std'] != pytest.approx(table.loc['accuracy', 'std'], abs=1e-3)


def test_the_differences_table_prints_each_column():
  differences = sweep_report.paired_differences(sweep_models(), EXPERIMENTS, 'base')
  text = sweep_report.differences_table(differences, sweep_report.METRICS)
  header, _, row = text.splitlines()
  assert header == '| variant | pairs | Δ accuracy | Δ macro F1 | Δ ROC AUC | accuracy wins/losses |'
  cells = [c.strip() for c in row.strip('|').split('|')]
  acc = corrected([DIFF[p] for p in sorted(DIFF)], 0.25)
  f1 = corrected([2 * DIFF[p] for p in sorted(DIFF)], 0.25)
  assert cells[:2] == ['wide', '6']
  assert cells[2] == f'{acc[0]:+.3f} [{acc[2]:+.3f}, {acc[3]:+.3f}]' and acc[2] < 0 < acc[3]   # no star: holds 0
  assert cells[3] == f'{f1[0]:+.3f} [{f1[2]:+.3f}, {f1[3]:+.3f}]'
  assert cells[5] == '3/2'
  # an interval that excludes 0 gets a star, on either side of it, and fewer than two pairs print n/a
  frame = pd.DataFrame([dict(experiment='v', metric='accuracy', pairs=4, mean_difference=0.05, ci_low=0.01,
                             ci_high=0.09, wins=4, losses=0),
                        dict(experiment='v', metric='macro_f1', pairs=4, mean_difference=-0.05, ci_low=-0.09,
                             ci_high=-0.01, wins=0, losses=4),
                        dict(experiment='w', metric='accuracy', pairs=1, mean_difference=0.05, ci_low=math.nan,
                             ci_high=math.nan, wins=1, losses=0)])
  lines = sweep_report.differences_table(frame, ('accuracy', 'macro_f1')).splitlines()
  assert lines[2] == '| v | 4 | +0.050 [+0.010, +0.090] * | -0.050 [-0.090, -0.010] * | 4/0 |'
  assert lines[3] == '| w | 1 | n/a |  | 1/0 |'


def test_the_summary_gives_each_variant_its_corrected_interval():
  models = sweep_models()
  experiments = []
  for name, ratio in (('base', 0.25), ('wide', 0.5)):
    rows = models[models['experiment'] == name].assign(loss=0.3, epochs_trained=4).to_dict('records')
    experiments.append(dict(name=name, changes={'model.dropout': 0.5} if name == 'wide' else {}, rows=rows,
                            test_train_ratio=ratio, num_params=10, calibration=dict(
                                head='softmax', ece_before=0.1, ece_after=0.05, temperature=1.5, threshold=None),
                            timing=dict(seconds_per_model_epoch=1.0, train_seconds=2.0, wall_seconds=3.0)))
  summary = sweep_report.summarise(experiments).set_index('experiment')
  for e in experiments:
    row = summary.loc[e['name']]
    for metric in ('accuracy', 'macro_f1', 'roc_auc'):
      values = [r[metric] for r in e['rows'] if r[metric] is not None and not np.isnan(r[metric])]
      assert tuple(row[f'{metric}_{k}'] for k in ('mean', 'std', 'ci_low', 'ci_high')) == pytest.approx(
          corrected(values, e['test_train_ratio']), abs=1e-9), (e['name'], metric)
    assert row['models'] == len(e['rows'])
    assert (row['loss_mean'], row['epochs_trained_mean'], row['test_train_ratio']) == (0.3, 4.0, e['test_train_ratio'])
    assert (row['ece_before'], row['ece_after'], row['temperature'], row['num_params']) == (0.1, 0.05, 1.5, 10)
    assert (row['seconds_per_model_epoch'], row['train_seconds'], row['wall_seconds']) == (1.0, 2.0, 3.0)
    assert row['threshold'] is None
  assert summary.loc['wide', 'changes'] == "model.dropout=0.5" and summary.loc['base', 'changes'] == '(as configured)'


def test_the_probe_pairs_backbones_per_seed_and_fold_and_a_lower_loss_wins():
  folds = []
  for (fold, seed), base in BASE.items():
    folds.append(dict(backbone='best', seed=seed, fold=fold, accuracy=base, log_loss=1 - base))
    folds.append(dict(backbone='other', seed=seed, fold=fold, accuracy=base + DIFF[fold, seed],
                      log_loss=1 - base + DIFF[fold, seed]))
  table = screen.paired_differences(pd.DataFrame(folds[::-1]), 'best', 0.25, ('accuracy', 'log_loss'))
  table = table.set_index('metric')
  diffs = [DIFF[p] for p in sorted(DIFF)]
  for metric, wins, losses in (('accuracy', 3, 2), ('log_loss', 2, 3)):   # a higher loss is a loss
    row = table.loc[metric]
    assert (row['mean_difference'], row['std'], row['ci_low'], row['ci_high']) == pytest.approx(
        corrected(diffs, 0.25), abs=1e-9)
    assert (row['pairs'], row['wins'], row['losses']) == (6, wins, losses), metric


# --- cross-fitted calibration, two classes --------------------------------------------------------------------


def separable_groups(rng):
  """Three groups of 24 two-class logits whose classes separate at a different logit in each group (-3, 0, 3),
  with two labels flipped in each: a group's own threshold decides it almost perfectly, the others' do not."""
  z, labels, groups = [], [], []
  for g, centre in enumerate((-3.0, 0.0, 3.0)):
    y = np.array([0, 1] * 12)
    y[[0, 1]] = y[[1, 0]]
    z.append(centre + np.where(np.array([0, 1] * 12) == 1, 0.6, -0.6) + rng.uniform(-0.2, 0.2, 24))
    labels.append(y)
    groups.append(np.full(24, g))
  z = np.concatenate(z)
  return np.stack([np.zeros_like(z), z], 1), np.concatenate(labels), np.concatenate(groups)


def best_threshold(p1, labels, metric):
  """The threshold maximising macro (or positive-class) F1, by scikit-learn over every distinct decision;
  among ties the one nearest 0.5."""
  values = np.unique(p1)
  candidates = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]])
  average = 'binary' if metric == 'f1' else 'macro'
  scores = np.array([sk(skm.f1_score, labels, (p1 >= t).astype(int), average=average, zero_division=0)
                     for t in candidates])
  tied = candidates[scores >= scores.max() - EXACT]
  return float(np.clip(tied[np.argmin(np.abs(tied - 0.5))], 0, 1))


@pytest.mark.parametrize('metric', ['macro_f1', 'f1'])
def test_two_class_figures_after_calibration_are_cross_fitted(metric):
  logits, labels, groups = separable_groups(np.random.default_rng(0))
  summary, crossfit = calibration.calibrate_predictions(logits, labels, 'softmax', groups, bins=10,
                                                        threshold_metric=metric)
  expected_probs, expected_pred, own_pred = np.zeros_like(crossfit), np.zeros(len(labels), int), np.zeros(
      len(labels), int)
  for g in range(3):
    held, rest = groups == g, groups != g
    t = calibration.fit_temperature(logits[rest], labels[rest], 'softmax')
    expected_probs[held] = special.softmax(logits[held] / t, axis=1)
    threshold = best_threshold(special.softmax(logits[rest] / t, axis=1)[:, 1], labels[rest], metric)
    expected_pred[held] = expected_probs[held, 1] >= threshold
    own = best_threshold(expected_probs[held, 1], labels[held], metric)   # the wrong variant: fitted on itself
    own_pred[held] = expected_probs[held, 1] >= own
  np.testing.assert_allclose(crossfit, expected_probs, atol=1e-9)
  average = 'binary' if metric == 'f1' else 'macro'
  tuned = skm.f1_score(labels, expected_pred, average=average)
  assert summary['f1_tuned'] == pytest.approx(tuned, abs=EXACT)
  assert summary['f1_argmax'] == pytest.approx(skm.f1_score(labels, logits.argmax(1), average=average), abs=EXACT)
  assert skm.f1_score(labels, own_pred, average=average) > tuned + 0.2   # in-sample would look far better
  assert summary['ece_after'] == pytest.approx(calibration.expected_calibration_error(expected_probs, labels, 10))
  assert summary['ece_before'] == pytest.approx(
      calibration.expected_calibration_error(special.softmax(logits, axis=1), labels, 10), abs=EXACT)
  assert summary['nll_after'] == pytest.approx(skm.log_loss(labels, expected_probs), abs=1e-9)
  everything = calibration.fit_temperature(logits, labels, 'softmax')
  assert summary['temperature'] == pytest.approx(everything, abs=EXACT)
  in_sample = special.softmax(logits / everything, axis=1)
  assert summary['ece_after_in_sample'] == pytest.approx(calibration.expected_calibration_error(in_sample, labels, 10))
  assert summary['nll_before'] == pytest.approx(skm.log_loss(labels, special.softmax(logits, axis=1)), abs=1e-9)
  assert summary['threshold'] == pytest.approx(best_threshold(in_sample[:, 1], labels, metric), abs=EXACT)
  assert summary['crossfit_groups'] == 3 and summary['n'] == 72 and summary['threshold_metric'] == metric


def test_one_split_is_cut_into_stratified_parts_to_cross_fit_over():
  labels = np.array([0, 1, 1] * 10)
  parts = calibration.crossfit_groups(labels, None, seed=3)
  expected = np.zeros(30, int)
  for g, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=3).split(labels, labels)):
    expected[test] = g
  np.testing.assert_array_equal(parts, expected)
  groups = np.arange(30) % 3
  np.testing.assert_array_equal(calibration.crossfit_groups(labels, groups), groups)   # the folds themselves
  # as many parts as the rarer class allows, and none below two
  assert len(np.unique(calibration.crossfit_groups(np.array([0] * 10 + [1] * 3), None))) == 3
  np.testing.assert_array_equal(calibration.crossfit_groups(np.array([0] * 10 + [1]), None), np.zeros(11, int))
  np.testing.assert_array_equal(calibration.crossfit_groups(labels, np.zeros(30, int), seed=3), expected)


def test_a_multiclass_calibration_has_no_threshold():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 2, (60, 3))
  labels = np.arange(60) % 3
  summary, crossfit = calibration.calibrate_predictions(logits, labels, 'softmax', np.arange(60) % 4)
  assert summary['threshold'] is None and 'f1_tuned' not in summary and summary['crossfit_groups'] == 4
  assert summary['threshold_metric'] is None and summary['bins'] == 15   # ECE over 15 bins unless told
  assert summary['ece_before'] == pytest.approx(
      calibration.expected_calibration_error(special.softmax(logits, axis=1), labels, 15), abs=EXACT)
  for g in range(4):
    held = np.arange(60) % 4 == g
    t = calibration.fit_temperature(logits[~held], labels[~held], 'softmax')
    np.testing.assert_allclose(crossfit[held], special.softmax(logits[held] / t, axis=1), atol=1e-9)


# --- cross-fitted per-label thresholds ------------------------------------------------------------------------

NAMES = ('zebra', 'apple')   # not alphabetical: a figure filed under the other name shows


def multilabel_groups():
  """Three groups of 9 images and two labels whose probabilities separate at a different level in each group
  (label zebra at 0.2, 0.5, 0.8; apple the other way round)."""
  probs, labels, groups = [], [], []
  y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 1]])
  for g, (a, b) in enumerate(((0.2, 0.8), (0.5, 0.5), (0.8, 0.2))):
    jitter = np.arange(9)[:, None] * 0.004 + np.array([0.0, 0.001])
    shift = np.where(y == 1, 0.09, -0.09)
    shift[8] = -0.16   # a positive below the negatives: F2, which weighs recall, takes it where F1 does not
    probs.append(shift + np.array([a, b]) + jitter)
    labels.append(y)
    groups.append(np.full(9, g))
  return np.concatenate(probs), np.concatenate(labels), np.concatenate(groups)


def best_label_threshold(y, p, beta):
  """One label's F-beta-maximising threshold, by scikit-learn over every distinct cut: the midpoint down to
  the next lower distinct value; ties to the threshold nearest 0.5, then the higher."""
  values = sorted(set(p.tolist()), reverse=True)
  best = None
  for i, v in enumerate(values):
    t = (v + (values[i + 1] if i + 1 < len(values) else 0.0)) / 2
    score = sk(skm.fbeta_score, y, (p >= v).astype(int), beta=beta, zero_division=0)
    key = (round(score, 12), -abs(t - 0.5), t)
    best = max(best or key, key)
  return best[2]


@pytest.mark.parametrize('metric, beta', [('f1', 1.0), ('f2', 2.0)])
def test_tuned_multilabel_figures_are_cross_fitted(metric, beta):
  probs, labels, groups = multilabel_groups()
  result = multilabel_calibration.calibrate_thresholds(probs, labels, NAMES, groups, metric)
  crossfit, own = np.zeros_like(labels), np.zeros_like(labels)
  for g in range(3):
    held, rest = groups == g, groups != g
    for k in range(2):
      crossfit[held, k] = probs[held, k] >= best_label_threshold(labels[rest, k], probs[rest, k], beta)
      own[held, k] = probs[held, k] >= best_label_threshold(labels[held, k], probs[held, k], beta)
  fitted = [best_label_threshold(labels[:, k], probs[:, k], beta) for k in range(2)]
  assert result['thresholds'] == pytest.approx(dict(zip(NAMES, fitted)), abs=EXACT)
  assert list(result['thresholds']) == list(NAMES) == list(result['per_label'])
  tuned = skm.f1_score(labels, crossfit, average='macro')
  assert result['macro_f1_tuned'] == pytest.approx(tuned, abs=EXACT)
  own_f = skm.fbeta_score(labels, own, beta=beta, average='macro')   # fitted on each group itself: far better
  assert own_f > skm.fbeta_score(labels, crossfit, beta=beta, average='macro') + (0.2 if beta == 1 else 0.005)
  at_half = (probs >= 0.5).astype(int)
  assert result['macro_f1_at_half'] == pytest.approx(skm.f1_score(labels, at_half, average='macro'), abs=EXACT)
  in_sample = (probs >= np.array(fitted)).astype(int)
  assert result['macro_f1_tuned_in_sample'] == pytest.approx(skm.f1_score(labels, in_sample, average='macro'),
                                                             abs=EXACT)
  assert result['macro_f1_tuned_in_sample'] != pytest.approx(result['macro_f1_tuned'], abs=0.02)
  for k, name in enumerate(NAMES):
    row = result['per_label'][name]
    assert row['threshold'] == pytest.approx(fitted[k], abs=EXACT) and row['positives'] == labels[:, k].sum()
    assert row['f_at_half'] == pytest.approx(skm.fbeta_score(labels[:, k], at_half[:, k], beta=beta), abs=EXACT)
    assert row['f_tuned'] == pytest.approx(skm.fbeta_score(labels[:, k], crossfit[:, k], beta=beta), abs=EXACT)
  assert (result['beta'], result['crossfit_groups'], result['n'], result['threshold_metric']) == (beta, 3, 27, metric)
  assert result['head'] == 'multilabel' and result['temperature'] == 1.0 and result['threshold'] is None


def test_one_multilabel_split_is_cut_into_per_label_stratified_parts():
  from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
  probs, labels, _ = multilabel_groups()
  parts = multilabel_calibration.crossfit_groups(labels, None, seed=2)
  expected = np.zeros(len(labels), int)
  for g, (_, held) in enumerate(MultilabelStratifiedKFold(5, shuffle=True, random_state=2).split(
      np.zeros(len(labels)), labels)):
    expected[held] = g
  np.testing.assert_array_equal(parts, expected)
  result = multilabel_calibration.calibrate_thresholds(probs, labels, NAMES, None)
  assert result['crossfit_groups'] == 5
  # fewer than two images a part: one group, fitted and judged on the same images (the in-sample figure)
  few = multilabel_calibration.calibrate_thresholds(probs[:9], labels[:9], NAMES, None)
  assert few['crossfit_groups'] == 1 and few['macro_f1_tuned'] == few['macro_f1_tuned_in_sample']
  assert len(np.unique(multilabel_calibration.crossfit_groups(labels[:10], None))) == 5


def test_the_multilabel_calibration_section_prints_the_figures():
  probs, labels, groups = multilabel_groups()
  result = multilabel_calibration.calibrate_thresholds(probs, labels, NAMES, groups, 'f2')
  text = multilabel_calibration.calibration_section(dict(result, fitted_on='out-of-fold predictions'))
  assert 'cross-fitted over 3 groups' in text and "maximises its F2" in text
  assert f'Macro F1: {result["macro_f1_at_half"]:.4f} at 0.5, {result["macro_f1_tuned"]:.4f} tuned.' in text
  row = result['per_label']['apple']
  assert (f'| apple | {row["positives"]} | {row["threshold"]:.3f} | {row["f_at_half"]:.4f} | {row["f_tuned"]:.4f} |'
          in text)
  assert text.index('| zebra |') < text.index('| apple |')


# --- every figure of a scores.json ---------------------------------------------------------------------------

ML_NAMES = ('zebra', 'apple', 'mango', 'kiwi')   # apple: no positive; mango: no negative
ML_TRUTH = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 1, 1], [0, 0, 1, 0]])
ML_PROBS = np.array([[.9, .2, .7, .1], [.3, .6, .2, .8], [.4, .1, .9, .3], [.6, .4, .5, .35], [.8, .3, .6, .7],
                     [.2, .7, .1, .2]])
ML_THRESHOLDS = np.array([0.5, 0.65, 0.3, 0.32])


@pytest.mark.parametrize('zero_division', [0.0, 1.0])
def test_every_multilabel_figure_of_scores_is_scikit_learns(zero_division):
  out = mm.scores(ML_TRUTH, ML_PROBS, ML_NAMES, ML_THRESHOLDS, zero_division)
  pred = (ML_PROBS >= ML_THRESHOLDS).astype(int)
  for average in ('micro', 'macro', 'samples'):
    assert out[f'{average}_f1'] == pytest.approx(sk(skm.f1_score, ML_TRUTH, pred, average=average,
                                                    zero_division=zero_division), abs=EXACT), average
  assert out['planet_f2'] == pytest.approx(sk(skm.fbeta_score, ML_TRUTH, pred, beta=2, average='samples',
                                              zero_division=zero_division), abs=EXACT)
  ap = sk(skm.average_precision_score, ML_TRUTH, ML_PROBS, average=None)
  assert ap[1] == 0.0 and ap[2] == 1.0   # scikit-learn's convention: no positive 0, no negative 1
  assert out['mean_average_precision'] == pytest.approx(
      sk(skm.average_precision_score, ML_TRUTH, ML_PROBS, average='macro'), abs=EXACT)
  assert out['mean_average_precision'] == pytest.approx(np.mean(ap), abs=EXACT)
  assert out['subset_accuracy'] == pytest.approx(skm.accuracy_score(ML_TRUTH, pred), abs=EXACT)
  assert out['hamming_loss'] == pytest.approx(skm.hamming_loss(ML_TRUTH, pred), abs=EXACT)
  precision, recall, f1, support = sk(skm.precision_recall_fscore_support, ML_TRUTH, pred, average=None,
                                      zero_division=zero_division)
  assert list(out['per_label']) == list(ML_NAMES) == out['class_names']
  for k, name in enumerate(ML_NAMES):
    row = out['per_label'][name]
    assert (row['precision'], row['recall'], row['f1'], row['average_precision'], row['threshold']) == pytest.approx(
        (precision[k], recall[k], f1[k], ap[k], ML_THRESHOLDS[k]), abs=EXACT), name
    assert row['support'] == support[k] and isinstance(row['support'], int)
  assert (out['n'], out['untagged'], out['zero_division']) == (6, 0, zero_division)


def test_multilabel_scores_count_untagged_images_and_take_one_threshold_for_all():
  truth = np.vstack([ML_TRUTH[:, [0, 3]], [[0, 0], [0, 0]]])
  probs = np.vstack([ML_PROBS[:, [0, 3]], [[.7, .1], [.2, .2]]])
  out = mm.scores(truth, probs, ('zebra', 'kiwi'), 0.35)
  pred = (probs >= 0.35).astype(int)
  assert out['untagged'] == 4 and out['n'] == 8
  assert [r['threshold'] for r in out['per_label'].values()] == [0.35, 0.35]
  assert out['macro_f1'] == pytest.approx(skm.f1_score(truth, pred, average='macro', zero_division=0), abs=EXACT)
  assert out['samples_f1'] == pytest.approx(sk(skm.f1_score, truth, pred, average='samples', zero_division=0),
                                            abs=EXACT)


def test_every_single_label_figure_of_scores_is_scikit_learns():
  """Three classes, the last never true: ROC AUC has no figure then, and the stored decision (`predictions`)
  replaces the argmax wherever a decision is counted."""
  labels = np.array([0, 1, 1, 0, 1, 0, 1])
  probs = np.array([[.6, .3, .1], [.2, .5, .3], [.1, .2, .7], [.3, .4, .3], [.4, .45, .15], [.5, .1, .4],
                    [.3, .6, .1]])
  names = ('left', 'right', 'none')
  out = metrics.scores(labels, probs, names)
  pred = probs.argmax(1)
  assert out['accuracy'] == pytest.approx(skm.accuracy_score(labels, pred), abs=EXACT)
  assert out['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(labels, pred), abs=EXACT)
  assert out['macro_f1'] == pytest.approx(skm.f1_score(labels, pred, average='macro', labels=[0, 1, 2],
                                                       zero_division=0), abs=EXACT)
  assert out['loss'] == pytest.approx(skm.log_loss(labels, probs, labels=[0, 1, 2]), abs=1e-9)
  assert out['roc_auc'] is None and out['n'] == 7 and out['class_names'] == list(names)
  assert out['confusion_matrix'] == skm.confusion_matrix(labels, pred, labels=[0, 1, 2]).tolist()
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=[0, 1, 2],
                                                                       zero_division=0)
  for k, name in enumerate(names):
    row = out['per_class'][name]
    assert (row['precision'], row['recall'], row['f1'], row['support']) == pytest.approx(
        (precision[k], recall[k], f1[k], support[k]), abs=EXACT)
  decided = np.array([0, 1, 1, 0, 0, 0, 1])
  stored = metrics.scores(labels, probs, names, predictions=decided)
  assert stored['accuracy'] == pytest.approx(skm.accuracy_score(labels, decided), abs=EXACT) != out['accuracy']
  assert stored['macro_f1'] == pytest.approx(skm.f1_score(labels, decided, average='macro', labels=[0, 1, 2],
                                                          zero_division=0), abs=EXACT)
  assert stored['confusion_matrix'] == skm.confusion_matrix(labels, decided, labels=[0, 1, 2]).tolist()
  assert stored['loss'] == out['loss']   # the probabilities' figure, whatever the decision


def test_two_class_roc_auc_and_one_class_balanced_accuracy():
  labels = np.array([0, 1, 1, 0, 1])
  p1 = np.array([.2, .7, .4, .5, .9])
  probs = np.stack([1 - p1, p1], 1)
  out = metrics.scores(labels, probs, ('a', 'b'))
  assert out['roc_auc'] == pytest.approx(skm.roc_auc_score(labels, p1), abs=EXACT)
  assert metrics.roc_auc(labels, probs) == pytest.approx(skm.roc_auc_score(labels, p1), abs=EXACT)
  assert metrics.log_loss(labels, probs) == pytest.approx(skm.log_loss(labels, p1), abs=1e-9)
  three = np.array([[.5, .3, .2], [.1, .6, .3], [.2, .2, .6], [.3, .4, .3]])
  assert metrics.roc_auc(np.array([0, 1, 2, 1]), three) == pytest.approx(
      skm.roc_auc_score([0, 1, 2, 1], three, multi_class='ovr', average='macro'), abs=EXACT)
  assert metrics.scores(np.array([1, 1]), np.array([[.4, .6], [.7, .3]]), ('a', 'b'))['balanced_accuracy'] is None


def test_epoch_figures_and_binary_losses_are_their_definitions():
  truth = ML_TRUTH[:, [0, 3]]
  probs = ML_PROBS[:, [0, 3]]
  losses = metrics.binary_log_losses(truth, probs)
  np.testing.assert_allclose(losses, -(truth * np.log(probs) + (1 - truth) * np.log(1 - probs)), rtol=1e-12)
  assert metrics.binary_log_losses(np.array([[1, 0]]), np.array([[0.0, 1.0]])).max() == pytest.approx(
      -np.log(1e-12))   # clipped, not infinite
  ml = metrics.multilabel_epoch_metrics(truth, probs)
  pred = (probs >= 0.5).astype(int)
  assert ml['loss'] == pytest.approx(losses.mean(), abs=EXACT)
  assert ml['accuracy'] == pytest.approx(skm.accuracy_score(truth, pred), abs=EXACT)
  assert ml['map'] == pytest.approx(skm.average_precision_score(truth, probs, average='macro'), abs=EXACT)
  assert ml['macro_f1'] == pytest.approx(skm.f1_score(truth, pred, average='macro'), abs=EXACT)
  assert ml['micro_f1'] == pytest.approx(skm.f1_score(truth, pred, average='micro'), abs=EXACT)
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -0.2], [-1.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
  labels = np.array([0, 2, 2, 1])
  single = metrics.model_scores(labels, logits, 'softmax')
  probs3 = special.softmax(logits, axis=1)
  assert single['loss'] == pytest.approx(skm.log_loss(labels, probs3), abs=1e-9)
  assert single['accuracy'] == pytest.approx(0.75) and single['roc_auc'] == pytest.approx(
      skm.roc_auc_score(labels, probs3, multi_class='ovr'), abs=EXACT)
  multi = metrics.model_scores(truth, special.logit(probs), 'multilabel')
  assert multi['map'] == pytest.approx(ml['map'], abs=1e-9) and multi['loss'] == pytest.approx(ml['loss'], abs=1e-9)


# --- the sweep's tables, section and figure ------------------------------------------------------------------


def sweep_experiments(multilabel=False):
  """Two variants of hand-made member rows (2 splits x 2 seeds), as run_plan records them."""
  out = []
  for name, shift, ratio in (('base', 0.0, 0.25), ('wide', 0.03, 0.25)):
    rows = [dict(split=split, seed=seed, accuracy=0.7 + 0.1 * split + 0.01 * seed + shift, map=0.5 + 0.1 * split + shift,
                 macro_f1=0.6 + 0.05 * split - 0.01 * seed + shift, roc_auc=0.8 + 0.02 * split + shift, loss=0.4,
                 epochs_trained=3 + split) for split in (0, 1) for seed in (0, 1)]
    calibration_entry = (dict(head='multilabel', macro_f1_at_half=0.61, macro_f1_tuned=0.66 + shift,
                              thresholds={'zebra': 0.4, 'apple': 0.55}) if multilabel else
                         dict(head='softmax', ece_before=0.12, ece_after=0.04 + shift, temperature=1.7, threshold=None))
    out.append(dict(name=name, changes={} if name == 'base' else {'model.width': 2}, rows=rows, test_train_ratio=ratio,
                    num_params=12345 if name == 'base' else float('nan'), calibration=calibration_entry,
                    task='multilabel' if multilabel else 'single_label', split_note='2 folds',
                    timing=dict(seconds_per_model_epoch=0.25, train_seconds=2.0, wall_seconds=3.0, form='loop',
                                plan='2 members a chunk')))
  return out


def test_the_task_and_its_metrics_come_from_every_variant():
  single, multi = sweep_experiments(), sweep_experiments(multilabel=True)
  assert sweep_report.task_of(single) == 'single_label' and sweep_report.task_of(multi) == 'multilabel'
  assert sweep_report.task_of([{'name': 'old'}]) == 'single_label'   # an experiment.json from before the field
  assert sweep_report.metrics_of(single) == ('accuracy', 'macro_f1', 'roc_auc')
  assert sweep_report.metrics_of(multi) == ('map', 'macro_f1')
  with pytest.raises(UserInputError, match=r'mix single-label and multi-label variants \(base: single_label, '
                                           r'wide: multilabel\)'):
    sweep_report.task_of([single[0], multi[1]])


def test_a_models_row_is_every_registered_figure_of_its_task():
  logits = np.array([[2.0, -1.0], [0.1, 0.3], [-1.0, 0.5], [0.0, 1.0]])
  labels = np.array([0, 1, 0, 1])
  row = metrics.model_scores(labels, logits, 'softmax')
  probs = special.softmax(logits, axis=1)
  assert row['accuracy'] == 0.75 and row['roc_auc'] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
  assert row['loss'] == pytest.approx(skm.log_loss(labels, probs), abs=1e-9)
  truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
  multi = metrics.model_scores(truth, logits, 'multilabel')
  sigmoid = special.expit(logits)
  assert multi['map'] == pytest.approx(skm.average_precision_score(truth, sigmoid), abs=EXACT)
  assert multi['macro_f1'] == pytest.approx(skm.f1_score(truth, (sigmoid >= 0.5).astype(int), average='macro'))


@pytest.mark.parametrize('multilabel', [False, True])
def test_the_results_table_prints_each_variants_figures(multilabel):
  experiments = sweep_experiments(multilabel)
  names = sweep_report.metrics_of(experiments)
  summary = sweep_report.summarise(experiments)
  lines = sweep_report.results_table(summary, names).splitlines()
  calibration_column = 'macro F1 at 0.5 → thresholds' if multilabel else 'ECE before → after'
  titles = ' | '.join(sweep_report.metric_registry.title(m) for m in names)
  assert lines[0] == f'| variant | changes | models | {titles} | {calibration_column} | params | s / model-epoch | epochs |'
  for line, e in zip(lines[2:], experiments):
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert cells[:3] == [e['name'], describe_changes(e['changes']), '4']
    for cell, metric in zip(cells[3:], names):
      mean, std, low, high = corrected([r[metric] for r in e['rows']], e['test_train_ratio'])
      assert cell == f'{mean:.3f} ± {std:.3f} [{low:.3f}, {high:.3f}]', metric
    calib = e['calibration']
    assert cells[3 + len(names)] == (f'{calib["macro_f1_at_half"]:.3f} → {calib["macro_f1_tuned"]:.3f}' if multilabel
                                     else f'{calib["ece_before"]:.3f} → {calib["ece_after"]:.3f}')
    assert cells[4 + len(names):] == (['12,345'] if e['name'] == 'base' else ['']) + ['0.25', '3.5']
  if multilabel:
    assert summary['thresholds'].tolist() == ['zebra=0.400 apple=0.550'] * 2
    assert summary['macro_f1_at_half'].tolist() == [0.61, 0.61] and 'ece_before' not in summary
  else:
    assert summary['temperature'].tolist() == [1.7, 1.7] and summary['ece_after'].tolist() == [0.04, 0.07]


def sweep_section_inputs(multilabel: bool, ratio: float):
  """(experiments, summary, paired differences) of the two-variant sweep, as sweep_section takes them."""
  experiments = sweep_experiments(multilabel)
  for e in experiments:
    e['test_train_ratio'] = ratio
  models = pd.DataFrame([dict(r, experiment=e['name'], val_hash='h') for e in experiments for r in e['rows']])
  return experiments, sweep_report.summarise(experiments), sweep_report.paired_differences(models, experiments, 'base')


@pytest.mark.parametrize('multilabel, ratio', [(False, 0.25), (True, 0.0)])
def test_the_sweep_section_states_its_counts_and_how_its_intervals_are_made(multilabel, ratio):
  experiments, summary, differences = sweep_section_inputs(multilabel, ratio)
  text = sweep_report.sweep_section(None, experiments, summary, differences, 'base', 12.4)
  assert '2 variants × 2 splits (2 folds) × 2 seeds [0, 1] = 8 models, 12 s wall' in text
  assert 'Model axis: `loop`, 2 members a chunk.' in text and '### Paired differences from `base`' in text
  assert sweep_report.results_table(summary, sweep_report.metrics_of(experiments)) in text
  assert sweep_report.differences_table(differences, sweep_report.metrics_of(experiments)) in text
  if ratio:
    assert 'n_val/n_train = 0.250' in text and 'seed-to-seed variation only' not in text
  else:
    assert 'seed-to-seed variation only' in text and 'n_val/n_train' not in text
  assert ('mAP, and macro F1 deciding each label at 0.5' in text) == multilabel
  assert ('one threshold per label' in text) == multilabel and ('ECE is the expected' in text) != multilabel
  alone = sweep_report.sweep_section(None, experiments[:1], summary[:1], differences[:0], 'base', 1.0)
  assert '(only one variant)' in alone


def test_the_sweep_figure_draws_each_variants_mean_interval_and_models():
  experiments = sweep_experiments()
  summary = sweep_report.summarise(experiments)
  models = pd.DataFrame([dict(r, experiment=e['name']) for e in experiments for r in e['rows']])
  figure = sweep_report.plot_results(summary, models)
  axes = figure.axes
  assert [ax.get_ylabel() for ax in axes] == ['accuracy', 'macro F1', 'ROC AUC']
  for ax, metric in zip(axes, sweep_report.METRICS):
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx(summary[f'{metric}_mean'].tolist(), abs=EXACT)
    dots = [line for line in ax.lines if line.get_marker() == '.' and line.get_linestyle() == 'None']
    assert len(dots) == len(experiments)
    for i, (line, e) in enumerate(zip(dots, experiments)):
      assert sorted(line.get_ydata()) == pytest.approx(sorted(r[metric] for r in e['rows']), abs=EXACT)
      x = np.asarray(line.get_xdata())
      assert ((x >= i - 0.2) & (x <= i + 0.2)).all() and np.ptp(x) > 0   # jittered about the variant's bar
    (caps,) = [c for c in ax.containers if hasattr(c, 'has_yerr') and c.has_yerr]
    segments = caps.lines[2][0].get_segments()
    for segment, (_, s) in zip(segments, summary.iterrows()):
      assert [segment[0][1], segment[1][1]] == pytest.approx([s[f'{metric}_ci_low'], s[f'{metric}_ci_high']], abs=1e-9)
    values = np.concatenate([summary[f'{metric}_mean'], models[metric]])
    assert ax.get_ylim() == pytest.approx((max(0.0, values.min() - 0.05), min(1.0, values.max() + 0.05)))
  near_one = models.assign(accuracy=models['accuracy'] + 0.2, macro_f1=models['macro_f1'] - 0.64)
  low_and_high = sweep_report.plot_results(summary, near_one).axes
  assert low_and_high[0].get_ylim()[1] == 1.0 and low_and_high[1].get_ylim()[0] == 0.0   # clipped to [0, 1]


# --- the stored decision -------------------------------------------------------------------------------------


def test_a_stored_decision_applies_its_temperature_threshold_and_per_label_thresholds_by_name():
  logits = np.array([[0.0, 1.0], [0.0, -0.2], [0.0, 0.3]])
  decision = calibration.Decision.from_stored('softmax', {'temperature': 2.0, 'threshold': 0.45}, ('a', 'b'))
  probs, pred = decision(logits)
  np.testing.assert_allclose(probs, special.softmax(logits / 2.0, axis=1), atol=1e-12)
  assert pred.tolist() == [1, 1, 1] and decision.threshold == 0.45   # p1 = 0.62, 0.475, 0.537 >= 0.45
  plain = calibration.Decision.from_stored('softmax', {}, ('a', 'b'))
  assert (plain.temperature, plain.threshold, plain.thresholds) == (1.0, None, None)
  assert plain(logits)[1].tolist() == [1, 0, 1]
  three = calibration.Decision('softmax', threshold=0.9)(np.array([[0.0, 1.0, 2.0]]))[1]
  assert three.tolist() == [2]   # a threshold is for two classes only
  ml = calibration.Decision.from_stored('multilabel', {'thresholds': {'apple': 0.7, 'zebra': 0.2}},
                                        ('zebra', 'mango', 'apple'))
  assert ml.thresholds == (0.2, 0.5, 0.7) and ml.label_thresholds(3).tolist() == [0.2, 0.5, 0.7]
  multi_logits = special.logit(np.array([[0.3, 0.6, 0.65], [0.1, 0.4, 0.75]]))
  probs, pred = ml(multi_logits)
  np.testing.assert_allclose(probs, [[0.3, 0.6, 0.65], [0.1, 0.4, 0.75]], atol=1e-12)
  assert pred.tolist() == [[1, 1, 0], [0, 0, 1]]
  unset = calibration.Decision('multilabel')
  assert unset.label_thresholds(2).tolist() == [0.5, 0.5]
  assert unset(special.logit(np.array([[0.5, 0.49, 0.7]])))[1].tolist() == [[1, 0, 1]]


def test_a_decision_describes_itself():
  assert calibration.Decision('softmax').describe() == 'uncalibrated probabilities, the most probable class'
  assert calibration.Decision('softmax', 1.5).describe() == ('temperature-scaled probabilities (T = 1.500), '
                                                             'the most probable class')
  assert calibration.Decision('softmax', 1.0, 0.375).describe() == ('temperature-scaled probabilities (T = 1.000), '
                                                                    'class 1 when its probability is at least 0.375')
  assert calibration.Decision('multilabel', thresholds=(0.5, 0.5)).describe().endswith('reaches 0.5')
  assert calibration.Decision('multilabel', thresholds=(0.5, 0.4)).describe().endswith(
      'reaches its fitted threshold (--mode calibrate)')
  assert calibration.Decision('multilabel').describe().startswith('sigmoid probability per class; a class is')


def test_a_models_decision_reads_its_sidecar_only_when_calibrated():
  class Trained:
    metadata = {'calibration': {'temperature': 2.5, 'thresholds': {'b': 0.3, 'a': 0.6}}}
    task = type('Task', (), {'head': 'multilabel'})()
    class_names = ('b', 'a')
  stored = calibration.Decision.for_model(Trained(), calibrated=True)
  assert (stored.head, stored.temperature, stored.thresholds) == ('multilabel', 2.5, (0.3, 0.6))
  assert calibration.Decision.for_model(Trained(), calibrated=False) == calibration.Decision('multilabel', 1.0, None,
                                                                                            (0.5, 0.5))


def test_the_classification_report_is_scikit_learns():
  labels, pred = np.array([0, 1, 1, 2, 0]), np.array([0, 1, 0, 2, 2])
  assert metrics.classification_report(labels, pred, ('x', 'y', 'z', 'w')) == skm.classification_report(
      labels, pred, labels=[0, 1, 2, 3], target_names=['x', 'y', 'z', 'w'], digits=4, zero_division=0)


def test_the_differences_table_stars_only_an_interval_that_excludes_zero_and_two_pairs_suffice():
  frame = pd.DataFrame([dict(experiment='v', metric='accuracy', pairs=2, mean_difference=0.05, ci_low=0.0,
                             ci_high=0.1, wins=2, losses=0),
                        dict(experiment='v', metric='macro_f1', pairs=2, mean_difference=-0.05, ci_low=-0.1,
                             ci_high=0.0, wins=0, losses=2)])
  assert sweep_report.differences_table(frame, ('accuracy', 'macro_f1')).splitlines()[2] == \
      '| v | 2 | +0.050 [+0.000, +0.100] | -0.050 [-0.100, +0.000] | 2/0 |'
  alone = sweep_report.paired_differences(sweep_models()[lambda f: f['experiment'] == 'base'], EXPERIMENTS[:1],
                                          'base')
  assert alone.empty and list(alone.columns) == ['experiment', 'baseline', 'metric', 'pairs', 'mean_difference', 'std',
                                                 'ci_low', 'ci_high', 'wins', 'losses']
  assert describe_changes({'model.dropout': 0.5, 'data.image_size': (8, 8)}) == \
      "model.dropout=0.5, data.image_size=(8, 8)"


# --- the edges of the calibration maths ----------------------------------------------------------------------


def test_the_threshold_search_reaches_both_ends():
  """Taking every image, or none, can be the best decision: the search holds a threshold below the lowest
  probability and one above the highest, and reports them as such."""
  p1 = np.array([0.1, 0.2, 0.3, 0.4])
  threshold, score = calibration.tune_threshold(p1, np.array([1, 1, 1, 0]), 'f1')   # every image: F1 6/7
  assert score == pytest.approx(6 / 7) and threshold == pytest.approx(0.1, abs=1e-8) and threshold < 0.1
  p1 = np.array([0.9, 0.8, 0.7, 0.1])
  threshold, score = calibration.tune_threshold(p1, np.array([0, 0, 0, 1]), 'macro_f1')   # none: (6/7 + 0) / 2
  assert score == pytest.approx(3 / 7) and threshold == pytest.approx(0.9, abs=1e-8) and threshold > 0.9
  thresholds, _ = calibration.f1_by_threshold(np.array([0.2, 0.6]), np.array([0, 1]))
  np.testing.assert_allclose(thresholds, [0.2 - 1e-9, 0.4, 0.6 + 1e-9], rtol=0, atol=1e-15)
  with pytest.raises(UserInputError, match=r"config.sweep.threshold_metric='auc': choose one of "
                                           r"\('macro_f1', 'f1', 'f2'\)"):
    calibration.f1_by_threshold(p1, np.array([0, 0, 0, 1]), 'auc')


def test_a_decision_is_scored_over_both_classes():
  none = np.zeros(4, int)
  assert calibration.decision_score(none, none, 'macro_f1') == 0.5   # class 1: no prediction, no truth -> 0
  assert calibration.decision_score(none, none, 'f1') == 0.0
  assert calibration.decision_score(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1]), 'f1') == pytest.approx(0.8)


def test_reliability_bins_take_the_lowest_and_a_single_example_bin():
  probs = np.array([[0.4, 0.35, 0.25], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0]])
  labels = np.array([0, 0, 2, 1])
  count, confidence, accuracy = calibration.reliability_bins(probs, labels, 2)
  assert count.tolist() == [2, 2] and accuracy.tolist() == [0.5, 1.0]
  assert confidence.tolist() == pytest.approx([0.4, 0.9])
  # bins of one example count: |1 - 0.8| and |1 - 1.0| weigh 1/4 each, the first bin |0.5 - 0.4| half
  assert calibration.expected_calibration_error(probs, labels, 5) == pytest.approx(0.5 * 0.1 + 0.25 * 0.2)


def test_crossfit_groups_edges():
  two = np.array([0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(calibration.crossfit_groups(two, np.array([0, 0, 0, 1, 1, 1])), [0, 0, 0, 1, 1, 1])
  pairs = calibration.crossfit_groups(np.array([0] * 6 + [1] * 2), None)
  assert sorted(np.unique(pairs)) == [0, 1] and pairs.dtype.kind == 'i'   # two of the rarer class: two parts
  single = calibration.crossfit_groups(np.array([0] * 6 + [1]), None)
  assert single.tolist() == [0] * 7 and single.dtype.kind == 'i'
  assert calibration.crossfit_groups(np.zeros(0, int), None).tolist() == []
  labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 3)
  np.testing.assert_array_equal(multilabel_calibration.crossfit_groups(labels, np.zeros(12, int)),
                                multilabel_calibration.crossfit_groups(labels, None))
  np.testing.assert_array_equal(multilabel_calibration.crossfit_groups(labels, np.arange(12) % 2), np.arange(12) % 2)
  assert multilabel_calibration.crossfit_groups(labels[:9], None).dtype.kind == 'i'


def test_a_one_logit_sigmoid_head_is_calibrated_and_cross_fitted_as_two_classes():
  logits, labels, groups = separable_groups(np.random.default_rng(1))
  z = logits[:, 1:]
  summary, crossfit = calibration.calibrate_predictions(z, labels, 'sigmoid', groups, bins=7)
  for g in range(3):
    held = groups == g
    t = calibration.fit_temperature(z[~held], labels[~held], 'sigmoid')
    np.testing.assert_allclose(crossfit[held, 1], special.expit(z[held, 0] / t), atol=1e-9)
  everything = calibration.fit_temperature(z, labels, 'sigmoid')
  assert everything == pytest.approx(calibration.fit_temperature(logits, labels, 'softmax'), rel=1e-4)
  in_sample = np.stack([1 - special.expit(z[:, 0] / everything), special.expit(z[:, 0] / everything)], 1)
  assert summary['threshold'] == pytest.approx(best_threshold(in_sample[:, 1], labels, 'macro_f1'), abs=EXACT)
  assert summary['ece_before'] == pytest.approx(calibration.expected_calibration_error(
      np.stack([1 - special.expit(z[:, 0]), special.expit(z[:, 0])], 1), labels, 7))
  assert (summary['bins'], summary['head'], summary['n']) == (7, 'sigmoid', 72)
  assert summary['f1_argmax'] == pytest.approx(skm.f1_score(labels, (z[:, 0] >= 0).astype(int), average='macro'))
  assert calibration.negative_log_likelihood(z, labels, 'sigmoid', 2.0) == pytest.approx(
      skm.log_loss(labels, special.expit(z[:, 0] / 2.0)), abs=1e-9)
  one = calibration.calibrate_predictions(z[:5], np.array([1, 0, 0, 0, 0]), 'sigmoid', np.zeros(5, int))[0]
  assert one['crossfit_groups'] == 1 and one['threshold_metric'] == 'macro_f1'   # one positive: nothing to cut


def test_every_f_is_zero_division_when_nothing_is_true_or_predicted():
  truth = np.zeros((3, 2), int)
  probs = np.full((3, 2), 0.1)
  for zero_division in (0.0, 1.0):
    out = mm.scores(truth, probs, ('b', 'a'), 0.5, zero_division)
    assert (out['micro_f1'], out['macro_f1'], out['samples_f1'], out['planet_f2']) == (zero_division,) * 4
    assert out['subset_accuracy'] == 1.0 and out['hamming_loss'] == 0.0 and out['mean_average_precision'] == 0.0
  assert mm.planet_f2(truth, truth, zero_division=1.0) == 1.0
  with pytest.raises(ValueError, match=r'scores \(3, 3\) and labels \(3, 2\) differ in shape'):
    mm.average_precision(truth, np.zeros((3, 3)))
  with pytest.raises(ValueError, match='differ in shape'):
    mm.subset_accuracy(truth, np.zeros((3, 3), int))
  with pytest.raises(ValueError, match='differ in shape'):
    mm.hamming_loss(truth, np.zeros((2, 2), int))


@pytest.mark.parametrize('metric', ['f1', 'macro_f1'])
def test_every_candidate_thresholds_score_is_scikit_learns(metric):
  """Each (threshold, score) pair of the search, including labels with no positive (every F of a class that is
  neither true nor predicted is 0)."""
  p1 = np.array([0.1, 0.35, 0.35, 0.6, 0.62, 0.9, 0.05])
  average = 'binary' if metric == 'f1' else 'macro'
  for labels in (np.array([1, 0, 1, 1, 0, 1, 1]), np.array([0, 0, 0, 0, 0, 1, 0]), np.zeros(7, int), np.ones(7, int)):
    thresholds, scores = calibration.f1_by_threshold(p1, labels, metric)
    expected = [sk(skm.f1_score, labels, (p1 >= t).astype(int), labels=[0, 1], average=average, zero_division=0)
                for t in thresholds]
    np.testing.assert_allclose(scores.astype(np.float64), expected, rtol=0, atol=EXACT)


def test_threshold_ties_go_to_the_one_nearest_one_half_and_thresholds_stay_in_0_1():
  # F1 ties at 0.08 and 0.375: the second is nearer 0.5; at 0.33 and 0.67 the first is
  threshold, _ = calibration.tune_threshold(np.array([0.32, 0.43, 0.08, 0.16, 0.65, 0.63]),
                                            np.array([0, 1, 1, 0, 0, 1]), 'f1')
  assert threshold == pytest.approx(0.375)
  threshold, _ = calibration.tune_threshold(np.array([0.27, 0.29, 0.39, 0.9, 0.37, 0.44]),
                                            np.array([0, 0, 0, 1, 1, 0]), 'f1')
  assert threshold == pytest.approx(0.33)
  assert calibration.tune_threshold(np.array([0.0, 0.2, 0.4]), np.array([1, 1, 0]), 'f1')[0] == 0.0
  assert calibration.tune_threshold(np.array([1.0, 0.8, 0.7, 0.1]), np.array([0, 0, 0, 1]), 'macro_f1')[0] == 1.0
  assert calibration.decide(np.array([[0.6, 0.4], [0.61, 0.39]]), 0.4).tolist() == [1, 0]   # at the threshold: 1


def test_per_label_threshold_edges():
  y = np.array([[0, 1], [0, 0], [0, 1]])
  p = np.array([[0.2, 0.9], [0.3, 0.2], [0.1, 0.7]])
  fit = mm.fit_thresholds(y, p, beta=2.0)   # the first label has no positive: the second is still fitted
  assert fit.thresholds.tolist() == [0.5, pytest.approx(0.45)] and fit.beta == 2.0 and np.isnan(fit.scores[0])
  with pytest.raises(ValueError, match=r'^probabilities \(3, 3\) and labels \(3, 2\) differ in shape$'):
    mm.fit_thresholds(y, np.zeros((3, 3)))
  with pytest.raises(ValueError, match=r'^probabilities must lie in \[0, 1\]$'):
    mm.fit_thresholds(y, p + 0.5)
  with pytest.raises(ValueError, match=r"^average='weighted': choose one of \(None, 'micro', 'macro', 'samples'\)$"):
    mm.precision_recall_fbeta_support(y, y, average='weighted')
  assert mm.predict(p, [0.5, 0.5]).dtype == np.uint8
  assert mm.precision_recall_fbeta_support(y, y)[3].dtype == np.int64
  pred = np.array([[1, 1], [0, 0], [0, 0]])
  assert mm.f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average='macro', zero_division=0))
  assert mm.fbeta(y, pred, 2.0) == pytest.approx(skm.fbeta_score(y, pred, beta=2.0, average='macro', zero_division=0))


def test_a_label_without_positive_is_named_in_the_warning(caplog):
  with caplog.at_level('WARNING'):
    mm.fit_thresholds(np.array([[1, 0], [0, 0]]), np.array([[0.6, 0.2], [0.1, 0.3]]))
  assert "label '1' has no positive image among the 2 to fit its threshold on: it keeps 0.5" in caplog.text


# --- what mutmut found unchecked (issue 47 part 2): the report's words, the figure's style, the edges ----------


def test_one_multilabel_split_is_cut_with_seed_0_unless_told():
  from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
  _, labels, _ = multilabel_groups()
  expected = np.zeros(len(labels), int)
  for g, (_, held) in enumerate(MultilabelStratifiedKFold(5, shuffle=True, random_state=0).split(
      np.zeros(len(labels)), labels)):
    expected[held] = g
  np.testing.assert_array_equal(multilabel_calibration.crossfit_groups(labels, None), expected)


def test_a_multilabel_calibration_names_a_label_without_positive_in_its_warning(caplog):
  probs, labels, groups = multilabel_groups()
  labels[:, 1] = 0
  with caplog.at_level('WARNING'):
    result = multilabel_calibration.calibrate_thresholds(probs, labels, NAMES, groups)
  assert "label 'apple' has no positive image among the 27 to fit its threshold on: it keeps 0.5" in [
      record.getMessage() for record in caplog.records]
  assert result['thresholds']['apple'] == 0.5


def test_the_multilabel_calibration_section_reads_word_for_word():
  result = dict(beta=2.0, fitted_on='out-of-fold predictions', crossfit_groups=3, macro_f1_at_half=0.5,
                macro_f1_tuned=0.625, per_label={'zebra': dict(positives=4, threshold=0.35, f_at_half=0.5, f_tuned=0.75),
                                                 'apple': dict(positives=2, threshold=0.6, f_at_half=0.25, f_tuned=0.5)})
  assert multilabel_calibration.calibration_section(result) == '\n'.join([
      '## Calibration (per-label thresholds)',
      '',
      'Fitted on the out-of-fold predictions: each label\'s threshold maximises its F2. The "tuned" figures are '
      'cross-fitted over 3 groups (each decided with thresholds fitted on the others).',
      '',
      'Macro F1: 0.5000 at 0.5, 0.6250 tuned.',
      '',
      '| label | positives | threshold | F2 at 0.5 | F2 tuned |',
      '|---|---|---|---|---|',
      '| zebra | 4 | 0.350 | 0.5000 | 0.7500 |',
      '| apple | 2 | 0.600 | 0.2500 | 0.5000 |',
      '',
      "The thresholds are stored in each model's metadata.json and applied by predict, serve, submit and export "
      '(switch off with `--config.<mode>.calibrated=False`). Files: [calibration.json](calibration.json), '
      '[calibration_predictions.csv](calibration_predictions.csv).'])


def test_a_sweep_mixing_tasks_names_an_old_variant_single_label():
  with pytest.raises(UserInputError) as error:
    sweep_report.task_of([{'name': 'old'}, sweep_experiments(multilabel=True)[1]])
  assert str(error.value) == ('config.sweep.variants mix single-label and multi-label variants (old: single_label, '
                              'wide: multilabel); compare them in separate sweeps')


def test_the_summary_keeps_a_two_class_threshold():
  experiments = sweep_experiments()
  experiments[1]['calibration']['threshold'] = 0.35
  assert sweep_report.summarise(experiments)['threshold'].tolist()[1] == 0.35


@pytest.mark.parametrize('multilabel, ratio', [(False, 0.25), (True, 0.0)])
def test_the_sweep_section_reads_word_for_word(multilabel, ratio):
  experiments, summary, differences = sweep_section_inputs(multilabel, ratio)
  names = sweep_report.metrics_of(experiments)
  if multilabel:
    cells = ' (multi-label: mAP, and macro F1 deciding each label at 0.5). '
    intervals = ('There is one fixed validation split, so the intervals (t-intervals over the runs) cover '
                 'seed-to-seed variation only, not the choice of validation images.')
    calibration_note = ("Each variant's fold models get one threshold per label, fitted on their out-of-fold "
                        'predictions; the macro F1 beside them is at 0.5 and at those thresholds (cross-fitted; see '
                        '`<variant>/report.md`).')
  else:
    cells = '. '
    intervals = ('Intervals are the corrected resampled t-interval (Nadeau & Bengio): mean ± t·sqrt((1/J + '
                 'n_val/n_train)·s²) over the J runs, with n_val/n_train = 0.250, which widens the naive interval '
                 'because folds share training data.')
    calibration_note = ("ECE is the expected calibration error of each variant's fold models on their out-of-fold "
                        'predictions, before and after temperature scaling (cross-fitted; see `<variant>/report.md`).')

  def expected(differences_text):
    return '\n'.join([
        '## Sweep', '',
        '2 variants × 2 splits (2 folds) × 2 seeds [0, 1] = 8 models, 12 s wall for this launch (variants reused '
        'from an earlier launch are not counted). Model axis: `loop`, 2 members a chunk.', '',
        "Each cell is mean ± std [95% CI] over the runs of a variant, on each run's validation split at its "
        'selected checkpoint' + cells + intervals, '',
        sweep_report.results_table(summary, names), '',
        '### Paired differences from `base`', '',
        'Per run (same split, same seed), the variant minus the baseline; * marks an interval that excludes 0.', '',
        differences_text, '',
        '![sweep results](sweep_results.png)', '',
        calibration_note + " Each split's best seed is checkpointed as `<variant>/fold<k>/`; submit their average "
        "with `--mode submit --workdir <sweep>/<variant> --config.submit.average_folds=True` and the variant's "
        'config.', '',
        'Files: [sweep_results.csv](sweep_results.csv), [sweep_differences.csv](sweep_differences.csv), '
        '[sweep_models.csv](sweep_models.csv), [sweep_results.md](sweep_results.md).'])

  text = sweep_report.sweep_section(None, experiments, summary, differences, 'base', 12.4)
  assert text == expected(sweep_report.differences_table(differences, names))
  alone = sweep_report.sweep_section(None, experiments, summary, differences[:0], 'base', 12.4)
  assert alone == expected('(only one variant)')


def test_the_sweep_figure_has_its_layout_colours_and_jitter():
  """The figure's own choices: size from the counts, shared x axis, bar and dot style, a y grid, the tick
  rotation past six variants, the title; the dots' jitter is default_rng(0)'s, drawn in order."""
  from matplotlib.colors import to_rgba
  from matplotlib.layout_engine import ConstrainedLayoutEngine

  def figure(count):
    experiments = []
    for k in range(count):
      e = sweep_experiments()[k % 2]
      experiments.append(dict(e, name=f'v{k}'))
    summary = sweep_report.summarise(experiments)
    models = pd.DataFrame([dict(r, experiment=e['name']) for e in experiments for r in e['rows']])
    return sweep_report.plot_results(summary, models), models

  fig, models = figure(2)
  assert tuple(fig.get_size_inches()) == pytest.approx((6.0, 2.8 * 3 + 0.1))
  assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
  assert fig._suptitle.get_text() == 'validation metrics per variant: bars are means with 95% CI, dots are single models'
  assert fig._suptitle.get_fontsize() == 9
  axes = fig.axes
  assert all(axes[0].get_shared_x_axes().joined(axes[0], ax) for ax in axes[1:])
  rng = np.random.default_rng(0)
  for ax, metric in zip(axes, sweep_report.METRICS):
    assert [bar.get_facecolor() for bar in ax.patches] == [to_rgba('#9ecae1')] * 2
    assert [bar.get_edgecolor() for bar in ax.patches] == [to_rgba('#3182bd')] * 2
    assert ax.get_legend_handles_labels()[1] == ['mean, 95% CI']
    (bars,) = [c for c in ax.containers if hasattr(c, 'has_yerr')]
    assert bars.lines[1][0].get_markersize() == 2 * 4   # a cap is twice capsize wide
    dots = [line for line in ax.lines if line.get_marker() == '.' and line.get_linestyle() == 'None']
    for i, line in enumerate(dots):
      values = models.loc[models['experiment'] == f'v{i}', metric].to_numpy(float)
      np.testing.assert_array_equal(line.get_xdata(), i + rng.uniform(-0.2, 0.2, len(values)))
      assert (line.get_color(), line.get_markersize(), line.get_alpha()) == ('#08306b', 3, 0.7)
    assert not any(g.get_visible() for g in ax.get_xgridlines())
    assert all(g.get_visible() and g.get_alpha() == 0.3 for g in ax.get_ygridlines())
  assert [t.get_rotation() for t in axes[-1].get_xticklabels()] == [0.0] * 2
  assert figure(6)[0].axes[-1].get_xticklabels()[0].get_rotation() == 0.0
  seven = figure(7)[0]
  assert seven.axes[-1].get_xticklabels()[0].get_rotation() == 45.0 and seven.get_size_inches()[0] == 6.0
  assert figure(8)[0].get_size_inches()[0] == pytest.approx(1.0 + 0.7 * 8)


def test_per_label_threshold_ties_go_to_the_one_nearest_one_half_not_the_first():
  """Taking the top image alone (threshold 0.875) and taking all four (0.225) both score F1 2/3: the threshold
  nearer 0.5 is kept, though the search meets the other first."""
  y, p = np.array([[1], [0], [0], [1]]), np.array([[0.95], [0.8], [0.7], [0.45]])
  cuts, scores = mm.fbeta_by_threshold(y[:, 0], p[:, 0])
  assert cuts.tolist() == pytest.approx([0.875, 0.75, 0.575, 0.225]) and scores[0] == scores[3] == pytest.approx(2 / 3)
  fitted = mm.fit_thresholds(y, p)
  assert fitted.thresholds.tolist() == pytest.approx([0.225]) and fitted.scores.tolist() == pytest.approx([2 / 3])


def test_the_temperature_is_the_log_loss_minimiser_to_a_millionth_in_log_t():
  """The search on log T stops within 1e-6 of the minimiser of the NLL written out here (a search to 1e-12)."""
  rng = np.random.default_rng(3)
  z, y = rng.normal(0, 3, (40, 3)), rng.integers(0, 3, 40)

  def nll(log_t):
    return np.mean(special.logsumexp(z / np.exp(log_t), axis=1) - z[np.arange(40), y] / np.exp(log_t))
  lo, hi = np.log(calibration.TEMPERATURE_RANGE)
  exact = optimize.minimize_scalar(nll, bounds=(lo, hi), method='bounded', options=dict(xatol=1e-12)).x
  assert abs(np.log(calibration.fit_temperature(z, y, 'softmax')) - exact) < 5e-7


@pytest.mark.parametrize('metric', ['macro_f1', 'f1'])
def test_a_groups_threshold_is_tuned_on_the_others_at_their_own_temperature(metric):
  """Noisy logits, three groups: each group's threshold is tuned on the other groups' probabilities at the
  temperature fitted on them, the scale the group is decided at; tuned at temperature 1, the same search cuts
  three images the other way."""
  rng = np.random.default_rng(10)
  z = rng.normal(0, 3, 24)
  labels = (z + rng.normal(0, 2, 24) > 0).astype(int)
  logits, groups = np.stack([np.zeros(24), z], 1), np.arange(24) % 3
  summary, _ = calibration.calibrate_predictions(logits, labels, 'softmax', groups, bins=10, threshold_metric=metric)
  before = special.softmax(logits, axis=1)
  assert summary['ece_before'] == pytest.approx(calibration.expected_calibration_error(before, labels, 10), abs=EXACT)
  assert summary['ece_before'] != pytest.approx(calibration.expected_calibration_error(before, labels, 15), abs=0.05)
  right, unscaled = np.zeros(24, int), np.zeros(24, int)
  for g in range(3):
    held, rest = groups == g, groups != g
    t = calibration.fit_temperature(logits[rest], labels[rest], 'softmax')
    p1 = special.softmax(logits[held] / t, axis=1)[:, 1]
    right[held] = p1 >= best_threshold(special.softmax(logits[rest] / t, axis=1)[:, 1], labels[rest], metric)
    unscaled[held] = p1 >= best_threshold(special.softmax(logits[rest], axis=1)[:, 1], labels[rest], metric)
  average = 'binary' if metric == 'f1' else 'macro'
  assert summary['f1_tuned'] == pytest.approx(skm.f1_score(labels, right, average=average), abs=EXACT)
  assert (right != unscaled).sum() == 3
  argmax = (z > 0).astype(int)
  assert summary['f1_argmax'] == pytest.approx(skm.f1_score(labels, argmax, average=average), abs=EXACT)
  assert skm.f1_score(labels, argmax, average='binary') != pytest.approx(skm.f1_score(labels, argmax, average='macro'))
  assert skm.f1_score(labels, unscaled, average=average) != pytest.approx(summary['f1_tuned'], abs=0.05)


def test_multilabel_scores_decide_at_one_half_unless_told():
  assert mm.scores(ML_TRUTH, ML_PROBS, ML_NAMES) == mm.scores(ML_TRUTH, ML_PROBS, ML_NAMES, np.full(4, 0.5))
  assert mm.scores(ML_TRUTH, ML_PROBS, ML_NAMES)['per_label']['zebra']['threshold'] == 0.5


def test_an_undefined_precision_or_f1_is_0_without_scikit_learns_warning():
  """A class never predicted and never true: its precision, recall and F1 are 0 by fpclass's convention, set
  explicitly, so scikit-learn does not warn about them in every report."""
  from sklearn.exceptions import UndefinedMetricWarning
  labels, pred = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
  probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]])
  with warnings.catch_warnings():
    warnings.simplefilter('error', UndefinedMetricWarning)
    out = metrics.scores(labels, probs, ('a', 'b', 'c'))
    assert out['per_class']['c'] == dict(precision=0.0, recall=0.0, f1=0.0, support=0)
    assert out['macro_f1'] == pytest.approx((skm.f1_score(labels, pred, average=None).sum() + 0.0) / 3, abs=EXACT)
    assert '           c     0.0000    0.0000    0.0000         0' in metrics.classification_report(
        labels, pred, ('a', 'b', 'c'))
    none = np.zeros(4, int)
    assert calibration.decision_score(none, none, 'f1') == 0.0


def test_an_interval_of_float32_values_is_computed_in_float64():
  values = np.float32([0.71, 0.73, 0.69, 0.74, 0.72, 0.70])
  for given in (values, list(values)):
    ci = stats.corrected_interval(given, 0.25)
    assert (ci.mean, ci.std, ci.low, ci.high) == pytest.approx(corrected(values.astype(np.float64), 0.25), abs=EXACT)


def test_the_calibration_defaults_seed_0_15_bins_temperature_1_and_macro_f1():
  labels = np.array([0, 1, 1] * 10)
  expected = np.zeros(30, int)
  for g, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(labels, labels)):
    expected[test] = g
  np.testing.assert_array_equal(calibration.crossfit_groups(labels, None), expected)
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 2, (30, 2))
  probs = special.softmax(logits, axis=1)
  assert calibration.expected_calibration_error(probs, labels) == calibration.expected_calibration_error(
      probs, labels, 15) != calibration.expected_calibration_error(probs, labels, 16)
  assert calibration.negative_log_likelihood(logits, labels, 'softmax') == pytest.approx(
      skm.log_loss(labels, probs), abs=1e-12)
  assert calibration.tune_threshold(probs[:, 1], labels) == calibration.tune_threshold(probs[:, 1], labels, 'macro_f1')


def test_float32_logits_are_scaled_in_float64():
  logits = np.float32([[0.1, 2.3, -1.7], [3.1, 0.2, 0.9]])
  probs = calibration.scaled_probabilities(logits, 'softmax', 1.7)
  assert probs.dtype == np.float64
  np.testing.assert_allclose(probs, special.softmax(logits.astype(np.float64) / 1.7, axis=1), rtol=0, atol=1e-16)


def test_a_zero_confidence_falls_in_the_first_bin_and_an_empty_bin_is_nan_without_a_warning():
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)
    count, confidence, accuracy = calibration.reliability_bins(np.array([[0.0, 0.0], [0.2, 0.8]]), np.array([0, 1]), 3)
  assert count.tolist() == [1, 0, 1] and accuracy[[0, 2]].tolist() == [1.0, 1.0]
  assert confidence[[0, 2]].tolist() == pytest.approx([0.0, 0.8]) and np.isnan(confidence[1]) and np.isnan(accuracy[1])


def test_float32_probabilities_give_thresholds_midway_in_float64():
  """JAX gives float32 probabilities: the cuts are the float64 midpoints of their values."""
  y = np.array([1, 0, 1, 1, 0, 0])
  p = np.float32([0.91, 0.37, 0.52, 0.7, 0.13, 0.61])
  wide = p.astype(np.float64)
  cuts, _ = mm.fbeta_by_threshold(y, p)
  values = np.sort(wide)[::-1]
  np.testing.assert_array_equal(cuts, (values + np.append(values[1:], 0.0)) / 2)
  assert cuts.dtype == np.float64
  fitted = mm.fit_thresholds(y[:, None], p[:, None])
  assert fitted.thresholds[0] == (wide[2] + wide[1]) / 2   # taking 0.91, 0.7, 0.61 and 0.52: F1 6/7


def test_the_f_betas_count_an_undefined_label_as_0_unless_told_and_an_empty_mean_is_nan_without_a_warning():
  y, pred = np.array([[1, 0], [0, 0]]), np.array([[1, 0], [1, 0]])
  assert mm.fbeta(y, pred, 2.0) == pytest.approx(
      sk(skm.fbeta_score, y, pred, beta=2.0, average='macro', zero_division=0), abs=EXACT)
  assert mm.fbeta(y, pred, 2.0) == pytest.approx((5 / 6 + 0) / 2)
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)
    assert np.isnan(mm.f1(np.zeros((2, 2), int), np.zeros((2, 2), int), 'macro', np.nan))


def test_a_two_class_decision_is_an_integer_class():
  probs = np.array([[0.7, 0.3], [0.4, 0.6]])
  decided = calibration.decide(probs, 0.5)
  assert decided.tolist() == [0, 1] and decided.dtype.kind == 'i'


def test_the_threshold_search_on_one_class_labels_warns_of_nothing():
  """No positive: above the highest probability nothing is predicted and the positive F1 is 0/0, set to 0."""
  with warnings.catch_warnings():
    warnings.simplefilter('error', RuntimeWarning)
    _, scores = calibration.f1_by_threshold(np.array([0.2, 0.6]), np.array([0, 0]), 'f1')
  assert scores.tolist() == [0.0, 0.0, 0.0]


def test_scores_json_holds_every_other_registered_single_label_metric(monkeypatch):
  extra = metric_registry.Metric('mean_p1', 'mean p1', True, {metric_registry.SINGLE: lambda y, p: float(p[:, 1].mean())})
  monkeypatch.setitem(metric_registry.REGISTRY, 'mean_p1', extra)
  probs = np.array([[0.7, 0.3], [0.4, 0.6]])
  assert metrics.scores(np.array([0, 1]), probs, ('a', 'b'))['mean_p1'] == pytest.approx(0.45)


def test_the_paired_per_image_interval_from_its_definition():
  a, b = np.array([1, 1, 0, 1, 0, 1.0]), np.array([1, 0, 0, 1, 1, 0.0])
  got = stats.paired_difference(a, b)
  d = a - b
  half = 2.5705818366147395 * d.std(ddof=1) / np.sqrt(6)   # t(0.975, 5)
  assert got['mean'] == pytest.approx(d.mean()) and got['high'] - got['mean'] == pytest.approx(half)
