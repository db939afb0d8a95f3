"""Experiment tracking in an MLflow server: a `Tracker` logs a run's config, epoch metrics, scores and files.

Tracking is optional (`pip install 'fpclass[track]'`) and off unless config.track.mlflow_uri or
$MLFLOW_TRACKING_URI names a server. It goes through `mlflow.MlflowClient` with explicit run ids, so nested runs
(a sweep's members, a search's trials) are explicit too. A fault in MLflow (the server unreachable at start, or
down in the middle of a run) gives one warning and turns tracking off: training goes on, and the workdir gets
nothing from tracking but `tracking.json`, the run's id, written when the run was started.

The mode runner opens the process's tracker (`start`) and makes it `current()`; the stages log into whichever
run is open: epochs (`epoch_row`), nested runs (`nested`), metrics.
"""
import contextlib
import json
import logging
import math
import numbers
import os
import pathlib
import re
import subprocess
import time

import jax

import fpclass
from fpclass import fileio
from fpclass.errors import RunInterrupted, UserInputError

FILE = 'tracking.json'
MAX_PARAM_VALUE = 6000     # MLflow's limit on a parameter's value
MAX_PARAM_KEY = 250
BATCH = 100                # MLflow's limit on parameters per log_batch call
# An unreachable server costs seconds: one try, a short timeout (unless the user set them).
QUICK_FAILURE = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '10'}


