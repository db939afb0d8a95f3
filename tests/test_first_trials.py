"""The search's first trials (`fpclass.auto.first_trials`): the config as given, its one-knob neighbours in
priority order, and the neighbours that beat it, combined. No training: the study's values are set by hand."""
import ast
import math
from types import SimpleNamespace

import optuna
import pytest

from fpclass.auto import first_trials, portfolio, report, search
from fpclass.auto import study as study_lib
from fpclass.auto.first_trials import BASELINE, NEIGHBOUR, combination, neighbour_values, neighbours
from fpclass.auto.space import Candidate, Dimension, baseline_params, default_space, parse_space, sample
from fpclass.modes.command_line import config_from_argv
from fpclass.train.plan import Variant

QUICK = ['launch.py', '--config=configs/footprint.py:quick']
OWN = Candidate('footprint_cnn', {})


def _dim(entry: str) -> Dimension:
  key, _, rest = entry.partition(':')
  kind, _, args = rest.strip().partition('(')
  return Dimension(key.strip(), kind, ast.literal_eval(f'({args[:-1].rstrip(",")},)'), entry)


@pytest.mark.parametrize('entry, value, expected', [
    ('train.learning_rate: factor(0.2, 10.0)', 1.0, [('x3', 3.0), ('/3', 1 / 3)]),
    ('train.learning_rate: factor(0.2, 10.0)', 5.0, [('x3', 10.0), ('/3', 5 / 3)]),      # x3 clamped to the end
    ('train.learning_rate: factor(1.0, 10.0)', 1.0, [('x3', 3.0)]),                        # /3 clamped onto itself
    ('train.weight_decay: log(1e-5, 1e-2)', 1e-4, [('x3', 3e-4), ('/3', 1e-4 / 3)]),
    ('augment.rotation: float(0.0, 15.0)', 0.0, [('10', 10.0)]),                           # off: two thirds up
    ('augment.rotation: float(0.0, 15.0)', 12.0, [('0', 0.0)]),                            # on: off
    ('model.dropout: float(0.0, 0.5)', 0.2, [('0.333333', 1 / 3)]),                        # in the lower half
    ('train.epochs: int(2, 11)', 2, [('8', 8)]),
    ('train.epochs: int(2, 11)', 8, [('2', 2)]),
    ("augment.policy: choice('', 'trivialaugment')", "''", [("'trivialaugment'", "'trivialaugment'")]),
    ("augment.policy: choice('', 'trivialaugment')", "'trivialaugment'", [("''", "''")]),
    ('model.batch_norm: choice(False, True)', 'False', [('True', 'True')]),
    ('model.batch_norm: choice(False,)', 'False', []),
])
def test_a_neighbour_moves_a_value_to_its_usual_other_value(entry, value, expected):
  got = neighbour_values(_dim(entry), value)
  assert [label for label, _ in got] == [label for label, _ in expected]
  for (_, v), (_, w) in zip(got, expected):
    assert v == w if isinstance(w, str) else math.isclose(v, w, rel_tol=1e-12)


def test_the_default_space_s_neighbours_each_move_one_knob_in_priority_order_and_train_the_change():
  config = config_from_argv([*QUICK, '--config.augment.rotation=0.0', '--config.train.label_smoothing=0.0'])
  dims = parse_space(default_space(Variant('base', {}, config), [OWN], flips=False), config, [OWN])
  baseline = baseline_params(dims, config, [OWN])
  found = neighbours(dims, baseline, {OWN.name: baseline})
  labels = [label for label, _ in found]
  assert labels[:4] == ['train.learning_rate x3', 'train.learning_rate /3', 'augment.rotation 10',
                        'train.label_smoothing 0.1']
  keys = [label.split()[0] for label in labels]
  ranks = [first_trials.PRIORITY.index(k) for k in keys if k in first_trials.PRIORITY]
  assert ranks == sorted(ranks) and len(ranks) == len(keys)
  for label, params in found:
    moved = [k for k in params if params[k] != baseline[k]]
    assert len(moved) == 1 and set(params) == set(baseline), label
  # A trial asked with a neighbour's parameters trains the config with that one change.
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  study.enqueue_trial(found[0][1])
  name, changes = sample(study.ask(), dims, config, [OWN])
  lr = config.train.learning_rate
  assert name == 'footprint_cnn' and math.isclose(changes.pop('train.learning_rate'), 3 * lr, rel_tol=1e-9)
  study.enqueue_trial(baseline)
  _, given = sample(study.ask(), dims, config, [OWN])
  assert {k: v for k, v in given.items() if k != 'train.learning_rate'} == changes


