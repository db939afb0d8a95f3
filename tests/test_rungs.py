"""The brackets `--mode auto` plans from its cost model (fpclass/auto/rungs.py): the most rungs, then the most
starting configurations, then the lower rungs' epochs raised into what is left, never past the seconds given;
a cheaper single configuration only when nothing else fits; the cost model fitted from measured runs. The
costs are the ones measured on digits."""
from dataclasses import astuple

import pytest

from fpclass.auto.rungs import Costs, Rung
from fpclass.auto.schedulers.successive_halving import plan_bracket, rungs_for

DIGITS = Costs(setup=1.03, member=1.98, member_epoch=0.19)


def test_a_rung_keeps_the_best_third_rounded_down():
  assert [r.configs for r in rungs_for(5, 2, 5, 40, 3)] == [5, 1]
  assert [r.configs for r in rungs_for(6, 2, 5, 40, 3)] == [6, 2]
  assert rungs_for(9, 3, 9, 36, 3, folds_first=False) == (Rung(9, 1, 4), Rung(3, 3, 12), Rung(1, 9, 36))


@pytest.mark.parametrize('folds, epochs, middle', [(9, 36, Rung(3, 9, 4)), (3, 27, Rung(3, 3, 3)), (3, 50, Rung(3, 2, 8)),
                                                   (5, 27, Rung(3, 5, 4)), (3, 9, Rung(3, 1, 3))])
def test_a_middle_rung_spends_its_member_epochs_on_folds_first_at_the_bottom_s_epochs(folds, epochs, middle):
  """The default rung shape: the middle rung's member-epochs (folds / 3 x epochs / 3 of the balanced shape) go to
  more folds at the bottom rung's epochs (epochs / 9), up to every fold, unless those are a single epoch (9
  epochs: the balanced middle); the bottom and top rungs are unchanged."""
  balanced = rungs_for(9, 3, folds, epochs, 3, folds_first=False)
  shaped = rungs_for(9, 3, folds, epochs, 3)
  assert shaped[1] == middle and (shaped[0], shaped[2]) == (balanced[0], balanced[2])
  assert abs(middle.folds * middle.epochs - balanced[1].folds * balanced[1].epochs) <= middle.folds


@pytest.mark.parametrize('seconds', [40.0, 77.0, 200.0, 1200.0])
def test_a_bracket_fills_its_seconds_without_passing_them(seconds):
  bracket = plan_bracket(DIGITS, seconds, 4, 40, 3)
  cost = bracket.cost(DIGITS)
  assert cost <= seconds
  top = bracket.rungs[-1]
  assert (top.folds, top.epochs) == (4, 40) and not bracket.note
  if len(bracket.rungs) > 1:
    # what is left buys less than one more epoch of the bottom rung: the stretch used the rest
    bottom = bracket.rungs[0]
    assert seconds - cost < bottom.configs * bottom.folds * DIGITS.member_epoch or \
        bottom.epochs == bracket.rungs[1].epochs
    assert all(a.epochs <= b.epochs and a.configs >= b.configs for a, b in zip(bracket.rungs, bracket.rungs[1:]))


def test_more_seconds_buy_more_rungs_and_configurations():
  sizes = [plan_bracket(DIGITS, s, 4, 40, 3) for s in (60.0, 200.0, 1200.0)]
  assert [len(b.rungs) for b in sizes] == [2, 3, 3]
  assert sizes[0].rungs[0].configs < sizes[1].rungs[0].configs < sizes[2].rungs[0].configs


def test_a_budget_below_one_top_configuration_gets_a_cheaper_single_one_with_a_note():
  bracket = plan_bracket(DIGITS, 30.0, 5, 40, 3)
  assert len(bracket.rungs) == 1 and bracket.rungs[0].configs == 1 and bracket.cost(DIGITS) <= 30.0
  assert (bracket.rungs[0].folds, bracket.rungs[0].epochs) < (5, 40) and 'affords' in bracket.note
  assert plan_bracket(DIGITS, 2.0, 5, 40, 3) is None


@pytest.mark.parametrize('seconds, folds, epochs', [
    (25.0, 4, 10),   # 1 s + 4 x (1 s + 10 x 0.5 s): exactly the budget
    (24.9, 3, 10),   # 4 folds would train 9 epochs: on more than one fold every epoch, so 3 folds
    (8.0, 1, 10),    # 2 folds would train 5 epochs; one fold trains all 10 (12 would fit)
    (4.6, 1, 5),     # on one fold, the epochs that fit
    (2.5, 1, 1),     # down to one
])
def test_the_cheaper_single_configuration_is_on_the_most_folds_then_epochs_that_fit(seconds, folds, epochs):
  costs = Costs(setup=1.0, member=1.0, member_epoch=0.5)
  bracket = plan_bracket(costs, seconds, 5, 10, 3)
  assert bracket.rungs == (Rung(1, folds, epochs),)
  assert bracket.note == f'the budget affords one configuration on {folds} of 5 folds for {epochs} of 10 epochs'
  assert plan_bracket(costs, 2.4, 5, 10, 3) is None   # 0.4 s after a fold's own 2 s: not one epoch


