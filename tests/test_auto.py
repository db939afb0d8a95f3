"""--mode auto through launch.py on the quick synthetic footprints with a tiny CNN: a bracket of successive
halving and its final ensemble submitting, a middle budget kept, a budget too short for anything, a kill -9 and a
relaunch, two processes sharing a PostgreSQL-backed study, a population round's member against its solo run, and
bad inputs named in one line. Where a budget is generous the trial count decides; the middle budget's bound
allows one variant's time past the deadline, the granularity the deadline acts at, so no test depends on the
machine's speed; how well a real budget is spent is bench/auto.py's measurement."""
import importlib
import json
import os
import re
import signal
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from fpclass.auto import measure
from fpclass.auto.context import Entry
from fpclass.auto.population import outcomes, round_plan
from fpclass.auto.space import Candidate, baseline_params, parse_space
from fpclass.errors import UserInputError
from fpclass.modes.command_line import config_from_argv
from fpclass.modes.runner import run
from fpclass.train import sidecar
from fpclass.train.loop import run_plan
from fpclass.train.records import StopOnSignals
from tests.conftest import draw_footprints, launch, launch_process, seed_cache
from tests.postgres import postgres_server

TINY = ['--config=configs/footprint.py:quick', '--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)',
        '--config.model.fc_sizes=(8,)', '--config.train.epochs=2', '--config.train.early_stopping_patience=0',
        '--config.explain.after_training=False', '--config.train.tensorboard=False', '--mode=auto',
        '--config.auto.finalists=1', '--config.sweep.models_per_chunk=4']
THREE_FOLDS = '--config.auto.folds=3'
TWO_FOLDS = '--config.auto.folds=2'   # the fewest a top rung may have, where the claim is not about the folds
LR_ONLY = "--config.auto.space=('train.learning_rate: log(1e-7, 5e-2)',)"
# A trial here costs its set-up, its programs compiled, far more than its epochs or pixels: these tests pay per
# trial and per compilation. Successive halving with three rungs in its smallest form: eta 2 starts 4 trials (eta 3
# needs 9), each rung keeping the better half. TINY confirms one finalist (beside the config as given), and its
# rounds keep every member of a configuration in one chunk (sweep.models_per_chunk) rather than compiling each
# configuration's programs once more for the memory rule's plan (tests/test_memory_rule.py tests the rule).
HALVING = ('--config.auto.eta=2', '--config.auto.trials=4')
# Where a test's claim is not the halving itself (a relaunch, a shared study): its smallest bracket, two rungs, 2
# trials on one fold and the better one on every fold.
TWO_RUNGS = ('--config.auto.eta=2', '--config.auto.trials=2')
# Where the learning rate is all a test searches, the CNN without augmentation or dropout: less to compile.
PLAIN = ('--config.augment.hflip=0.0', '--config.augment.brightness=0.0', '--config.augment.contrast=0.0',
         '--config.model.dropout=0.0')


@pytest.fixture(scope='module')
def footprints(tmp_path_factory):
  """TINY's synthetic footprints, drawn once for the module: their folder, which `_env` copies into each test's
  own cache."""
  return draw_footprints(tmp_path_factory.mktemp('footprints'),
                         config_from_argv(['launch.py', *TINY[:7]]).data.synthetic)


def _env(tmp_path, footprints=None):
  """A launch's environment: the test's own data cache, holding a copy of `footprints` where given."""
  cache = tmp_path / 'cache'
  return {'FPCLASS_CACHE': str(seed_cache(cache, footprints) if footprints is not None else cache)}


def _state(workdir):
  return json.loads((workdir / 'auto_state.json').read_text())


def _study(workdir, name='footprint-exp4'):
  return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(workdir / 'optuna.journal'))))


