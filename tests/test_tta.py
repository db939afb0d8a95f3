"""Test-time augmentation (fastai's Learner.tta): the blend against one computed by hand from the model, the
augmentation and fastai's formula; plain when augmentation is off; calibration refitted on TTA outputs; submit
through launch.py."""
import dataclasses
import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fpclass.analysis.calibration import fit_temperature
from fpclass.config.inputs import AugmentSettings, DataSettings, DecodeSettings
from fpclass.config.run import RunSettings
from fpclass.data import new_images, pipeline
from fpclass.data.decode import decode_files
from fpclass.errors import UserInputError
from fpclass.infer import calibrate_models, ensemble, tta
from fpclass.infer.inference import Trained, load_trained
from fpclass.models.heads import as_logits, probabilities
from fpclass.modes import predict as predict_mode
from fpclass.train import augment
from fpclass.train.loop_state import LoopState
from fpclass.train.task import build_task
from fpclass.train.validation import validate
from tests.conftest import QUICK, launch, load_config

AUGMENT = dict(hflip=0.5, rotation=20.0, translate=0.1, brightness=0.3, contrast=0.3)


def tiny_trained(head='softmax', **augment_settings) -> Trained:
  """A randomly initialised digits CNN on 16x16 grayscale, as a restored model: one per head and augmentation,
  shared by the tests that ask for the same (they only read it), with the programs it compiles."""
  return _tiny_trained(head, tuple(sorted(augment_settings.items())))


@functools.lru_cache(maxsize=None)
def _tiny_trained(head, augment_items) -> Trained:
  augment_settings = dict(augment_items)
  config = load_config('configs/digits.py:quick')
  config.augment.update({**dict(rotation=0.0, translate=0.0), **augment_settings})
  config.model.head = head
  names = ('a', 'b') if head == 'sigmoid' else tuple('abcdefghij')
  task = build_task(RunSettings.from_config(config), names, np.arange(len(names)), steps_per_epoch=1)
  state = task.init(jax.random.PRNGKey(3), (16, 16, 1))
  return Trained(task, state, {}, names, 'best', 0, LoopState())


def images(n=10, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def _hand_logits(task, variables, batch_u8, key):
  x = jnp.asarray(batch_u8, jnp.float32) / 255.0
  if key is not None:
    x = augment.augment_batch(x, key, task.augment_cfg)
  logits, _ = task.model.apply(variables, task.normalisation(x), train=False)
  return logits


_HAND_PROGRAMS = {}   # id(task) -> (task, _hand_logits jitted for it)


def hand_probabilities(trained: Trained, batch_u8, key=None):
  """The model's class probabilities of a batch, augmented with `key`: augment -> normalise -> the network
  in inference mode, written out from the parts rather than through `Task.prepare`. The parts run as one jitted
  program per model, its variables an argument: op by op, JAX dispatched (and compiled) each operation of the
  augmentation and the network on its own, most of the time of the tests on the digits model."""
  variables = {'params': trained.state.params}
  if trained.state.batch_stats:
    variables['batch_stats'] = trained.state.batch_stats
  task = trained.task
  entry = _HAND_PROGRAMS.get(id(task))
  if entry is None or entry[0] is not task:
    entry = _HAND_PROGRAMS[id(task)] = (task, jax.jit(functools.partial(_hand_logits, task)))
  return probabilities(np.asarray(entry[1](variables, batch_u8, key)), task.head)


def hand_tta(trained: Trained, x, batch: int, passes: int, beta: float, use_max=False):
  """fastai's tta: n augmented passes, each batch b of pass k with key fold_in(fold_in(PRNGKey(0), k), b), the
  last batch padded with zeros; their mean lerped towards the plain pass by beta (or every pass's maximum)."""
  def run(key_of):
    out = []
    for b, start in enumerate(range(0, len(x), batch)):
      chunk = np.concatenate([x[start:start + batch], np.zeros((batch, *x.shape[1:]), x.dtype)])[:batch]
      out.append(hand_probabilities(trained, chunk, key_of(b)))
    return np.concatenate(out)[:len(x)]
  plain = run(lambda b: None)
  augmented = np.stack([run(lambda b, k=k: jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), k), b))
                        for k in range(passes)])
  if use_max:   # fastai's maxima, which this project divides by their sum to keep them probabilities
    top = np.maximum(plain, augmented.max(0))
    return top / top.sum(1, keepdims=True), plain, augmented
  return beta * plain + (1 - beta) * augmented.mean(0), plain, augmented


