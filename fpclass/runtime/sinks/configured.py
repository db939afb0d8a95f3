"""The sinks a job's config asks for, started as the tracker the mode runner makes current.

- RECORDS write a trained run's own files, in every mode that trains: metrics.csv always, TensorBoard with
  config.train.tensorboard.
- TRACKERS log the job as a run somewhere else, for the modes marked `tracked` (fpclass.modes.MODES): MLflow
  when config.track names a server.
A new backend is one module beside these and one entry here; its `configured(config, job)` returns the sink, or
None when the config leaves it off.
"""
from fpclass.runtime.sinks.csv_sink import CsvSink
from fpclass.runtime.sinks.mlflow_sink import MlflowSink
from fpclass.runtime.sinks.sink import Job
from fpclass.runtime.sinks.tensorboard_sink import TensorBoardSink
from fpclass.runtime.tracking import Tracker

RECORDS = (CsvSink, TensorBoardSink)
TRACKERS = (MlflowSink,)


def open_tracker(config, job: Job, tracked: bool) -> Tracker:
  """The tracker over the sinks `config` turns on (the trackers only when `tracked`), its root run started."""
  kinds = RECORDS + (TRACKERS if tracked else ())
  return Tracker([sink for kind in kinds if (sink := kind.configured(config, job)) is not None]).start(job)