def test_a_bracket_halves_by_the_metric_confirms_on_fresh_folds_and_ends_in_an_ensemble_of_all_the_data(tmp_path, footprints):
  """Four trials in the default space (a budget no busy machine exhausts, so the trial count decides; eta 2):
  4 on one fold for one epoch, the best 2 (by validation loss: no ties) on 2 folds, the best on all 3 folds; the
  worst of each rung are told PRUNED. The confirmation trains on folds cut with another split seed and seed 101;
  the final ensemble's fold models together trained on every labelled image, and it submits."""
  workdir = tmp_path / 'auto'
  result = launch(*TINY, THREE_FOLDS, *HALVING, f'--workdir={workdir}', '--config.auto.time_budget=1h',
                  '--config.auto.metric=loss', env=_env(tmp_path, footprints))
  assert 'chose trial-' in result.stdout
  (bracket,) = _state(workdir)['brackets']
  # (the middle rung's epoch raised into the time four trials leave: the budget buys it a surer ranking)
  # (the top rung holds two where the best beat the config as given within one standard error: a tie goes on)
  tie = 'goes on beside it' in result.stdout
  warm = [r.pop('warm') for r in bracket['rungs']]
  assert bracket['rungs'] == [dict(configs=4, folds=1, epochs=1), dict(configs=2, folds=2, epochs=2),
                              dict(configs=2 if tie else 1, folds=3, epochs=2)]
  # the bottom rung's trials that share the measured config's programs, the config as given first; none above
  assert 1 <= warm[0] <= 4 and warm[1:] == [0, 0]
  study = _study(workdir)
  trials = {t.number: t for t in study.trials if 'claim' not in t.user_attrs}
  assert sorted(trials) == bracket['trials'] and len(trials) == 4
  listed = pd.read_csv(workdir / 'trials.csv')   # the confirmation's claim marker is no trial of the table
  assert sorted(listed['number']) == sorted(trials) and 'user_attrs_claim' not in listed
  for level, kept in enumerate(bracket['promoted']):   # each rung keeps its lowest losses, the rest are pruned
    values = {int(n): v for n, v in bracket['values'][level].items()}
    best = sorted(values, key=values.get)[:len(kept)]
    assert len(kept) == bracket['rungs'][level + 1]['configs']
    # ... or the config as given (trial 0) in the last place, where the best beat it within one standard error
    assert kept == best or (kept == [*best[:-1], 0] and 'the config as given goes on' in result.stdout), (kept, values)
    assert all(trials[n].state == optuna.trial.TrialState.PRUNED for n in values if n not in kept)
  top_values = {int(n): v for n, v in bracket['values'][-1].items()}
  assert sorted(top_values) == sorted(bracket['promoted'][-1])
  top = min(top_values, key=top_values.get)   # the top rung's lowest loss (of two after a tie)
  assert trials[top].state == optuna.trial.TrialState.COMPLETE and trials[top].value == bracket['values'][-1][str(top)]
  base = sidecar.config_from_json(json.loads((workdir / 'workdir.json').read_text())['config'])
  for key, value in json.loads(json.dumps(trials[0].user_attrs['changes'])).items():   # the config as given
    section, name = key.split('.')
    assert repr(base[section][name]) == value or repr(float(base[section][name])) == value, (key, value)
  # The confirmation: the choice (and the config as given) on folds of split seed + 1000, seed 101.
  confirm = pd.read_csv(workdir / 'confirm_members.csv')
  chosen = f'trial-{top:04d}'
  assert set(confirm['seed']) == {101} and chosen in set(confirm['experiment'])
  fold_models = sorted((workdir / 'confirm' / chosen).glob('fold*'))
  assert len(fold_models) == 3
  for model in fold_models:   # each trained with its own fresh seed on the fresh folds
    member = sidecar.read_metadata(model)['config']
    assert member['data']['split_seed'] == 1000 and member['seed'] == 101
  # The final model: those fold models as one ensemble whose out-of-fold rows are every labelled image once.
  meta = sidecar.read_metadata(workdir / 'final')
  assert meta['ensemble']['kind'] == 'auto' and meta['ensemble']['members'][0]['models'] == ['fold0', 'fold1', 'fold2']
  final = pd.read_csv(workdir / 'final' / 'oof_predictions.csv', dtype={'id': str}).set_index('id')
  searched = pd.read_csv(workdir / 'trials' / chosen / 'oof_predictions.csv', dtype={'id': str}).set_index('id')
  assert final.index.is_unique and set(final.index) == set(searched.index)   # every labelled image, once
  assert (final['split'] != searched.loc[final.index, 'split']).any()   # other folds than the search's
  report = (workdir / 'auto_report.md').read_text()
  assert 'together they trained on every labelled image' in report and 'which chose nothing' in report
  launch(f'--workdir={workdir / "final"}', '--mode=submit', env=_env(tmp_path, footprints))
  assert len(pd.read_csv(workdir / 'final' / 'submission.csv')) == 16
  # The run recorded its config (workdir.json), so the modes that read its trials need only --workdir.
  assert json.loads((workdir / 'workdir.json').read_text())['kind'] == 'auto'
  launch(f'--workdir={workdir}', '--mode=label_issues', '--config.label_issues.grid=0', env=_env(tmp_path, footprints))
  assert (workdir / 'label_quality.csv').is_file()


