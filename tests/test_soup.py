"""Greedy soups (`fpclass.ensemble.soup`) without a sweep: the honest score of a fold's soup comes from the half of its
images that did not choose it; the greedy order, the signature that decides what may be averaged, the record
ensemble.json keeps, and real restored ingredients averaged, written and read back as a workdir."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpclass.analysis import metric_registry
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.ensemble import soup
from fpclass.ensemble.selection import Candidate, Pool
from fpclass.infer import ensemble
from fpclass.infer.inference import load_trained
from fpclass.modes.runner import run
from fpclass.train import checkpoint, sidecar
from fpclass.train.loop_state import LoopState
from fpclass.train.task import TrainState
from tests.conftest import load_config

ACCURACY = metric_registry.REGISTRY['accuracy']
LOSS = metric_registry.REGISTRY['loss']
N = 40   # examples of the fold


def halves_of(fold: int, seed: int = 0) -> list:
  """The two halves fold_soup cuts a fold of N examples into (its documented seeding)."""
  order = np.random.default_rng([seed, fold + 1]).permutation(N)
  return [np.sort(order[:N // 2]), np.sort(order[N // 2:])]


def predictions_with(correct: np.ndarray, labels: np.ndarray, confidence: float) -> np.ndarray:
  """(N, 2) probabilities right (at `confidence`) where `correct`, wrong elsewhere."""
  predicted = np.where(correct, labels, 1 - labels)
  probs = np.full((len(labels), 2), 1 - confidence)
  probs[np.arange(len(labels)), predicted] = confidence
  return probs


def first(rows: np.ndarray, count: int) -> np.ndarray:
  mask = np.zeros(N, bool)
  mask[rows[:count]] = True
  return mask


class PlannedKitchen(soup.Kitchen):
  """The real Kitchen's choice over planned predictions: on the first half {0} scores 0.6, {1} 0.5 and their
  average 0.8 (the greedy soup there is both); on the second half {0} 0.4, {1} 0.7 and the average 0.6 (the soup
  there is {1} alone). Over the whole fold {1} 0.6 beats {0} 0.5 and the average 0.7 beats both."""

  def __init__(self, items, images, batch_size):
    self.items, self.images, self.batch_size, self.cache = items, images, batch_size, {}
    labels = np.arange(N) % 2
    one, two = halves_of(FOLD)
    self.planned = {
        (0,): predictions_with(first(one, 12) | first(two, 8), labels, 0.9),
        (1,): predictions_with(first(one[::-1], 10) | first(two[::-1], 14), labels, 0.8),
        (0, 1): predictions_with(first(one, 16) | first(two, 12), labels, 0.7)}
    self.written, self.rows = None, []

  def predict(self, kept):
    return self.planned[tuple(sorted(kept))]

  def choose(self, rows, *args):
    self.rows.append(np.asarray(rows))
    return super().choose(rows, *args)


FOLD = 3


def item(name: str, seed: int = 0, fold: int = FOLD, **model) -> soup.Ingredient:
  config = dict(model=dict(name='footprint_cnn', **model), seed=seed, data=dict(fold=fold))
  return soup.Ingredient(name, None, dict(config=config, image_size=[8, 8], channels=1, normalisation=None))


def test_the_honest_score_of_each_half_comes_from_the_soup_the_other_half_chose(monkeypatch, tmp_path):
  kitchens, written = [], []
  monkeypatch.setattr(soup, 'Kitchen', lambda *args: kitchens.append(PlannedKitchen(*args)) or kitchens[-1])
  monkeypatch.setattr(soup, 'write_workdir', lambda workdir, kitchen, kept, fold, names: written.append(
      (workdir, kept, fold, names)) or kitchens.append(kitchen))
  labels = np.arange(N) % 2
  items, images = [item('a'), item('b')], np.zeros((N, 8, 8, 1))
  made = soup.fold_soup(FOLD, items, images, labels, metric_registry.SINGLE, ACCURACY, 8, tmp_path / 'fold3',
                        ['0', '1'])
  one, two = halves_of(FOLD)
  kitchen = PlannedKitchen(None, None, None)
  # one kitchen of the fold's ingredients, images and batch size, which chose on each half (disjoint, each half
  # of the fold), then on every image, and was written
  assert len(kitchens) == 2 and kitchens[1] is kitchens[0]
  assert kitchens[0].items is items and kitchens[0].images is images and kitchens[0].batch_size == 8
  assert [rows.tolist() for rows in kitchens[0].rows] == [one.tolist(), two.tolist(), list(range(N))]
  assert len(one) == len(two) == N // 2 and not set(one) & set(two)
  assert made.halves == [[0, 1], [1]]   # chosen on the first half, then on the second
  np.testing.assert_array_equal(made.honest[two], kitchen.predict([0, 1])[two])   # the first half's soup
  np.testing.assert_array_equal(made.honest[one], kitchen.predict([1])[one])      # the second half's soup
  # The soup chosen on every image is written and predicts in sample: {1} first (0.6), then the average (0.7).
  assert made.kept == [1, 0] and written == [(tmp_path / 'fold3', [1, 0], FOLD, ['0', '1'])]
  np.testing.assert_array_equal(made.in_sample, kitchen.predict([0, 1]))
  assert made.tried == [([1, 0], 0.6, 0.7)] and made.fold == FOLD and len(made.items) == 2
  honest_accuracy = np.mean(made.honest.argmax(1) == labels)
  assert honest_accuracy == pytest.approx((10 + 12) / N)   # {1} on the first half, the average on the second


def test_each_fold_gets_its_own_halves_and_its_rows_in_pool_order(monkeypatch, tmp_path):
  """make: each fold's honest and in-sample predictions land on that fold's rows of the pool."""
  calls = []

  def fake_fold_soup(fold, items, images, labels, task, metric, batch_size, workdir, class_names, seed):
    calls.append((fold, images[:, 0, 0, 0].tolist(), labels.tolist(), workdir.name, seed))
    assert (items, task, metric, batch_size, class_names) == ([['x'], ['y']][fold], metric_registry.SINGLE, ACCURACY,
                                                              8, ['0', '1'])
    n = len(labels)
    return soup.FoldSoup(fold, items, [0], [[0], [0]], np.full((n, 2), fold + 0.25), np.full((n, 2), fold + 0.5), [])

  monkeypatch.setattr(soup, 'fold_soup', fake_fold_soup)
  monkeypatch.setattr(soup, 'write_ensemble', lambda folder, made: calls.append(('ensemble', folder, len(made))))
  folds = np.array([1, 0, 1, 0, 1])
  pool = Pool(ids=list('abcde'), labels=np.array([0, 1, 1, 0, 1]), folds=folds, task=metric_registry.SINGLE,
              class_names=['0', '1'], candidates=[Candidate('c', tmp_path, np.zeros((5, 2)), [])], notes=[])
  images = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1) * 10
  positions = np.array([6, 2, 5, 0, 3])   # the pool's examples are these images
  made, honest, in_sample = soup.make(tmp_path, {0: ['x'], 1: ['y']}, pool, images, positions, ACCURACY, 8, seed=4)
  assert calls[:2] == [(0, [20.0, 0.0], [1, 0], 'fold0', 4), (1, [60.0, 50.0, 30.0], [0, 1, 1], 'fold1', 4)]
  assert calls[2] == ('ensemble', tmp_path, 2) and [m.fold for m in made] == [0, 1]
  np.testing.assert_array_equal(honest[:, 0], folds + 0.25)
  np.testing.assert_array_equal(in_sample[:, 1], folds + 0.5)
  calls.clear()
  soup.make(tmp_path, {0: ['x']}, pool, images, positions, ACCURACY, 8)
  assert calls[0][-1] == 0   # the default seed


def test_greedy_keeps_an_ingredient_only_if_the_soup_strictly_improves():
  value = {(0,): 0.5, (0, 1): 0.5, (0, 2): 0.6, (0, 2, 3): 0.7, (0, 2, 1): 0.1}
  tried = []
  assert soup.greedy([0, 1, 2, 3], lambda kept: value[tuple(kept)], tried) == [0, 2, 3]
  assert tried == [([0, 1], 0.5, 0.5), ([0, 2], 0.5, 0.6), ([0, 2, 3], 0.6, 0.7)]
  assert soup.greedy([2], lambda kept: 0.0) == [2]


def test_the_record_names_ingredients_by_path_and_gives_a_loss_as_a_loss(tmp_path):
  items = [soup.Ingredient(n, tmp_path / 'trials' / n / 'fold1', {}) for n in ('a', 'b', 'c')]
  made = soup.FoldSoup(1, items, [2, 0], [[2], [2, 0]], None, None, [([2, 1], -0.4, -0.5), ([2, 0], -0.4, -0.3)])
  tie = soup.FoldSoup(1, items, [2], [[2], [2]], None, None, [([2, 0], -0.4, -0.4)])
  assert soup.record([tie], tmp_path, LOSS)['folds'][0]['averages'][0]['kept'] is False   # not strictly better
  record = soup.record([made], tmp_path, LOSS)
  assert record == {'folds': [dict(fold=1, kept=['trials/c/fold1', 'trials/a/fold1'],
                                   halves=[['trials/c/fold1'], ['trials/c/fold1', 'trials/a/fold1']], ingredients=3,
                                   averages=[dict(ingredients=['trials/c/fold1', 'trials/b/fold1'], before=0.4,
                                                  after=0.5, kept=False),
                                             dict(ingredients=['trials/c/fold1', 'trials/a/fold1'], before=0.4,
                                                  after=0.3, kept=True)])]}
  assert soup.record([made], tmp_path, ACCURACY)['folds'][0]['averages'][1] == dict(
      ingredients=['trials/c/fold1', 'trials/a/fold1'], before=-0.4, after=-0.3, kept=True)


def test_the_signature_tells_what_may_be_averaged():
  base = item('a').signature
  assert item('b').signature == base                              # another candidate, same model and seed
  assert item('a', fold=2).signature == base                      # the fold is not part of it
  assert item('a', seed=1).signature != base                      # random init drawn by another seed
  assert item('a', width=2).signature != base                     # another model key
  pretrained = [item('a', seed=s, pretrained='w.pth').signature for s in (0, 1)]
  assert pretrained[0] == pretrained[1] != item('a', pretrained='v.pth').signature   # the weights, not the seed
  other_input = soup.Ingredient('a', None, dict(item('a').metadata, channels=3))
  assert other_input.signature != base
  resized = soup.Ingredient('a', None, dict(item('a').metadata, image_size=[8, 9]))
  normalised = soup.Ingredient('a', None, dict(item('a').metadata, normalisation={'mean': [0.5]}))
  assert resized.signature != base and normalised.signature != base
  assert json.loads(base) == dict(model=dict(name='footprint_cnn'), seed=0, image_size=[8, 8], channels=1,
                                  normalisation=None)


def test_a_fold_is_soupable_when_two_of_its_models_share_a_signature():
  assert soup.soupable({0: [item('a'), item('b', seed=1)], 1: [item('a'), item('b')]})
  assert not soup.soupable({0: [item('a'), item('b', seed=1)], 1: [item('a')]})
  assert not soup.soupable({})


def test_average_variables_is_the_mean_of_each_leaf_in_its_own_dtype():
  trees = [dict(w=np.array([1.0, 2.0], np.float32), n=np.array([1, 4], np.int32)),
           dict(w=np.array([2.0, 2.5], np.float32), n=np.array([2, 5], np.int32)),
           dict(w=np.array([6.0, 3.0], np.float32), n=np.array([4, 6], np.int32))]
  mean = soup.average_variables(trees)
  np.testing.assert_array_equal(mean['w'], np.array([3.0, 2.5], np.float32))
  assert mean['w'].dtype == np.float32 and mean['n'].dtype == np.int32 and mean['n'].tolist() == [2, 5]
  tiny = [dict(w=np.array([1e-8], np.float32)), dict(w=np.array([1.0], np.float32))]
  assert soup.average_variables(tiny)['w'][0] == np.float32((1e-8 + 1.0) / 2)   # summed in float64


# --------------------------------------------------------------------------- real ingredients, restored

TINY = {'data.image_size': (8, 8), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'train.epochs': 2,
        'train.learning_rate': 0.01, 'augment.rotation': 0.0, 'augment.translate': 0.0,
        'explain.after_training': False, 'train.tensorboard': False}


def save_moved(trained, metadata: dict, folder, params) -> None:
  """A workdir of `trained`'s model with other parameters: `metadata` and `best` and `last` checkpoints."""
  folder.mkdir(parents=True)
  sidecar.write_metadata(folder, metadata)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=trained.state.batch_stats,
                     opt_state=trained.task.tx.init(params))
  store = checkpoint.CheckpointStore(folder, writer=True)
  try:
    for kind in ('best', 'last'):
      store.save(kind, 1, state, LoopState(epoch=1, best_epoch=1, finished=True, stop_reason='epochs').to_json())
  finally:
    store.close()


