"""The choices `--mode auto` makes from its study, without training: the finalists are the best trials in the
metric's direction, the confirmation's reserve grows with the folds it confirms on, and the first trial keeps the
config's own value where it sits at either end of a range. Each was planted as a bug once (tests/MUTATIONS.md).
And the brackets' bookkeeping (fpclass/auto/search.py) on rounds with planned values, a budget clock set by hand:
which trials each rung keeps, what the study is told, the folds a trial trains, a relaunch's resumed bracket."""
import ast
import dataclasses
import json
import math
import types

import optuna
import pytest

from fpclass.auto import brackets, confirm, first_trials, measure, portfolio, ranking
from fpclass.auto import budget as budget_lib
from fpclass.auto import report as auto_report
from fpclass.auto import search as auto
from fpclass.auto import study as study_lib
from fpclass.auto.budget import Budget
from fpclass.auto.context import Context
from fpclass.auto.population import Outcome, fidelity
from fpclass.auto.rungs import Costs, Rung
from fpclass.auto.schedulers.successive_halving import SuccessiveHalving
from fpclass.auto.space import Candidate, Dimension, baseline_params, parse_space, sample
from fpclass.config.search import AutoSettings
from fpclass.config.training import TrainSettings
from fpclass.modes.command_line import config_from_argv

QUICK = ['launch.py', '--config=configs/footprint.py:quick']


def _context(tmp_path, config, *, higher: bool, folds: int = 5, seconds: float = 10_000.0, study=None,
             **auto) -> Context:
  settings = AutoSettings(**auto)
  return Context(base=config, settings=settings, metric='accuracy' if higher else 'loss', higher=higher,
                 folds=folds, epochs=4, own_split=False, dims=[], candidates=[], study=study,
                 budget=Budget(seconds, tmp_path), workdir=tmp_path, shared=None, train_round=None,
                 scheduler=SuccessiveHalving(settings))


def _study(values: dict[int, tuple[int, float]]):
  """A study of trials numbered as given, each (highest rung, value there) with its own learning rate."""
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
  for number, (rung, value) in sorted(values.items()):
    trial = study.ask()
    assert trial.number == number
    trial.set_user_attr(study_lib.CHANGES, {'train.learning_rate': repr(0.001 * (number + 1))})
    trial.set_user_attr(study_lib.FOLDER, f'trial-{number:04d}')
    for level in range(rung + 1):
      trial.report(value, level)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
  return study


@pytest.mark.parametrize('higher', [True, False])
def test_the_finalists_are_the_best_trials_of_the_highest_rung_in_the_metric_s_direction(tmp_path, higher):
  # Trials 1-3 reached rung 1; trial 0 (the config as given is another learning rate) and 4 stopped at rung 0
  # with the best and worst values of all: a rung reached outranks any value below it.
  study = _study({0: (0, 0.99), 1: (1, 0.6), 2: (1, 0.8), 3: (1, 0.7), 4: (0, 0.1)})
  config = config_from_argv([*QUICK, '--config.train.learning_rate=0.5'])
  ctx = _context(tmp_path, config, higher=higher, study=study, finalists=2)
  numbers = [t.number for t in confirm.finalists(ctx)]
  assert numbers == ([2, 3] if higher else [1, 3])
  assert confirm.ranked_value(confirm.finalists(ctx)[0]) == (0.8 if higher else 0.6)


def test_values_are_compared_only_at_the_same_fidelity(tmp_path):
  """Rung 1 of a three-rung bracket (2 folds x 2 epochs) is not rung 1 of a two-rung one (the top: 3 folds x 4
  epochs): trial 1's 0.9 there ranks below trial 0's 0.6 at the top, though both are 'rung 1'; two trials at the
  same fidelity rank by value."""
  study = _study({0: (1, 0.6), 1: (1, 0.9), 2: (1, 0.5)})
  ctx = _context(tmp_path, config_from_argv(QUICK), higher=True, study=study)
  ctx.budget.brackets = [
      dict(index=0, trials=[0, 2], rungs=[dict(configs=2, folds=1, epochs=2), dict(configs=1, folds=3, epochs=4)]),
      dict(index=1, trials=[1], rungs=[dict(configs=9, folds=1, epochs=1), dict(configs=3, folds=2, epochs=2),
                                       dict(configs=1, folds=3, epochs=4)])]
  assert [t.number for t in ranking.ranked_trials(ctx)] == [0, 2, 1]
  assert ranking.fidelities(ctx)[1][1] == (2, 2) and ranking.fidelities(ctx)[0][1] == (3, 4)


def test_the_config_as_given_joins_the_finalists_when_it_is_not_among_them(tmp_path):
  study = _study({0: (0, 0.5), 1: (1, 0.6), 2: (1, 0.8)})
  config = config_from_argv([*QUICK, '--config.train.learning_rate=0.001'])   # trial 0's
  ctx = _context(tmp_path, config, higher=True, study=study, finalists=1)
  assert [t.number for t in confirm.finalists(ctx)] == [2, 0]


