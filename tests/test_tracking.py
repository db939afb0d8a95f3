"""Experiment tracking against a real MLflow server (`mlflow server` on a free port, started here): a train run
and a two-member sweep read back through MlflowClient, and an unreachable server that changes nothing.

Most runs here are `fpclass.modes.runner.run`, what launch.py calls, in this process: a launch would spend most
of its time importing. Two launches are kept for what only a launch shows: a mistyped URI is one line on the
console (exit status 2), and a tracking warning reaches the console once (the server stopped mid-run)."""
import contextlib
import json
import logging
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

from fpclass.errors import UserInputError
from fpclass.modes import runner
from tests.conftest import launch, launch_as_script, load_config
from tests.test_serve_browser import browser  # noqa: F401 - the module fixture, shared

mlflow = pytest.importorskip('mlflow')

SETTINGS = {'data.image_size': (24, 16), 'model.conv_channels': (4,), 'model.fc_sizes': (8,),
            'train.early_stopping_patience': 0, 'explain.after_training': False, 'train.tensorboard': False}
TINY = ['--config=configs/footprint.py:quick', *(f'--config.{key}={value}' for key, value in SETTINGS.items())]
SWEEP = {'data.image_size': (24, 16), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'sweep.seeds': (0,),
         'data.num_folds': 2}
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
    with httpx.Client(timeout=2) as client:   # one client for every poll: a new one per poll costs CPU
      while True:
        try:
          if client.get(f'{url}/health').status_code == 200:
            break
        except httpx.HTTPError:
          pass
        if process.poll() is not None or time.monotonic() > deadline:
          raise AssertionError(f'mlflow server did not start:\n{(root / "server.log").read_text()[-3000:]}')
        time.sleep(0.5)
    yield url, stop
  finally:
    stop()


class Server:
  """The module's MLflow server, started on first use. The last test stops it as a crash would; should a test
  after that need it, `url` starts it again on the same store (a new port)."""

  def __init__(self, root: pathlib.Path):
    self.root, self._stack, self._url, self._stop = root, contextlib.ExitStack(), None, None

  @property
  def url(self) -> str:
    if self._url is None:
      self._url, self._stop = self._stack.enter_context(mlflow_server(self.root, free_port()))
    return self._url

  def kill(self) -> None:
    self._stop(signal.SIGKILL)
    self.close()

  def close(self) -> None:
    self._stack.close()
    self._url = self._stop = None


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  handle = Server(tmp_path_factory.mktemp('mlflow'))
  try:
    yield handle
  finally:
    handle.close()


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """The environment of every run here: one cache for the module (the synthetic set is made once), no
  $MLFLOW_TRACKING_URI."""
  return {'FPCLASS_CACHE': str(tmp_path_factory.mktemp('cache')), 'MLFLOW_TRACKING_URI': ''}


def tiny(**overrides):
  """The config TINY gives a launch, with `overrides` (dotted keys)."""
  return load_config('configs/footprint.py:quick', **{**SETTINGS, **overrides})


def run_here(mode: str, config, workdir: pathlib.Path, env: dict):
  """`mode` run in this process under `env`; the environment is restored afterwards (the MLflow sink sets its
  quick-failure variables in it)."""
  saved = dict(os.environ)
  os.environ.update(env)
  try:
    return runner.run(mode, config, workdir)
  finally:
    os.environ.clear()
    os.environ.update(saved)


def tracking_warnings(caplog) -> list[str]:
  """The tracking warnings the run logged; none of its records carries a traceback."""
  assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
  return [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]


@pytest.fixture(scope='module')
def tracked(server, env, tmp_path_factory):
  """A tiny train run logged to the server: (workdir, tracking.json)."""
  workdir = tmp_path_factory.mktemp('tracked') / 'tiny-run'
  run_here('train', tiny(**{'track.mlflow_uri': server.url, 'track.experiment': 'tests'}), workdir, env)
  return workdir, json.loads((workdir / 'tracking.json').read_text())