class Tracker:
  """Logs into a stack of open MLflow runs (the top one receives metrics); a no-op when tracking is off or
  after a fault. `epochs` of a run: whether the training epochs that run under it log their rows there."""

  def __init__(self, client=None, run_id: str = '', epochs: bool = False):
    self._client = client
    self._runs = [(run_id, epochs)] if client is not None and run_id else []
    self.experiment_id = ''
    self.tags = {}     # given to nested runs too

  @property
  def on(self) -> bool:
    return self._client is not None and bool(self._runs)

  @property
  def run_id(self) -> str:
    """The open run's id ('' when off)."""
    return self._runs[-1][0] if self.on else ''

  def _call(self, what: str, fn, *args, **kwargs):
    """fn(*args) when on; the first fault warns once and turns tracking off for the rest of the process."""
    if not self.on:
      return None
    try:
      return fn(*args, **kwargs)
    except Exception as e:   # any MLflow or network error: tracking is a side channel, never a reason to stop
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      logging.warning('experiment tracking stopped: MLflow failed to %s (%s); training goes on, untracked', what, first)
      self._client, self._runs = None, []
      return None

  def log_params(self, params: dict) -> None:
    """Parameters as strings, cut to MLflow's limits, in batches."""
    if not self.on:
      return
    from mlflow.entities import Param  # an optional extra: imported only when tracking is on
    items = [Param(str(k)[:MAX_PARAM_KEY], _text(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
    for i in range(0, len(items), BATCH):
      self._call('log parameters', self._client.log_batch, self.run_id, params=items[i:i + BATCH])

  def log_metrics(self, metrics: dict, step: int = 0) -> None:
    """The finite numbers of `metrics` at `step`; names MLflow refuses have their other characters as '_'."""
    if not self.on:
      return
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    items = [Metric(_metric_name(k), float(v), now, int(step)) for k, v in metrics.items() if _finite(v)]
    if items:
      self._call('log metrics', self._client.log_batch, self.run_id, metrics=items)

  def epoch_row(self, row: dict) -> None:
    """An epoch's metrics row (metrics.csv) at step=epoch, when the open run takes epochs."""
    if self.on and self._runs[-1][1]:
      self.log_metrics({k: v for k, v in row.items() if k != 'epoch'}, step=int(row['epoch']))

  def log_files(self, workdir) -> None:
    """The workdir's reports (report.md and the other top-level .md files) and figures (*.png) as artifacts."""
    if not self.on:
      return
    workdir = pathlib.Path(workdir)
    for path in sorted([*workdir.glob('*.md'), *workdir.glob('*.png')]):
      self._call(f'log the artifact {path.name}', self._client.log_artifact, self.run_id, str(path))

  def log_scores(self, workdir) -> None:
    """scores.json's numbers (nested keys joined with '.') as metrics, when the workdir has one."""
    try:
      scores = json.loads((pathlib.Path(workdir) / 'scores.json').read_text())
    except (OSError, ValueError):
      return
    self.log_metrics(flatten(scores))

  @contextlib.contextmanager
  def nested(self, name: str, params: dict | None = None, epochs: bool = False):
    """A child run of the open run (tag mlflow.parentRunId), open for the block; it ends FINISHED, or FAILED /
    KILLED when the block raises. A no-op when tracking is off."""
    run = self._call(f'start the nested run {name}', self._client.create_run, self.experiment_id, run_name=name,
                     tags={**self.tags, 'mlflow.parentRunId': self.run_id}) if self.on else None
    if run is None:
      yield self
      return
    self._runs.append((run.info.run_id, epochs))
    depth = len(self._runs)
    if params:
      self.log_params(params)
    try:
      yield self
    except BaseException as e:
      self._end_top(depth, _status(e))
      raise
    self._end_top(depth, 'FINISHED')

  def _end_top(self, depth: int, status: str) -> None:
    if self.on and len(self._runs) == depth:
      self._call('end a run', self._client.set_terminated, self.run_id, status)
    if len(self._runs) == depth:
      self._runs.pop()

  def finish(self, workdir, status: str = 'FINISHED') -> None:
    """Ends the root run: with FINISHED, the workdir's scores and files logged first."""
    if not self.on:
      return
    if status == 'FINISHED':
      self.log_scores(workdir)
      self.log_files(workdir)
    self._call('end the run', self._client.set_terminated, self._runs[0][0], status)
    self._runs = []


_current = Tracker()


def current() -> Tracker:
  """The process's tracker: the one the mode runner opened, or one that is off."""
  return _current


@contextlib.contextmanager
def active(tracker: Tracker, workdir):
  """`tracker` as `current()` for the block; a block that raises ends its root run FAILED (KILLED when stopped)."""
  global _current
  previous, _current = _current, tracker
  try:
    yield tracker
  except BaseException as e:
    tracker.finish(workdir, _status(e))
    raise
  finally:
    _current = previous


def start(mlflow_uri: str, experiment: str, run_name: str, workdir, params: dict, epochs: bool = False) -> Tracker:
  """Opens the run of `workdir` (the one its tracking.json names, when it is on the same server: a resumed
  run goes on logging there), or a new one; an off Tracker when no server is named (`mlflow_uri`, the value of
  config.track.mlflow_uri, or $MLFLOW_TRACKING_URI), or on a fault."""
  uri = mlflow_uri or os.environ.get('MLFLOW_TRACKING_URI', '')
  if not uri:
    return Tracker()
  try:
    import mlflow
  except ImportError:
    message = ('mlflow is not installed, so runs cannot be tracked; pip install "fpclass[track]"'
               + (' or leave config.track.mlflow_uri empty' if mlflow_uri else ' or unset MLFLOW_TRACKING_URI'))
    if mlflow_uri:
      raise UserInputError(f'config.track.mlflow_uri={uri!r}: {message}') from None
    logging.warning(message)
    return Tracker()
  for key, value in QUICK_FAILURE.items():
    os.environ.setdefault(key, value)
  workdir = pathlib.Path(workdir)
  client = mlflow.MlflowClient(tracking_uri=uri)
  tracker = Tracker(client, 'opening', epochs)   # no run yet; its _call guards the calls below
  tracker.tags = tags = run_tags()
  experiment_id = tracker._call('reach the tracking server', _experiment_id, client, experiment)
  if experiment_id is None:
    return Tracker()
  stored = _stored_run(workdir, uri, experiment_id)
  if stored:
    tracker._call('reopen the run', client.update_run, stored, status='RUNNING')
    run_id = stored
  else:
    run = tracker._call('start a run', client.create_run, experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id if run is not None else None
  if not tracker.on or run_id is None:
    return Tracker()
  tracker._runs = [(run_id, epochs)]
  tracker.experiment_id = experiment_id
  if not stored:
    tracker.log_params(params)
  if tracker.on and fileio.is_primary():
    fileio.write_json(workdir / FILE, dict(tracking_uri=uri, experiment=experiment, experiment_id=experiment_id,
                                           run_id=run_id, run_name=run_name))
  return tracker


def _experiment_id(client, name: str) -> str:
  experiment = client.get_experiment_by_name(name)
  return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def _stored_run(workdir: pathlib.Path, uri: str, experiment_id: str) -> str:
  """The run id tracking.json holds for this server and experiment, or ''."""
  try:
    stored = json.loads((workdir / FILE).read_text())
  except (OSError, ValueError):
    return ''
  same = isinstance(stored, dict) and stored.get('tracking_uri') == uri and stored.get('experiment_id') == experiment_id
  return str(stored.get('run_id', '')) if same else ''


def run_tags() -> dict:
  """fpclass's version, the git commit of its checkout (where there is one), JAX's backend and device kind."""
  tags = {'fpclass.version': fpclass.__version__, 'fpclass.backend': jax.default_backend(),
          'fpclass.device': jax.devices()[0].device_kind}
  commit = _git_commit(pathlib.Path(fpclass.__file__).resolve().parent.parent)
  if commit:
    tags['mlflow.source.git.commit'] = commit
    tags['fpclass.git_commit'] = commit
  return tags


def _git_commit(folder: pathlib.Path) -> str:
  """The checkout's HEAD, when fpclass runs from one (not from site-packages inside some other repository)."""
  if not (folder / '.git').exists():
    return ''
  try:
    done = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=folder, capture_output=True, text=True, timeout=5)
  except (OSError, subprocess.SubprocessError):
    return ''
  return done.stdout.strip() if done.returncode == 0 else ''


def flatten(values: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: a config or scores.json as MLflow's flat keys."""
  flat = {}
  for key, value in values.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, f'{name}.'))
    else:
      flat[name] = value
  return flat


def _text(value) -> str:
  return value if isinstance(value, str) else json.dumps(value, default=str)


def _finite(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _metric_name(name) -> str:
  return re.sub(r'[^A-Za-z0-9_\-. /]', '_', str(name))[:MAX_PARAM_KEY]


def _status(error: BaseException) -> str:
  return 'KILLED' if isinstance(error, (KeyboardInterrupt, RunInterrupted)) else 'FAILED'
