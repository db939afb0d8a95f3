"""The average of the weights (config.train.ema_decay): timm's ModelEmaV3 numbers over a recorded sequence of
updates, and in training: it is validated, selected, saved, served, resumed bit for bit and swept."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import torch
from timm.utils.model_ema import ModelEmaV3

from fpclass import fileio
from fpclass.analysis import metrics
from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.modes.runner import run
from fpclass.train import batches, checkpoint, ema, sidecar
from fpclass.train import task as task_lib
from fpclass.train.steps import LoopAxis
from fpclass.train.validation import validate
from tests.conftest import load_config, torchvision_weights
from tests.parity import FLOOR_FACTOR, JITTER

# The digits CNN at 8x8 with batch norm, so the average covers BN statistics too; a constant schedule (a
# cosine one depends on the number of epochs, which the resume test changes). 0.6 is reached by the warmup
# at update 4 (1 - 4^(-2/3) = 0.603), so the runs cover both sides of it. SGD, not Adam, as in
# tests/test_scale.py: Adam turns rounding in the conv bias before BN into whole steps, so the vmap form
# could not be compared closely.
SETUP = {'data.image_size': (8, 8), 'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'model.batch_norm': True,
         'model.dropout': 0.2, 'augment.rotation': 5.0, 'augment.translate': 0.0, 'train.batch_size': 128,
         'train.schedule': 'constant', 'train.optimizer': 'sgd', 'train.learning_rate': 0.05, 'train.ema_decay': 0.6,
         'train.early_stopping_patience': 0, 'train.tensorboard': False, 'explain.after_training': False}


def tiny(**overrides):
  return load_config('configs/digits.py:quick', **{**SETUP, **overrides})


@pytest.fixture(scope='module', autouse=True)
def figures_not_rendered():
  """The runs here draw evaluate's and the sweep's figures but do not render them to PNG files: no test here
  reads them (tests/test_launch.py checks them), and rendering them took 0.85 CPU-s a run. Everything these
  tests compare (checkpoints, metrics.csv, scores) is written as before."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(fileio, 'save_figure', lambda path, figure, trim=True: None)
    yield


# ---------------------------------------------------------------------------------------- the update itself

class TinyNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc = torch.nn.Linear(3, 4)
    self.bn = torch.nn.BatchNorm1d(4)


def _as_tree(module) -> dict:
  """A torch state_dict as a {'params', 'batch_stats'} tree (its int counter with the statistics)."""
  state = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
  params = {k: v for k, v in state.items() if not k.startswith('bn.running') and k != 'bn.num_batches_tracked'}
  stats = {k: v for k, v in state.items() if k not in params}
  stats['bn.num_batches_tracked'] = stats['bn.num_batches_tracked'].astype(np.int32)
  return {'params': params, 'batch_stats': stats}


@pytest.mark.parametrize('warmup', [True, False])
def test_the_average_matches_timm_model_ema_v3_update_by_update(warmup):
  """The same recorded sequence of weights and BN buffers (running mean and variance, and the int counter,
  which timm copies) through ModelEmaV3.update(model, step=n) and fpclass's update, compared after each."""
  torch.manual_seed(0)
  model = TinyNet()
  reference = ModelEmaV3(model, decay=0.6, use_warmup=warmup)
  average = ema.init(_as_tree(model))
  rng = np.random.default_rng(0)
  frozen = model.fc.bias.detach().clone()   # never changes: a frozen stage keeps its value bit for bit
  worst = 0.0
  for n in range(1, 13):
    with torch.no_grad():
      for name, value in model.state_dict().items():
        if name == 'bn.num_batches_tracked':
          value.fill_(n)
        elif name == 'bn.running_var':
          value.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, value.shape).astype(np.float32)))
        elif name != 'fc.bias':
          value.copy_(torch.from_numpy(rng.normal(size=value.shape).astype(np.float32)))
    reference.update(model, step=n)
    average = ema.update(average, _as_tree(model), ema.weight_at(n, 0.6, warmup, planned=12))
    expected = _as_tree(reference.module)
    for group in ('params', 'batch_stats'):
      for name, value in expected[group].items():
        np.testing.assert_allclose(np.asarray(average[group][name]), value, rtol=2e-6, atol=1e-7,
                                   err_msg=f'{name} after update {n}')
        worst = max(worst, float(np.max(np.abs(np.asarray(average[group][name], np.float64) - value))))
        assert average[group][name].dtype == (jnp.int32 if name.endswith('tracked') else jnp.float32)
    if n == 1:   # the first update copies the weights exactly, as timm's decay 0 does
      assert all(np.array_equal(average['params'][k], v) for k, v in _as_tree(model)['params'].items())
    assert np.array_equal(np.asarray(average['params']['fc.bias']), frozen.numpy())
  print(f'warmup={warmup}: max |fpclass - timm ModelEmaV3| over 12 updates = {worst:.2g}')