@pytest.mark.parametrize('head', ['softmax', 'sigmoid'])
def test_tta_equals_the_hand_computed_blend(head):
  trained = tiny_trained(head, **AUGMENT)
  x = images(10)
  settings = tta.TTA(passes=3, beta=0.25)
  got = trained.probabilities(x, 4, tta_settings=settings)   # batches of 4, the last one padded
  expected, plain, augmented = hand_tta(trained, x, 4, 3, 0.25)
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
  # The passes differ from the plain one and from each other, so a wrong key, beta or mean would show.
  assert np.abs(augmented - plain).max() > 1e-2 and np.abs(augmented[0] - augmented[1]).max() > 1e-2
  np.testing.assert_allclose(trained.probabilities(x, 4), plain, rtol=0, atol=2e-6)


def test_tta_use_max_is_the_maximum_of_every_pass():
  trained = tiny_trained(**AUGMENT)
  x = images(6, seed=1)
  got = trained.probabilities(x, 6, tta_settings=tta.TTA(passes=2, beta=0.25, use_max=True))
  expected, _, _ = hand_tta(trained, x, 6, 2, 0.25, use_max=True)
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_with_augmentation_off_tta_equals_plain():
  trained = tiny_trained()
  assert not trained.task.augment_cfg.enabled
  x = images(7, seed=2)
  np.testing.assert_allclose(trained.probabilities(x, 4, tta_settings=tta.TTA(passes=3)), trained.probabilities(x, 4),
                             rtol=0, atol=1e-6)


def test_tta_logits_give_back_the_blend_for_both_heads():
  p = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
  np.testing.assert_allclose(probabilities(as_logits(p, 'softmax'), 'softmax'), p, atol=1e-12)
  p2 = np.array([[0.9, 0.1], [0.3, 0.7]])
  np.testing.assert_allclose(probabilities(as_logits(p2, 'sigmoid'), 'sigmoid'), p2, atol=1e-12)


def test_tta_settings_are_checked():
  config = load_config('configs/digits.py:quick', **{'submit.tta': -1})
  with pytest.raises(UserInputError, match='config.submit.tta='):
    validate(config)
  config = load_config('configs/digits.py:quick', **{'predict.tta_beta': 1.5})
  with pytest.raises(UserInputError, match='config.predict.tta_beta'):
    validate(config)
  config = load_config('configs/digits.py:quick', **{'predict.tta': 2, 'submit.tta': 3})
  with pytest.raises(UserInputError, match='differ'):
    tta.calibration_settings(config)


def quick_config(**overrides):
  return load_config(QUICK.split('=', 1)[1], **overrides)