@pytest.mark.parametrize('folds', [3, 5, 10])
def test_the_confirmation_s_reserve_is_its_cost_on_the_folds_it_confirms_on(tmp_path, folds):
  """finalists + 1 configurations (the config as given) x folds x the seeds' epochs, under the share."""
  costs = Costs(setup=2.0, member=1.0, member_epoch=0.5)
  ctx = _context(tmp_path, None, higher=True, folds=5, seconds=100_000.0, finalists=2, confirm_seeds=(101, 102))
  expected = 3 * (2.0 + folds * (1.0 + 4 * 2 * 0.5))
  assert ctx.confirm_seconds(costs, 2, folds) == pytest.approx(expected)
  assert ctx.confirm_seconds(costs, 2) == pytest.approx(3 * (2.0 + 5 * 5.0))   # default: the trials' folds


def test_the_reserve_is_capped_by_the_share_and_0_when_one_configuration_exceeds_it(tmp_path):
  costs = Costs(setup=2.0, member=1.0, member_epoch=0.5)   # one configuration on 5 folds: 17 s
  ctx = _context(tmp_path, None, higher=True, folds=5, seconds=100.0, confirm_share=0.25)
  assert ctx.confirm_seconds(costs, 2) == pytest.approx(25.0)   # 3 x 17 s, capped at 25 s
  ctx = _context(tmp_path, None, higher=True, folds=5, seconds=60.0, confirm_share=0.25)
  assert ctx.confirm_seconds(costs, 2) == 0.0   # 15 s share < 17 s
  ctx = _context(tmp_path, None, higher=True, folds=5, seconds=68.0, confirm_share=0.25)
  assert ctx.confirm_seconds(costs, 2) == 17.0   # one configuration fills the share exactly: it fits
  ctx = _context(tmp_path, None, higher=True, folds=5, seconds=100.0, confirm_seeds=())
  assert ctx.confirm_seconds(costs, 2) == 0.0   # no confirmation, no reserve


@pytest.mark.parametrize('key, value, entry', [
    ('train.label_smoothing', 0.0, 'train.label_smoothing: float(0.0, 0.2)'),   # the lower end
    ('train.label_smoothing', 0.2, 'train.label_smoothing: float(0.0, 0.2)'),   # the upper end
    ('train.learning_rate', 1e-5, 'train.learning_rate: log(1e-5, 2e-3)'),
    ('train.learning_rate', 2e-3, 'train.learning_rate: log(1e-5, 2e-3)'),
])
def test_the_first_trial_keeps_the_config_s_value_at_either_end_of_a_range(key, value, entry):
  config = config_from_argv([*QUICK, f'--config.{key}={value}'])
  candidates = [Candidate('footprint_cnn', {})]
  dims = parse_space((entry,), config, candidates)
  assert baseline_params(dims, config, candidates) == {key: value}


def test_a_value_outside_the_range_is_left_to_the_sampler():
  config = config_from_argv([*QUICK, '--config.train.label_smoothing=0.3'])
  candidates = [Candidate('footprint_cnn', {})]
  dims = parse_space(('train.label_smoothing: float(0.0, 0.2)',), config, candidates)
  assert baseline_params(dims, config, candidates) == {}