@pytest.mark.parametrize('warmup', [True, False])
def test_the_decay_and_weight_by_update_are_timm_s(warmup):
  """The decay is timm's get_decay exactly (float64 on the host), and the weight the step uses is timm's
  float64 1 - decay rounded once to float32 over the planned updates (past a plan still in its warmup, a
  float32 formula within a few units in the last place)."""
  reference = ModelEmaV3(TinyNet(), decay=0.9998, use_warmup=warmup)
  n = np.arange(0, 3000)
  expected = [reference.get_decay(int(u)) for u in n]
  assert [ema.decay_at(int(u), 0.9998, warmup) for u in n] == expected
  timm_weights = np.float32(1.0 - np.asarray(expected))
  for planned in (2000, 4000):
    weights = np.asarray(jax.jit(jax.vmap(lambda u, p=planned: ema.weight_at(u, 0.9998, warmup, p)))(n))
    np.testing.assert_array_equal(weights[:planned + 1], timm_weights[:planned + 1])
    np.testing.assert_allclose(weights, timm_weights, rtol=1e-6, atol=0)


def _averages(weights_of, updates: int, rng):
  """The average of a random walk of weights (as training moves them) after `updates` updates, by timm's
  ModelEmaV3 (float32) and by fpclass with the weight sequence `weights_of(n)`; also in float64."""
  torch.manual_seed(0)
  model = TinyNet()
  reference = ModelEmaV3(model, decay=0.9998, use_warmup=False)
  average = ema.init(_as_tree(model))
  exact = {k: np.asarray(v, np.float64) for k, v in _as_tree(model)['params'].items()}
  update = jax.jit(ema.update)
  for n in range(1, updates + 1):
    with torch.no_grad():
      for value in model.parameters():
        value.add_(torch.from_numpy(rng.normal(scale=0.05, size=value.shape).astype(np.float32)))
    reference.update(model, step=n)
    current = _as_tree(model)
    average = update(average, current, weights_of(n))
    w = 1.0 - ema.decay_at(n, 0.9998, False)
    exact = {k: exact[k] + w * (np.asarray(v, np.float64) - exact[k]) for k, v in current['params'].items()}
  timm = _as_tree(reference.module)['params']
  ours = {k: np.asarray(v, np.float64) for k, v in average['params'].items()}
  return ours, timm, exact


def test_over_2000_updates_the_average_stays_within_float32_noise_of_timm_s():
  """timm's own float32 average strays from the float64 one by its rounding noise; fpclass's stays within
  twice that of timm's, and taking 1 - decay in float32 on the device (the old way) does not."""
  def spread(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)

  # Each sequence of weights computed on the device for every update at once (one program, not 2000 dispatches),
  # as the train step computes an update's weight from its traced count.
  def weights(weight_of):
    table = np.asarray(jax.jit(jax.vmap(weight_of))(np.arange(1, 2001)))
    return lambda n: table[n - 1]

  ours, timm, exact = _averages(weights(lambda n: ema.weight_at(n, 0.9998, False, 2000)), 2000,
                                np.random.default_rng(0))
  noise = spread(timm, exact)
  assert spread(ours, timm) <= 2 * noise, (spread(ours, timm), noise)
  # The planted mutation: the weight as 1 - float32(decay), on the device.
  device_weight = lambda n: jnp.where(n <= 1, 1.0, 1.0 - jnp.float32(0.9998))  # noqa: E731
  old, timm, _ = _averages(weights(device_weight), 2000, np.random.default_rng(0))
  assert spread(old, timm) > 4 * noise, (spread(old, timm), noise)


def test_a_bad_setting_names_its_key():
  for key, value in (('train.ema_decay', 1.0), ('train.ema_decay', -0.1), ('train.accumulate_steps', 0)):
    with pytest.raises(UserInputError, match=rf'config\.{key}={value}'):
      validate(tiny(**{key: value}))


# ---------------------------------------------------------------------------------------- in training

@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('unbroken')
  run('train', tiny(**{'train.epochs': 3}), workdir)
  return workdir


