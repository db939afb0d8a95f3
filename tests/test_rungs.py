"""The brackets `--mode auto` plans from its cost model (fpclass/search/rungs.py): the most rungs, then the most
starting configurations, then the lower rungs' epochs raised into what is left, never past the seconds given;
a cheaper single configuration only when nothing else fits. The costs are the ones measured on digits."""
import pytest

from fpclass.search.rungs import Costs, Rung, plan_bracket, rungs_for

DIGITS = Costs(setup=1.03, member=1.98, member_epoch=0.19)


def test_a_rung_keeps_the_best_third_rounded_down():
  assert [r.configs for r in rungs_for(5, 2, 5, 40, 3)] == [5, 1]
  assert [r.configs for r in rungs_for(6, 2, 5, 40, 3)] == [6, 2]
  assert rungs_for(9, 3, 9, 36, 3) == (Rung(9, 1, 4), Rung(3, 3, 12), Rung(1, 9, 36))


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