@pytest.fixture(scope='module')
def untracked(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('untracked') / 'run'
  run_here('train', tiny(), workdir, env)
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
  client = mlflow.MlflowClient(server.url)
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
  config = load_config('configs/footprint_sweep.py:exp0,quick', **SWEEP, **{'track.mlflow_uri': server.url,
                                                                           'track.run_name': 'two'})
  run_here('sweep', config, workdir, env)
  parent = json.loads((workdir / 'tracking.json').read_text())['run_id']
  client = mlflow.MlflowClient(server.url)
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


def test_an_unreachable_server_warns_once_and_changes_nothing_in_the_workdir(env, untracked, tmp_path, caplog):
  workdir = tmp_path / 'unreachable'
  start = time.monotonic()
  with caplog.at_level(logging.WARNING):
    run_here('train', tiny(**{'track.mlflow_uri': f'http://127.0.0.1:{free_port()}'}), workdir, env)
  assert len(tracking_warnings(caplog)) == 1, [r.getMessage() for r in caplog.records]
  assert time.monotonic() - start < 120
  assert not (workdir / 'tracking.json').exists()
  same_run(workdir, untracked)


def test_a_mistyped_tracking_uri_is_one_line_before_any_work(env, tmp_path):
  """A URI MLflow cannot use (an unknown scheme, a missing colon) in config.track.mlflow_uri stops the launch in
  one line naming the key, before training writes anything. The first URI goes through launch.py (its one line
  and exit status 2 are what launch.py makes of the run's UserInputError); the second through the same run in
  this process, which raises that error with a one-line message."""
  uri = 'htp://127.0.0.1:5000'
  workdir = tmp_path / 'unknown-scheme'
  result = launch(*TINY, f'--workdir={workdir}', f'--config.track.mlflow_uri={uri}', env=env, check=False)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  [line] = [line for line in result.stderr.splitlines() if line.startswith('fpclass: error:')]
  assert line.startswith(f"fpclass: error: config.track.mlflow_uri='{uri}': MLflow cannot track there (")
  assert not (workdir / 'metrics.csv').exists() and not (workdir / 'tracking.json').exists()

  uri = 'http//127.0.0.1:5000'
  workdir = tmp_path / 'missing-colon'
  with pytest.raises(UserInputError) as refused:
    run_here('train', tiny(**{'track.mlflow_uri': uri}), workdir, env)
  message = str(refused.value)
  assert '\n' not in message and message.startswith(f"config.track.mlflow_uri='{uri}': MLflow cannot track there (")
  assert not (workdir / 'metrics.csv').exists() and not (workdir / 'tracking.json').exists()


def test_a_mistyped_uri_in_the_environment_warns_once_and_the_run_goes_on_untracked(env, untracked, tmp_path,
                                                                                     caplog):
  workdir = tmp_path / 'env-typo'
  with caplog.at_level(logging.WARNING):
    run_here('train', tiny(), workdir, dict(env, MLFLOW_TRACKING_URI='htp://127.0.0.1:5000'))
  [warning] = tracking_warnings(caplog)
  assert "$MLFLOW_TRACKING_URI='htp://127.0.0.1:5000'" in warning
  same_run(workdir, untracked)


def test_the_mlflow_page_of_the_run_shows_its_name_and_a_metric(browser, server, tracked):  # noqa: F811
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  _, stored = tracked
  browser.get(f'{server.url}/#/experiments/{stored["experiment_id"]}/runs/{stored["run_id"]}')
  body = lambda d: d.find_element(By.TAG_NAME, 'body').text   # noqa: E731
  WebDriverWait(browser, 60).until(lambda d: 'tiny-run' in body(d) and 'val_accuracy' in body(d))


# launch.py in the logging state of a fresh interpreter: no handler on the root logger. The launch server's import of
# orbax.checkpoint gave its root logger a stderr handler, which a launch forked from it would keep, printing each
# Python warning a second time beside absl's line (tests/forkserver.py).
FRESH_LOGGING_LAUNCH = """
import logging, os, runpy, sys
logging.root.handlers.clear()
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(sys.argv[0])   # as `python launch.py` has it
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def launch_with_console(args: list, env: dict, log: pathlib.Path):
  """`python launch.py *args` with its stdout and stderr together in `log` (as 2>&1), the console a user sees:
  FRESH_LOGGING_LAUNCH forked from the launch server where `env` allows, else a subprocess. A process with poll,
  wait and communicate, as Popen's."""
  return launch_as_script(FRESH_LOGGING_LAUNCH, 'fresh-logging', args, env, log, [sys.executable])


def test_a_server_stopped_in_the_middle_of_a_run_leaves_it_finishing_as_untracked(server, env, untracked, tmp_path):
  """The server stops once the run has started (tracking.json written): the epochs fail to log, the run goes on,
  and its console shows the one warning. A launch, for that console; last here, as it stops the module's
  server."""
  workdir, log = tmp_path / 'stopped', tmp_path / 'console.log'
  training = launch_with_console([*TINY, f'--workdir={workdir}', f'--config.track.mlflow_uri={server.url}'],
                                 dict(os.environ, **env), log)
  try:
    deadline = time.monotonic() + 120
    while not (workdir / 'tracking.json').exists() and training.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
  finally:
    server.kill()
  training.communicate(timeout=300)
  output = log.read_text()
  assert training.returncode == 0, output[-3000:]
  assert output.count(WARNING) == 1, output[-3000:]
  same_run(workdir, untracked)
