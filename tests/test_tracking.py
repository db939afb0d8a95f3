"""Experiment tracking against a real MLflow server (`mlflow server` on a free port, started here): a train run
and a two-member sweep read back through MlflowClient, and an unreachable server that changes nothing."""
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest

from tests.conftest import REPO, launch
from tests.test_serve_browser import browser  # noqa: F401 - the module fixture, shared

mlflow = pytest.importorskip('mlflow')

TINY = ['--config=configs/footprint.py:quick', '--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)',
        '--config.model.fc_sizes=(8,)', '--config.train.early_stopping_patience=0',
        '--config.explain.after_training=False', '--config.train.tensorboard=False']
SWEEP = ['--config=configs/footprint_sweep.py:exp0,quick', '--config.data.image_size=(24,16)',
         '--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)', '--config.sweep.seeds=(0,)',
         '--config.data.num_folds=2', '--mode=sweep']
WARNING = 'experiment tracking stopped'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: pathlib.Path, port: int):
  """`mlflow server` on 127.0.0.1:`port` (sqlite backend, local artifacts in `root`), up once /health answers;
  yields (its URL, a function that stops it). The server runs uvicorn as a child: its process group is stopped
  as one. Its background job runner (a handful of huey processes) is off: nothing here uses it."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri', f'sqlite:///{root}/mlflow.db',
       '--default-artifact-root', str(root / 'artifacts'), '--host', '127.0.0.1', '--port', str(port),
       '--workers', '1'], stdout=subprocess.DEVNULL, stderr=(root / 'server.log').open('w'), start_new_session=True,
      env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION='false'))

  def stop(signum=signal.SIGTERM):
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signum)
    try:
      process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()

  url = f'http://127.0.0.1:{port}'
  try:
    deadline = time.monotonic() + 90
    while True:
      try:
        if httpx.get(f'{url}/health', timeout=2).status_code == 200:
          break
      except httpx.HTTPError:
        pass
      if process.poll() is not None or time.monotonic() > deadline:
        raise AssertionError(f'mlflow server did not start:\n{(root / "server.log").read_text()[-3000:]}')
      time.sleep(0.5)
    yield url, stop
  finally:
    stop()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  with mlflow_server(tmp_path_factory.mktemp('mlflow'), free_port()) as (url, _):
    yield url


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return {'FPCLASS_CACHE': str(tmp_path_factory.mktemp('cache')), 'MLFLOW_TRACKING_URI': ''}


@pytest.fixture(scope='module')
def tracked(server, env, tmp_path_factory):
  """A tiny train run logged to the server: (workdir, tracking.json)."""
  workdir = tmp_path_factory.mktemp('tracked') / 'tiny-run'
  launch(*TINY, f'--workdir={workdir}', f'--config.track.mlflow_uri={server}', '--config.track.experiment=tests',
         env=env)
  return workdir, json.loads((workdir / 'tracking.json').read_text())


@pytest.fixture(scope='module')
def untracked(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('untracked') / 'run'
  launch(*TINY, f'--workdir={workdir}', env=env)
  return workdir


def files(folder):
  """The workdir's files; orbax names its array files at random, so checkpoints down to their kind and epoch."""
  paths = [p.relative_to(folder) for p in folder.rglob('*')]
  return sorted({str(p) if p.parts[0] != 'checkpoints' else '/'.join(p.parts[:3]) for p in paths})


def same_run(workdir, untracked) -> None:
  """The workdir holds the files of the untracked run (tracking.json aside) and the same epochs."""
  assert [f for f in files(workdir) if f != 'tracking.json'] == files(untracked)
  pd.testing.assert_frame_equal(pd.read_csv(workdir / 'metrics.csv').drop(columns='seconds'),
                                pd.read_csv(untracked / 'metrics.csv').drop(columns='seconds'))


def test_a_train_run_logs_its_config_epochs_scores_files_and_tags(server, tracked):
  workdir, stored = tracked
  client = mlflow.MlflowClient(server)
  run = client.get_run(stored['run_id'])
  assert run.info.status == 'FINISHED' and run.info.run_name == 'tiny-run'
  assert client.get_experiment(run.info.experiment_id).name == 'tests'
  assert run.data.params['train.epochs'] == '2' and run.data.params['mode'] == 'train'
  assert run.data.params['data.image_size'] == '[24, 16]'
  history = client.get_metric_history(run.info.run_id, 'val_accuracy')
  rows = pd.read_csv(workdir / 'metrics.csv')
  assert [m.step for m in history] == list(rows['epoch'])
  assert [m.value for m in history] == pytest.approx(list(rows['val_accuracy']))
  scores = json.loads((workdir / 'scores.json').read_text())
  assert run.data.metrics['accuracy'] == pytest.approx(scores['accuracy'])
  artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert 'report.md' in artifacts and any(a.endswith('.png') for a in artifacts)
  tags = run.data.tags
  assert tags['fpclass.version'] and tags['fpclass.backend'] == 'cpu' and tags['fpclass.device']


