"""metrics.csv: a training run's epochs, one row each, in the workdir the run keeps its records in.

The file is rewritten whole from the run's rows once the epoch's `last` checkpoint is complete, so it lists
exactly the epochs a killed run resumes after. It is the run's own record (evaluate plots it, compare and the
tests read it), so this sink is always on, also outside the mode runner, and its faults stop the run.
"""
import pathlib

import pandas as pd

from fpclass import fileio
from fpclass.runtime.sinks.sink import Job, Sink

FILE = 'metrics.csv'


class CsvSink(Sink):
  name = 'metrics.csv'
  side_channel = False

  @classmethod
  def configured(cls, config, job: Job) -> 'CsvSink':
    return cls()

  def epoch(self, rows: list[dict], folder: pathlib.Path | None) -> None:
    if folder is not None:
      fileio.write_csv(pathlib.Path(folder) / FILE, pd.DataFrame(rows))