@pytest.mark.parametrize('seconds, folds', [(4.5, 3), (4.0, 2), (2.5, 1), (2.0, None)])
def test_without_an_epoch_cost_a_fold_fits_when_any_second_is_left_after_its_set_up(seconds, folds):
  costs = Costs(setup=1.0, member=1.0, member_epoch=0.0)
  bracket = plan_bracket(costs, seconds, 5, 10, 3)
  assert (bracket.rungs if bracket else None) == ((Rung(1, folds, 10),) if folds else None)


def test_the_cost_model_is_fitted_beyond_the_member_epochs_by_a_line_over_the_member_counts():
  # each run's time beyond its member-epochs (at 0.5 s): 2, 4 and 20 s, on 2 members each: the median, 1 s a
  # member, three quarters to the set-up and a quarter per member
  assert Costs.fitted([(2, 10, 7.0), (2, 10, 9.0), (2, 10, 25.0)], 0.5) == Costs(1.5, 0.5, 0.5)
  assert Costs.fitted([(1, 0, 1.0), (1, 0, 2.0), (1, 0, 3.0), (1, 0, 10.0)], 0.5) == Costs(2.25, 0.75, 0.5)
  assert Costs.fitted([(1, 10, 3.0)], 0.5) == Costs(0.0, 0.0, 0.5)   # faster than its member-epochs: nothing else
  # member counts that differ: the least-squares line, its slope per member and intercept per set-up
  assert astuple(Costs.fitted([(1, 4, 5.0), (3, 4, 9.0)], 0.5)) == pytest.approx((1.0, 2.0, 0.5, 0.0))
  assert astuple(Costs.fitted([(1, 0, 2.0), (2, 0, 4.0), (3, 0, 4.0)], 0.0)) == pytest.approx((4 / 3, 1.0, 0.0, 0.0))
  assert Costs.fitted([(1, 0, 5.0), (3, 0, 3.0)], 0.0) == Costs(4.0, 0.0, 0.0)   # no negative cost a member
  assert Costs.fitted([(1, 0, 1.0), (3, 0, 7.0)], 0.0) == Costs(0.0, 3.0, 0.0)   # nor a negative set-up


def test_a_new_configuration_s_set_up_adds_the_compiling_of_those_that_compiled_and_a_known_one_sets_up_without():
  # beyond their member-epochs and compiling: 2 s a run of one member, three quarters of it to the set-up; the
  # runs that compiled took 3 and 5 s at it, the one that reused its programs none
  costs = Costs.fitted([(1, 2, 6.0, 3.0), (1, 2, 8.0, 5.0), (1, 2, 3.0, 0.0)], 0.5)
  assert costs == Costs(1.5 + 4.0, 0.5, 0.5, 4.0) and costs.warm_setup == 1.5
  assert Costs.fitted([(1, 2, 3.0)], 0.5).warm_setup == Costs.fitted([(1, 2, 3.0)], 0.5).setup == 1.5


def test_a_configuration_more_is_started_when_the_bracket_then_fills_the_seconds_exactly():
  # Costs(0, 1, 0): a rung costs its configurations x folds. 3 rungs on 4 folds, eta 2: start + 2 (start // 2) + 4
  costs = Costs(setup=0.0, member=1.0, member_epoch=0.0)
  assert [r.configs for r in plan_bracket(costs, 13.0, 4, 8, 2, folds_first=False).rungs] == [5, 2, 1]
  assert [r.configs for r in plan_bracket(costs, 12.9, 4, 8, 2, folds_first=False).rungs] == [4, 2, 1]



def test_the_bottom_rung_s_configurations_that_share_compiled_programs_are_priced_without_compiling():
  """A set-up of 5 s, 4 of them compiling (a measurement on a cold process): the first bracket's trials that
  share the measured config's programs (`warm`: the config, then the moves of the programs' arguments) cost 1 s to
  set up, so the same seconds start more of them; the rungs above keep the full price."""
  costs = Costs(setup=5.0, member=0.3, member_epoch=1.8, compile=4.0)
  assert Rung(4, 1, 3, warm=3).cost(costs) == pytest.approx(Rung(4, 1, 3).cost(costs) - 3 * 4.0)
  assert Rung(2, 1, 3, warm=3).cost(costs) == pytest.approx(Rung(2, 1, 3).cost(costs) - 2 * 4.0)
  warm = (True, False, True, True, False)
  cold, shared = plan_bracket(costs, 100.0, 3, 8, 3), plan_bracket(costs, 100.0, 3, 8, 3, warm=warm)
  assert cold.rungs[0].warm == 0 and all(r.warm == 0 for r in shared.rungs[1:])
  assert shared.rungs[0].configs > cold.rungs[0].configs
  assert shared.rungs[0].warm == sum(warm[:shared.rungs[0].configs])
  assert shared.cost(costs) <= 100.0
