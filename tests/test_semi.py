"""Semi-supervised training (`fpclass.train.semi`, `fpclass.data.unlabelled`): the pseudo-label mask, the weak view's
prediction as the strong view's target, batches that never draw a held-out image as unlabelled, the pool's copies
and bad files, and the report line of a model the test images trained without their labels, through launch.py."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from PIL import Image

from fpclass.config.inputs import AugmentSettings, DataSettings
from fpclass.config.schema import base_config
from fpclass.config.training import SemiSettings
from fpclass.data import pipeline
from fpclass.data.unlabelled import load_pool
from fpclass.errors import UserInputError
from fpclass.infer import evaluation
from fpclass.models.heads import cross_entropy
from fpclass.models.preprocessing import Normalisation
from fpclass.train import augment, semi
from fpclass.train.task import SEMI_STREAM, Task
from tests.conftest import launch
from tests.test_folder_config import CLASSES, image_folder


def test_the_mask_keeps_exactly_the_views_at_or_above_the_threshold():
  logits = jnp.log(jnp.asarray([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
  targets, mask = semi.pseudo_targets(jax.nn.softmax(logits), 0.8)
  assert np.asarray(mask).tolist() == [True, False, True, False]   # 0.8 itself passes: ">=" as FixMatch's
  assert np.asarray(targets).argmax(1).tolist() == [0, 0, 1, 2]
  _, none = semi.pseudo_targets(jax.nn.softmax(logits), 0.95)
  assert not np.asarray(none).any()


class Linear(nn.Module):
  """A model whose output depends on every pixel: views that differ give logits that differ."""

  @nn.compact
  def __call__(self, x, train=False):
    flat = x.reshape(x.shape[0], -1)
    return nn.Dense(3, name='head')(flat), {'flat': flat}


def test_the_strong_view_learns_the_weak_view_s_confident_class():
  """The step's loss is the labelled loss plus the weight times the masked cross-entropy of the strong views against
  the weak views' classes; swapping the views, or dropping the mask, gives another loss."""
  weak = AugmentSettings(hflip=0.5)
  task = Task(model=Linear(), tx=optax.sgd(0.0), normalisation=Normalisation((0.5,), (0.5,)), augment_cfg=weak,
              head='softmax', num_classes=3)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (6, 8, 8, 1)), jnp.uint8)   # 2 labelled, then 4 unlabelled
  labels = jnp.asarray([0, 2, -1, -1, -1, -1], jnp.int32)
  state = task.init(jax.random.PRNGKey(1), (8, 8, 1))
  params = jax.tree_util.tree_map(lambda a: a * 4.0, state.params)
  state = state.replace(params=params)
  key = jax.random.PRNGKey(7)
  aug_key, _ = jax.random.split(key)
  weak_key, strong_key = jax.random.split(jax.random.fold_in(aug_key, SEMI_STREAM))
  unlabelled = images[2:]
  forward = lambda x: task.apply(params, {}, x)[0]
  weak_logits = forward(task.prepare(unlabelled, weak_key))
  # A threshold between the weak views' 2nd and 3rd most confident: two pass, two do not.
  confidence = np.sort(np.asarray(jax.nn.softmax(weak_logits)).max(1))
  settings = SemiSettings(ratio=2, threshold=float(confidence[1:3].mean()), weight=0.5)
  task = dataclasses.replace(task, semi=settings)
  _, metrics = task.train_batch(state, images, labels, key)
  strong_view = augment.augment_batch(unlabelled.astype(jnp.float32) / 255.0, strong_key,
                                      semi.strong_augment(weak, settings))
  strong_logits = forward(task.model_input(strong_view))
  labelled = jnp.mean(cross_entropy(forward(task.prepare(images[:2], aug_key)), jax.nn.one_hot(labels[:2], 3),
                                    'softmax'))

  def expected(target_logits, scored_logits, masked=True):
    probs = jax.nn.softmax(target_logits)
    mask = (probs.max(1) >= settings.threshold) if masked else jnp.ones(4, bool)
    return labelled + settings.weight * jnp.mean(mask * cross_entropy(scored_logits, jax.nn.one_hot(
        probs.argmax(1), 3), 'softmax'))

  loss = float(metrics['loss_sum']) / float(metrics['count'])
  passed = int(metrics['pseudo_labelled'])
  assert passed == 2 and int(metrics['unlabelled']) == 4 and int(metrics['count']) == 2
  assert loss == pytest.approx(float(expected(weak_logits, strong_logits)), rel=1e-5)
  assert loss != pytest.approx(float(expected(strong_logits, weak_logits)), rel=1e-3)   # the views swapped
  assert loss != pytest.approx(float(expected(weak_logits, strong_logits, masked=False)), rel=1e-3)