def test_a_middle_budget_holds(tmp_path, footprints):
  """24 s, no trial count: the search plans its brackets from measured costs, and the run ends within the budget
  + 5%, give or take one variant (the deadline acts between a variant's epochs, and before each variant), and
  ends in a final model even where a loaded machine's deadline cut the top rung (fpclass.auto.final.source_of).
  The run fills its budget, so the budget is this test's cost. 24 s still plans a bracket on a machine twice as
  slow as this 2-core one at load 7 (2026-11-28: start-up and measurement over 6.5 s in, a configuration's set-up at
  most 3.7 s, a member 0.4 s): 13 s in, a set-up of 7.4 s is more than the confirmation's share (none is reserved)
  and one configuration on 3 folds (9.8 s) fits the 10.5 s left before the report's 2%."""
  workdir, budget = tmp_path / 'auto', 24
  launch(*TINY, THREE_FOLDS, f'--workdir={workdir}', f'--config.auto.time_budget={budget}s',
         env=_env(tmp_path, footprints))
  state = _state(workdir)
  longest = max(measure[2] for measure in state['measures'])
  # the measurement round compiles afresh, and the cost model keeps what compiling took (Costs.compile)
  assert state['measures'][0][3] > 0 and state['costs']['compile'] > 0, state
  assert state['used_seconds'] <= budget * 1.05 + longest, state
  assert state['brackets'] and sum(state['stages'].values()) <= state['used_seconds']
  assert sidecar.read_metadata(workdir / 'final')['ensemble']['kind'] == 'auto'


def test_a_budget_too_short_for_two_epochs_is_one_line(tmp_path, footprints):
  result = launch(*TINY, THREE_FOLDS, f'--workdir={tmp_path}', '--config.auto.time_budget=1s', check=False,
                  env=_env(tmp_path, footprints))
  lines = [line for line in result.stderr.splitlines() if line.startswith('fpclass: error:')]
  assert result.returncode == 2 and len(lines) == 1 and "config.auto.time_budget='1s'" in lines[0], result.stderr[-2000:]
  assert f'trained {measure.EPOCHS} epochs on one fold' in lines[0]   # the measurement's own epoch count


def test_kill_9_then_relaunch_resumes_the_bracket_where_it_stopped(tmp_path, footprints):
  workdir, env = tmp_path / 'auto', _env(tmp_path, footprints)
  args = [*TINY, *PLAIN, TWO_FOLDS, *TWO_RUNGS, f'--workdir={workdir}', '--config.auto.time_budget=1h', LR_ONLY]
  first = launch_process(*args, env=env, new_session=True, output=tmp_path / 'first.log')
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and first.poll() is None:   # kill inside the first rung, 1 variant of 2 done
    done = list((workdir / 'rounds' / 'b0-r0').glob('trial-*/experiment.json'))
    if len(done) >= 1:
      break
    time.sleep(0.05)
  assert first.poll() is None, (tmp_path / 'first.log').read_text()[-2000:]
  os.killpg(first.pid, signal.SIGKILL)
  first.wait()
  finished_before = {p: p.stat().st_mtime_ns for p in (workdir / 'rounds' / 'b0-r0').glob('trial-*/experiment.json')}
  result = launch(*args, env=env, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert all(p.stat().st_mtime_ns == t for p, t in finished_before.items())   # not retrained
  assert sum(f'[{p.parent.name}] finished earlier' in result.stdout + result.stderr for p in finished_before) \
      == len(finished_before)
  trials = [t for t in _study(workdir).trials if 'claim' not in t.user_attrs]
  assert len(trials) == 2   # the relaunch asked for none again
  assert sidecar.read_metadata(workdir / 'final')['ensemble']['kind'] == 'auto'


def test_two_processes_share_a_postgresql_study_and_one_confirms(tmp_path, footprints):
  with postgres_server() as url:
    procs = [launch_process(*TINY, *PLAIN, TWO_FOLDS, *TWO_RUNGS, f'--workdir={tmp_path / f"auto{i}"}',
                            '--config.auto.time_budget=1h', f'--config.auto.storage={url}', LR_ONLY,
                            env=_env(tmp_path, footprints), output=tmp_path / f'auto{i}.log') for i in range(2)]
    for p in procs:
      p.wait(timeout=600)
    outputs = [(tmp_path / f'auto{i}.log').read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outputs]
    study = optuna.load_study(study_name='footprint-exp4', storage=url)
    trials = [t for t in study.trials if 'claim' not in t.user_attrs]
    assert {t.user_attrs['owner']['pid'] for t in trials} <= {p.pid for p in procs}
    assert len({t.user_attrs['folder'] for t in trials}) == len(trials)   # no trial twice
  assert sum('another live process of this study confirms' in o for o in outputs) == 1
  assert sum((tmp_path / f'auto{i}' / 'final' / 'metadata.json').is_file() for i in range(2)) == 1


def test_without_optuna_auto_says_which_extra_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'optuna', None)
  monkeypatch.delitem(sys.modules, 'fpclass.modes.auto', raising=False)
  with pytest.raises(UserInputError, match=r"pip install 'fpclass\[auto\]'"):
    importlib.import_module('fpclass.modes.auto')