def test_a_trial_the_deadline_cut_reads_cut_in_the_report_and_an_error_reads_fail():
  study = _study({0: (0, 0.7)})
  for attrs in ({study_lib.CUT: True}, {'error': 'out of memory'}):
    trial = study.ask()
    for key, value in attrs.items():
      trial.set_user_attr(key, value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
  table = auto_report._trials_table(study, 'accuracy').splitlines()
  assert [c.strip() for c in table[0].split('|')[3:5]] == ['origin', 'state']
  states = [line.split('|')[4].strip() for line in table[2:]]
  assert states == ['pruned', 'cut', 'fail']


# --------------------------------------------------------------------- the brackets' bookkeeping (fpclass/auto/search.py)
# A round that trains nothing: each trial's value at each rung is planned, so which trials a rung keeps, what the
# study is told and what auto_state.json keeps can be checked against the plan.

LR_DIMENSION = Dimension('train.learning_rate', 'log', (1e-4, 1e-1), 'train.learning_rate: log(1e-4, 1e-1)')
# The metric of trial n at rung r (the r-th round of the bracket).
PLANNED = {0: {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.2}, 1: {0: 0.55, 1: 0.6, 2: 0.8, 3: 0.1}, 2: {0: 0.4, 1: 0.3, 2: 0.85, 3: 0.05}}


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
  """The budget's clock stands still (at 1000 s) unless a round moves it: no figure depends on the machine's speed."""
  monkeypatch.setattr(budget_lib, 'time', types.SimpleNamespace(monotonic=lambda: 1000.0))


class PlannedRounds:
  """`Context.round`'s stand-in: each call's arguments, and the planned outcome of each entry (or the one given,
  None: not reached); `spend` moves the budget's clock on by the seconds given at a round."""

  def __init__(self, outcomes=None, cut=False, spend=None):
    self.calls, self.outcomes, self.cut, self.spend = [], outcomes or {}, cut, spend or {}

  def __call__(self, ctx, base, entries, folds, seeds, epochs, folder, stop, keep_ended=False, keep_cut_from=0):
    level = len(self.calls)
    self.calls.append(dict(names=[e.name for e in entries], changes=[e.changes for e in entries], folds=folds,
                           seeds=seeds, epochs=epochs, folder=folder, deadline=stop.deadline, keep_ended=keep_ended,
                           keep_cut_from=keep_cut_from))
    out = {}
    for e in entries:
      number = int(e.name.removeprefix('trial-'))
      planned = self.outcomes.get((level, number), Outcome(PLANNED[level][number]))
      if planned is not None:
        # as Costs(1, 1, 0) would take it, so the cost model refitted on it stays the same
        out[e.name] = dataclasses.replace(planned, seconds=1.0 + len(folds), members=len(folds),
                                          member_epochs=len(folds) * epochs)
    ctx.budget.used_before += self.spend.get(level, 0.0)
    return out, self.cut


def _search_context(tmp_path, *, higher=True, seconds=1e6, used=0.0, folds=3, rounds=None, scheduler=None,
                    **auto) -> Context:
  config = config_from_argv([*QUICK, f'--config.data.num_folds={folds}'])
  candidates = [Candidate('footprint_cnn', {})]
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                              direction='maximize' if higher else 'minimize')
  budget = Budget(seconds, tmp_path, used_before=used, started=1000.0)
  budget.record_costs(Costs(setup=1.0, member=1.0, member_epoch=0.0), [(1, 2, 2.0)])
  settings = AutoSettings(**{'eta': 2, 'confirm_seeds': (), **auto})
  return Context(base=config, settings=settings,
                 metric='accuracy' if higher else 'loss', higher=higher, folds=folds, epochs=4, own_split=False,
                 dims=[LR_DIMENSION], candidates=candidates, study=study, budget=budget,
                 workdir=tmp_path, shared=None, train_round=rounds or PlannedRounds(),
                 scheduler=scheduler or SuccessiveHalving(settings))


THREE_RUNGS = [dict(configs=4, folds=1, epochs=1), dict(configs=2, folds=2, epochs=2), dict(configs=1, folds=3, epochs=4)]


@pytest.mark.parametrize('higher, promoted, best', [(True, [[1, 2], [2]], 2), (False, [[3, 0], [3]], 3)])
def test_a_bracket_keeps_the_best_of_each_rung_in_the_metric_s_direction_and_tells_the_study(tmp_path, higher,
                                                                                             promoted, best):
  ctx = _search_context(tmp_path, higher=higher)
  bracket = ctx.budget.new_bracket(THREE_RUNGS)
  assert auto._run_bracket(ctx, bracket, ctx.budget.costs) is True
  calls = ctx.train_round.calls
  assert [c['names'] for c in calls] == [[f'trial-000{n}' for n in alive] for alive in ([0, 1, 2, 3], *promoted)]
  assert [(c['folds'], c['epochs'], c['folder']) for c in calls] == [
      ((0,), 1, tmp_path / 'rounds' / 'b0-r0'), ((0, 1), 2, tmp_path / 'rounds' / 'b0-r1'), ((0, 1, 2), 4, tmp_path / 'trials')]
  assert all(c['seeds'] == (int(ctx.base.seed),) for c in calls)
  assert calls[0]['changes'][0] == {'train.learning_rate': ctx.base.train.learning_rate}   # the config as given
  assert all(set(c) == {'train.learning_rate'} for c in calls[0]['changes'])
  assert bracket['trials'] == [0, 1, 2, 3] and bracket['promoted'] == promoted and bracket['done'] is True
  assert bracket['values'] == [{str(n): PLANNED[level][n] for n in alive}
                               for level, alive in enumerate(([0, 1, 2, 3], *promoted))]
  trials = ctx.trials()
  states = {n: t.state for n, t in trials.items()}
  assert states == {n: optuna.trial.TrialState.COMPLETE if n == best else optuna.trial.TrialState.PRUNED
                    for n in range(4)}
  assert trials[best].value == PLANNED[2][best]
  for n, t in trials.items():
    reached = 3 if n == best else 1 + sum(n in keep for keep in promoted)
    assert t.intermediate_values == {level: PLANNED[level][n] for level in range(reached)}
    assert t.user_attrs[study_lib.CANDIDATE] == 'footprint_cnn'
    assert t.user_attrs[study_lib.CHANGES] == {'train.learning_rate': repr(calls[0]['changes'][n]['train.learning_rate'])}
  assert len(ctx.budget.measures) == 1 + 4 + 2 + 1   # each variant trained, after the first measure
  stored = json.loads((tmp_path / 'auto_state.json').read_text())
  assert stored['brackets'] == [bracket] and len(stored['measures']) == 8