def test_a_model_with_a_training_batch_norm_gets_recomputed_statistics_as_its_third_neighbour():
  """Where the model trains a batch norm, the default space searches its statistics (running averages or
  recomputed, fpclass.train.precise_bn) right after the learning rate; where it has none, the knob is absent."""
  config = config_from_argv([*QUICK, '--config.model.batch_norm=True'])
  entries = default_space(Variant('base', {}, config), [OWN], flips=False)
  assert "train.bn_statistics: choice('running', 'precise')" in entries
  dims = parse_space(entries, config, [OWN])
  baseline = baseline_params(dims, config, [OWN])
  labels = [label for label, _ in neighbours(dims, baseline, {OWN.name: baseline})]
  assert labels[:3] == ['train.learning_rate x3', 'train.learning_rate /3', "train.bn_statistics 'precise'"]
  plain = config_from_argv([*QUICK, '--config.model.batch_norm=False'])
  assert not [e for e in default_space(Variant('base', {}, plain), [OWN], flips=False) if e.startswith('train.bn_statistics')]


def test_a_backbone_neighbour_is_the_candidate_as_its_config_gives_it_at_its_learning_rate_centre():
  config = config_from_argv(QUICK)
  resnet = Candidate('resnet18', {'model.name': 'resnet18', 'model.pretrained': 'imagenet'})
  entries = ['model.name: backbones', "train.learning_rate: factor(0.2, 10.0, {'resnet18': 0.0001})",
             'train.label_smoothing: float(0.0, 0.15)']
  dims = parse_space(entries, config, [OWN, resnet])
  found = dict(neighbours(dims, baseline_params(dims, config, [OWN, resnet]),
                          {c.name: baseline_params(dims, config, [OWN, resnet], target=c) for c in (OWN, resnet)}))
  assert list(found)[:3] == ['train.learning_rate x3', 'train.learning_rate /3', 'model.name=resnet18']
  assert found['model.name=resnet18'] == {'model.name': 'resnet18', 'train.learning_rate/centre': 1.0,
                                         'train.label_smoothing': float(config.train.label_smoothing)}


def _trial(study, params: dict, attrs: dict, value: float, distributions: dict):
  study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, user_attrs=attrs,
                                            intermediate_values={0: value}, state=optuna.trial.TrialState.PRUNED))
  return study.trials[-1]


@pytest.mark.parametrize('higher', [True, False])
def test_the_combination_takes_every_neighbour_that_beat_the_config_and_the_better_one_along_a_dimension(higher):
  dist = {'lr': optuna.distributions.FloatDistribution(0.1, 10, log=True),
          'rot': optuna.distributions.FloatDistribution(0, 15), 'ls': optuna.distributions.FloatDistribution(0, 0.15)}
  base = {'lr': 1.0, 'rot': 0.0, 'ls': 0.0}
  sign = 1 if higher else -1
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
  planned = [(base, {BASELINE: True}, 0.5), ({**base, 'lr': 3.0}, {NEIGHBOUR: 'lr x3'}, 0.7),
             ({**base, 'lr': 1 / 3}, {NEIGHBOUR: 'lr /3'}, 0.8), ({**base, 'rot': 10.0}, {NEIGHBOUR: 'rot'}, 0.6),
             ({**base, 'ls': 0.1}, {NEIGHBOUR: 'ls'}, 0.4), ({**base, 'rot': 12.0, 'ls': 0.05}, {}, 0.99)]
  for params, attrs, value in planned:
    _trial(study, params, attrs, sign * value, dist)
  trials = {t.number: t for t in study.trials}
  values = {n: sign * v for n, (_, _, v) in enumerate(planned)}
  # lr /3 (0.8) beats lr x3 (0.7) along the learning rate; rotation beats the config; smoothing does not; trial 5
  # (TPE's, no neighbour) is not the config's neighbour, however good.
  assert combination(trials, values, higher) == {'lr': 1 / 3, 'rot': 10.0, 'ls': 0.0}
  values[3] = sign * 0.45   # rotation now loses: one dimension alone is a trial already
  assert combination(trials, values, higher) is None
  del values[0]             # the config as given did not report at this rung
  assert combination(trials, values, higher) is None