def test_a_population_round_member_equals_its_solo_run(tmp_path, isolated_cache, footprints):
  """Two trials x two folds as one plan (`population.round_plan`, isolated), and fold 1 of the second trial trained alone
  (`--mode train`, through `runner.run` in this process as launch.py calls it: its programs compiled as the plan's
  are): the loop form runs the solo run's programs on the same rows, so the same bits."""
  # (the plan's members in one chunk: the memory rule's plan would compile each configuration's programs once more)
  config = config_from_argv(['launch.py', *TINY[:7], '--config.data.num_folds=2', '--config.sweep.models_per_chunk=2'])
  entries = [Entry('trial-0000', {}), Entry('trial-0001', {'train.learning_rate': 0.003})]
  plan, failed = round_plan(config, entries, (0, 1), (0,), 2)
  assert len(plan.variants) == 2 and not failed
  seed_cache(isolated_cache, footprints)   # this process's FPCLASS_CACHE, where both runs find the footprints
  with StopOnSignals() as stop:
    runs = run_plan(plan, tmp_path / 'round', stop=stop, isolate=True)
  assert all(not o.error for o in outcomes(runs, 'accuracy').values())
  solo = tmp_path / 'solo'
  run('train', config_from_argv(['launch.py', *TINY[:7], '--config.data.num_folds=2', '--config.data.fold=1',
                                 '--config.train.learning_rate=0.003']), solo)
  member = pd.read_csv(tmp_path / 'round' / 'trial-0001' / 'oof_predictions.csv', dtype={'id': str})
  alone = pd.read_csv(solo / 'oof_predictions.csv', dtype={'id': str})
  member = member[member['split'] == 1].set_index('id').sort_index()
  alone = alone.set_index('id').sort_index()
  probabilities = [c for c in alone.columns if c.startswith('p_')]
  np.testing.assert_array_equal(member[probabilities].to_numpy(), alone[probabilities].to_numpy())


def test_a_choice_no_trial_can_train_is_refused_before_any_work(tmp_path, footprints):
  result = launch(*TINY, f'--workdir={tmp_path}', "--config.auto.space=('train.learning_rate: choice(0.001, 0.0)',)",
                  '--config.auto.keep=0', check=False, env=_env(tmp_path, footprints))
  lines = [line for line in result.stderr.splitlines() if line.startswith('fpclass: error:')]
  assert result.returncode == 2 and len(lines) == 1 and 'config.auto.space[0]' in lines[0], result.stderr[-2000:]
  assert not (tmp_path / 'rounds').exists()


@pytest.mark.parametrize('entry,message', [
    ('train.learnin_rate: log(1e-4, 1e-2)', r"config.auto.space\[0\] \('train.learnin_rate: log\(1e-4, 1e-2\)'\): "
                                            r'train.learnin_rate is not a config key'),
    ('train.learning_rate: log(0, 1e-2)', r'log\(low, high\) needs two numbers, low < high and low > 0'),
    ('train.epochs: between(1, 3)', r"unknown kind 'between'")])
def test_a_wrong_space_entry_is_one_line_naming_it(tmp_path, entry, message, footprints):
  result = launch(*TINY, f'--workdir={tmp_path}', f"--config.auto.space=('{entry}',)", '--config.auto.keep=0',
                  check=False, env=_env(tmp_path, footprints))
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.startswith('fpclass: error:')]
  assert len(lines) == 1 and re.search(message, lines[0]), result.stderr[-2000:]
  assert not (tmp_path / 'trials').exists()


def test_the_first_trial_is_the_config_as_given():
  """Where the space's range holds the config's own value, the first trial takes it; the rest is sampled."""
  config = config_from_argv(['launch.py', '--config=configs/footprint.py:quick', '--config.train.learning_rate=0.002'])
  candidates = [Candidate('footprint_cnn', {}), Candidate('resnet18', {'model.name': 'resnet18'})]
  dims = parse_space(('model.name: backbones', 'train.learning_rate: log(1e-5, 1e-1)', 'train.epochs: int(50, 60)',
                      "augment.policy: choice('', 'trivialaugment')", 'train.ema_decay: choice(0.0, 0.999)'),
                     config, candidates)
  assert baseline_params(dims, config, candidates) == {
      'model.name': 'footprint_cnn', 'train.learning_rate': 0.002, 'augment.policy': "''", 'train.ema_decay': '0.0'}
