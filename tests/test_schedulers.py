"""The scheduler seam of `--mode auto`'s search: a scheduler registered by name plans the brackets and chooses who
goes on from each rung, and the search follows it; successive halving is one scheduler among them."""
import optuna
import pytest

from fpclass.auto import search as auto
from fpclass.auto.rungs import Bracket, Rung
from fpclass.auto.schedulers import configured
from fpclass.auto.schedulers.scheduler import Scheduler
from fpclass.auto.schedulers.successive_halving import SuccessiveHalving, plan_bracket
from fpclass.config.search import AutoSettings
from fpclass.errors import UserInputError
from tests.test_auto_choices import PLANNED, _search_context, frozen_clock  # noqa: F401 (the fixture is autouse)


class WorstFirst(Scheduler):
  """A scheduler no one would use, so that following it cannot be mistaken for successive halving: one bracket of
  two rungs, the worst trials going on."""
  name = 'worst_first'

  def __init__(self, settings):
    super().__init__(settings)
    self.asked = []

  def bracket(self, costs, seconds, folds, epochs, most=0, index=0, warm=()):
    self.asked.append(index)
    return Bracket((Rung(4, 1, 1), Rung(2, folds, epochs))) if index == 0 else None

  def promoted(self, ranked, values, rungs, level):
    return list(reversed(ranked))[:rungs[level + 1].configs]


def test_a_registered_scheduler_is_chosen_by_name_and_an_unknown_one_is_one_line(monkeypatch):
  monkeypatch.setitem(configured.SCHEDULERS, WorstFirst.name, WorstFirst)
  assert isinstance(configured.scheduler_for(AutoSettings(scheduler='worst_first')), WorstFirst)
  assert isinstance(configured.scheduler_for(AutoSettings()), SuccessiveHalving)
  with pytest.raises(UserInputError, match=r"config.auto.scheduler='hyperband': unknown; the schedulers are "
                                           r'successive_halving, worst_first'):
    configured.scheduler_for(AutoSettings(scheduler='hyperband'))


def test_the_search_trains_the_brackets_the_scheduler_plans_and_promotes_whom_it_chooses(tmp_path):
  scheduler = WorstFirst(AutoSettings())
  ctx = _search_context(tmp_path, scheduler=scheduler)
  auto._search(ctx)
  calls = ctx.train_round.calls
  # Rung 0's values (PLANNED[0]): 0.5, 0.9, 0.7, 0.2; the worst two go on, worst first; successive halving would
  # have promoted trials 1 and 2.
  assert [c['names'] for c in calls] == [['trial-0000', 'trial-0001', 'trial-0002', 'trial-0003'],
                                         ['trial-0003', 'trial-0000']]
  assert [(c['folds'], c['epochs']) for c in calls] == [((0,), 1), ((0, 1, 2), 4)]
  assert len(ctx.budget.brackets) == 1 and scheduler.asked[-1] == 1   # asked for a second bracket: none
  trials = ctx.trials()
  assert trials[0].state == optuna.trial.TrialState.COMPLETE and trials[0].value == PLANNED[1][0]
  assert trials[1].state == trials[2].state == optuna.trial.TrialState.PRUNED


def test_successive_halving_is_the_default_and_plans_what_plan_bracket_plans(tmp_path):
  ctx = _search_context(tmp_path)
  assert AutoSettings().scheduler == SuccessiveHalving.name == 'successive_halving'
  costs, halving = ctx.budget.costs, SuccessiveHalving(AutoSettings(eta=2))
  for seconds in (5.0, 30.0, 300.0):
    assert halving.bracket(costs, seconds, 3, 4) == plan_bracket(costs, seconds, 3, 4, 2)
  assert halving.promoted([3, 1, 2, 0], {}, (Rung(4, 1, 1), Rung(2, 2, 2)), 0) == [3, 1]
  assert halving.describe() == 'successive halving (eta 2)'
