"""`config.track`: the MLflow sink of experiment tracking, where a server is named (docs/tracking.md)."""
import dataclasses
from typing import ClassVar

from fpclass.config.settings import Settings


@dataclasses.dataclass(frozen=True)
class TrackSettings(Settings):
  """`config.track`: where --mode train, sweep and auto log their runs (parameters, epoch metrics, scores,
  report.md and figures). Tracking is optional: off unless a URI is given here or in $MLFLOW_TRACKING_URI."""
  SECTION: ClassVar[str] = 'track'
  mlflow_uri: str = ''             # http://host:5000, sqlite:///mlflow.db, ...; '' -> $MLFLOW_TRACKING_URI, or off
  experiment: str = ''             # the MLflow experiment's name; '' -> config.name
  run_name: str = ''               # the run's name; '' -> the workdir's folder name

  def check(self):
    self.require('mlflow_uri', self.mlflow_uri == self.mlflow_uri.strip(), 'a URI without surrounding spaces')