def test_a_failed_or_not_a_number_trial_fails_and_one_the_deadline_cut_is_marked_cut(tmp_path):
  outcomes = {(0, 0): Outcome(error='out of memory'), (0, 1): Outcome(math.nan), (0, 3): None}
  ctx = _search_context(tmp_path, rounds=PlannedRounds(outcomes, cut=True))
  bracket = ctx.budget.new_bracket(THREE_RUNGS)
  assert auto._run_bracket(ctx, bracket, ctx.budget.costs) is False   # the top rung was cut
  assert bracket['promoted'] == [[2], [2]] and bracket['values'][0] == {'2': 0.7}
  trials = ctx.trials()
  fail = optuna.trial.TrialState.FAIL
  assert [trials[n].state for n in range(4)] == [fail, fail, optuna.trial.TrialState.COMPLETE, fail]
  assert trials[0].user_attrs['error'] == 'out of memory' and trials[1].user_attrs['error'] == 'accuracy is not a number'
  assert trials[3].user_attrs[study_lib.CUT] is True and study_lib.CUT not in trials[0].user_attrs
  assert len(ctx.budget.measures) == 1 + 3 + 1 + 1   # trial 3's round did not reach it


class Killed(Exception):
  pass


class KilledAtRung(PlannedRounds):
  def __call__(self, ctx, base, entries, *args, **kwargs):
    if len(self.calls) == 1:
      raise Killed
    return super().__call__(ctx, base, entries, *args, **kwargs)


def test_a_relaunch_resumes_the_bracket_at_its_next_rung_and_a_trial_told_before_keeps_its_value(tmp_path):
  ctx = _search_context(tmp_path)
  ctx.train_round = KilledAtRung()   # the launch is killed in the second rung's round
  with pytest.raises(Killed):
    auto._run_bracket(ctx, ctx.budget.new_bracket(THREE_RUNGS), ctx.budget.costs)
  stored = json.loads((tmp_path / 'auto_state.json').read_text())['brackets'][0]
  assert stored['promoted'] == [[1, 2]] and stored['values'] == [{str(n): PLANNED[0][n] for n in range(4)}]
  # It had told trial 1 its second rung's value and pruned it, but not saved the rung's promotion.
  optuna.trial.Trial(ctx.study, ctx.trials()[1]._trial_id).report(0.3, 1)
  ctx.study.tell(1, state=optuna.trial.TrialState.PRUNED)
  ctx.train_round = PlannedRounds({(0, 1): Outcome(0.99), (0, 2): Outcome(0.8), (1, 2): Outcome(0.85)})
  assert auto._run_bracket(ctx, stored, ctx.budget.costs) is True
  calls = ctx.train_round.calls
  assert [(c['names'], c['epochs']) for c in calls] == [(['trial-0001', 'trial-0002'], 2), (['trial-0002'], 4)]
  assert stored['values'][1:] == [{'1': 0.3, '2': 0.8}, {'2': 0.85}] and stored['promoted'] == [[1, 2], [2]]
  trials = ctx.trials()
  assert trials[1].state == optuna.trial.TrialState.PRUNED and trials[1].intermediate_values == {0: 0.9, 1: 0.3}
  assert trials[2].state == optuna.trial.TrialState.COMPLETE and trials[2].value == 0.85


def test_a_rung_that_no_longer_fits_ends_the_bracket_and_a_top_rung_trains_the_best_alone_in_the_slack(tmp_path):
  # Costs(1, 1, 0): a configuration costs 1 s + 1 s a fold. 7.5 s left after the tail: rung 0 (2 s a
  # configuration) does not fit one configuration beside the upper rungs' one each (3 s + 4 s).
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - 2.0 - 7.5)
  bracket = ctx.budget.new_bracket(THREE_RUNGS)
  assert auto._run_bracket(ctx, bracket, ctx.budget.costs) is False
  assert ctx.train_round.calls == [] and bracket['done'] is True
  assert {t.state for t in ctx.trials().values()} == {optuna.trial.TrialState.FAIL}
  # At the top rung, with no complete trial yet and 0.5 s left (rung 0 took 9 s): the best alone, on the most
  # folds that the 5% slack affords (0.5 + 5 - 2 s: 1 s + 2 x 1 s).
  (tmp_path / 'top').mkdir()
  ctx = _search_context(tmp_path / 'top', seconds=100.0, used=100.0 - 9.5)
  bracket = ctx.budget.new_bracket(THREE_RUNGS[1:])
  ctx.train_round = PlannedRounds({(0, n): Outcome(0.5 + n / 10) for n in range(2)}, spend={0: 9.0})
  assert auto._run_bracket(ctx, bracket, ctx.budget.costs) is True
  first = ctx.train_round.calls[0]
  assert (first['names'], first['folds'], first['epochs']) == (['trial-0000', 'trial-0001'], (0, 1), 2)
  top = ctx.train_round.calls[1]
  assert (top['names'], top['folds'], top['epochs']) == (['trial-0001'], (0, 1), 4)
  assert top['deadline'] == pytest.approx(ctx.budget.started + 105.0 - ctx.budget.used_before - 2.0)
  assert bracket['promoted'] == [[1]] and ctx.trials()[1].state == optuna.trial.TrialState.COMPLETE


