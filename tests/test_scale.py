"""Performance machinery that must not change results: data parallelism, loop forms, mixed precision."""
import json
import logging
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fpclass.config.run import RunSettings
from fpclass.config.settings import ConfigError
from fpclass.config.training import EvalSettings
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk
from fpclass.modes.runner import run
from fpclass.runtime.compiler_options import CPU_OPTIONS, default_compiler_options
from fpclass.runtime.sharding import DataParallel
from fpclass.train import precision
from fpclass.train.sampling import epoch_order
from fpclass.train.steps import CompiledSteps, LoopAxis, resolve_loop, validation_batch
from fpclass.train.task import build_task
from tests.conftest import REPO, load_config, xla_flags
from tests.parity import FLOOR_FACTOR, JITTER

# SGD, not Adam: Adam divides by sqrt(v), so a gradient that is zero up to rounding (a conv bias under batch
# norm) turns rounding-level differences into full-size steps, and params could not be compared closely.
TINY = {'data.image_size': (8, 8), 'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'model.batch_norm': True,
        'model.dropout': 0.2, 'augment.rotation': 5.0, 'train.batch_size': 64, 'train.optimizer': 'sgd',
        'train.learning_rate': 0.05, 'train.epochs': 1}

SHARDED_RUN = """
import json, sys
import jax
from fpclass.runtime.sharding import DataParallel
from fpclass.train.steps import CompiledSteps
from fpclass.train.task import build_task
from fpclass.modes.runner import run
from fpclass.config.run import RunSettings
from fpclass.config.settings import ConfigError
from tests.conftest import load_config
config = load_config('configs/digits.py:quick', **json.loads(sys.argv[2]))
run('train', config, sys.argv[1])
# The batch really is split: the compiled step all-reduces the gradients across the 4 devices.
task = build_task(RunSettings.from_config(config), tuple('0123456789'), list(range(10)), 1)
compiled = CompiledSteps(task, DataParallel.over())
state = compiled.init(jax.random.PRNGKey(0), (8, 8, 1))
x, y, order = compiled.parallel.replicate((jax.numpy.zeros((64, 8, 8, 1), 'uint8'), jax.numpy.zeros(64, 'int32'),
                                           jax.numpy.zeros((1, 64), 'int32')))
hlo = compiled.train_step.lower(state, x, y, order, 0, jax.random.PRNGKey(0), compiled.arguments()).compile().as_text()
print(json.dumps(dict(devices=jax.device_count(), all_reduce='all-reduce' in hlo)))
"""


def relative_difference(a, b) -> float:
  """max |a - b| over the trees' arrays, relative to the largest |b| in them."""
  differences = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda u, v: float(np.max(np.abs(u - v))), a, b))
  return max(differences) / max(float(np.max(np.abs(v))) for v in jax.tree_util.tree_leaves(b))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='four host-platform (CPU) devices against the '
                    'one-device run: the same backend only')