def _restore_last(config, workdir):
  """The `last` checkpoint's whole train state (weights, average, optimizer), as a resume reads it."""
  decoded = pipeline.load_dataset(DataSettings.from_config(config.data))
  task = task_lib.build_task(RunSettings.from_config(config), decoded.class_names, decoded.train.labels, steps_per_epoch=1)
  abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), decoded.train.images.shape[1:]))
  store = checkpoint.CheckpointStore(workdir)
  try:
    return store.restore('last', abstract, with_optimizer=True)[0], decoded
  finally:
    store.close()


def _equal(a, b) -> bool:
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y), a, b))
  return bool(leaves) and all(leaves)


def test_each_epoch_is_validated_selected_and_served_with_the_average(unbroken):
  config = tiny(**{'train.epochs': 3})
  state, decoded = _restore_last(config, unbroken)
  assert state.ema is not None and not _equal(state.ema['params'], state.params)
  assert not _equal(state.ema['batch_stats'], state.batch_stats)   # the BN statistics are averaged too
  history = pd.read_csv(unbroken / 'metrics.csv')
  for kind in ('last', 'best'):
    trained = load_trained(config, unbroken, kind)   # what evaluate, predict, serve, submit and export restore
    epoch = len(history) if kind == 'last' else int(history['val_loss'].idxmin()) + 1
    assert trained.epoch == epoch and trained.state.ema is None
    if kind == 'last':
      assert _equal(trained.state.params, state.ema['params'])
      assert _equal(trained.state.batch_stats, state.ema['batch_stats'])
    # The epoch's metrics row is the average's: its validation loss is these variables' own.
    logits = trained.logits(decoded.val.images, 256)
    val = metrics.model_scores(decoded.val.labels, logits, 'softmax')
    assert val['loss'] == pytest.approx(history['val_loss'][epoch - 1], rel=1e-5)
    own = state if kind == 'last' else None
    if own is not None:   # and not the weights the optimizer updates
      raw = batches.predict_logits(trained.task, own.replace(ema=None), decoded.val.images, 256)
      raw_loss = metrics.model_scores(decoded.val.labels, raw, 'softmax')['loss']
      assert abs(raw_loss - history['val_loss'].iloc[-1]) > 1e-4


def test_a_resumed_run_equals_the_unbroken_one_bit_for_bit(unbroken, tmp_path):
  run('train', tiny(**{'train.epochs': 1}), tmp_path)
  run('train', tiny(**{'train.epochs': 3}), tmp_path)   # resumes after epoch 1: weights, average, optimizer
  pd.testing.assert_frame_equal(pd.read_csv(tmp_path / 'metrics.csv').drop(columns='seconds'),
                                pd.read_csv(unbroken / 'metrics.csv').drop(columns='seconds'))
  config = tiny(**{'train.epochs': 3})
  resumed, _ = _restore_last(config, tmp_path)
  straight, _ = _restore_last(config, unbroken)
  assert _equal(resumed.ema, straight.ema) and _equal(resumed.params, straight.params)
  assert _equal(resumed.opt_state, straight.opt_state)


def test_a_sweep_member_equals_its_solo_run_average_included(unbroken, tmp_path):
  """The loop form runs the solo run's own programs: a sweep's member (the holdout, seed 0) equals --mode
  train's run bit for bit, its workdir serving the average at `best` and `last` and resuming with it; the vmap
  form takes the average too, to float32 noise."""
  config = tiny(**{'train.epochs': 3})
  for form in ('loop', 'vmap'):
    run('sweep', tiny(**{'train.epochs': 3, 'sweep.folds': (-1,), 'sweep.seeds': (0,), 'sweep.model_axis': form}),
        tmp_path / form)
  solo, _ = _restore_last(config, unbroken)
  member = tmp_path / 'loop' / 'base' / 'holdout'
  pd.testing.assert_frame_equal(pd.read_csv(member / 'metrics.csv').drop(columns='seconds'),
                                pd.read_csv(unbroken / 'metrics.csv').drop(columns='seconds'))
  # The vmap form batches the member's ops into other programs, which round otherwise: its tolerance is the solo
  # run's own float32 noise, measured as tests/parity.py measures a reference's (the same run with its learning
  # rate moved by JITTER, relative), times FLOOR_FACTOR; the loop form runs the solo run's programs: 0.
  run('train', tiny(**{'train.epochs': 3, 'train.learning_rate': SETUP['train.learning_rate'] * (1 + JITTER)}),
      tmp_path / 'jittered')
  jittered, _ = _restore_last(config, tmp_path / 'jittered')
  noise = max(_relative_difference(jittered.ema, solo.ema), _relative_difference(jittered.params, solo.params))
  assert noise > 0
  expected = {kind: load_trained(config, unbroken, kind).state for kind in ('last', 'best')}
  for form in ('loop', 'vmap'):
    member = tmp_path / form / 'base' / 'holdout'
    kept, _ = _restore_last(config, member)   # the resume point keeps weights, average and optimizer
    tolerance = 0.0 if form == 'loop' else FLOOR_FACTOR * noise
    assert _relative_difference(kept.ema, solo.ema) <= tolerance
    assert _relative_difference(kept.params, solo.params) <= tolerance
    served = {kind: load_trained(config, member, kind).state for kind in ('last', 'best')}
    for kind in ('last', 'best'):
      assert _relative_difference(served[kind].params, expected[kind].params) <= tolerance
      assert _relative_difference(served[kind].batch_stats, expected[kind].batch_stats) <= tolerance
    assert _relative_difference(served['last'].params, solo.ema['params']) <= tolerance