def test_the_slack_top_rung_trains_the_best_promoted_trial_not_the_last(tmp_path):
  """Two trials promoted to a top rung that fits only one in the slack: the best (trial 1, 0.9 at rung 0) trains,
  not the last promoted (trial 2, 0.7)."""
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - 9.5)
  rungs = [dict(configs=4, folds=1, epochs=2), dict(configs=2, folds=2, epochs=4)]
  bracket = ctx.budget.new_bracket(rungs)
  ctx.train_round = PlannedRounds(spend={0: 9.0})
  auto._run_bracket(ctx, bracket, ctx.budget.costs)
  assert bracket['promoted'] == [[1, 2]]
  assert ctx.train_round.calls[1]['names'] == ['trial-0001']


@pytest.mark.parametrize('completed', [False, True])
def test_the_first_planned_top_rung_may_end_in_the_slack_a_later_one_keeps_the_budget(tmp_path, completed):
  """A top rung that fits its plan still stops at a deadline. The first one, which makes the only final model
  there can be, stops at the budget's end plus its 5% slack (less the tail); once a trial completed, a top rung
  stops at the budget's end less the tail, like the rungs below it. The first keeps what ended where the
  deadline cuts it (`keep_ended`), and its members that had trained half their epochs (`keep_cut_from`); no
  other rung does."""
  ctx = _search_context(tmp_path, seconds=100.0, used=10.0)
  if completed:
    ctx.study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
  bracket = ctx.budget.new_bracket(THREE_RUNGS[1:])
  ctx.train_round = PlannedRounds({(0, n): Outcome(0.5 + n / 10) for n in range(2)})
  assert auto._run_bracket(ctx, bracket, ctx.budget.costs) is True
  middle, top = ctx.train_round.calls
  end = ctx.budget.started - ctx.budget.used_before - 2.0
  assert middle['deadline'] == pytest.approx(end + 100.0 - (1.0 + 3.0))   # the top rung's one configuration kept
  assert top['deadline'] == pytest.approx(end + (100.0 if completed else 105.0))
  assert middle['keep_ended'] is False and top['keep_ended'] is (not completed)
  assert middle['keep_cut_from'] == 0 and top['keep_cut_from'] == (0 if completed else -(-top['epochs'] // 2))


def test_the_first_top_rung_is_the_most_folds_the_slack_affords_and_none_once_a_trial_completed(tmp_path):
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - 1.5)   # 1.5 + 5 (slack) - 2 (tail) = 4.5 s
  assert brackets.first_top_rung(ctx, ctx.budget.costs, Rung(2, 5, 4)) == Rung(1, 3, 4)   # 1 s + 3 x 1 s
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 + 2.5)   # 0.5 s of the slack: not one fold
  assert brackets.first_top_rung(ctx, ctx.budget.costs, Rung(2, 5, 4)) is None
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - 1.5)
  ctx.study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
  assert brackets.first_top_rung(ctx, ctx.budget.costs, Rung(2, 5, 4)) is None


def test_a_bracket_s_end_completes_only_a_top_rung_value_prunes_what_reported_and_fails_what_did_not(tmp_path):
  ctx = _search_context(tmp_path)
  trials = [ctx.study.ask() for _ in range(4)]
  trials[0].report(0.3, 0)
  trials[1].report(0.4, 0)
  ctx.study.tell(trials[3], state=optuna.trial.TrialState.PRUNED)
  bracket = ctx.budget.new_bracket(THREE_RUNGS[1:])
  bracket.update(trials=[0, 1, 2, 3], values=[{'0': 0.3, '1': 0.4}])
  brackets.end_bracket(ctx, bracket, {0: 0.3})   # a value, but the top rung has none: pruned
  states = [t.state for t in ctx.study.get_trials()]
  assert states == [optuna.trial.TrialState.PRUNED] * 2 + [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED]
  assert ctx.study.get_trials()[2].user_attrs == {study_lib.CUT: True}
  assert bracket['done'] is True and json.loads((tmp_path / 'auto_state.json').read_text())['brackets'][0]['done']
  trial = ctx.study.ask()
  bracket = ctx.budget.new_bracket(THREE_RUNGS[2:])
  bracket.update(trials=[trial.number], values=[{str(trial.number): 0.7}])
  brackets.end_bracket(ctx, bracket, {trial.number: 0.7})
  assert ctx.study.get_trials()[-1].state == optuna.trial.TrialState.COMPLETE and ctx.study.get_trials()[-1].value == 0.7