def test_a_sweep_is_a_parent_run_with_one_nested_run_per_member(server, env, tmp_path):
  workdir = tmp_path / 'sweep'
  launch(*SWEEP, f'--workdir={workdir}', f'--config.track.mlflow_uri={server}', '--config.track.run_name=two',
         env=env)
  parent = json.loads((workdir / 'tracking.json').read_text())['run_id']
  client = mlflow.MlflowClient(server)
  run = client.get_run(parent)
  assert run.info.run_name == 'two' and run.data.params['mode'] == 'sweep'
  assert 'sweep_results.png' in {a.path for a in client.list_artifacts(parent)}
  children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
  assert sorted(c.info.run_name for c in children) == ['exp0/fold0-seed0', 'exp0/fold1-seed0']
  models = pd.read_csv(workdir / 'sweep_models.csv')
  for child in children:
    assert child.info.status == 'FINISHED'
    row = models[models['split'] == int(child.data.params['split'])].iloc[0]
    assert child.data.metrics['accuracy'] == pytest.approx(row['accuracy'])
    assert [m.step for m in client.get_metric_history(child.info.run_id, 'val_loss')] == \
        list(range(1, int(row['epochs_trained']) + 1))


def test_an_unreachable_server_warns_once_and_changes_nothing_in_the_workdir(env, untracked, tmp_path):
  workdir = tmp_path / 'unreachable'
  start = time.monotonic()
  result = launch(*TINY, f'--workdir={workdir}', f'--config.track.mlflow_uri=http://127.0.0.1:{free_port()}',
                  env=env)
  assert (result.stdout + result.stderr).count(WARNING) == 1, result.stderr[-3000:]
  assert time.monotonic() - start < 120
  assert not (workdir / 'tracking.json').exists()
  same_run(workdir, untracked)


def test_a_mistyped_tracking_uri_is_one_line_before_any_work(env, tmp_path):
  """A URI MLflow cannot use (an unknown scheme, a missing colon) in config.track.mlflow_uri stops the launch in
  one line naming the key, before training writes anything."""
  for uri in ('htp://127.0.0.1:5000', 'http//127.0.0.1:5000'):
    workdir = tmp_path / uri.replace('/', '_').replace(':', '_')
    result = launch(*TINY, f'--workdir={workdir}', f'--config.track.mlflow_uri={uri}', env=env, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith('fpclass: error:')]
    assert line.startswith(f"fpclass: error: config.track.mlflow_uri='{uri}': MLflow cannot track there (")
    assert not (workdir / 'metrics.csv').exists() and not (workdir / 'tracking.json').exists()


def test_a_mistyped_uri_in_the_environment_warns_once_and_the_run_goes_on_untracked(env, untracked, tmp_path):
  workdir = tmp_path / 'env-typo'
  result = launch(*TINY, f'--workdir={workdir}', env=dict(env, MLFLOW_TRACKING_URI='htp://127.0.0.1:5000'))
  assert (result.stdout + result.stderr).count(WARNING) == 1, result.stderr[-3000:]
  assert "$MLFLOW_TRACKING_URI='htp://127.0.0.1:5000'" in result.stderr and 'Traceback' not in result.stderr
  same_run(workdir, untracked)


def test_a_server_stopped_in_the_middle_of_a_run_leaves_it_finishing_as_untracked(env, untracked, tmp_path):
  """The server stops once the run has started (tracking.json written): the epochs fail to log, the run goes on."""
  workdir = tmp_path / 'stopped'
  with mlflow_server(tmp_path, free_port()) as (url, stop):
    args = [sys.executable, 'launch.py', *TINY, f'--workdir={workdir}', f'--config.track.mlflow_uri={url}']
    training = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (workdir / 'tracking.json').exists() and training.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    stop(signal.SIGKILL)
  output, _ = training.communicate(timeout=300)
  assert training.returncode == 0, output[-3000:]
  assert output.count(WARNING) == 1, output[-3000:]
  same_run(workdir, untracked)


def test_the_mlflow_page_of_the_run_shows_its_name_and_a_metric(browser, server, tracked):  # noqa: F811
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  _, stored = tracked
  browser.get(f'{server}/#/experiments/{stored["experiment_id"]}/runs/{stored["run_id"]}')
  body = lambda d: d.find_element(By.TAG_NAME, 'body').text   # noqa: E731
  WebDriverWait(browser, 60).until(lambda d: 'tiny-run' in body(d) and 'val_accuracy' in body(d))
