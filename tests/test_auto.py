"""--mode auto through launch.py on the quick synthetic footprints with a tiny CNN: a whole run and its final
workdir submitting, a budget shorter than a trial, a kill -9 and a relaunch, two processes sharing a
PostgreSQL-backed study, the Wilcoxon pruner stopping a planted hopeless trial, and a wrong search-space entry
named in one line. Budgets here are either generous (the trial count decides) or shorter than any trial, so no
test depends on the machine's speed; how well a real budget is kept is bench/auto.py's measurement."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from fpclass.modes.command_line import config_from_argv
from fpclass.search.space import Candidate, baseline_params, parse_space
from fpclass.train import sidecar
from tests.conftest import REPO, launch
from tests.postgres import postgres_server

TINY = ['--config=configs/footprint.py:quick', '--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)',
        '--config.model.fc_sizes=(8,)', '--config.train.epochs=2', '--config.train.early_stopping_patience=0',
        '--config.explain.after_training=False', '--config.train.tensorboard=False', '--mode=auto',
        '--config.auto.finalists=2']
THREE_FOLDS = '--config.auto.folds=3'
LR_ONLY = "--config.auto.space=('train.learning_rate: log(1e-7, 5e-2)',)"


def _env(tmp_path):
  return {'FPCLASS_CACHE': str(tmp_path / 'cache')}


def test_a_tiny_run_chooses_confirms_refits_and_its_final_model_submits(tmp_path):
  """A budget no busy machine exhausts, so the trial count decides; bench/auto.py measures the budget itself."""
  workdir = tmp_path / 'auto'
  result = launch(*TINY, THREE_FOLDS, f'--workdir={workdir}', '--config.auto.time_budget=1h',
                  '--config.auto.trials=4', '--config.auto.confirm_seeds=(101,)', env=_env(tmp_path))
  assert 'chose trial' in result.stdout
  trials = pd.read_csv(workdir / 'trials.csv')
  assert len(trials) == 4 and (trials['state'] == 'COMPLETE').sum() >= 2
  for member in (workdir / 'trials').glob('trial-*/fold*-seed0'):   # every member an ordinary workdir
    assert (member / 'metadata.json').is_file() and (member / 'oof_predictions.csv').is_file()
  confirm = pd.read_csv(workdir / 'confirm_members.csv')
  assert len(confirm) == 2 * 3 and set(confirm['seed']) == {101}   # 2 finalists x 3 folds x 1 fresh seed
  report = (workdir / 'auto_report.md').read_text()
  for heading in ('### 1. Screen', '### 2. Search', '### 3. Confirm on fresh seeds', '### 4. The chosen'):
    assert heading in report
  assert 'Paired differences from the best finalist' in report and (workdir / 'auto_history.png').is_file()
  # The budget's account: every stage timed, and what they add up to used.
  state = json.loads((workdir / 'auto_state.json').read_text())
  assert {'search', 'confirm', 'refit'} <= set(state['stages']), state
  assert sum(state['stages'].values()) <= state['used_seconds'] <= 3600, state
  # The choice re-runs from its config file, and the final workdir is an ordinary one that submits.
  chosen = config_from_argv(['launch.py', f'--config={workdir / "chosen_config.py"}'])
  stored = sidecar.read_metadata(workdir / 'final')['config']
  assert sidecar.config_as_json(chosen) == stored   # the whole configuration
  assert json.loads((workdir / 'final' / 'scores.json').read_text())['accuracy'] >= 0
  launch(f'--workdir={workdir / "final"}', '--mode=submit', env=_env(tmp_path))
  assert len(pd.read_csv(workdir / 'final' / 'submission.csv')) == 16
  # The run recorded its config (workdir.json), so the modes that read its trials need only --workdir.
  assert json.loads((workdir / 'workdir.json').read_text())['kind'] == 'auto'
  launch(f'--workdir={workdir}', '--mode=label_issues', '--config.label_issues.grid=0', env=_env(tmp_path))
  assert (workdir / 'label_quality.csv').is_file()


def test_a_budget_shorter_than_a_trial_still_chooses_and_refits_and_says_it_overran(tmp_path):
  """No trial count is set, and the budget is spent before the first trial ends: that trial still runs to its
  end (a choice needs one), no second one starts, the confirmation is skipped, and the refit trains in full."""
  workdir = tmp_path / 'auto'
  launch(*TINY, THREE_FOLDS, f'--workdir={workdir}', '--config.auto.time_budget=1s', env=_env(tmp_path))
  trials = pd.read_csv(workdir / 'trials.csv')
  assert list(trials['state']) == ['COMPLETE']
  report = (workdir / 'auto_report.md').read_text()
  assert (workdir / 'final' / 'scores.json').is_file() and 'skipped' in report
  assert 'trained and evaluated in full after the budget was spent' in report


def test_kill_9_then_relaunch_resumes_the_study_and_the_members(tmp_path):
  workdir, env = tmp_path / 'auto', dict(os.environ, **_env(tmp_path))
  args = [sys.executable, str(REPO / 'launch.py'), *TINY, THREE_FOLDS, f'--workdir={workdir}',
          '--config.auto.time_budget=1h', '--config.auto.trials=3', '--config.auto.confirm_seeds=(101,)',
          '--config.train.epochs=3', LR_ONLY]
  log = (tmp_path / 'first.log').open('w')
  first = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  deadline = time.monotonic() + 300
  # Kill once a member has finished and the next one is inside its epochs (its `last` checkpoint exists).
  while time.monotonic() < deadline and first.poll() is None:
    members = list((workdir / 'trials').glob('trial-*/fold*-seed0'))
    done = [m for m in members if (m / 'oof_predictions.csv').is_file()]
    running = [m for m in members if (m / 'checkpoints' / 'last').is_dir() and m not in done]
    if done and running:
      break
    time.sleep(0.05)
  assert first.poll() is None, (tmp_path / 'first.log').read_text()[-2000:]
  os.killpg(first.pid, signal.SIGKILL)
  first.wait()
  finished_before = {m: (m / 'metrics.csv').stat().st_mtime_ns for m in done}
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert 'left running by a process that is gone; asked for again' in result.stdout + result.stderr
  assert all((m / 'metrics.csv').stat().st_mtime_ns == t for m, t in finished_before.items())   # not retrained
  assert 'resuming' in result.stdout + result.stderr   # the killed member went on from its checkpoint
  study = optuna.load_study(study_name='footprint-exp4',
                            storage=JournalStorage(JournalFileBackend(str(workdir / 'optuna.journal'))))
  failed = {t.number: t for t in study.trials if t.state == optuna.trial.TrialState.FAIL}
  retries = [t for t in study.trials if t.user_attrs.get('retry_of') is not None]
  assert retries and retries[0].params == failed[retries[0].user_attrs['retry_of']].params
  assert (workdir / 'final' / 'scores.json').is_file()


def test_two_processes_share_a_postgresql_study_and_no_trial_runs_twice(tmp_path):
  workdir, env = tmp_path / 'auto', dict(os.environ, **_env(tmp_path))
  with postgres_server() as url:
    args = [sys.executable, str(REPO / 'launch.py'), *TINY, THREE_FOLDS, f'--workdir={workdir}',
            '--config.auto.time_budget=1h', '--config.auto.trials=4', '--config.auto.confirm_seeds=()',
            f'--config.auto.storage={url}', LR_ONLY]
    procs = [subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outputs]
    study = optuna.load_study(study_name='footprint-exp4', storage=url)
    trials = [t for t in study.trials if t.state.is_finished()]
    # config.auto.trials counts the trials finished or running when a process asks for one; two asking in the
    # same instant may each take the last one.
    assert 4 <= len(trials) <= 5
    assert {t.user_attrs['owner']['pid'] for t in trials} <= {p.pid for p in procs}
    folders = [f'trial {t.number} ' for t in trials]
    assert all(sum(f in o for o in outputs) == 1 for f in folders)   # each trial logged by exactly one process
  assert sum('runs the confirmation and the refit' in o for o in outputs) == 1   # one confirms and refits
  assert (workdir / 'final' / 'scores.json').is_file()


def test_the_wilcoxon_pruner_stops_a_planted_hopeless_trial(tmp_path):
  """A good trial (learning rate 3e-2) then a hopeless one (1e-7), enqueued, scored by validation loss (on 9
  images a fold the accuracy of both can tie): after three folds every one worse than the good trial's
  (one-sided Wilcoxon p = 1/8 < 0.2), the fourth fold never trains."""
  workdir = tmp_path / 'auto'
  workdir.mkdir()
  storage = JournalStorage(JournalFileBackend(str(workdir / 'optuna.journal')))
  study = optuna.create_study(study_name='planted', storage=storage, direction='minimize')
  study.enqueue_trial({'train.learning_rate': 3e-2})
  study.enqueue_trial({'train.learning_rate': 1e-7})
  launch(*TINY, f'--workdir={workdir}',
         '--config.auto.folds=4', '--config.auto.study=planted', '--config.auto.p_threshold=0.2',
         '--config.auto.metric=loss',
         '--config.auto.trials=2', '--config.auto.time_budget=1h', '--config.auto.confirm_seeds=()', LR_ONLY,
         env=_env(tmp_path))
  good, hopeless = sorted(optuna.load_study(study_name='planted', storage=storage).trials, key=lambda t: t.number)
  assert good.state == optuna.trial.TrialState.COMPLETE and len(good.intermediate_values) == 4
  assert hopeless.state == optuna.trial.TrialState.PRUNED and len(hopeless.intermediate_values) == 3
  folder = next(p for p in (workdir / 'trials').iterdir() if (p / 'fold2-seed0').is_dir()
                and not (p / 'fold3-seed0').exists())
  assert folder.name.startswith('trial-')


@pytest.mark.parametrize('entry,message', [
    ('train.learnin_rate: log(1e-4, 1e-2)', r"config.auto.space\[0\] \('train.learnin_rate: log\(1e-4, 1e-2\)'\): "
                                            r'train.learnin_rate is not a config key'),
    ('train.learning_rate: log(0, 1e-2)', r'log\(low, high\) needs two numbers, low < high and low > 0'),
    ('train.epochs: between(1, 3)', r"unknown kind 'between'")])
def test_a_wrong_space_entry_is_one_line_naming_it(tmp_path, entry, message):
  result = launch(*TINY, f'--workdir={tmp_path}', f"--config.auto.space=('{entry}',)", '--config.auto.keep=0',
                  check=False, env=_env(tmp_path))
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