def _folds_context(tmp_path, left: float, folds: int = 5, **auto) -> Context:
  """One finalist, one confirmation seed, Costs(0, 1, 0): a configuration costs 1 s a fold at any epochs, so a
  bracket of two rungs on k folds costs 2 x round(k / 2) + k and the confirmation's reserve is 2k (of the 0.5
  share of 40 s); `left` seconds after the tail."""
  ctx = _search_context(tmp_path, seconds=40.0, used=40.0 - 0.8 - left, folds=folds, finalists=1,
                        confirm_seeds=(7,), confirm_share=0.5, **auto)
  ctx.budget.costs = Costs(0.0, 1.0, 0.0)
  return ctx


@pytest.mark.parametrize('left, folds', [(17.5, 3), (20.0, 3), (25.0, 5), (10.0, 5)])
def test_the_trials_take_fewer_folds_down_to_3_when_the_search_at_k_does_not_hold_the_first_batch(
    tmp_path, monkeypatch, left, folds):
  # The first batch: 5 trials. 17.5 s: no two rungs fit at 5 folds, they start 2 trials at 4 and 4 at 3: the
  # most trials, 3 folds. 20 s: 2 trials at 5 folds, 3 at 4, 5 at 3: the first batch fits at 3 folds only. 25 s:
  # 5, 6 and 7 trials: it fits at every k, and the most folds are kept. 10 s: no two rungs at 3 folds, and fewer
  # than 3 are never taken: the 5 folds are kept.
  monkeypatch.setattr(measure, 'FIRST_TRIALS', 5)
  ctx = _folds_context(tmp_path, left)
  notes = measure.fit_folds(ctx, ctx.budget.costs)
  assert ctx.folds == folds and ctx.study.user_attrs[study_lib.FOLDS] == folds
  assert ctx.base.data.num_folds == ctx.data_folds == 5   # the first `folds` of the data's split
  assert notes == ([] if folds == 5 else [f'the budget affords a search on {folds} of the 5 folds'])


def test_the_folds_decided_once_are_the_study_s_and_given_or_own_folds_are_kept(tmp_path):
  ctx = _folds_context(tmp_path, 17.5)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)   # decided by an earlier launch
  assert measure.fit_folds(ctx, ctx.budget.costs) == ['the budget affords a search on 3 of the 5 folds']
  assert ctx.folds == 3 and ctx.base.data.num_folds == ctx.data_folds == 5 and ctx.splits_text() == '3 of 5 folds'
  ctx = _folds_context(tmp_path, 17.5)
  ctx.settings = dataclasses.replace(ctx.settings, folds=5)   # config.auto.folds given
  assert measure.fit_folds(ctx, ctx.budget.costs) == [] and ctx.folds == 5 and ctx.study.user_attrs[study_lib.FOLDS] == 5
  ctx = _folds_context(tmp_path, 17.5)
  ctx.own_split = True
  assert measure.fit_folds(ctx, ctx.budget.costs) == [] and ctx.folds == 5


def test_the_search_runs_brackets_until_the_trial_limit_and_records_its_time(tmp_path):
  ctx = _search_context(tmp_path, trials=4)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  assert auto._search(ctx) == ''
  assert len(ctx.budget.brackets) == 1 and ctx.budget.brackets[0]['done'] and ctx.budget.brackets[0]['trials'] == [0, 1, 2, 3]
  assert [len(c['names']) for c in ctx.train_round.calls] == [4, 2, 1]
  assert ctx.budget.stages['search'] > 0
  assert auto._search(ctx) == '' and len(ctx.train_round.calls) == 3   # the limit is reached: nothing more


def test_a_relaunch_runs_the_open_bracket_before_planning_another(tmp_path):
  ctx = _search_context(tmp_path, trials=4)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  ctx.budget.new_bracket(THREE_RUNGS)   # planned by the launch that was killed
  assert auto._search(ctx) == ''
  assert len(ctx.budget.brackets) == 1 and ctx.budget.brackets[0]['done']
  assert [(len(c['names']), c['epochs']) for c in ctx.train_round.calls] == [(4, 1), (2, 2), (1, 4)]


def test_a_budget_for_one_cheapened_configuration_runs_it_once_and_says_what_it_affords(tmp_path):
  # 3.5 s after the 2 s tail: the top rung's 4 s does not fit, one configuration on 2 folds (3 s) does
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - 5.5)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  assert auto._search(ctx) == 'the budget affords one configuration on 2 of 3 folds for 4 of 4 epochs'
  assert [(c['names'], c['folds'], c['epochs']) for c in ctx.train_round.calls] == [(['trial-0000'], (0, 1), 4)]
  assert len(ctx.budget.brackets) == 1 and ctx.trials()[0].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.parametrize('member_epoch, left, completed, epochs', [
    (1.0, 6.4, False, 3),   # after the 2 s tail, 2 epochs fit with 0.4 s over; a third ends 0.6 s past: within 5 s
    (1.0, 6.4, True, 2),    # a trial completed: this is not the only model there can be, and keeps the budget
    (3.0, 7.4, False, 2),   # 1 epoch fits with 0.4 s over; a second ends 2.6 s past, within the slack
    (6.0, 10.4, False, 1),  # 1 epoch fits with 0.4 s over; a second ends 5.6 s past, beyond it
])
def test_the_only_model_s_last_epoch_may_end_in_the_slack(tmp_path, member_epoch, left, completed, epochs):
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - left)
  ctx.budget.costs = Costs(setup=1.0, member=1.0, member_epoch=member_epoch)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  if completed:
    ctx.study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
  assert auto._search(ctx) == f'the budget affords one configuration on 1 of 3 folds for {epochs} of 4 epochs'
  assert [(c['folds'], c['epochs']) for c in ctx.train_round.calls] == [((0,), epochs)]


