"""The time budget of `--mode auto` (fpclass/auto/budget.py) on a clock set by hand: what is used and left across
launches, a stage's deadline with its reserve and the slack, and auto_state.json written after each change and
read back by the next launch as it was left."""
import json
import time as real_time
import types

import pytest

from fpclass.auto import budget as budget_lib
from fpclass.auto.budget import Budget
from fpclass.auto.rungs import Costs
from fpclass.config.search import AutoSettings


class Clock:
  def __init__(self, now: float):
    self.now = now

  def __call__(self) -> float:
    return self.now


@pytest.fixture
def clock(monkeypatch):
  clock = Clock(1000.0)
  monkeypatch.setattr(budget_lib, 'time', types.SimpleNamespace(monotonic=clock))
  return clock


def _load(seconds: float, folder, clock: Clock) -> Budget:
  """The budget as a launch loads it, its clock started now."""
  budget = Budget.load(seconds, folder)
  budget.started = clock.now
  return budget


def _state(folder) -> dict:
  return json.loads((folder / budget_lib.STATE_FILE).read_text())


def test_a_first_launch_starts_empty_and_counts_its_own_time(tmp_path, clock):
  budget = _load(600.0, tmp_path, clock)
  assert (budget.seconds, budget.folder, budget.used_before, budget.stages, budget.measures, budget.costs,
          budget.brackets, budget.confirm_started) == (600.0, tmp_path, 0.0, {}, [], None, [], False)
  clock.now = 1090.0
  assert budget.used() == 90.0 and budget.left() == 510.0
  assert budget.describe() == '1.5 of 10.0 min used, 8.5 left'
  clock.now = 1700.0
  assert budget.left() == -100.0 and budget.describe() == '11.7 of 10.0 min used, 0.0 left'


def test_a_stage_s_deadline_keeps_its_reserve_and_the_slack_is_five_percent(tmp_path, clock):
  budget = Budget(1000.0, tmp_path, used_before=200.0, started=50.0)
  assert budget.deadline() == 50.0 + 800.0
  assert budget.deadline(100.0) == 50.0 + 700.0
  assert budget.deadline(100.0, slack=True) == pytest.approx(50.0 + 1050.0 - 200.0 - 100.0)
  assert budget_lib.SLACK == 0.05


def test_the_state_written_after_each_change_is_what_a_relaunch_reads(tmp_path, clock):
  budget = _load(600.0, tmp_path, clock)
  clock.now = 1010.0
  budget.add_stage('screen', 4.0)
  assert _state(tmp_path) == dict(used_seconds=10.0, stages={'screen': 4.0}, budget_seconds=600.0, measures=[],
                                  costs=None, brackets=[], confirm_started=False)
  clock.now = 1020.0
  budget.add_stage('screen', 2.5)
  budget.add_stage('search', 1.0)
  assert budget.stages == {'screen': 6.5, 'search': 1.0} and _state(tmp_path)['stages'] == budget.stages
  budget.record_costs(Costs(2.0, 1.0, 0.5), [[1, 2, 4.0]])
  assert budget.measures == [(1, 2, 4.0)] and _state(tmp_path)['costs'] == dict(setup=2.0, member=1.0,
                                                                                member_epoch=0.5, compile=0.0)
  bracket = budget.new_bracket([dict(configs=3, folds=1, epochs=1)])
  assert bracket == dict(index=0, rungs=[dict(configs=3, folds=1, epochs=1)], trials=[], promoted=[], values=[],
                         done=False)
  assert budget.new_bracket([])['index'] == 1 and len(_state(tmp_path)['brackets']) == 2
  budget.confirm_started = True
  clock.now = 1030.0
  budget.save()
  assert _state(tmp_path)['used_seconds'] == 30.0 and _state(tmp_path)['confirm_started'] is True

  clock.now = 5000.0   # the relaunch: another process's clock
  again = _load(900.0, tmp_path, clock)
  assert again.seconds == 900.0 and again.used_before == 30.0
  assert again.stages == {'screen': 6.5, 'search': 1.0} and again.measures == [(1, 2, 4.0)]
  assert again.costs == Costs(2.0, 1.0, 0.5) and again.brackets == budget.brackets and again.confirm_started
  clock.now = 5012.0
  assert again.used() == 42.0 and again.left() == 858.0
  assert again.deadline(8.0) == 5000.0 + 870.0 - 8.0


def test_a_measure_refits_the_costs_on_every_one_so_far_and_an_empty_one_is_not_a_measure(tmp_path, clock):
  budget = _load(600.0, tmp_path, clock)
  budget.record_costs(Costs(3.0, 1.0, 0.5), [(2, 4, 10.0)])
  budget.add_measure(6, 12, 0.0)   # an earlier launch trained it: no seconds
  budget.add_measure(6, 0, 20.0)
  assert budget.measures == [(2, 4, 10.0)] and budget.costs == Costs(3.0, 1.0, 0.5)
  budget.add_measure(6, 12, 20.0)
  # beyond their member-epochs at 0.5 s: 8 s for 2 members, 14 s for 6: 1.5 s a member, 5 s a set-up
  assert budget.measures == [(2, 4, 10.0), (6, 12, 20.0, 0.0)]
  assert budget.costs == pytest.approx(Costs(5.0, 1.5, 0.5)) and budget.costs.member_epoch == 0.5
  stored = Budget.load(600.0, tmp_path)
  assert stored.measures == budget.measures and stored.costs == budget.costs
  budget.add_measure(1, 1, 0.5)   # under a second is a measure too
  assert budget.measures[-1] == (1, 1, 0.5, 0.0)


def test_the_open_bracket_is_the_first_not_done(tmp_path, clock):
  budget = _load(600.0, tmp_path, clock)
  assert budget.open_bracket() is None
  first, second = budget.new_bracket([]), budget.new_bracket([])
  assert budget.open_bracket() is first
  first['done'] = True
  assert budget.open_bracket() is second
  second['done'] = True
  assert budget.open_bracket() is None


def test_a_kill_between_two_saves_of_the_state_loses_at_most_one_beat(tmp_path, clock):
  """The state was last saved at 0 s used; 30 s later the launch is killed before its next save. The heartbeat
  wrote the 30 s to auto_clock.json meanwhile, and the relaunch counts them (issue 77: two kills of a 200 s run
  took 238 s of wall time, each launch's seconds since its last save lost)."""
  budget = _load(100.0, tmp_path, clock)
  budget.save()
  clock.now += 30.0
  with budget.heartbeat(every=0.01):
    for _ in range(1000):   # at most 10 s for a beat, whatever the machine's load
      path = tmp_path / budget_lib.CLOCK_FILE
      if path.is_file() and json.loads(path.read_text())['used_seconds'] == 30.0:
        break
      real_time.sleep(0.01)
  assert _state(tmp_path)['used_seconds'] == 0.0
  assert _load(100.0, tmp_path, clock).used_before == 30.0
  # An unreadable beat is no beat: the state's own figure counts.
  (tmp_path / budget_lib.CLOCK_FILE).write_text('{not json')
  assert _load(100.0, tmp_path, clock).used_before == 0.0


def test_a_budget_is_shown_with_its_unit_a_bare_number_as_seconds():
  assert AutoSettings(time_budget='60').budget_label == '60s'   # the log and the report read '60s budget'
  assert AutoSettings(time_budget='1.5h').budget_label == '1.5h'
