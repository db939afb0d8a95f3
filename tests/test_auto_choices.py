"""The choices `--mode auto` makes from its study, without training: the finalists are the best trials in the
metric's direction, the confirmation's reserve grows with the folds it confirms on, and the first trial keeps the
config's own value where it sits at either end of a range. Each was planted as a bug once (tests/MUTATIONS.md)."""
import optuna
import pytest

from fpclass.config.search import AutoSettings
from fpclass.modes.command_line import config_from_argv
from fpclass.search import auto_report, confirm
from fpclass.search import study as study_lib
from fpclass.search.budget import Budget
from fpclass.search.context import Context
from fpclass.search.rungs import Costs
from fpclass.search.space import Candidate, baseline_params, parse_space

QUICK = ['launch.py', '--config=configs/footprint.py:quick']


def _context(tmp_path, config, *, higher: bool, folds: int = 5, seconds: float = 10_000.0, study=None,
             **auto) -> Context:
  settings = AutoSettings(**auto)
  return Context(base=config, settings=settings, metric='accuracy' if higher else 'loss', higher=higher,
                 folds=folds, epochs=4, own_split=False, dims=[], candidates=[], study=study,
                 budget=Budget(seconds, tmp_path), workdir=tmp_path, shared=None, train_round=None)


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
  states = [line.split('|')[3].strip() for line in auto_report._trials_table(study, 'accuracy').splitlines()[2:]]
  assert states == ['pruned', 'cut', 'fail']