def _relative_difference(a, b) -> float:
  """max |a - b| over the tree's arrays, relative to the largest |b| in it (0.0 when they are equal): a conv bias
  before batch norm stays at rounding level, so its own scale would be no scale."""
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  scale = max(float(np.max(np.abs(np.asarray(y)))) for y in jax.tree_util.tree_leaves(b))
  return max(jax.tree_util.tree_leaves(diffs)) / max(scale, 1e-30)


def test_fine_tuning_starts_from_the_average(tmp_path, monkeypatch):
  """A two-phase recipe: phase 1 starts from phase 0's averaged weights (the model phase 0 was validated with,
  as Keras' fit writes its averages into the model at its end), with a fresh optimizer and a fresh average."""
  # ResNet-18's layout with one block a stage (a smaller file for torch to write and fpclass to read): the stem and
  # layer1 are still two stages, one frozen in each phase.
  weights = torchvision_weights(tmp_path, layers=(1, 1, 1, 1))
  config = load_config('configs/footprint.py:resnet18,quick', **{
      'data.image_size': (32, 24), 'data.synthetic.n_class0': 20, 'data.synthetic.n_class1': 16,
      'model.pretrained': str(weights), 'model.layers': (1, 1, 1, 1), 'model.top': 'avg', 'model.freeze_till': 1,
      'train.epochs': 1,
      'train.finetune_epochs': 1, 'train.finetune_freeze_till': 0, 'train.ema_decay': 0.6,
      'train.early_stopping_patience': 0, 'train.tensorboard': False, 'explain.after_training': False})
  with config.unlocked():
    config.model.cut = 'layer1'   # the stem and layer1 alone: a small, quick model with stages
  added = {}
  real_add = LoopAxis.add

  def add(self, m, state, data):
    added.setdefault(len(added), jax.device_get(state))
    return real_add(self, m, state, data)
  monkeypatch.setattr(LoopAxis, 'add', add)
  run('train', config, tmp_path / 'run')
  assert len(added) == 2   # phase 0's start, then phase 1's
  store = checkpoint.CheckpointStore(tmp_path / 'run')
  try:
    phase0 = store.restore('last', jax.eval_shape(lambda: added[0]), 1, with_optimizer=True)[0]
  finally:
    store.close()
  start = added[1]
  assert int(start.step) == 0 and _equal(start.params, phase0.ema['params'])
  assert _equal(start.batch_stats, phase0.ema['batch_stats']) and not _equal(start.params, phase0.params)
  assert _equal(start.ema, {'params': start.params, 'batch_stats': start.batch_stats})


def test_a_run_from_before_these_keys_resumes_and_one_with_the_average_needs_it(tmp_path):
  """A workdir whose stored config predates ema_decay, ema_warmup and accumulate_steps resumes under their
  defaults (the behaviour it trained with), and is refused with the average turned on."""
  config = tiny(**{'train.ema_decay': 0.0})
  stored = sidecar.config_as_json(config)
  for key in ('ema_decay', 'ema_warmup', 'accumulate_steps'):
    del stored['train'][key]
  sidecar.check_resume(tmp_path, {'config': stored}, sidecar.config_as_json(config))
  with pytest.raises(UserInputError, match=r"train\.ema_decay: '<absent>' -> 0\.6"):
    sidecar.check_resume(tmp_path, {'config': stored}, sidecar.config_as_json(tiny()))
