"""config.train.bn_statistics='precise' (fpclass.train.precise_bn): each batch norm's statistics recomputed from the
training images under the current weights, checked against the moments of its input computed here from the
model's captured intermediates, and through launch.py: training unchanged, validation and checkpoints on them."""
import jax
import numpy as np
import pandas as pd

from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.infer.inference import load_trained
from fpclass.train import precise_bn
from fpclass.train.task import build_task
from tests.conftest import QUICK, launch, load_config

CONFIG = QUICK.split('=', 1)[1]   # configs/footprint.py:exp4,quick
SMALL = {'data.image_size': (24, 16), 'model.conv_channels': (4, 8), 'model.fc_sizes': (8,), 'model.batch_norm': True}


def _reference(task, state, images) -> dict:
  """{batch norm: (mean, variance)} of its input over `images` as one batch in train mode, in float64: the conv
  output each batch norm normalises, captured (FootprintCNN: conv<i> -> bn<i>)."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  _, captured = task.model.apply(variables, task.prepare(images), train=True, capture_intermediates=True,
                                 mutable=['batch_stats', 'intermediates'], rngs={'dropout': jax.random.PRNGKey(0)})
  out = {}
  for i in (1, 2):
    x = np.asarray(captured['intermediates'][f'conv{i}']['__call__'][0], np.float64)
    out[f'bn{i}'] = (x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)))
  return out


def test_the_statistics_are_the_moments_of_each_batch_norm_s_input_over_the_training_images():
  config = load_config(CONFIG, **SMALL)
  task = build_task(RunSettings.from_config(config), ('a', 'b'), np.array([0, 1]), steps_per_epoch=1)
  images = np.random.default_rng(0).integers(0, 256, (23, 24, 16, 1), dtype=np.uint8)
  state = jax.device_get(task.init(jax.random.PRNGKey(1), images.shape[1:]))
  reference = _reference(task, state, images)
  program = precise_bn.program(task)
  rows = np.arange(len(images))
  whole = precise_bn.recomputed(program, state, images, rows, chunk=len(images)).batch_stats
  chunked = precise_bn.recomputed(program, state, images, rows, chunk=7).batch_stats   # chunks of 7, 7, 7 and 2
  for name, (mean, var) in reference.items():
    np.testing.assert_allclose(whole[name]['mean'], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole[name]['var'], var, rtol=1e-4, atol=1e-6)
  # The first batch norm's input does not depend on another's statistics: its chunks combine to the same moments.
  np.testing.assert_allclose(chunked['bn1']['mean'], reference['bn1'][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chunked['bn1']['var'], reference['bn1'][1], rtol=1e-4, atol=1e-6)
  # The running averages of a fresh state are far from them (zero mean, unit variance): the check means something.
  assert np.max(np.abs(np.asarray(state.batch_stats['bn1']['var']) - reference['bn1'][1])) > 1e-2


def test_a_launch_trains_the_same_and_validates_and_keeps_the_recomputed_statistics(tmp_path):
  flags = [QUICK, *(f'--config.{k}={v!r}'.replace(' ', '') for k, v in SMALL.items()),
           '--config.explain.after_training=False', '--config.train.tensorboard=False']
  frames = {}
  for mode in ('running', 'precise'):
    launch(*flags, f'--config.train.bn_statistics={mode}', f'--workdir={tmp_path / mode}')
    frames[mode] = pd.read_csv(tmp_path / mode / 'metrics.csv')
  train_columns = ['train_loss', 'train_accuracy']
  pd.testing.assert_frame_equal(frames['running'][train_columns], frames['precise'][train_columns])
  assert not np.allclose(frames['running']['val_loss'], frames['precise']['val_loss'])
  config = load_config(CONFIG, **SMALL, **{'train.bn_statistics': 'precise'})
  trained = load_trained(config, tmp_path / 'precise', 'last')
  dataset = pipeline.load_dataset(RunSettings.from_config(config).data, progress=False)
  reference = _reference(trained.task, trained.state, np.asarray(dataset.train.images))
  np.testing.assert_allclose(trained.state.batch_stats['bn1']['mean'], reference['bn1'][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(trained.state.batch_stats['bn1']['var'], reference['bn1'][1], rtol=1e-3, atol=1e-5)
