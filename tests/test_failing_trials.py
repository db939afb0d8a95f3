"""A failing trial costs one trial (issue 77, item 5): any exception in its checks fails it and not the search, a
trial whose rung keeps starting without ending fails and is not asked again, failed trials count toward
config.auto.trials, and a bracket whose every trial failed ends the search with the first error. And two behaviours
of the search that once passed every test when broken: the slack top rung (test_auto_choices) and the measured
member-epoch cost, without the first epoch's compile."""
import optuna
import pandas as pd
import pytest

from fpclass.auto import brackets, failed_values, measure, population
from fpclass.auto import search as auto
from fpclass.auto import study as study_lib
from fpclass.auto.context import Entry
from fpclass.auto.population import Outcome, round_plan
from fpclass.modes.command_line import config_from_argv
from fpclass.train.members import split_name
from tests.test_auto_choices import LR_DIMENSION, QUICK, PlannedRounds, _search_context, frozen_clock  # noqa: F401


def test_a_trial_whose_checks_raise_any_error_fails_alone(monkeypatch):
  """A check that raises something other than a UserInputError (a ValueError from a library, say) used to end the
  search; now it fails its trial, named with the error's type."""
  config = config_from_argv(QUICK)

  def validate(config):
    if config.train.learning_rate == 0.5:
      raise ValueError('a library refused it')
    return population_validate(config)
  population_validate = population.validate
  monkeypatch.setattr(population, 'validate', validate)
  plan, failed = round_plan(config, [Entry('bad', {'train.learning_rate': 0.5}), Entry('good', {})], (0,), (0,), 1)
  assert [v.name for v in plan.variants] == ['good']
  assert set(failed) == {'bad'} and failed['bad'].error == 'ValueError: a library refused it'


def test_failed_trials_count_toward_the_trial_limit():
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
  study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
  study.tell(study.ask(), 0.5)
  marker = study.ask()
  marker.set_user_attr(study_lib.CLAIM, {'host': 'h', 'pid': 1})   # bookkeeping, not a trial
  study.tell(marker, state=optuna.trial.TrialState.FAIL)
  assert study_lib.taken_count(study) == 2


def test_a_rung_started_in_too_many_launches_fails_its_trial(tmp_path):
  """Each launch that starts a trial's rung counts it; at MAX_ATTEMPTS starts without an end (its process died each
  time) the trial fails and is left out of the rung, while a trial told earlier goes on."""
  ctx = _search_context(tmp_path)
  study = ctx.study
  dying, fresh, told = study.ask(), study.ask(), study.ask()
  dying.set_user_attr(study_lib.ATTEMPTS, {'0': 1, '1': study_lib.MAX_ATTEMPTS})
  told.report(0.5, 1)
  study.tell(told, state=optuna.trial.TrialState.PRUNED)
  kept = brackets.attempted(ctx, [dying.number, fresh.number, told.number], 1, ctx.trials())
  assert kept == [fresh.number, told.number]
  trials = ctx.trials()
  assert trials[dying.number].state == optuna.trial.TrialState.FAIL
  assert 'started in 3 launches and never ended' in trials[dying.number].user_attrs['error']
  assert trials[fresh.number].user_attrs[study_lib.ATTEMPTS] == {'1': 1}


def test_a_bracket_whose_every_trial_failed_ends_the_search_with_the_first_error(tmp_path):
  outcomes = {(0, n): Outcome(error='out of memory') for n in range(4)}
  rounds = PlannedRounds(outcomes)
  ctx = _search_context(tmp_path, trials=4, rounds=rounds)
  ctx.study.set_user_attr(study_lib.FOLDS, 3)
  note = auto._search(ctx)
  assert note == 'every trial of bracket 1 failed, so the search stopped (the first: out of memory)'
  assert len(rounds.calls) == 1 and len(ctx.budget.brackets) == 1   # no second bracket drawing the same


def test_the_member_epoch_cost_leaves_out_the_first_epoch_s_compile(tmp_path):
  """The measurement's epochs took 9 s (compiling) and 1 s: a member-epoch costs 1 s, the first epoch's compile
  being the configuration's set-up, priced apart (`Costs.compile`)."""
  ctx = _search_context(tmp_path, seconds=1000.0)

  def measured(ctx, base, entries, folds, seeds, epochs, folder, stop, keep_ended=False, keep_cut_from=0):
    member = folder / entries[0].name / split_name(folds[0])
    member.mkdir(parents=True)
    pd.DataFrame({'epoch': [1, 2], 'seconds': [9.0, 1.0]}).to_csv(member / 'metrics.csv', index=False)
    return {entries[0].name: Outcome(0.5, seconds=12.0, compile_seconds=8.0, members=1, member_epochs=2)}, False
  ctx.train_round = measured
  costs = measure.measure(ctx)
  assert costs.member_epoch == 1.0 and costs.compile == 8.0


class Draws(optuna.samplers.BaseSampler):
  """Draws the given learning-rate factors in turn (a stand-in for TPE landing where it likes)."""

  def __init__(self, values):
    self.values = list(values)

  def infer_relative_search_space(self, study, trial):
    return {}

  def sample_relative(self, study, trial, search_space):
    return {}

  def sample_independent(self, study, trial, name, distribution):
    return self.values.pop(0)


def test_a_draw_near_a_value_that_failed_at_run_time_is_set_aside_and_drawn_again(tmp_path, monkeypatch):
  """A trial failed in training at a rate of 0.01; the next draws land at 0.0105 and 0.011 (near: within a tenth
  of the log range), then at 0.0005: the two near ones are set aside (FAIL, marked, no count), 0.0005 is the
  trial. An enqueued trial at the failed value itself is the user's, and is asked as it is."""
  ctx = _search_context(tmp_path)
  failed = ctx.study.ask()
  failed.suggest_float(LR_DIMENSION.param, *LR_DIMENSION.args[:2], log=True)
  ctx.study.tell(failed, state=optuna.trial.TrialState.FAIL)
  failed_params = {LR_DIMENSION.param: 0.01}
  ctx.study.add_trial(optuna.trial.create_trial(
      params=failed_params, distributions=ctx.study.trials[0].distributions, user_attrs={'error': 'out of memory'},
      state=optuna.trial.TrialState.FAIL))
  draws = Draws([0.0105, 0.011, 0.0005])
  monkeypatch.setattr(study_lib, '_sampler', lambda seed, number: draws)
  (trial,) = auto._ask(ctx, 1)
  assert trial.params == {LR_DIMENSION.param: 0.0005}
  skipped = [t for t in ctx.study.trials if failed_values.SKIPPED in t.user_attrs]
  assert [t.params[LR_DIMENSION.param] for t in skipped] == [0.0105, 0.011]
  assert {t.user_attrs[failed_values.SKIPPED] for t in skipped} == {1}
  assert study_lib.taken_count(ctx.study) == 3   # the two failed trials and the one asked, not the two set aside
  ctx.study.enqueue_trial(failed_params)
  (again,) = auto._ask(ctx, 1)
  assert again.params == failed_params and failed_values.SKIPPED not in again.user_attrs


@pytest.mark.parametrize('a, b, near', [(0.01, 0.011, True), (0.01, 0.05, False), (0.001, 0.001, True)])
def test_near_is_a_tenth_of_a_log_range(a, b, near):
  assert failed_values.near({LR_DIMENSION.param: a}, {LR_DIMENSION.param: b}, [LR_DIMENSION]) is near
