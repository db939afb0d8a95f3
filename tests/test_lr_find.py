"""--mode lr_find: fastai's learning-rate finder. The schedule, smoothing, stop rule and suggestions are checked
against fastai's own code (fastai.callback.schedule, installed without its dependencies, see the report), the
sweep against the training run's own steps, and the mode end to end through launch.py."""
import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import types

import jax
import numpy as np
import pytest

from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import LrFindSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline, stream
from fpclass.train import lr_finder
from fpclass.train.cohort import solo_start
from fpclass.train.sampling import epoch_key
from fpclass.train.steps import CompiledSteps
from fpclass.train.task import build_task
from tests.conftest import QUICK, launch, load_config


def fastai_schedule():
  """fastai's callback.schedule, or a skip when fastai is not installed (it imports lightly with --no-deps)."""
  pytest.importorskip('fastai')
  return pytest.importorskip('fastai.callback.schedule')


def curves() -> dict:
  """Smoothed-loss records of several shapes, each {lrs, smoothed, stopped}: float32 values, as fastai's
  `tensor` makes of a recorder's floats, so both sides read the very same numbers."""
  rng = np.random.default_rng(0)
  settings = LrFindSettings(num_it=100)
  lrs = np.array([lr_finder.sweep_lr(settings, i) for i in range(100)])
  x = np.log10(lrs)
  out = {
      'valley': 2.3 - 1.2 / (1 + np.exp(-(x + 4) * 1.5)) + np.exp(np.clip(x + 1, None, 3)) + rng.normal(0, 0.03, 100),
      'falling': 1.0 + 2.0 * np.exp(-np.arange(100) / 30),   # strictly decreasing: the valley starts before index 0
      'flat': np.full(100, 2.0),               # no decrease at all: valley stays at index 0
      'rising': np.linspace(1.0, 3.0, 100) + rng.normal(0, 0.01, 100),
      'noisy': 2.0 + rng.normal(0, 0.3, 100),
  }
  records = {name: dict(lrs=lrs, smoothed=v, stopped='num_it') for name, v in out.items()}
  nan = out['valley'].copy()
  nan[60:] = np.nan
  records['nan'] = dict(lrs=lrs[:61], smoothed=nan[:61], stopped='nan')   # the sweep stops at the first NaN
  records['diverged early'] = dict(lrs=lrs[:40], smoothed=out['valley'][:40], stopped='diverged')
  return {name: {k: (np.asarray(v, np.float32).astype(np.float64) if k != 'stopped' else v) for k, v in r.items()}
          for name, r in records.items()}


class RecordedLearner:
  """Stands in for a fastai Learner whose fit recorded `lrs` and `losses`: `Learner.lr_find` then runs its own
  window, NaN cut and suggestion functions on them."""

  def __init__(self, lrs, losses):
    self.dls = types.SimpleNamespace(train=[None] * 7)
    self.recorder = types.SimpleNamespace(lrs=[float(v) for v in lrs], losses=[float(v) for v in losses])

  @contextlib.contextmanager
  def no_logging(self):
    yield

  def fit(self, n_epoch, cbs=None):
    pass


@pytest.mark.parametrize('name', list(curves()))
def test_suggestions_equal_fastais_lr_find_on_the_same_record(name):
  schedule = fastai_schedule()
  from fastai.learner import Learner
  record = curves()[name]
  ours = lr_finder.suggest(lr_finder.Record(lrs=list(record['lrs']), smoothed=list(record['smoothed']),
                                            stopped=record['stopped']), 100)
  learner = RecordedLearner(record['lrs'], record['smoothed'])
  if record['stopped'] == 'nan':   # fastai's record runs on to num_it, NaN from the first NaN on
    learner.recorder.lrs += [float(v) for v in curves()['valley']['lrs'][len(record['lrs']):]]
    learner.recorder.losses += [math.nan] * (100 - len(record['lrs']))
  theirs = Learner.lr_find(learner, num_it=100, show_plot=False,
                           suggest_funcs=(schedule.valley, schedule.minimum, schedule.steep))
  assert {k: v['lr'] for k, v in ours.items()} == theirs._asdict()