def test_a_budget_that_affords_no_bracket_keeps_the_measurement_as_its_one_trial(tmp_path):
  # 3 s left, 2 s of them the tail: one configuration on one fold (2 s) does not fit; the measurement round trained
  # the config as given on one fold already, and becomes the one trial (its fold model moved to trials/)
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - 3.0)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  measured = tmp_path / 'rounds' / 'measure' / 'baseline'
  (measured / 'fold0').mkdir(parents=True)
  assert auto._search(ctx) == '' and not ctx.trials()   # no value measured: nothing to adopt
  ctx.study.set_user_attr(study_lib.MEASURED, 0.61)
  assert auto._search(ctx) == 'the budget affords no search: the config as given, measured on one fold for 2 of 4 epochs, is its one trial'
  assert not ctx.train_round.calls and not ctx.budget.brackets
  (trial,) = ctx.trials().values()
  assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.61 and trial.intermediate_values == {0: 0.61}
  assert trial.user_attrs[first_trials.BASELINE] is True
  assert auto_changes(trial) == {'train.learning_rate': ctx.base.train.learning_rate}   # the config as given
  assert (tmp_path / 'trials' / 'trial-0000' / 'fold0').is_dir() and not measured.exists()
  assert auto._search(ctx) == '' and len(ctx.trials()) == 1   # adopted once: a relaunch finds it complete


def test_a_search_whose_every_trial_the_deadline_cut_keeps_the_measurement_as_its_one_trial(tmp_path):
  """A bracket fitted by the cost model, then cut before any trial finished (a loaded machine, or a configuration
  dearer than the measured one): the run still ends in a model, the measurement round's."""
  rounds = PlannedRounds({(0, n): None for n in range(4)}, cut=True, spend={0: 100.0})   # the round ran past it
  ctx = _search_context(tmp_path, seconds=100.0, trials=4, rounds=rounds)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  ctx.study.set_user_attr(study_lib.MEASURED, 0.61)
  measured = tmp_path / 'rounds' / 'measure' / 'baseline'
  (measured / 'fold0').mkdir(parents=True)
  note = auto._search(ctx)
  assert note == ("the search stopped at the budget's deadline; the deadline cut every trial of the search: the "
                  'config as given, measured on one fold for 2 of 4 epochs, is its one trial') and len(rounds.calls) == 1
  adopted = [t for t in ctx.trials().values() if t.state == optuna.trial.TrialState.COMPLETE]
  assert [(t.value, t.user_attrs[first_trials.BASELINE]) for t in adopted] == [(0.61, True)]
  assert (tmp_path / 'trials' / adopted[0].user_attrs[study_lib.FOLDER] / 'fold0').is_dir() and not measured.exists()


def test_a_relaunch_of_a_finished_study_says_where_its_results_are_and_does_nothing_else(tmp_path, capsys,
                                                                                        monkeypatch):
  """Relaunched after it confirmed (the same command again), auto says where its report and final model are,
  before any screening, measuring or training; it used to say another live process confirms."""
  config = config_from_argv(QUICK)
  monkeypatch.setattr(auto, 'screen_candidates', lambda *a: pytest.fail('a finished study screened again'))
  study = study_lib.open_study(str(config.name), '', tmp_path, 'maximize', 0)
  assert auto._finished_earlier(study, tmp_path) is False
  study.set_user_attr(study_lib.CONFIRMED, {'host': 'elsewhere', 'pid': 7})
  assert auto.run_auto(config, tmp_path) is None
  assert 'auto: this study finished earlier: its report and final model are in the workdir of the launch that ' \
         'confirmed (host elsewhere, pid 7); nothing is left to do' in capsys.readouterr().out
  (tmp_path / 'final').mkdir()
  (tmp_path / 'final' / 'metadata.json').write_text('{}')
  assert auto.run_auto(config, tmp_path) is None
  assert (f'its report is {tmp_path / "auto_report.md"} and its final model {tmp_path / "final"}; nothing is left '
          'to do') in capsys.readouterr().out


def auto_changes(trial) -> dict:
  return {k: ast.literal_eval(v) for k, v in trial.user_attrs[study_lib.CHANGES].items()}