def test_adaptive_thresholds_follow_the_running_confidence_per_class():
  """config.semi.thresholds='adaptive' (FreeMatch): the state starts at 1/C; each step's thresholds are the running
  confidence times each class's running mean probability over the largest, the predicted class's applies, and the
  step moves the running means toward the batch's weak views by 1 - momentum."""
  task = Task(model=Linear(), tx=optax.sgd(0.0), normalisation=Normalisation((0.5,), (0.5,)),
              augment_cfg=AugmentSettings(hflip=0.0), head='softmax', num_classes=3,
              semi=SemiSettings(ratio=2, thresholds='adaptive', threshold_momentum=0.5))
  state = task.init(jax.random.PRNGKey(1), (8, 8, 1))
  np.testing.assert_allclose(state.semi['classes'], [1 / 3] * 3)
  np.testing.assert_allclose(state.semi['confidence'], 1 / 3)
  state = state.replace(params=jax.tree_util.tree_map(lambda a: a * 4.0, state.params))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (6, 8, 8, 1)), jnp.uint8)
  labels = jnp.asarray([0, 2, -1, -1, -1, -1], jnp.int32)
  weak = np.asarray(jax.nn.softmax(task.apply(state.params, {}, task.prepare(images[2:]))[0]))   # no augmentation
  running = {'confidence': 1 / 3, 'classes': np.full(3, 1 / 3)}
  for step in range(3):
    thresholds = running['confidence'] * running['classes'] / running['classes'].max()
    expected_mask = weak.max(1) >= thresholds[weak.argmax(1)]
    state, metrics = task.train_batch(state, images, labels, jax.random.PRNGKey(step))
    assert int(metrics['pseudo_labelled']) == int(expected_mask.sum())
    running = {'confidence': 0.5 * running['confidence'] + 0.5 * weak.max(1).mean(),
               'classes': 0.5 * running['classes'] + 0.5 * weak.mean(0)}
    np.testing.assert_allclose(state.semi['confidence'], running['confidence'], rtol=1e-5)
    np.testing.assert_allclose(state.semi['classes'], running['classes'], rtol=1e-5)
  per_class, mask = semi.pseudo_targets(jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2]]), jnp.asarray([0.6, 0.8, 0.9]))
  assert np.asarray(mask).tolist() == [True, False]   # each row against its predicted class's threshold
  with pytest.raises(Exception, match='thresholds'):
    SemiSettings(thresholds='flex')


def test_an_epoch_order_draws_unlabelled_rows_from_the_pool_alone():
  labelled = np.asarray([[3, 1], [0, 4]], np.int32)   # a member's train rows; 2 and 5 are its held-out rows
  order = semi.order(labelled, seed=0, epoch=0, start=6, count=5, ratio=3)
  assert order.shape == (2, 8) and (order[:, :2] == labelled).all()
  drawn = order[:, 2:].ravel()
  assert ((drawn >= 6) & (drawn < 11)).all()   # never a labelled row, so never a held-out one
  assert sorted(np.bincount(drawn - 6, minlength=5)) == [2, 2, 2, 3, 3]   # as evenly as 12 draws of 5 allow
  assert not (semi.order(labelled, 0, 1, 6, 5, 3) == order).all()   # another epoch, another draw


