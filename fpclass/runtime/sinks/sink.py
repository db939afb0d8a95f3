"""The interface every tracking sink implements, and what a job's root run starts from.

A sink receives a job's records as they happen: the root run's start and parameters, each training epoch, the
metrics and scores of the open run, its files, nested runs (a sweep's members, a search's trials) and the end.
Every method is a no-op here, so a backend implements only what it keeps. `fpclass.runtime.tracking.Tracker`
calls them, one sink after another.
"""
import dataclasses
import pathlib

STATUSES = ('FINISHED', 'FAILED', 'KILLED')   # how a run ends (MLflow's names)


@dataclasses.dataclass(frozen=True)
class Job:
  """The root run of a job: its mode, workdir, names, parameters, and whether it takes the epochs itself (one
  training run) or leaves them to nested runs (a sweep's members, a search's refit)."""
  mode: str
  workdir: pathlib.Path
  experiment: str      # config.track.experiment, or config.name
  run_name: str        # config.track.run_name, or the workdir's folder name
  params: dict         # the flattened config and the mode
  epochs: bool = False


class Sink:
  """One place a job's records go. `name` appears in the warning of a fault. A side-channel sink's fault (any
  exception; `SinkFault` says what it was doing) warns once and turns the sink off; a sink that is not a side
  channel (metrics.csv, which a resumed run relies on) lets its fault stop the run."""
  name = 'sink'
  side_channel = True

  def start(self, job: Job) -> None:
    """Opens the job's root run (the next calls go to it)."""

  def parameters(self, params: dict) -> None:
    """The open run's parameters (flat keys: 'train.learning_rate')."""

  def epoch(self, rows: list[dict], folder: pathlib.Path | None) -> None:
    """A training epoch has ended: `rows` are its run's metrics.csv rows so far, the last one new ('epoch' is
    its step); `folder` is the workdir that run keeps its records in, or None (a sweep's member)."""

  def metrics(self, values: dict, step: int) -> None:
    """Numbers of the open run at `step` (a trial's fold scores, a member's results)."""

  def scores(self, scores: dict) -> None:
    """An evaluated run's scores.json (nested: 'per_class' -> class -> 'f1')."""

  def files(self, paths: list[pathlib.Path]) -> None:
    """Reports and figures of the open run (report.md, *.png)."""

  def nested_start(self, name: str, epochs: bool) -> None:
    """Opens a run inside the open one; `epochs`: the epochs that run under it are its own."""

  def nested_end(self, status: str) -> None:
    """Ends the innermost nested run with one of STATUSES."""

  def end(self, status: str) -> None:
    """Ends the root run with one of STATUSES."""


class SinkFault(Exception):
  """A sink's call that failed, with what it was doing ('reach the tracking server'), for the one warning."""

  def __init__(self, what: str, error: BaseException):
    super().__init__(f'{what}: {error}')
    self.what, self.error = what, error


def attempt(what: str, fn, *args, **kwargs):
  """fn(*args, **kwargs), any exception of it raised as SinkFault(what, exception)."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:   # a backend's or the network's error of any kind: the Tracker warns and goes on
    raise SinkFault(what, e) from e


def flatten(values: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: a config or scores.json as flat keys."""
  flat = {}
  for key, value in values.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, f'{name}.'))
    else:
      flat[name] = value
  return flat
