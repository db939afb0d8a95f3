"""One engine for one model or many: each member of a sweep equals the same model trained alone by
--mode train, in both forms of the model axis, from scratch, from pretrained weights, frozen (on shared cached
features) and in two phases."""

import jax
import numpy as np
import pandas as pd
import pytest

from fpclass import fileio
from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline, splits
from fpclass.infer.inference import load_trained
from fpclass.models import heads
from fpclass.modes.runner import run
from fpclass.runtime import timings
from fpclass.runtime.sharding import DataParallel
from fpclass.train import axis, memory_plan
from fpclass.train import task as task_lib
from fpclass.train.axis import Split, TrainData
from fpclass.train.cohort import Cohort
from fpclass.train.loop import train_members
from fpclass.train.members import Member, balanced_chunks
from fpclass.train.records import MemoryRecord
from fpclass.train.shared_work import SharedWork
from fpclass.train.steps import CompiledSteps, LoopAxis
from tests.conftest import ONLY_CPU_REPEATS_BITS, assert_same_bits, draw_footprints, load_config, seed_cache
from tests.parity import FLOOR_FACTOR, JITTER

# Folds 1 and 2 of the 5 digits folds have 1437 and 1438 training images: with batch 479 that is 3 and 4
# steps per epoch, so the shorter member sits out the last step of every epoch. A high learning rate
# with patience 1 stops members at different epochs. Dropout, augmentation and 'auto' class weights make
# every source of per-model randomness and per-fold state count.
SETUP = {'data.image_size': (8, 8), 'augment.rotation': 5.0, 'augment.translate': 0.0,
         'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'model.dropout': 0.3, 'train.batch_size': 479,
         'train.epochs': 3, 'train.schedule': 'constant', 'train.learning_rate': 0.03,
         'train.early_stopping_patience': 1, 'train.select_checkpoint': 'best', 'train.class_weights': 'auto',
         'train.tensorboard': False}