def test_the_pool_leaves_out_copies_of_labelled_images_and_lists_bad_files(tmp_path):
  root = image_folder(tmp_path / 'mine', per_class=4)
  pool_folder = tmp_path / 'pool'
  pool_folder.mkdir()
  for name in ('ant0.png', 'bee3.png'):   # copies of labelled images, under other names
    (pool_folder / f'copy-{name}').write_bytes((root / name[:3] / name).read_bytes())
  for i in range(3):
    Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(pool_folder / f'new{i}.png')
  (pool_folder / 'broken.png').write_bytes(b'not a png')
  config = base_config()
  config.data.update(source='image_folder', root=str(root), image_size=(16, 16), channels=3,
                     unlabelled=str(pool_folder), cache_dir=str(tmp_path / 'cache'))
  data = DataSettings.from_config(config.data)
  decoded = pipeline.decode_source(data, progress=False)
  pool = load_pool(data, [decoded.pool.images])
  assert sorted(pool.names) == sorted(str(pool_folder / f'new{i}.png') for i in range(3))
  assert sorted(pool.labelled_copies) == sorted(str(pool_folder / f'copy-{n}') for n in ('ant0.png', 'bee3.png'))
  assert [name for name, _ in pool.problems] == [str(pool_folder / 'broken.png')]
  assert pool.images.shape == (3, 16, 16, 3) and (pool_folder / 'broken.png').exists()
  assert pool.describe() == (f"3 unlabelled images from {str(pool_folder)!r}; 2 left out as copies of labelled "
                             "images; 1 unreadable, listed")

  only_copies = tmp_path / 'copies'
  only_copies.mkdir()
  (only_copies / 'a.png').write_bytes((root / 'cow' / 'cow1.png').read_bytes())
  config.data.unlabelled = str(only_copies)
  with pytest.raises(UserInputError, match=r"config.data.unlabelled=.*no unlabelled image to use \(all 1 are "):
    load_pool(DataSettings.from_config(config.data), [decoded.pool.images])
  config.data.unlabelled = 'test'
  with pytest.raises(UserInputError, match=r"config.data.unlabelled='test': the source has no test images"):
    load_pool(DataSettings.from_config(config.data), [decoded.pool.images], decoded.test)


def test_training_on_the_test_images_unlabelled_says_so_beside_the_test_score(tmp_path):
  """Through launch.py: the source's own labelled test/ folder is the pool; metrics.csv has the share of the pool
  that passed the threshold, and scores.json and the report carry the line beside the test score. Adaptive
  thresholds keep running means in the train state: saved with the resume point, and read back when the run goes
  on (two more epochs from its last checkpoint)."""
  root = image_folder(tmp_path / 'mine' / 'train', per_class=6)
  test = image_folder(tmp_path / 'test-source', sizes=((44, 40),), per_class=2)   # not copies of train/'s
  (tmp_path / 'mine' / 'test').mkdir()
  for name in CLASSES:
    (test / name).rename(tmp_path / 'mine' / 'test' / name)
  workdir = tmp_path / 'run'
  # One run carries both claims, its first launch the report's and its second the resume's. The report's lines do
  # not depend on the thresholds (the note reads semi.method, the rate the step's counts), so the launch of fixed
  # thresholds that stood beside it checked nothing more. configs/folder.py's CNN shrunk to one stage of 8 channels:
  # compiling the semi-supervised step (two views, the strong policy) is most of a launch's CPU.
  flags = [f'--config.data.root={root.parent}', '--config.data.unlabelled=test', '--config.semi.ratio=1',
           '--config.semi.thresholds=adaptive', '--config.data.image_size=(16,16)', '--config.model.conv_channels=(8,)',
           '--config.model.fc_sizes=(8,)', '--config.explain.after_training=False', '--config.train.tensorboard=False']
  done = launch(f'--workdir={workdir}', '--config.train.epochs=1', *flags)
  assert "semi-supervised: 6 unlabelled images from 'test'" in done.stdout
  history = pd.read_csv(workdir / 'metrics.csv')
  assert 0.0 <= history['train_pseudo_rate'].iloc[0] <= 1.0
  scores = json.loads((workdir / 'scores.json').read_text())
  assert 'test' in scores and "config.data.unlabelled='test': fixmatch pseudo-labelled them" in scores['test_note']
  report = (workdir / 'report.md').read_text()
  assert scores['test_note'] in report and 'of those of the last epoch passed the pseudo-label threshold' in report
  resumed = launch(f'--workdir={workdir}', '--config.train.epochs=3', *flags)
  assert 'epoch 1/3' not in resumed.stdout and 'epoch 2/3' in resumed.stdout, resumed.stdout   # went on, not anew
  assert len(pd.read_csv(workdir / 'metrics.csv')) == 3


def test_the_report_gives_the_pool_s_take_up_and_the_advice_below_half():
  low = evaluation.pseudo_label_lines(pd.DataFrame({'train_pseudo_rate': [0.1, 0.3]}))
  assert low[0].startswith('Unlabelled images (config.data.unlabelled): 30% of those of the last epoch passed')
  assert 'more epochs' in low[0]
  high = evaluation.pseudo_label_lines(pd.DataFrame({'train_pseudo_rate': [0.4, 0.7]}))
  assert '70%' in high[0] and 'more epochs' not in high[0]
  assert evaluation.pseudo_label_lines(pd.DataFrame({'train_loss': [1.0]})) == []