@pytest.fixture(scope='module')
def kitchen_parts(tmp_path_factory):
  """Three models of the digits that share a random init: `a` trained for two epochs, `b` and `c` its parameters
  moved by +-100% noise (each far worse than `a`, their average `a` again), `c` recorded as held out on another
  fold; the first 60 validation images."""
  config = load_config('configs/digits.py:quick', **TINY)
  root = tmp_path_factory.mktemp('ingredients')
  run('train', config, root / 'a')
  trained = load_trained(config, root / 'a', 'last')
  rng = np.random.default_rng(0)
  noise = jax.tree_util.tree_map(lambda p: rng.standard_normal(p.shape).astype(np.float32), trained.state.params)
  metadata = sidecar.read_metadata(root / 'a')
  fold_a = metadata['config']['data']['fold']
  for name, sign, fold in (('b', 1.0, fold_a), ('c', -1.0, fold_a + 1)):
    moved = jax.tree_util.tree_map(lambda p, n, sign=sign: np.asarray(p) * (1 + sign * n), trained.state.params, noise)
    config_json = dict(metadata['config'], data=dict(metadata['config']['data'], fold=fold))
    save_moved(trained, dict(metadata, config=config_json), root / name, moved)
  items = [soup.Ingredient(n, root / n, sidecar.read_metadata(root / n)) for n in 'abc']
  val = pipeline.load_dataset(DataSettings.from_config(config.data)).val
  return config, items, val.images[:60], val.labels[:60]