MEMBERS = [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.fixture(scope='module', autouse=True)
def figures_not_rendered():
  """The runs here draw evaluate's and the sweep's figures but do not render them to PNG files: no test here
  reads them (tests/test_launch.py checks them), and rendering them was a tenth of this file's time (0.85 CPU-s a
  run). Everything these tests compare (weights, metrics.csv, scores) is written as before."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(fileio, 'save_figure', lambda path, figure, trim=True: None)
    yield


def tiny(**overrides):
  return load_config('configs/digits.py:quick', **{**SETUP, **overrides})


def _relative_difference(got: list, reference: list) -> float:
  """max over the parameter arrays of max |got - reference| / max |reference| (0.0 when they are equal)."""
  assert len(got) == len(reference)
  return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) for a, b in zip(got, reference))


def _history(frame: pd.DataFrame) -> np.ndarray:
  return frame.drop(columns='seconds').to_numpy(float)


@pytest.fixture(scope='module')
def solo_runs(tmp_path_factory):
  """Each member trained alone by --mode train: its history, last and best states, scores."""
  out = {}
  for fold, seed in MEMBERS:
    workdir = tmp_path_factory.mktemp(f'solo-{fold}-{seed}')
    config = tiny(**{'data.fold': fold, 'seed': seed})
    scores = run('train', config, workdir)
    out[fold, seed] = dict(history=pd.read_csv(workdir / 'metrics.csv'), scores=scores,
                           last=load_trained(config, workdir, 'last').state,
                           best=load_trained(config, workdir, 'best').state)
  return out


@pytest.fixture(scope='module')
def float32_noise(solo_runs):
  """Each solo run's own float32 noise, measured as tests/parity.py measures a reference's: the same run with its
  learning rate moved by JITTER (relative), a float32-sized perturbation of every update. The four jittered runs
  train as one chunk of the loop form, which runs each solo run's own programs on its rows and equals it to the
  bit on the CPU, the one backend the vmap comparison runs on (test_each_member_equals_the_model_trained_alone
  [loop-4]): each member is its solo run jittered, for a fraction of four --mode train runs' set-up. {member:
  (largest change of a metrics.csv value, largest change of a weight relative to its array's scale)}."""
  config = tiny(**{'sweep.model_axis': 'loop', 'sweep.models_per_chunk': len(MEMBERS),
                   'train.learning_rate': SETUP['train.learning_rate'] * (1 + JITTER)})
  decoded, members = _members(config)
  (results,) = _train(config, decoded, members, 'loop', len(MEMBERS))
  out = {}
  for r in results:
    key = r.member.split, r.member.seed
    history, solo = pd.DataFrame(r.loop.history), solo_runs[key]
    assert len(history) == len(solo['history'])   # the same epochs: the noise is measured on the same run
    out[key] = (float(np.max(np.abs(_history(history) - _history(solo['history'])))),
                _relative_difference(jax.tree_util.tree_leaves(r.last.params),
                                     jax.tree_util.tree_leaves(solo['last'].params)))
    assert min(out[key]) > 0, out[key]   # the perturbation reached the metrics and the weights
  assert sorted(out) == sorted(MEMBERS)
  return out


def _members(config):
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  folds = splits.kfold_indices(decoded.pool.labels, 5, 0)
  members = [Member(f, s, folds[f][0], folds[f][1]) for f, s in MEMBERS]
  return decoded, members


def _train(config, decoded, members, form, per_chunk):
  """Each chunk of `members` through the engine, as --mode sweep trains them; the results of every chunk."""
  split = Split(decoded.pool.images, decoded.pool.labels.astype(np.int32))
  data = TrainData(decoded.class_names, split, split)
  run = RunSettings.from_config(config)
  return [train_members(Cohort(run, data, chunk, form=form), MemoryRecord()) for chunk in balanced_chunks(members, per_chunk)]


def _max_difference(a, b):
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  return max(jax.tree_util.tree_leaves(diffs))


@ONLY_CPU_REPEATS_BITS
@pytest.mark.parametrize('form, per_chunk', [('loop', 4), ('vmap', 2)])
def test_each_member_equals_the_model_trained_alone(solo_runs, request, form, per_chunk):
  config = tiny(**{'sweep.model_axis': form, 'sweep.models_per_chunk': per_chunk})
  decoded, members = _members(config)
  chunks = _train(config, decoded, members, form, per_chunk)
  assert [len(results) for results in chunks] == ([4] if per_chunk == 4 else [2, 2])
  # The loop form runs the solo run's own programs on the same shapes, its batches the same rows in the same
  # positions (the member's rows gathered from the pool in the solo run's order, its validation split predicted
  # in the same padded chunks): equal to the bit on any CPU. The vmap form batches the members' ops into other
  # programs, which round otherwise: within FLOOR_FACTOR x each solo run's own float32 noise, measured.
  noise = request.getfixturevalue('float32_noise') if form == 'vmap' else None
  stop_epochs = set()
  for results in chunks:
    for r in results:
      solo = solo_runs[r.member.split, r.member.seed]
      history_noise, weight_noise = noise[r.member.split, r.member.seed] if noise else (0.0, 0.0)
      history = pd.DataFrame(r.loop.history)
      assert len(history) == len(solo['history']), r.member.name  # the same early-stopping epoch
      np.testing.assert_allclose(_history(history), _history(solo['history']), rtol=0, atol=FLOOR_FACTOR * history_noise)
      assert r.checkpoint == solo['scores']['checkpoint'] and r.epoch == solo['scores']['epoch']
      last, best = r.last, r.best
      for got, expected in ((last.params, solo['last'].params), (best[0], solo['best'].params)):
        difference = _relative_difference(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected))
        assert difference <= FLOOR_FACTOR * weight_noise, (r.member.name, difference, weight_noise)
      accuracy = np.mean(heads.probabilities(r.val_logits, 'softmax').argmax(1)
                         == decoded.pool.labels[r.member.val_index])
      assert accuracy == pytest.approx(solo['scores']['accuracy'], abs=1e-12)
      stop_epochs.add(r.loop.epoch)
  # Members stopped at different epochs, yet each stopped one's final state equals its solo run's: stopped
  # members were masked (vmap) or skipped (loop) while the others trained on.
  assert len(stop_epochs) > 1


def test_a_masked_member_does_not_change():
  config = tiny()
  decoded, members = _members(config)
  task = task_lib.build_task(RunSettings.from_config(config), decoded.class_names, decoded.pool.labels, steps_per_epoch=3)
  keys = [jax.random.PRNGKey(0), jax.random.PRNGKey(1)]
  shape = decoded.pool.images.shape[1:]
  split = Split(decoded.pool.images, decoded.pool.labels.astype(np.int32))
  models = axis.VmapAxis(task, 2, task.init(keys[0], shape), split, split.images, [None, None])
  for m, key in enumerate(keys):
    models.add(m, task.init(key, shape), axis.MemberData(split, None, members[m].val_index, None))
  before = jax.device_get(models.states)
  orders = {m: members[m].train_index[:479][None, :].astype(np.int32) for m in (0, 1)}
  models.run_epoch([0], orders, dict(enumerate(keys)))
  after = jax.device_get(models.states)
  take = lambda tree, m: jax.tree_util.tree_map(lambda a: a[m], tree)
  assert _max_difference(take(after, 1), take(before, 1)) == 0.0
  assert _max_difference(take(after, 0).params, take(before, 0).params) > 0.0


def _trainer(base: dict):
  """trained(shared, **changes): one member of `tiny(**base, **changes)` trained in a job whose compiled programs
  are `shared` (a SharedWork), on the same data every call."""
  decoded, members = _members(tiny(**base))
  split = Split(decoded.pool.images, decoded.pool.labels.astype(np.int32))
  data = TrainData(decoded.class_names, split, split)

  def trained(shared, **changes):
    cohort = Cohort(RunSettings.from_config(tiny(**{**base, **changes})), data, members[:1], shared=shared)
    return train_members(cohort, MemoryRecord())[0]
  return trained


def _programs_made(clock) -> int:
  """XLA's compilations and persistent-cache loads within a `timings.job()`."""
  return clock.summary()['programs_compiled'] + clock.summary()['programs_loaded']


def _assert_same_params(a, b):
  for got, expected in zip(jax.tree_util.tree_leaves(a.last.params), jax.tree_util.tree_leaves(b.last.params)):
    assert_same_bits(got, expected)


def _assert_same_history(a, b):
  got, expected = (pd.DataFrame(r.loop.history).drop(columns='seconds') for r in (a, b))
  assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
  assert_same_bits(got.to_numpy(np.float64), expected.to_numpy(np.float64))


def test_variants_that_differ_in_learning_rate_or_smoothing_alone_share_the_job_s_compiled_programs():
  """A sweep's or a search's variants that change the learning rate or the label smoothing alone reuse the job's
  programs (`Cohort.programs`, keyed through SharedWork) with their own values as arguments: nothing is traced or
  compiled for them, and each trains as it does alone. A structural change (another augmentation) compiles."""
  trained = _trainer({'train.epochs': 1, 'train.early_stopping_patience': 0})
  shared = SharedWork()
  first = trained(shared)
  changed = {'train.learning_rate': 0.01, 'train.label_smoothing': 0.1}
  with timings.job() as clock:
    second = trained(shared, **changed)
  assert _programs_made(clock) == 0, clock.summary()
  alone = trained(SharedWork(), **changed)   # its own programs: the same computation, so the same bits
  _assert_same_params(second, alone)
  _assert_same_history(second, alone)
  assert _max_difference(first.last.params, second.last.params) > 1e-4   # its own rate and smoothing took effect
  with timings.job() as clock:
    trained(shared, **{'augment.translate': 0.1})
  assert _programs_made(clock) > 0


def test_variants_that_differ_in_epochs_alone_share_the_job_s_compiled_programs():
  """The schedule's lengths are arguments too (a search's rungs train one configuration for more and more epochs):
  a cosine schedule with a warm-up, trained for other epochs, warm-up epochs and patience, compiles nothing and
  trains as it does alone, bit for bit; a 'step' schedule keeps its boundaries, so its epochs, in the program."""
  base = {'train.epochs': 2, 'train.schedule': 'cosine', 'train.warmup_epochs': 1,
          'train.early_stopping_patience': 0}
  trained = _trainer(base)
  shared = SharedWork()
  trained(shared)
  changed = {'train.epochs': 3, 'train.warmup_epochs': 2, 'train.early_stopping_patience': 5}
  with timings.job() as clock:
    longer = trained(shared, **changed)
  assert _programs_made(clock) == 0, clock.summary()
  alone = trained(SharedWork(), **changed)
  _assert_same_params(longer, alone)
  _assert_same_history(longer, alone)
  assert len(longer.loop.history) == 3   # (its solo run compiled its own lengths in: an argument ignored would differ)
  step = {'train.schedule': 'step', 'train.decay_epochs': 1}
  trained(shared, **step)
  with timings.job() as clock:
    trained(shared, **step, **{'train.epochs': 3})
  assert _programs_made(clock) > 0


def test_variants_that_differ_in_augmentation_magnitudes_alone_share_the_job_s_compiled_programs():
  """The rotation, zoom, translation and erasing magnitudes are arguments too (`augment.MAGNITUDES`): a variant
  with other magnitudes of the same ops compiles nothing and trains as it does alone, bit for bit; turning an op
  off is another program."""
  trained = _trainer({'train.epochs': 1, 'train.early_stopping_patience': 0, 'augment.rotation': 10.0,
                      'augment.erasing': 0.2})
  shared = SharedWork()
  first = trained(shared)
  changed = {'augment.rotation': 25.0, 'augment.erasing': 0.5}
  with timings.job() as clock:
    second = trained(shared, **changed)
  assert _programs_made(clock) == 0, clock.summary()
  _assert_same_params(second, trained(SharedWork(), **changed))
  assert _max_difference(first.last.params, second.last.params) > 1e-4   # its own magnitudes took effect
  with timings.job() as clock:
    off = trained(shared, **{'augment.erasing': 0.0})
  assert _programs_made(clock) > 0
  _assert_same_params(off, trained(SharedWork(), **{'augment.erasing': 0.0}))   # not erasing's program


def test_the_loop_form_s_members_share_one_compiled_step_whatever_their_class_weights():
  """Folds weigh their classes by their own labels (train.class_weights='auto'): the weights are an argument of
  the one train program, not constants of one program per member (which cost a k-fold trial k compilations)."""
  config = tiny()
  decoded, members = _members(config)
  task = task_lib.build_task(RunSettings.from_config(config), decoded.class_names, decoded.pool.labels, steps_per_epoch=3)
  split = Split(decoded.pool.images, decoded.pool.labels.astype(np.int32))
  parallel = DataParallel.over()
  models = LoopAxis(task, CompiledSteps(task, parallel, "step"))
  state = jax.device_get(task.init(jax.random.PRNGKey(0), split.images.shape[1:]))
  weights = [tuple(float(w) for w in np.linspace(1.0, 2.0, 10)), tuple(float(w) for w in np.linspace(2.0, 1.0, 10))]
  for m, member_weights in enumerate(weights):
    models.add(m, parallel.replicate(state), axis.MemberData(split, split.images, members[m].val_index,
                                                                            member_weights))
  order, key = members[0].train_index[:96].reshape(3, 32).astype(np.int32), jax.random.PRNGKey(1)
  first = models.run_epoch([0], {0: order}, {0: key})
  with timings.job() as clock:   # XLA's compilations (or loads from a persistent cache) while the second trains
    second = models.run_epoch([1], {1: order}, {1: key})
  summary = clock.summary()
  assert summary['programs_compiled'] + summary['programs_loaded'] == 0, summary
  # The same start, batches and key: only the weights tell the members apart, so each member trained with its own.
  assert float(first[0][0]['loss_sum']) != pytest.approx(float(second[1][0]['loss_sum']), rel=1e-3)


def test_memory_plan_follows_the_formula():
  config = tiny()
  decoded, _ = _members(config)
  task = task_lib.build_task(RunSettings.from_config(config), decoded.class_names, decoded.pool.labels, steps_per_epoch=3)
  images = decoded.pool.images
  plan = memory_plan.measure_memory(task, images, 479, 256)
  assert plan.shared_bytes == images.nbytes and plan.state_bytes > plan.best_bytes > 0 and plan.step_bytes > 0
  # Resident: the process's size on the CPU; on an accelerator the device's bytes in use, 0 in a fresh process.
  assert plan.eval_bytes > 0 and (plan.resident_bytes > 0 if jax.default_backend() == 'cpu' else plan.resident_bytes >= 0)
  # The 8x8 digits CNN: 8 conv filters of 3x3 + bias, a 4x4x8 -> 16 dense layer, a 16 -> 10 head (float32).
  params = 8 * 9 + 8 + 128 * 16 + 16 + 16 * 10 + 10
  assert plan.best_bytes == 4 * params and plan.state_bytes >= 3 * plan.best_bytes  # params + Adam's two moments
  budget, k = 2**30, plan.step_copies
  per_model = plan.state_bytes + plan.best_bytes
  vmap_temps = int((k - 1) * plan.step_bytes) + max(plan.step_bytes, plan.eval_bytes)
  assert plan.chunk('vmap', budget) == (budget - plan.shared_bytes) // (per_model + vmap_temps)
  loop_temps = int((k - 1) * plan.step_bytes) + max(plan.step_bytes, plan.eval_bytes)
  assert plan.chunk('loop', budget) == (budget - plan.shared_bytes - loop_temps) // per_model
  assert plan.peak_bytes('loop', 3) == plan.resident_bytes + plan.shared_bytes + 3 * per_model + loop_temps
  assert plan.chunk('vmap', 0) == 1  # never below one model
  assert [len(c) for c in balanced_chunks(list(range(20)), 8)] == [7, 6, 7]


# Seed 000's ResNet-18 transfer recipe on 36 footprints at 32x24, from a torchvision state_dict of random weights
# (`resnet18_file`: nothing can be downloaded). Folds 0 and 1 with seed 3: the sweep's two members; fold 1's solo run.
# The backbone is ResNet-18's layout cut after its second stage (stem, layer1) under a new top: what the recipes
# ask of the engine (a frozen prefix of stages, trainable stages after it, a head, phases) is the same at any depth,
# and the whole (1, 1, 1, 1) network's 5.4M weights (0.3M to layer2, 0.08M to layer1) made every run's checkpoints
# and programs many times larger (the cut after layer2 compiled and trained these three tests in a fifth more
# CPU time, 2026-11-28).
TRANSFER = {'model.layers': (1, 1, 1, 1), 'model.cut': 'layer1', 'model.top': 'avg', 'data.image_size': (32, 24),
            'data.synthetic.n_class0': 20, 'data.synthetic.n_class1': 16, 'seed': 3, 'explain.after_training': False,
            'train.tensorboard': False, 'sweep.folds': (0, 1), 'sweep.seeds': (3,), 'sweep.models_per_chunk': 2}
AUGMENT_OFF = {'augment.hflip': 0.0, 'augment.brightness': 0.0, 'augment.contrast': 0.0}
RECIPES = {
    # fine-tuned from the pretrained weights in one phase: the stem frozen, the last stage (layer1) and the head train
    'pretrained': {'model.freeze_till': 1, 'train.finetune_epochs': 0},
    # the backbone frozen, augmentation off: the head trains on features computed once for both members; the
    # chunk planned by the memory rule, for the head on the features
    'frozen': {'model.freeze_till': -1, 'train.finetune_epochs': 0, 'sweep.models_per_chunk': 0, **AUGMENT_OFF},
    # the recipe as the seed ran it: a frozen phase (with augmentation), then fine-tuning from the last stage on
    'two_phase': {'model.freeze_till': -1, 'train.finetune_epochs': 1, 'train.finetune_freeze_till': 1},
}


def _torchvision_resnet_state_dict(layers: tuple, seed: int = 0) -> dict:
  """A basic-block torchvision ResNet's state_dict with these block counts, {name: array}, its names and shapes
  torchvision's (layers (2, 2, 2, 2): resnet18), its values drawn as torch initialises the model: the convolutions
  He-normal over their fan-out, the batch norms the identity (weight 1, bias 0, mean 0, variance 1), the
  classifier uniform within 1/sqrt(512)."""
  rng, state = np.random.default_rng(seed), {}

  def conv(name, out, into, size):
    weight = rng.normal(0, np.sqrt(2 / (out * size * size)), (out, into, size, size))
    state[f'{name}.weight'] = weight.astype(np.float32)

  def norm(name, channels):
    state.update({f'{name}.weight': np.ones(channels, np.float32), f'{name}.bias': np.zeros(channels, np.float32),
                  f'{name}.running_mean': np.zeros(channels, np.float32),
                  f'{name}.running_var': np.ones(channels, np.float32),
                  f'{name}.num_batches_tracked': np.zeros((), np.int64)})

  conv('conv1', 64, 3, 7)
  norm('bn1', 64)
  into = 64
  for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
    for block in range(blocks):
      name = f'layer{stage + 1}.{block}'
      conv(f'{name}.conv1', width, into, 3)
      norm(f'{name}.bn1', width)
      conv(f'{name}.conv2', width, width, 3)
      norm(f'{name}.bn2', width)
      if block == 0 and into != width:   # the stage's first block strides 2: a 1x1 projection on its shortcut
        conv(f'{name}.downsample.0', width, into, 1)
        norm(f'{name}.downsample.1', width)
      into = width
  bound = 1 / np.sqrt(512)
  state['fc.weight'] = rng.uniform(-bound, bound, (1000, 512)).astype(np.float32)
  state['fc.bias'] = rng.uniform(-bound, bound, 1000).astype(np.float32)
  return state


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  """The TRANSFER backbone's pretrained weights: a torchvision state_dict of random weights (nothing can be
  downloaded) as a .safetensors file, which fpclass reads as it reads torch.save's .pth (`models.weights`), without
  torch: writing a .pth took importing torch and torchvision, 2 to 3 CPU-s of this file (2026-11-28)."""
  from safetensors.numpy import save_file
  path = tmp_path_factory.mktemp('weights') / 'resnet.safetensors'
  save_file(_torchvision_resnet_state_dict(TRANSFER['model.layers']), str(path))
  return path


@pytest.fixture(scope='module')
def drawn_footprints(tmp_path_factory):
  """The TRANSFER runs' synthetic footprints, drawn once for the module as a run draws them into its cache: their
  folder, which `transfer_footprints` copies into each test's own cache."""
  return draw_footprints(tmp_path_factory.mktemp('footprints'),
                         load_config('configs/footprint.py:resnet18,quick', **TRANSFER).data.synthetic)


@pytest.fixture
def transfer_footprints(isolated_cache, drawn_footprints):
  """The test's own data cache (FPCLASS_CACHE, tests.conftest.isolated_cache) holding a copy of the module's
  footprints, where its runs find them instead of drawing them again."""
  seed_cache(isolated_cache, drawn_footprints)


def _leaves(config, workdir):
  return jax.tree_util.tree_leaves(load_trained(config, workdir, 'last').state.params)


@ONLY_CPU_REPEATS_BITS
@pytest.mark.parametrize('recipe', list(RECIPES))
@pytest.mark.usefixtures('transfer_footprints')
def test_a_sweep_member_equals_its_solo_run_bit_for_bit(recipe, resnet18_file, tmp_path, capsys):
  config = load_config('configs/footprint.py:resnet18,quick', **{**TRANSFER, **RECIPES[recipe]},
                       **{'model.pretrained': str(resnet18_file), 'sweep.model_axis': 'loop'})
  run('sweep', config, tmp_path / 'sweep')
  log = capsys.readouterr().out
  models = pd.read_csv(tmp_path / 'sweep' / 'sweep_models.csv').set_index('split')
  for fold in (1,):   # the second member: the first one's chunk-mate, trained beside it, equals its solo run too
    solo_config = load_config('configs/footprint.py:resnet18,quick', **{**TRANSFER, **RECIPES[recipe]},
                              **{'model.pretrained': str(resnet18_file), 'data.fold': fold})
    scores = run('train', solo_config, tmp_path / f'solo{fold}')
    member = tmp_path / 'sweep' / 'base' / f'fold{fold}'
    solo = _leaves(solo_config, tmp_path / f'solo{fold}')
    # Bit for bit where the member runs the solo run's programs on the same shapes. The frozen recipe's
    # feature pass does not: the sweep computes the pool's features in one chunking, the solo run its train and
    # val images in another, and XLA:CPU's convolutions round an image differently by its batch and its row
    # in it on some CPUs (an AVX2-only AMD EPYC; not the AVX-512 Xeon). There the tolerance is the solo run's
    # own float32 noise, measured here: the same solo run with its features computed in another chunking
    # (eval batches of 5), times the parity tests' factor. Where that noise is 0, equality must be exact. It is
    # measured only where the member differs from its solo run at all: equal bits pass whatever the noise.
    solo_history = pd.read_csv(tmp_path / f'solo{fold}' / 'metrics.csv')
    got = _relative_difference(_leaves(solo_config, member), solo)
    member_history = pd.read_csv(member / 'metrics.csv')
    assert list(member_history.columns) == list(solo_history.columns)
    equal = got == 0 and np.array_equal(_history(member_history), _history(solo_history), equal_nan=True)
    floor, history_floor = 0.0, 0.0
    if recipe == 'frozen' and not equal:
      rechunked = load_config('configs/footprint.py:resnet18,quick', **{**TRANSFER, **RECIPES[recipe]},
                              **{'model.pretrained': str(resnet18_file), 'data.fold': fold, 'eval.batch_size': 5})
      run('train', rechunked, tmp_path / f'rechunked{fold}')
      floor = _relative_difference(_leaves(rechunked, tmp_path / f'rechunked{fold}'), solo)
      history_floor = float(np.max(np.abs(_history(pd.read_csv(tmp_path / f'rechunked{fold}' / 'metrics.csv'))
                                          - _history(solo_history))))
    print(f"\nparams: {got:.2e} of their scale, noise {floor:.2e}" + (' (equal: not measured)' if equal else ''))
    assert got <= FLOOR_FACTOR * floor, f'max |d param| {got:.2e} of its scale > {FLOOR_FACTOR} x noise {floor:.2e}'
    np.testing.assert_allclose(_history(member_history), _history(solo_history), rtol=0,
                               atol=FLOOR_FACTOR * history_floor)   # exact where the noise is 0
    assert models.loc[fold, 'accuracy'] == scores['accuracy'] and models.loc[fold, 'epoch'] == scores['epoch']
  history = pd.read_csv(tmp_path / 'sweep' / 'base' / 'fold0' / 'metrics.csv')
  assert sorted(set(history['phase'])) == ([0, 1] if recipe == 'two_phase' else [0])
  if recipe == 'frozen':   # one feature pass served both members
    assert "feature cache: auto: the frozen network before 'top' ran once over 36 train images" in log
    assert 'for 2 model(s)' in log