def test_suggestion_functions_equal_fastais_on_a_real_sweep(lr_find_run):
  """The functions alone, on the float64 window of a recorded sweep (fastai's functions take any tensor)."""
  schedule = fastai_schedule()
  import torch
  result = json.loads((lr_find_run / 'lr_find.json').read_text())
  record = lr_finder.Record(lrs=result['lrs'], smoothed=[math.nan if v is None else v for v in result['smoothed_losses']],
                            stopped=result['stopped'])
  lrs, losses = lr_finder.window(record, result['settings']['num_it'])
  assert len(losses) >= 5
  for name, function in lr_finder.SUGGESTIONS.items():
    lr, (point_lr, point_loss) = getattr(schedule, name)(torch.tensor(lrs), torch.tensor(losses), 0)
    assert function(lrs, losses) == (lr, (point_lr, float(point_loss))), name
    assert result['suggestions'][name] == dict(lr=lr, point=[point_lr, float(point_loss)]), name


def test_schedule_smoothing_and_stop_rule_equal_fastais_lr_finder():
  """fastai's LRFinder callback and AvgSmoothLoss metric, driven step by step with the same losses."""
  schedule = fastai_schedule()
  import torch
  from fastai.callback.core import CancelFitException
  from fastai.learner import AvgSmoothLoss
  settings = LrFindSettings(start_lr=1e-4, end_lr=10.0, num_it=40, beta=0.9)
  rng = np.random.default_rng(1)
  losses = np.concatenate([np.linspace(2.0, 0.6, 25), np.linspace(0.8, 20.0, 15)]) + rng.normal(0, 0.02, 40)
  losses = losses.astype(np.float32)

  class Optimizer:
    hypers = [{'lr': 0.0}]

    def set_hyper(self, key, value):
      self.hypers[-1][key] = value

  learn = types.SimpleNamespace(opt=Optimizer(), train_iter=0, smooth_loss=None,
                                loss=None)
  finder = schedule.LRFinder(settings.start_lr, settings.end_lr, settings.num_it, stop_div=True)
  finder.learn, finder.hps, finder.best_loss = learn, {'lr': []}, math.inf
  smooth = AvgSmoothLoss(beta=settings.beta)
  recorder = lr_finder.Recorder(settings)
  fastai_lrs, fastai_smoothed = [], []
  for i, loss in enumerate(losses):
    learn.train_iter = i
    finder.before_batch()
    fastai_lrs.append(learn.opt.hypers[-1]['lr'])
    learn.loss = torch.tensor(loss)
    smooth.accumulate(learn)
    fastai_smoothed.append(float(smooth.value))
    learn.smooth_loss, learn.train_iter = smooth.value, i + 1
    ours_stops = recorder.add(float(loss))
    try:
      finder.after_batch()
      fastai_stops = False
    except CancelFitException:
      fastai_stops = True
    assert ours_stops == fastai_stops, i
    if fastai_stops:
      break
  record = recorder.record
  assert record.stopped == 'diverged' and 25 < len(record.losses) < 40
  np.testing.assert_allclose(record.lrs, fastai_lrs, rtol=1e-12)
  np.testing.assert_allclose(record.smoothed, fastai_smoothed, rtol=2e-6)   # fastai smooths in float32
  # The optimizer's schedule (float32, on the device) is the recorded learning rate.
  steps = np.arange(len(record.lrs))
  np.testing.assert_allclose(np.asarray(jax.vmap(lr_finder.sweep_schedule(settings))(steps)), record.lrs, rtol=2e-6)


def test_without_stop_div_it_runs_to_num_it_and_a_nan_stops_it():
  settings = LrFindSettings(num_it=10, stop_div=False)
  recorder = lr_finder.Recorder(settings)
  assert [recorder.add(v) for v in [1.0, 0.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]] == [False] * 9 + [True]
  assert recorder.record.stopped == 'num_it'
  recorder = lr_finder.Recorder(LrFindSettings(num_it=10))
  assert [recorder.add(v) for v in [1.0, 0.5, math.nan]] == [False, False, True]
  assert recorder.record.stopped == 'nan'