def test_a_kitchen_averages_restored_ingredients_and_writes_the_soup_as_a_workdir(kitchen_parts, tmp_path):
  config, items, images, labels = kitchen_parts
  kitchen = soup.Kitchen(items, images, 16)
  states = [load_trained(config, i.path, 'best').state for i in items]
  average = soup.average_variables([dict(params=s.params, batch_stats=s.batch_stats) for s in states[1:]])
  mixed = kitchen.model([2, 1])
  for got, want in zip(jax.tree_util.tree_leaves(mixed.state.params), jax.tree_util.tree_leaves(average['params'])):
    np.testing.assert_array_equal(np.asarray(got), want)
  predicted = kitchen.predict([2, 1])
  np.testing.assert_array_equal(predicted, mixed.probabilities(images, 16))   # the same program on the same batch
  assert kitchen.predict((1, 2)) is predicted   # cached by the set of ingredients
  alone = [kitchen.predict([i]) for i in range(3)]
  np.testing.assert_array_equal(alone[1], load_trained(config, items[1].path).probabilities(images, 16))
  singles = [np.mean(p.argmax(1) == labels) for p in alone]
  assert singles[0] > max(singles[1:]) and np.mean(predicted.argmax(1) == labels) > max(singles[1:])
  # a first; an average with b or c moves a halfway to a bad model and does not improve: a alone is kept.
  tried = []
  assert kitchen.choose(np.arange(60), labels, metric_registry.SINGLE, ACCURACY, tried) == [0]
  assert [t[0] for t in tried] == [[0, 1], [0, 2]] and all(after <= before == singles[0] for _, before, after in tried)
  # Without a, b and c's average (a again) beats either alone: both kept, the better one first.
  pair = soup.Kitchen(items[1:], images, 16)
  kept = pair.choose(np.arange(60), labels, metric_registry.SINGLE, ACCURACY)
  assert kept == ([0, 1] if singles[1] >= singles[2] else [1, 0])
  # Written: the soup restores as a trained run that predicts its average.
  folder = tmp_path / 'soup' / 'fold0'
  class_names = items[0].metadata['class_names']
  soup.write_workdir(folder, kitchen, [2, 1], 0, class_names)
  meta = sidecar.read_metadata(folder)
  assert meta['soup'] == dict(fold=0, ingredients=[os.path.relpath(items[i].path, folder) for i in (2, 1)],
                              tried=[os.path.relpath(i.path, folder) for i in items])
  assert meta['class_names'] == class_names and meta['config'] == items[2].metadata['config']
  restored = load_trained(config, folder)
  np.testing.assert_array_equal(restored.probabilities(images, 16), predicted)
  store = checkpoint.CheckpointStore(folder)   # a finished one-epoch run: resuming it trains nothing
  for kind in ('best', 'last'):
    assert store.epochs(kind) == [1]
    loop = LoopState.from_json(store.loop_state(kind))
    assert (loop.epoch, loop.best_epoch, loop.finished, loop.stop_reason) == (1, 1, True, 'soup')
  store.close()
  # The soup folder: an ensemble workdir of its fold soups, equally weighted, its parameters theirs together.
  soup.write_ensemble(tmp_path / 'soup', [soup.FoldSoup(0, items, [2, 1], [], None, None, [])])
  record = ensemble.ensemble_record(tmp_path / 'soup')
  assert record == dict(members=[dict(folder='.', weight=1.0, models=['fold0'])], kind='soup')
  top = sidecar.read_metadata(tmp_path / 'soup')
  assert top['model'] == f"soup of {meta['model']}" and top['num_params'] == meta['num_params']
  assert top['class_names'] == class_names and meta['num_params'] == items[0].metadata['num_params']


def test_ingredients_are_each_candidate_s_models_by_the_fold_they_held_out(kitchen_parts):
  _, items, _, _ = kitchen_parts
  fold = items[0].fold
  assert [i.fold for i in items] == [fold, fold, fold + 1]
  candidates = [Candidate('x', None, None, [items[2].path, items[0].path]), Candidate('y', None, None, [items[1].path])]
  by_fold = soup.ingredients(candidates)
  assert list(by_fold) == [fold, fold + 1]   # sorted by fold
  assert [(i.candidate, i.path) for i in by_fold[fold]] == [('x', items[0].path), ('y', items[1].path)]
  assert [(i.candidate, i.path, i.metadata) for i in by_fold[fold + 1]] == [('x', items[2].path, items[2].metadata)]
