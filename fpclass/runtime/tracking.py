"""Experiment tracking: a job's records fanned out to its sinks (`fpclass.runtime.sinks`: metrics.csv,
TensorBoard, MLflow).

The mode runner opens the process's tracker with the sinks its config asks for (`sinks.configured`) and makes
it `current()`; the stages log into whichever run is open: each epoch (`epoch`), nested runs (`nested`),
metrics, scores and files. Outside the runner `current()` writes metrics.csv alone. A fault in a side-channel
sink (the server unreachable at start, or down in the middle of a run) gives one warning and turns that sink
off: training goes on, and the workdir holds what that sink wrote before (MLflow's tracking.json).
"""
import contextlib
import json
import logging
import pathlib

from fpclass import fileio
from fpclass.errors import RunInterrupted
from fpclass.runtime.sinks.csv_sink import CsvSink
from fpclass.runtime.sinks.sink import Job, Sink, SinkFault

SCORES = 'scores.json'


class Tracker:
  """Every record to each of its sinks, in order; a side-channel sink that fails is warned about once and
  dropped, a sink that is not one (metrics.csv) lets the fault through."""

  def __init__(self, sinks=()):
    self._sinks: list[Sink] = list(sinks)

  @property
  def sinks(self) -> tuple:
    return tuple(self._sinks)

  def _each(self, what: str, call) -> None:
    for sink in list(self._sinks):
      try:
        call(sink)
      except Exception as e:   # a backend's or the network's error of any kind: tracking never stops training
        if not sink.side_channel:
          raise
        self._drop(sink, what, e)

  def _drop(self, sink: Sink, what: str, error: Exception) -> None:
    if isinstance(error, SinkFault):
      what, error = error.what, error.error
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    logging.warning('experiment tracking stopped: %s failed to %s (%s); training goes on without it', sink.name,
                    what, first)
    self._sinks.remove(sink)

  def start(self, job: Job) -> 'Tracker':
    """Opens the job's root run in every sink and logs its parameters."""
    self._each('start the run', lambda s: s.start(job))
    self.log_params(job.params)
    return self

  def log_params(self, params: dict) -> None:
    self._each('log parameters', lambda s: s.parameters(params))

  def epoch(self, rows: list[dict], folder: pathlib.Path | None = None) -> None:
    """A training epoch has ended: `rows`, its run's metrics rows so far (the last one new), and the workdir that
    run keeps its records in (None for a run that has none, such as a sweep's member)."""
    self._each(f'log epoch {rows[-1].get("epoch")}', lambda s: s.epoch(rows, folder))

  def log_metrics(self, values: dict, step: int = 0) -> None:
    self._each('log metrics', lambda s: s.metrics(values, step))

  def log_scores(self, workdir) -> None:
    """scores.json's numbers, when the workdir has one."""
    try:
      scores = json.loads((pathlib.Path(workdir) / SCORES).read_text())
    except (OSError, ValueError):
      return
    self._each('log scores', lambda s: s.scores(scores))

  def log_files(self, workdir) -> None:
    """The workdir's reports (report.md and the other top-level .md files) and figures (*.png)."""
    workdir = pathlib.Path(workdir)
    paths = fileio.finished(sorted([*workdir.glob('*.md'), *workdir.glob('*.png')]))
    if paths:
      self._each('log files', lambda s: s.files(paths))

  @contextlib.contextmanager
  def nested(self, name: str, params: dict | None = None, epochs: bool = False):
    """A child run of the open run for the block (`epochs`: the epochs run inside it are its own); it ends
    FINISHED, or FAILED / KILLED when the block raises."""
    self._each(f'start the nested run {name}', lambda s: s.nested_start(name, epochs))
    if params:
      self.log_params(params)
    try:
      yield self
    except BaseException as e:
      status = status_of(e)
      self._each('end a run', lambda s: s.nested_end(status))
      raise
    self._each('end a run', lambda s: s.nested_end('FINISHED'))

  def finish(self, workdir, status: str = 'FINISHED') -> None:
    """Ends the root run: with FINISHED, the workdir's scores and files logged first."""
    if status == 'FINISHED':
      self.log_scores(workdir)
      self.log_files(workdir)
    self._each('end the run', lambda s: s.end(status))
    self._sinks = [s for s in self._sinks if not s.side_channel]


_current = Tracker([CsvSink()])


def current() -> Tracker:
  """The process's tracker: the one the mode runner opened, or one that writes metrics.csv alone."""
  return _current


@contextlib.contextmanager
def active(tracker: Tracker, workdir):
  """`tracker` as `current()` for the block; a block that raises ends its root run FAILED (KILLED when stopped)."""
  global _current
  previous, _current = _current, tracker
  try:
    yield tracker
  except BaseException as e:
    tracker.finish(workdir, status_of(e))
    raise
  finally:
    _current = previous


def status_of(error: BaseException) -> str:
  return 'KILLED' if isinstance(error, (KeyboardInterrupt, RunInterrupted)) else 'FAILED'