def test_sharded_run_equals_single_device_run(tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags('--xla_force_host_platform_device_count=4'))
  result = subprocess.run([sys.executable, '-c', SHARDED_RUN, str(tmp_path / 'four'), json.dumps(TINY)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == dict(devices=4, all_reduce=True)
  assert jax.device_count() == 1
  run('train', load_config('configs/digits.py:quick', **TINY), tmp_path / 'one')
  # Four devices sum the gradients of their quarters in another order: the runs agree within FLOOR_FACTOR x the
  # one-device run's own float32 noise, measured as tests/parity.py measures a reference's (the same run with its
  # learning rate moved by JITTER, relative).
  run('train', load_config('configs/digits.py:quick', **{**TINY, 'train.learning_rate': TINY['train.learning_rate']
                                                          * (1 + JITTER)}), tmp_path / 'jittered')
  one, four, jittered = (pd.read_csv(tmp_path / d / 'metrics.csv').drop(columns='seconds')
                         for d in ('one', 'four', 'jittered'))
  assert list(one.columns) == list(four.columns) and len(one) == len(four) == len(jittered)
  history_noise = np.max(np.abs(jittered.to_numpy(float) - one.to_numpy(float)))
  np.testing.assert_allclose(four.to_numpy(float), one.to_numpy(float), rtol=0, atol=FLOOR_FACTOR * history_noise)
  # The 4-device checkpoint restores on 1 device, and the two models agree.
  a, b, c = (load_trained(load_config('configs/digits.py:quick', **TINY), tmp_path / d, 'last').state
             for d in ('one', 'four', 'jittered'))
  noise = relative_difference((c.params, c.batch_stats), (a.params, a.batch_stats))
  assert noise > 0 and relative_difference((b.params, b.batch_stats), (a.params, a.batch_stats)) <= FLOOR_FACTOR * noise


def test_batch_must_split_evenly_across_devices():
  parallel = DataParallel.over(jax.devices() * 1)
  parallel.check_batch_size(7)  # one device takes any batch
  with pytest.raises(UserInputError, match=r'config.train.batch_size=30: must be a multiple of the 4 devices'):
    DataParallel(jax.sharding.Mesh(np.array(jax.devices() * 4), ('data',))).check_batch_size(30)


def test_scan_and_step_loops_train_the_same_model():
  config = load_config('configs/digits.py:quick', **TINY)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (100, 8, 8, 1)).astype(np.uint8)
  labels = rng.integers(0, 10, 100).astype(np.int32)
  task = build_task(RunSettings.from_config(config), tuple('0123456789'), labels, 2)
  jittered = build_task(RunSettings.from_config(load_config('configs/digits.py:quick', **{
      **TINY, 'train.learning_rate': TINY['train.learning_rate'] * (1 + JITTER)})), tuple('0123456789'), labels, 2)
  parallel = DataParallel.over()
  results = {}
  for form, run_task in (('step', task), ('scan', task), ('jittered', jittered)):
    compiled = CompiledSteps(run_task, parallel, 'step' if form == 'jittered' else form)
    state = compiled.init(jax.random.PRNGKey(0), images.shape[1:])
    x, y = parallel.replicate((images, labels))
    losses = []
    for epoch in range(2):
      order = parallel.replicate(epoch_order(0, epoch, len(images), 64))
      state, metrics = compiled.run_epoch(state, x, y, order, jax.random.PRNGKey(epoch))
      losses += [float(m['loss_sum']) for m in metrics]
    results[form] = jax.device_get(state), losses
  (state_a, loss_a), (state_b, loss_b), (state_c, loss_c) = results['step'], results['scan'], results['jittered']
  # Same keys, same batches: equal up to rounding. (Not bit for bit on XLA:CPU: it compiles a conv's weight
  # gradient with another kernel inside a loop body than at the top level.) Up to rounding: within FLOOR_FACTOR x
  # the step loop's own float32 noise, measured by its run with the learning rate moved by JITTER (relative).
  loss_noise = np.max(np.abs(np.subtract(loss_c, loss_a)) / np.abs(loss_a))
  assert np.max(np.abs(np.subtract(loss_b, loss_a)) / np.abs(loss_a)) <= FLOOR_FACTOR * loss_noise
  trained = lambda state: (state.params, state.batch_stats)  # noqa: E731
  noise = relative_difference(trained(state_c), trained(state_a))
  assert noise > 0 and relative_difference(trained(state_b), trained(state_a)) <= FLOOR_FACTOR * noise
  assert int(state_a.step) == int(state_b.step) == 4


def test_loop_form_choice():
  assert resolve_loop('auto', 'cpu') == 'step' and resolve_loop('auto', 'gpu') == 'scan'
  assert resolve_loop('auto', 'tpu') == 'scan' and resolve_loop('scan', 'cpu') == 'scan'
  with pytest.raises(UserInputError, match="config.train.loop='epoch'"):
    resolve_loop('epoch')


def test_validation_batch_per_backend(tmp_path, monkeypatch):
  # 0: the training batch where convolutions are autotuned (GPU/TPU), config.eval.batch_size on CPU
  default, given = EvalSettings(batch_size=256), EvalSettings(batch_size=256, validation_batch_size=48)
  assert validation_batch(default, 32, 'gpu') == 32 and validation_batch(default, 32, 'tpu') == 32
  assert validation_batch(default, 32, 'cpu') == 256 and validation_batch(given, 32, 'gpu') == 48
  seen = []
  original = LoopAxis.val_logits
  monkeypatch.setattr(LoopAxis, 'val_logits', lambda self, members, batch: seen.append(batch) or original(self, members, batch))
  config = load_config('configs/digits.py:quick', **{**TINY, 'eval.validation_batch_size': 5})
  run('train', config, tmp_path / 'run')
  assert seen == [5]
  splits = types.SimpleNamespace(val=range(40), test=None, train=range(100))   # evaluate and explain: the same batch
  default = load_config('configs/digits.py:quick')   # this backend's rule, capped at the 40 validation images
  assert prediction_chunk(RunSettings.from_config(config), splits) == 5
  assert prediction_chunk(RunSettings.from_config(default), splits) == min(validation_batch(EvalSettings.from_config(default.eval),
                                                                   default.train.batch_size), 40)
  with pytest.raises(ConfigError, match="config.eval.validation_batch_size=-1"):
    RunSettings.from_config(load_config('configs/digits.py:quick', **{**TINY, 'eval.validation_batch_size': -1}))


def test_xla_cpu_options_apply_on_cpu_only_and_can_be_overridden():
  assert dict(default_compiler_options('cpu')) == {
      'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
  assert default_compiler_options('gpu') == () and default_compiler_options('tpu') == ()
  task = build_task(RunSettings.from_config(load_config('configs/digits.py:quick', **TINY)), tuple('0123456789'), np.arange(10), 1)
  on_cpu = jax.default_backend() == 'cpu'   # the suite's backend; a GPU run gets XLA's defaults
  assert CompiledSteps(task, DataParallel.over())._options == (dict(CPU_OPTIONS) if on_cpu else None)
  assert CompiledSteps(task, DataParallel.over(), compiler_options=())._options is None


def test_precision_rules(caplog):
  assert precision.compute_dtype('fp32', 'gpu') == jnp.float32
  assert precision.compute_dtype('bf16', 'gpu') == jnp.bfloat16
  with caplog.at_level(logging.WARNING):
    assert precision.compute_dtype('bf16', 'cpu') == jnp.float32
  assert 'config.train.precision=bf16: the CPU backend trains in fp32' in caplog.text
  with pytest.raises(UserInputError, match="config.train.precision='fp16'"):
    precision.compute_dtype('fp16')


def test_bf16_computes_in_bf16_and_keeps_fp32_state():
  # As on a GPU (backend='gpu'); XLA:CPU runs bf16 too, just slowly, so the step can be checked here.
  config = load_config('configs/digits.py:quick', **{**TINY, 'train.precision': 'bf16', 'train.optimizer': 'adam'})
  task = build_task(RunSettings.from_config(config), tuple('0123456789'), np.arange(10), 1, backend='gpu')
  state = jax.jit(task.init, static_argnums=1)(jax.random.PRNGKey(0), (8, 8, 1))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)), jnp.uint8)
  labels = jnp.arange(16) % 10
  _, features = jax.jit(lambda s, x: task.model.apply({'params': s.params, 'batch_stats': s.batch_stats},
                                                      task.prepare(x)))(state, images)
  assert features['conv1'].dtype == jnp.bfloat16 and features['pre_logits'].dtype == jnp.bfloat16
  new_state, out = jax.jit(task.train_step)(state, images, labels, jnp.arange(16), jax.random.PRNGKey(1))
  leaves = jax.tree_util.tree_leaves((new_state.params, new_state.opt_state, new_state.batch_stats))
  assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype('float32')}
  assert out['loss_sum'].dtype == jnp.float32 and np.isfinite(float(out['loss_sum']))
  assert not np.array_equal(new_state.batch_stats['bn1']['mean'], state.batch_stats['bn1']['mean'])
  # The fp32 build of the same config is a different program: precision really reaches the model.
  assert build_task(RunSettings.from_config(config), tuple('0123456789'), np.arange(10), 1, backend='cpu').model.dtype == jnp.float32