def test_the_sweep_is_the_training_runs_first_steps_with_the_swept_learning_rate():
  """Steps 0-2 of the sweep equal the run's own first three steps (its init, batches, keys, augmentation and
  train step) under a learning rate of start * r ** step, here set up independently as config.train's
  staircase exponential decay by r every step."""
  # The digits CNN shrunk to 8x8 images, 8 filters and 16 hidden units: the claim is about which steps the sweep
  # runs (init, batches, keys, augmentation, step), not about the model, and each model's train step compiles once.
  config = load_config('configs/digits.py:quick', **{'train.schedule': 'constant', 'data.image_size': (8, 8),
                                                    'model.conv_channels': (8,), 'model.fc_sizes': (16,)})
  settings = LrFindSettings(start_lr=1e-2, end_lr=10.0, num_it=8)
  dataset = stream.place(pipeline.load_dataset(DataSettings.from_config(config.data), mapped=True), DataSettings.from_config(config.data).storage)
  record = lr_finder.find(dataset, settings, *solo_start(RunSettings.from_config(config), dataset))
  assert len(record.losses) == 8 and record.stopped == 'num_it'

  config.train.update(schedule='exponential', learning_rate=settings.start_lr, decay_epochs=1,
                      decay_rate=(settings.end_lr / settings.start_lr) ** (1 / settings.num_it))
  engine, state = solo_start(RunSettings.from_config(config), dataset)
  task = build_task(RunSettings.from_config(config), dataset.class_names, dataset.train.labels, steps_per_epoch=1)
  state = state.replace(opt_state=task.tx.init(state.params))
  compiled = CompiledSteps(task, engine.parallel, 'step')
  images, labels = engine.parallel.replicate((dataset.train.images, dataset.train.labels))
  order = engine.parallel.replicate(engine.order(0, 0))
  losses = []
  for i in range(3):
    state, out = compiled.train_step(state, images, labels, order, i, epoch_key(int(config.seed), 0),
                                    compiled.arguments())
    losses.append(float(out['loss_sum']) / float(out['count']))
  np.testing.assert_allclose(record.losses[:3], losses, rtol=1e-5)
  assert abs(record.losses[2] - record.losses[0]) > 1e-3   # the learning rate moved the loss: the check means something


@pytest.fixture(scope='module')
def lr_find_run(trained_quick, tmp_path_factory):
  """--mode lr_find through launch.py in a copy of the quick footprint run's workdir: one launch for the module,
  whose tests only read what it wrote."""
  shared, env, _ = trained_quick
  workdir = tmp_path_factory.mktemp('lr-find') / 'run'
  shutil.copytree(shared, workdir)
  before = {p.relative_to(workdir): hashlib.sha1(p.read_bytes()).hexdigest() for p in workdir.rglob('*') if p.is_file()}
  result = launch(QUICK, f'--workdir={workdir}', '--mode=lr_find', '--config.lr_find.num_it=24',
                  '--config.lr_find.suggestion=steep', env=env)
  workdir.joinpath('launch_stdout.txt').write_text(result.stdout)
  after = {p.relative_to(workdir): hashlib.sha1(p.read_bytes()).hexdigest() for p in workdir.rglob('*') if p.is_file()}
  changed = {str(p) for p in before if after.get(p) != before[p]}
  assert changed <= {'report.md', 'timings.json'}, changed   # checkpoints and metadata.json untouched
  return workdir


def test_lr_find_end_to_end_writes_the_record_plot_and_suggestions(lr_find_run):
  result = json.loads((lr_find_run / 'lr_find.json').read_text())
  assert 6 < result['steps'] <= 24 and len(result['lrs']) == len(result['losses']) == result['steps']
  assert result['lrs'][0] == pytest.approx(1e-7) and result['settings']['num_it'] == 24
  assert sorted(result['suggestions']) == ['minimum', 'steep', 'valley'] and result['suggestion'] == 'steep'
  stdout = (lr_find_run / 'launch_stdout.txt').read_text()
  assert f'steps): steep {result["suggestions"]["steep"]["lr"]:.3g}, valley' in stdout   # the chosen one first
  assert (lr_find_run / 'lr_find.png').read_bytes()[:4] == b'\x89PNG'
  assert '## Learning-rate finder' in (lr_find_run / 'report.md').read_text()


def test_lr_find_settings_are_checked():
  with pytest.raises(ValueError, match='config.lr_find.end_lr'):
    LrFindSettings(start_lr=1.0, end_lr=0.5)
  with pytest.raises(ValueError, match='config.lr_find.suggestion'):
    LrFindSettings(suggestion='slide')
  assert dataclasses.asdict(LrFindSettings()) == dict(start_lr=1e-7, end_lr=10.0, num_it=100, beta=0.98,
                                                      stop_div=True, suggestion='valley')
