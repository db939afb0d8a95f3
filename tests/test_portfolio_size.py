"""bench/rung_ranks.py's portfolio: the greedy choice over the sets, and its size chosen on sets that did not choose
it (leave one set out), on hand-made tables whose answers are worked out here."""
import pytest

from bench.rung_ranks import AS_GIVEN, greedy_portfolio, held_out, portfolio_size


def row(name: str, values: dict) -> dict:
  return dict(data=name, top='top', values=dict(top={AS_GIVEN: 0.5, **values}))


# 'wide' is best on three sets of four; 'narrow' only on the fourth, where 'wide' is also second best.
ROWS = [row('a', dict(wide=0.9, narrow=0.6, noise=0.51)), row('b', dict(wide=0.9, narrow=0.6, noise=0.52)),
        row('c', dict(wide=0.9, narrow=0.6, noise=0.4)), row('d', dict(wide=0.8, narrow=0.85, noise=0.4))]


def test_the_greedy_adds_what_most_lowers_the_worst_shortfall():
  chosen = greedy_portfolio(ROWS, 2)
  assert [p['move'] for p in chosen] == [AS_GIVEN, 'wide', 'narrow']
  assert chosen[0]['worst'] == pytest.approx(0.4)     # the config as given alone: 0.9 - 0.5 on a, b and c
  assert chosen[1]['worst'] == pytest.approx(0.05)    # wide: 0.85 - 0.8 on d
  assert chosen[2]['worst'] == pytest.approx(0.0)


def test_each_set_is_judged_by_the_portfolio_the_other_sets_built():
  # Left out, d's own best move (narrow) is never chosen by a, b and c, which wide alone covers, and which rank
  # narrow above noise only by the mean rank (the third key): with two moves d falls 0.05 short.
  assert held_out(ROWS, 1) == pytest.approx([0.0, 0.0, 0.0, 0.05])
  assert held_out(ROWS, 2) == pytest.approx([0.0, 0.0, 0.0, 0.0])
  size, scores = portfolio_size(ROWS, most=4)
  assert size == 2 and scores[0][0] == pytest.approx(0.4) and scores[1][0] == pytest.approx(0.05)
  assert set(scores) == {0, 1, 2, 3}   # at most every move
  assert portfolio_size(ROWS, most=1)[0] == 1


def test_a_set_s_own_move_does_not_count_for_it_when_the_set_is_left_out():
  # 'solo' is e's best by far and nothing elsewhere: built with e, two moves hold it and e falls 0 short; built
  # without e (wide, then narrow for d), e falls 0.35 short. The held-out figure is the second.
  rows = [*ROWS, row('e', dict(wide=0.6, narrow=0.5, solo=0.95))]
  assert [p['move'] for p in greedy_portfolio(rows, 2)][1:] == ['wide', 'solo']
  assert held_out(rows, 2)[-1] == pytest.approx(0.35)