@pytest.mark.parametrize('left, trains', [(11.0, True), (10.9, False)])
def test_a_rung_trains_when_one_configuration_fits_exactly_beside_what_follows_it(tmp_path, left, trains):
  # rung 0: 2 s for one configuration beside the tail's 2 s and the upper rungs' 3 s + 4 s
  ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - left)
  bracket = ctx.budget.new_bracket(THREE_RUNGS)
  auto._run_bracket(ctx, bracket, ctx.budget.costs)
  assert bool(ctx.train_round.calls) is trains


def test_a_rung_keeps_the_confirmation_s_reserve(tmp_path):
  # Confirming 1 finalist and the config as given on 3 folds: 2 x (1 s + 3 s) = 8 s more to keep: 19 s left
  # leave rung 0 its 2 s beside 2 + 7 + 8 s; 18.9 s do not.
  for left, trains in ((19.0, True), (18.9, False)):
    ctx = _search_context(tmp_path, seconds=100.0, used=100.0 - left, finalists=1, confirm_seeds=(7,),
                          confirm_share=0.5)
    bracket = ctx.budget.new_bracket(THREE_RUNGS)
    auto._run_bracket(ctx, bracket, ctx.budget.costs)
    assert bool(ctx.train_round.calls) is trains


def test_a_new_study_starts_with_the_config_and_its_neighbours_and_the_next_bracket_with_the_winners_combined(
    tmp_path, monkeypatch):
  # Trial 0 is the config as given, 1 and 2 its learning rate x3 and /3, 3 its rotation moved (the batch holds 3
  # of the 4 neighbours; the smoothing comes after rotation). At rung 0, 1 (0.9) and 2 (0.7) beat the config
  # (0.5) along the learning rate, and 3 (0.6) along rotation: the next bracket starts with x3 and rotation.
  # (Without a portfolio, whose moves would come first: test_first_trials checks them.)
  monkeypatch.setattr(portfolio, 'PORTFOLIO', ())
  ctx = _search_context(tmp_path, rounds=PlannedRounds({(0, 3): Outcome(0.6)}))
  ctx.dims = [LR_DIMENSION, Dimension('train.label_smoothing', 'float', (0.0, 0.15), ''),
              Dimension('augment.rotation', 'float', (0.0, 15.0), '')]
  bracket = ctx.budget.new_bracket(THREE_RUNGS)
  auto._run_bracket(ctx, bracket, ctx.budget.costs)
  lr, trials = ctx.base.train.learning_rate, ctx.trials()
  assert trials[0].user_attrs[first_trials.BASELINE] is True
  assert [trials[n].user_attrs[first_trials.NEIGHBOUR] for n in (1, 2, 3)] == [
      'train.learning_rate x3', 'train.learning_rate /3', 'augment.rotation 10']
  changes = ctx.train_round.calls[0]['changes']
  assert changes[0] == {'train.learning_rate': lr, 'train.label_smoothing': 0.0, 'augment.rotation': 0.0}
  assert changes[1] == {**changes[0], 'train.learning_rate': pytest.approx(3 * lr)}
  assert changes[3] == {**changes[0], 'augment.rotation': pytest.approx(10.0)}
  second = ctx.budget.new_bracket(THREE_RUNGS)
  auto._enqueue_first_trials(ctx, 4)
  combined = ctx.study.ask()
  assert sample(combined, ctx.dims, ctx.base, ctx.candidates)[1] == {
      'train.learning_rate': pytest.approx(3 * lr), 'train.label_smoothing': 0.0, 'augment.rotation': pytest.approx(10.0)}
  assert combined.user_attrs[first_trials.NEIGHBOUR] == 'combined' and ctx.study.user_attrs[first_trials.COMBINED]
  ctx.study.tell(combined, state=optuna.trial.TrialState.FAIL)
  auto._enqueue_first_trials(ctx, 4)   # once per study: a relaunch or a third bracket adds nothing
  assert ctx.study.ask().user_attrs.get(first_trials.NEIGHBOUR) is None and second is ctx.budget.brackets[1]


@pytest.mark.parametrize('epochs, patience', [(9, 2), (10, 2), (7, 1), (25, 4), (50, None)])
def test_a_rung_s_patience_waits_at_least_the_config_s_share_of_its_schedule(epochs, patience):
  """Footprint's patience, 7 of 50 epochs, at a rung of `epochs`: rounded up (at 9 epochs 1.26 is 2; rounded, 1 noisy
  epoch stopped the search's only model at 7 of 9), the second phase rounded as before; the config's own epochs
  change nothing."""
  train = TrainSettings(epochs=50, early_stopping_patience=7, finetune_epochs=10)
  changes = fidelity(train, epochs)
  if patience is None:
    assert changes == {}
    return
  assert changes['train.early_stopping_patience'] == patience and changes['train.epochs'] == epochs
  assert changes['train.finetune_epochs'] == max(1, round(10 * epochs / 50))
