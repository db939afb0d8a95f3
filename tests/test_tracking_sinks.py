"""Tracking as sinks: a new backend is one class whose `configured` the registry calls, and it receives a train
run's parameters, every epoch (the rows metrics.csv holds), scores, files and its end; nested runs end with the
status of their block; a failing side-channel sink warns once and the others go on; a fault in metrics.csv stops
the run. The real backends against a real MLflow server: test_tracking.py."""
import json
import logging

import pandas as pd
import pytest

from fpclass.errors import RunInterrupted
from fpclass.modes import MODES
from fpclass.modes.runner import run
from fpclass.runtime import tracking
from fpclass.runtime.sinks import configured
from fpclass.runtime.sinks.csv_sink import CsvSink
from fpclass.runtime.sinks.sink import Sink, SinkFault
from fpclass.runtime.sinks.tensorboard_sink import TensorBoardSink
from tests.conftest import load_config


class Recording(Sink):
  """A backend as a user would add one (Weights & Biases, say): it keeps every call it receives."""
  name = 'Recording'
  made = []

  def __init__(self):
    self.calls = []
    Recording.made.append(self)

  @classmethod
  def configured(cls, config, job):
    return cls()

  def start(self, job):
    self.calls.append(('start', job))

  def parameters(self, params):
    self.calls.append(('parameters', params))

  def epoch(self, rows, folder):
    self.calls.append(('epoch', [dict(r) for r in rows], folder))

  def metrics(self, values, step):
    self.calls.append(('metrics', values, step))

  def scores(self, scores):
    self.calls.append(('scores', scores))

  def files(self, paths):
    self.calls.append(('files', [p.name for p in paths]))

  def nested_start(self, name, epochs):
    self.calls.append(('nested_start', name, epochs))

  def nested_end(self, status):
    self.calls.append(('nested_end', status))

  def end(self, status):
    self.calls.append(('end', status))


class Failing(Recording):
  name = 'Flaky'

  def epoch(self, rows, folder):
    raise SinkFault('send an epoch', ConnectionError('connection refused\nsecond line'))


def test_a_new_backend_is_one_class_and_receives_a_train_run(tmp_path, monkeypatch):
  monkeypatch.setattr(configured, 'TRACKERS', (Recording,))
  monkeypatch.setattr(Recording, 'made', [])
  config = load_config('configs/footprint.py:quick', **{
      'data.image_size': (24, 16), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'train.epochs': 2,
      'train.early_stopping_patience': 0, 'explain.after_training': False, 'train.tensorboard': False})
  workdir = tmp_path / 'run'
  run('train', config, workdir)
  [sink] = Recording.made
  kinds = [c[0] for c in sink.calls]
  assert kinds[:2] == ['start', 'parameters'] and kinds[-3:] == ['scores', 'files', 'end']
  job = sink.calls[0][1]
  assert job.mode == 'train' and job.epochs and job.workdir == workdir and job.run_name == 'run'
  assert sink.calls[1][1]['train.epochs'] == 2 and sink.calls[1][1]['mode'] == 'train'
  epochs = [c for c in sink.calls if c[0] == 'epoch']
  history = pd.read_csv(workdir / 'metrics.csv')
  assert [len(c[1]) for c in epochs] == [1, 2] and all(c[2] == workdir for c in epochs)
  assert pd.DataFrame(epochs[-1][1])['val_loss'].tolist() == pytest.approx(history['val_loss'].tolist())
  assert sink.calls[-3][1] == json.loads((workdir / 'scores.json').read_text())
  assert 'report.md' in sink.calls[-2][1] and sink.calls[-1] == ('end', 'FINISHED')
  assert not (workdir / 'tensorboard').exists()   # config.train.tensorboard=False leaves that sink off


def test_the_modes_fields_decide_tracking_and_timing():
  assert {n for n, m in MODES.items() if m.tracked} == {'train', 'sweep', 'auto'}
  assert MODES['train'].tracked == 'run' and MODES['sweep'].tracked == MODES['auto'].tracked == 'parent'
  assert {n for n, m in MODES.items() if m.timed} == {'train', 'evaluate', 'explain', 'submit', 'calibrate',
                                                               'distill'}


def test_a_failing_side_channel_sink_warns_once_and_the_others_go_on(tmp_path, caplog):
  recording, failing = Recording(), Failing()
  tracker = tracking.Tracker([CsvSink(), failing, recording])
  with caplog.at_level(logging.WARNING):
    tracker.epoch([{'epoch': 1, 'val_loss': 0.5}], tmp_path)
    tracker.epoch([{'epoch': 1, 'val_loss': 0.5}, {'epoch': 2, 'val_loss': 0.25}], tmp_path)
    tracker.log_metrics({'accuracy': 1.0})
  warnings = [r.getMessage() for r in caplog.records]
  assert warnings == ['experiment tracking stopped: Flaky failed to send an epoch (connection refused); training '
                      'goes on without it']
  assert tracker.sinks == (tracker.sinks[0], recording) and [c[0] for c in recording.calls] == ['epoch', 'epoch',
                                                                                               'metrics']
  assert pd.read_csv(tmp_path / 'metrics.csv')['epoch'].tolist() == [1, 2]


def test_a_fault_in_metrics_csv_stops_the_run(tmp_path):
  (tmp_path / 'file').write_text('')   # a file where the run's folder should be
  with pytest.raises(OSError):
    tracking.Tracker([CsvSink()]).epoch([{'epoch': 1}], tmp_path / 'file')


@pytest.mark.parametrize('error, status', [(ValueError('bug'), 'FAILED'), (RunInterrupted('stop', 15), 'KILLED'),
                                           (KeyboardInterrupt(), 'KILLED'), (None, 'FINISHED')])
def test_a_nested_run_ends_with_the_status_of_its_block(error, status):
  recording = Recording()
  tracker = tracking.Tracker([recording])
  try:
    with tracker.nested('trial3', params={'train.learning_rate': 0.1}, epochs=True):
      if error is not None:
        raise error
  except BaseException as e:
    assert e is error
  assert recording.calls == [('nested_start', 'trial3', True), ('parameters', {'train.learning_rate': 0.1}),
                             ('nested_end', status)]


def test_tensorboard_writes_each_epoch_of_a_run_with_a_folder_only(tmp_path):
  sink = TensorBoardSink()
  sink.epoch([{'epoch': 1, 'train_loss': 0.5}], None)   # a sweep's member: no folder, no files
  assert not list(tmp_path.iterdir())
  sink.epoch([{'epoch': 1, 'train_loss': 0.5}], tmp_path)
  assert [p.name.endswith('.epoch00001') for p in (tmp_path / 'tensorboard').iterdir()] == [True]


def test_outside_the_runner_the_tracker_writes_metrics_csv_alone():
  assert [type(s) for s in tracking.current().sinks] == [CsvSink]