def test_the_first_batch_is_the_portfolio_s_moves_then_the_neighbours_each_set_once_and_each_trains_its_move(
    monkeypatch):
  """The portfolio's moves come first, as trials of the default space that train exactly the move's changes
  (`fpclass.auto.portfolio.changes_for` on the config); a move no dimension carries, or one that is the config as
  given, is no trial; a neighbour equal to a move is not asked twice."""
  config = config_from_argv([*QUICK, '--config.augment.rotation=0.0', '--config.model.batch_norm=False'])
  dims = parse_space(default_space(Variant('base', {}, config), [OWN], flips=False), config, [OWN])
  baseline = baseline_params(dims, config, [OWN])
  monkeypatch.setitem(portfolio.MOVES, 'no such knob', {'model.no_such_knob': 1.0})
  monkeypatch.setitem(portfolio.MOVES, 'as given', {'augment.rotation': 0.0})
  monkeypatch.setattr(portfolio, 'PORTFOLIO', ('batch norm + rotation + shift', 'no such knob', 'as given', 'lr x3'))
  batch = first_trials.first_batch(dims, baseline, {OWN.name: baseline}, 6)
  labels = [label for label, _ in batch]
  assert labels[:3] == ['portfolio: batch norm + rotation + shift', 'portfolio: lr x3', 'train.learning_rate /3']
  assert len(batch) == 6 and 'train.learning_rate x3' not in labels     # the same parameters as 'lr x3'
  assert all(batch[i][1] != batch[j][1] for i in range(6) for j in range(i)) and baseline not in [p for _, p in batch]
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  for move, (_, params) in zip(('batch norm + rotation + shift', 'lr x3'), batch):
    study.enqueue_trial(baseline)
    _, given = sample(study.ask(), dims, config, [OWN])
    study.enqueue_trial(params)
    _, changes = sample(study.ask(), dims, config, [OWN])
    moved = {k: v for k, v in changes.items() if not (v == given.get(k) or (
        isinstance(v, float) and math.isclose(v, given[k], rel_tol=1e-9)))}
    expected = portfolio.changes_for(move, config)
    assert moved.keys() == expected.keys(), move
    for key, value in expected.items():
      assert moved[key] == value or math.isclose(moved[key], value, rel_tol=1e-3), (move, key)


def test_a_move_already_in_the_config_changes_nothing():
  config = config_from_argv([*QUICK, '--config.model.batch_norm=True', '--config.augment.rotation=10.0',
                             '--config.augment.translate=0.1'])
  assert portfolio.changes_for('batch norm + rotation + shift', config) == {}
  assert portfolio.changes_for('lr x3', config) == {'train.learning_rate': pytest.approx(3 * config.train.learning_rate)}


def test_a_move_on_a_key_the_config_does_not_have_changes_nothing():
  config = config_from_argv(['launch.py', '--config=configs/cats_dogs.py'])   # a model without a batch-norm switch
  assert 'batch_norm' not in config.model
  assert portfolio.changes_for('batch norm', config) == {}
  assert portfolio.changes_for('batch norm + lr x3', config) == {
      'train.learning_rate': pytest.approx(3 * config.train.learning_rate, rel=1e-3)}


