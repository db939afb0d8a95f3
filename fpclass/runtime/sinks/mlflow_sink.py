"""MLflow: a job as a run in a tracking server (config.track, docs/tracking.md), through `mlflow.MlflowClient`
with explicit run ids, so nested runs (a sweep's members, a search's trials) are explicit too and no active
MLflow run is set.

Optional (`pip install 'fpclass[track]'`) and off unless config.track.mlflow_uri or $MLFLOW_TRACKING_URI names
a server; only the modes marked `tracked` log, on process 0. A URI that MLflow cannot use is a one-line error
when it comes from config.track.mlflow_uri, and one warning when it comes from the environment. The workdir
records its run in tracking.json, so a relaunch (a resume, more epochs) logs into the same run.
"""
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
from fpclass.config.tracking import TrackSettings
from fpclass.errors import UserInputError
from fpclass.runtime.sinks.sink import Job, Sink, attempt, flatten

FILE = 'tracking.json'
MAX_PARAM_VALUE = 6000     # MLflow's limit on a parameter's value
MAX_PARAM_KEY = 250
BATCH = 100                # MLflow's limit on parameters per log_batch call
# An unreachable server costs seconds: one try, a short timeout (unless the user set them).
QUICK_FAILURE = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '0', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '10'}


class MlflowSink(Sink):
  """Logs into a stack of open runs: the root, then the nested ones; the top one receives what is logged."""
  name = 'MLflow'

  def __init__(self, client, uri: str):
    self._client, self._uri = client, uri
    self._runs = []            # (run id, takes epochs, reopened) from the root to the open run
    self._experiment_id = ''
    self._tags = {}            # given to nested runs too

  @classmethod
  def configured(cls, config, job: Job) -> 'MlflowSink | None':
    """The sink of the server config.track.mlflow_uri or $MLFLOW_TRACKING_URI names, or None when none is named,
    or (with a warning) when only the environment names one that cannot be used."""
    settings = TrackSettings.from_config(config.track)
    uri = settings.mlflow_uri or os.environ.get('MLFLOW_TRACKING_URI', '')
    if not uri or not fileio.is_primary():
      return None
    where = 'config.track.mlflow_uri' if settings.mlflow_uri else '$MLFLOW_TRACKING_URI'
    try:
      import mlflow  # an optional extra: imported only when tracking is on
    except ImportError:
      return _refuse(where, uri, 'mlflow is not installed, so runs cannot be tracked; pip install "fpclass[track]" '
                     + ('or leave config.track.mlflow_uri empty' if settings.mlflow_uri else 'or unset it'))
    for key, value in QUICK_FAILURE.items():
      os.environ.setdefault(key, value)
    try:
      client = mlflow.MlflowClient(tracking_uri=uri)
    except Exception as e:   # MLflow refuses the URI itself: a scheme it does not know, a malformed address
      return _refuse(where, uri, f'MLflow cannot track there ({_first_line(e)}); use a server\'s http(s):// '
                     'address or a database URI such as sqlite:///mlflow.db')
    return cls(client, uri)

  @property
  def run_id(self) -> str:
    return self._runs[-1][0]

  def start(self, job: Job) -> None:
    self._tags = run_tags()
    self._experiment_id = attempt('reach the tracking server', _experiment_id, self._client, job.experiment)
    stored = _stored_run(job.workdir, self._uri, self._experiment_id)
    if stored:
      attempt('reopen the run', self._client.update_run, stored, status='RUNNING')
      run_id = stored
    else:
      run_id = attempt('start a run', self._client.create_run, self._experiment_id, run_name=job.run_name,
                       tags=self._tags).info.run_id
    self._runs = [(run_id, job.epochs, bool(stored))]
    fileio.write_json(job.workdir / FILE, dict(tracking_uri=self._uri, experiment=job.experiment,
                                               experiment_id=self._experiment_id, run_id=run_id,
                                               run_name=job.run_name))

  def parameters(self, params: dict) -> None:
    """Strings cut to MLflow's limits, in batches; none for a reopened run (MLflow keeps a parameter's first
    value)."""
    from mlflow.entities import Param
    if self._runs[-1][2]:
      return
    items = [Param(str(k)[:MAX_PARAM_KEY], _text(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
    for i in range(0, len(items), BATCH):
      attempt('log parameters', self._client.log_batch, self.run_id, params=items[i:i + BATCH])

  def epoch(self, rows: list[dict], folder: pathlib.Path | None) -> None:
    """The new row at step = epoch, when the open run takes epochs."""
    if self._runs[-1][1]:
      self.metrics({k: v for k, v in rows[-1].items() if k != 'epoch'}, int(rows[-1]['epoch']))

  def metrics(self, values: dict, step: int) -> None:
    """The finite numbers of `values`; names MLflow refuses have their other characters as '_'."""
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    items = [Metric(_metric_name(k), float(v), now, int(step)) for k, v in values.items() if _finite(v)]
    if items:
      attempt('log metrics', self._client.log_batch, self.run_id, metrics=items)

  def scores(self, scores: dict) -> None:
    self.metrics(flatten(scores), 0)

  def files(self, paths: list[pathlib.Path]) -> None:
    for path in paths:
      attempt(f'log the artifact {path.name}', self._client.log_artifact, self.run_id, str(path))

  def nested_start(self, name: str, epochs: bool) -> None:
    run = attempt(f'start the nested run {name}', self._client.create_run, self._experiment_id, run_name=name,
                  tags={**self._tags, 'mlflow.parentRunId': self.run_id})
    self._runs.append((run.info.run_id, epochs, False))

  def nested_end(self, status: str) -> None:
    run_id = self._runs.pop()[0]
    attempt('end a run', self._client.set_terminated, run_id, status)

  def end(self, status: str) -> None:
    attempt('end the run', self._client.set_terminated, self._runs[0][0], status)
    self._runs = []


def _refuse(where: str, uri: str, why: str) -> None:
  """A URI the user put in the config stops the launch in one line; one from the environment warns once."""
  if where == 'config.track.mlflow_uri':
    raise UserInputError(f'config.track.mlflow_uri={uri!r}: {why}')
  logging.warning('experiment tracking stopped: %s=%r: %s; training goes on, untracked', where, uri, why)
  return None


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


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _text(value) -> str:
  return value if isinstance(value, str) else json.dumps(value, default=str)


def _finite(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _metric_name(name) -> str:
  return re.sub(r'[^A-Za-z0-9_\-. /]', '_', str(name))[:MAX_PARAM_KEY]