def test_calibration_is_refitted_on_tta_outputs_and_must_match_at_prediction(trained_quick, tmp_path):
  shared, env, _ = trained_quick
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)
  config = quick_config(**{'submit.tta': 2, 'data.cache_dir': env['FPCLASS_CACHE']})
  trained = load_trained(config, workdir)
  data = DataSettings.from_config(config.data)
  val = pipeline.split_dataset(pipeline.decode_source(data), data.split).val
  batch = min(int(config.eval.batch_size), len(val))
  blend, plain, _ = hand_tta(trained, val.images, batch, 2, 0.25)
  # A sweep hands over its plain validation logits; with TTA on they are not what predictions will be.
  result = calibrate_models.calibrate(config, workdir, predictions={workdir.name: np.zeros((len(val), 2))})
  assert result['tta'] == dict(passes=2, beta=0.25, use_max=False)
  assert result['temperature'] == pytest.approx(fit_temperature(as_logits(blend, 'softmax'), val.labels,
                                                                'softmax'), rel=1e-4)
  # What it was fitted on, as written beside it: the TTA blend, not the plain pass nor the sweep's logits.
  fitted = pd.read_csv(workdir / 'calibration_predictions.csv')[[f'p_{c}' for c in trained.class_names]].to_numpy()
  np.testing.assert_allclose(fitted, blend, rtol=0, atol=1e-6)
  assert np.abs(blend - plain).max() > 1e-3
  stored = json.loads((workdir / 'metadata.json').read_text())['calibration']
  assert stored['tta'] == result['tta']

  members = ensemble.load_members(config, workdir, folds=False)
  with pytest.raises(UserInputError, match='config.submit.tta=0'):
    ensemble.predict_probabilities(members, val.images, 64, tta_settings=tta.TTA())
  # tta_hflip wraps TTA: the image and its mirror each get the TTA blend, temperature-scaled, then averaged.
  got = ensemble.predict_probabilities(members, val.images[:5], 64, tta_hflip=True, tta_settings=tta.TTA(2))
  t = result['temperature']
  views = [hand_tta(trained, v, 5, 2, 0.25)[0] for v in (val.images[:5], np.ascontiguousarray(val.images[:5, :, ::-1]))]
  expected = np.mean([probabilities(np.log(v) / t, 'softmax') for v in views], axis=0)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_submit_with_tta_through_launch(trained_quick, tmp_path):
  shared, env, _ = trained_quick
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)
  launch(f'--workdir={workdir}', '--mode=submit', '--config.submit.tta=2', env=env)
  config = quick_config(**{'data.cache_dir': env['FPCLASS_CACHE']})
  test = pipeline.decode_source(DataSettings.from_config(config.data)).test
  trained = load_trained(config, workdir)
  expected, plain, _ = hand_tta(trained, test.images, min(int(config.eval.batch_size), len(test)), 2, 0.25)
  got = pd.read_csv(workdir / 'submission_probabilities.csv', dtype={'filename': str})
  assert list(got['filename']) == list(test.ids)
  np.testing.assert_allclose(got[[f'p_{c}' for c in trained.class_names]].to_numpy(), expected, rtol=0, atol=1e-5)
  assert np.abs(expected - plain).max() > 1e-3
  assert 'test-time augmentation: 0.25 x the plain pass + 0.75 x the mean of 2 augmented passes' in \
      (workdir / 'report.md').read_text()


def test_the_augmentation_settings_are_the_runs_own():
  trained = tiny_trained(**AUGMENT)
  assert trained.task.augment_cfg == dataclasses.replace(AugmentSettings(), **AUGMENT)


def test_predict_with_tta_keys_its_batches_across_decode_batches(trained_quick, tmp_path):
  """--mode predict decodes and predicts 5 images at a time; the TTA keys number the batches on from one
  decode batch to the next, as one call over every image would."""
  shared, env, _ = trained_quick
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/')
  folder = tmp_path / 'photos'
  folder.mkdir()
  for path in sorted((root / 'test').glob('*.png'))[:12]:
    shutil.copy(path, folder / path.name)
  config = quick_config(**{'predict.inputs': str(folder), 'predict.tta': 2, 'predict.batch_size': 5,
                           'data.cache_dir': env['FPCLASS_CACHE']})
  out = predict_mode.predict(config, workdir)
  trained = load_trained(config, workdir)
  paths = new_images.list_inputs(str(folder)).paths
  x, ok, _ = decode_files(paths, DecodeSettings.from_config(config.data), split='predict', progress=False)
  assert ok.all()
  expected, plain, _ = hand_tta(trained, np.asarray(x), 5, 2, 0.25)
  got = pd.read_csv(out)
  assert [pathlib.Path(p).name for p in got['path']] == [p.name for p in paths]
  np.testing.assert_allclose(got[[f'p_{c}' for c in trained.class_names]].to_numpy(), expected, rtol=0, atol=1e-5)
  assert np.abs(expected - plain).max() > 1e-3