def test_unlabelled_images_make_training_on_them_a_dimension_tried_early(tmp_path):
  """With config.data.unlabelled, the default space chooses whether to train on them (FixMatch as the config gives
  it first) and with which thresholds, and leaving them out, then the other thresholds, are neighbours right after
  the learning rate; without them, no such knob."""
  config = config_from_argv([*QUICK, f'--config.data.unlabelled={tmp_path}', '--config.augment.rotation=0.0'])
  entries = default_space(Variant('base', {}, config), [OWN], flips=False)
  assert "semi.method: choice('fixmatch', 'none')" in entries
  assert "semi.thresholds: choice('fixed', 'adaptive')" in entries   # FreeMatch's bar for a small set's pool
  dims = parse_space(entries, config, [OWN])
  baseline = baseline_params(dims, config, [OWN])
  labels = [label for label, _ in neighbours(dims, baseline, {OWN.name: baseline})]
  assert labels[:4] == ['train.learning_rate x3', 'train.learning_rate /3', "semi.method 'none'",
                        "semi.thresholds 'adaptive'"]
  adaptive = config_from_argv([*QUICK, f'--config.data.unlabelled={tmp_path}', '--config.semi.thresholds=adaptive'])
  assert "semi.thresholds: choice('adaptive', 'fixed')" in default_space(Variant('base', {}, adaptive), [OWN],
                                                                          flips=False)
  plain = config_from_argv(QUICK)
  assert not [e for e in default_space(Variant('base', {}, plain), [OWN], flips=False) if e.startswith('semi.')]


def test_the_report_says_whether_the_choice_trains_on_the_unlabelled_images_and_the_best_trial_each_way():
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  for method, value in (('fixmatch', 0.91), ('none', 0.93), ('fixmatch', 0.95), ('none', 0.90)):
    study.enqueue_trial({'semi.method': repr(method)})   # as the search holds them: parameters and changes as reprs
    trial = study.ask({'semi.method': optuna.distributions.CategoricalDistribution(["'fixmatch'", "'none'"])})
    trial.set_user_attr(study_lib.CHANGES, {'semi.method': repr(method)})
    study.tell(trial, value)
  run = SimpleNamespace(chosen=dict(config=dict(data=dict(unlabelled='pool/'), semi=dict(method='fixmatch'))))
  lines = report._unlabelled_lines(run, study)
  assert lines[0].startswith('Unlabelled images (`config.data.unlabelled=pool/`): the choice trains on them '
                             '(`semi.method=fixmatch`). The best trial with them (fixmatch): 0.9500; without them '
                             '(none): 0.9300, each at its own last rung (not like for like). A pool pays off late')
  assert report._unlabelled_lines(SimpleNamespace(chosen=dict(config=dict(data={}, semi={}))), study) == []


def test_the_first_bracket_prices_the_moves_that_share_the_config_s_programs_as_set_up_without_compiling():
  """The config as given and the first batch's moves of what the train programs take as arguments (the learning
  rate, smoothing) share the programs the set-up measurement compiled; batch norm, dropout off and an op switched
  on compile their own (`fpclass.train.cohort.program_settings`, the key the cohort shares programs by). The first
  bracket's bottom rung counts those (`Rung.warm`); a study with trials prices every draw as compiling."""
  config = config_from_argv([*QUICK, '--config.augment.rotation=0.0', '--config.train.label_smoothing=0.0'])
  dims = parse_space(default_space(Variant('base', {}, config), [OWN], flips=False), config, [OWN])
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  ctx = SimpleNamespace(study=study, dims=dims, base=config, candidates=[OWN])
  warm = search._warm_start(ctx)
  _, moves = search._first_batch(ctx, len(warm))
  shares = dict(zip(['as given', *(label for label, _ in moves)], warm))
  assert list(shares)[:5] == ['as given', 'portfolio: batch norm', 'portfolio: lr x3',
                              'portfolio: label smoothing 0.1', 'portfolio: no dropout']
  assert {k: shares[k] for k in list(shares)[:5]} == {
      'as given': True, 'portfolio: batch norm': False, 'portfolio: lr x3': True,
      'portfolio: label smoothing 0.1': True, 'portfolio: no dropout': False}
  assert shares['train.learning_rate /3'] is True and shares['augment.rotation 10'] is False
  study.enqueue_trial(baseline_params(dims, config, [OWN]))
  study.tell(study.ask(), 0.5)
  assert search._warm_start(ctx) == ()
