"""Greedy model soups (Wortsman et al., 2022) of the fold models that share architecture and initialisation.

For each fold, the candidates' models held out on it are the ingredients; those with the same model keys and
the same initialisation (the same pretrained weights, or for random init the same seed) as the best one can be
mixed. In order of held-out score, each is kept only if the average of the kept weights (params and
batch_stats) scores strictly better on the fold's held-out images. Scored honestly: a soup chosen on one half of
the fold's images predicts the other half, in turn. The soup chosen on all of them is written as an ordinary
workdir (`<output>/soup/fold<k>/`, metadata.json and checkpoints), and `<output>/soup/` is an ensemble workdir
averaging the fold soups (`fpclass.infer.ensemble`), as a sweep's variant averages its fold models.
"""
import copy
import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.ensemble.caruana import key_of, score
from fpclass.infer.ensemble import ENSEMBLE_KEY
from fpclass.infer.inference import load_trained
from fpclass.runtime.sharding import DataParallel
from fpclass.train import checkpoint, optim, sidecar
from fpclass.train.loop_state import LoopState
from fpclass.train.members import split_name
from fpclass.train.task import TrainState


@dataclasses.dataclass(frozen=True)
class Ingredient:
  candidate: str
  path: pathlib.Path
  metadata: dict

  @property
  def fold(self) -> int:
    return int(self.metadata['config']['data']['fold'])

  @property
  def signature(self) -> str:
    """What must agree for weights to be averaged: the model keys, the input, and the initialisation (the
    pretrained weights, or for random init the seed, which alone draws it: `fpclass.train.cohort`)."""
    config = self.metadata['config']
    model = config.get('model', {})
    return json.dumps(dict(model=model, seed=None if model.get('pretrained') else config.get('seed'),
                           image_size=self.metadata['image_size'], channels=self.metadata['channels'],
                           normalisation=self.metadata.get('normalisation')), sort_keys=True)


def ingredients(candidates) -> dict[int, list[Ingredient]]:
  """{fold: the candidates' models held out on it} (`ensemble_selection.Candidate`s)."""
  out: dict = {}
  for c in candidates:
    for path in c.models:
      item = Ingredient(c.name, path, sidecar.read_metadata(path))
      out.setdefault(item.fold, []).append(item)
  return dict(sorted(out.items()))


def soupable(by_fold: dict) -> bool:
  """Whether some fold has two ingredients that can be averaged."""
  return any(len(items) > len({i.signature for i in items}) for items in by_fold.values())


def average_variables(trees: list) -> dict:
  """The elementwise mean of model variables (trees of one structure), each leaf in its own dtype."""
  def mean(*leaves):
    return np.mean([np.asarray(x, np.float64) for x in leaves], axis=0).astype(np.asarray(leaves[0]).dtype)
  return jax.tree_util.tree_map(mean, *trees)


def greedy(order: list, key, tried: list | None = None) -> list:
  """Wortsman's greedy soup: the first of `order`, then each next one kept only if `key(kept + [it])`
  (larger is better) strictly improves. `tried` gets (soup tried, key before, key of the soup tried)."""
  kept, best = [order[0]], key([order[0]])
  for item in order[1:]:
    value = key(kept + [item])
    if tried is not None:
      tried.append((kept + [item], best, value))
    if value > best:
      kept, best = kept + [item], value
  return kept


class Kitchen:
  """One fold's ingredients restored, and the predictions of their averages on the fold's images, cached."""

  def __init__(self, items: list[Ingredient], images: np.ndarray, batch_size: int):
    self.items, self.images, self.batch_size = items, images, batch_size
    self.trained = [load_trained(sidecar.config_from_json(i.metadata['config']), i.path) for i in items]
    self.variables = [dict(params=t.state.params, batch_stats=t.state.batch_stats) for t in self.trained]
    self.cache = {}

  def variables_of(self, kept) -> dict:
    """The kept ingredients' averaged variables, placed as training places them (replicated)."""
    return DataParallel.over().replicate(average_variables([self.variables[i] for i in kept]))

  def model(self, kept):
    """The first kept ingredient's restored model with the average of the kept ones' variables."""
    base = self.trained[kept[0]]
    _ = base.compiled   # compiled once per ingredient: the copies share its programs
    model = copy.copy(base)
    variables = self.variables_of(kept)
    model.state = base.state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
    return model

  def predict(self, kept) -> np.ndarray:
    kept = tuple(sorted(kept))
    if kept not in self.cache:
      self.cache[kept] = self.model(kept).probabilities(self.images, self.batch_size)
    return self.cache[kept]

  def choose(self, rows: np.ndarray, labels, task: str, metric, tried: list | None = None) -> list:
    """The greedy soup scored on the fold's examples at `rows`: ingredients by their score there (ties: in
    candidate order), those sharing the best one's signature tried in turn."""
    def key(kept):
      return key_of(metric, score(metric, labels[rows], self.predict(kept)[rows], task))
    singles = [key([i]) for i in range(len(self.items))]
    order = sorted(range(len(self.items)), key=lambda i: -singles[i])
    top = self.items[order[0]].signature
    return greedy([i for i in order if self.items[i].signature == top], key, tried)


@dataclasses.dataclass
class FoldSoup:
  fold: int
  items: list                 # the fold's ingredients
  kept: list                  # the final soup: indices into items, chosen on all the fold's images
  halves: list                # the soups chosen on each half
  honest: np.ndarray          # (n, K) each half predicted by the soup chosen on the other
  in_sample: np.ndarray       # (n, K) the final soup's predictions (chosen on them)
  tried: list                 # the averages the final choice tried: (indices, key before, key after)


def fold_soup(fold: int, items: list, images: np.ndarray, labels, task: str, metric, batch_size: int,
              workdir: pathlib.Path, class_names, seed: int = 0) -> FoldSoup:
  """The greedy soup of one fold's ingredients on its held-out `images` and `labels`, honestly scored, and
  written to `workdir`; the restored models are let go when it returns."""
  kitchen = Kitchen(items, images, batch_size)
  labels = np.asarray(labels)
  order = np.random.default_rng([seed, fold + 1]).permutation(len(labels))
  halves = [np.sort(order[:len(order) // 2]), np.sort(order[len(order) // 2:])]
  honest, chosen = None, []
  for chosen_on, held in (halves, halves[::-1]):
    kept = kitchen.choose(chosen_on, labels, task, metric)
    predictions = kitchen.predict(kept)
    honest = np.zeros_like(predictions) if honest is None else honest
    honest[held] = predictions[held]
    chosen.append(kept)
  tried = []
  kept = kitchen.choose(np.arange(len(labels)), labels, task, metric, tried)
  write_workdir(workdir, kitchen, kept, fold, class_names)
  return FoldSoup(fold, items, kept, chosen, honest, kitchen.predict(kept), tried)


def make(folder: pathlib.Path, by_fold: dict, pool, images: np.ndarray, positions: np.ndarray, metric,
         batch_size: int, seed: int = 0) -> tuple[list, np.ndarray, np.ndarray]:
  """Each fold's soup of its ingredients (`by_fold`, `ingredients`) written under `folder`, and `folder` as their
  ensemble; returns the soups and every example's honest and in-sample predictions, in `pool`'s order
  (`ensemble_selection.Pool`; `images[positions]` are its examples)."""
  made = []
  honest, in_sample = np.zeros(pool.candidates[0].probabilities.shape), np.zeros(pool.candidates[0].probabilities.shape)
  for fold, items in by_fold.items():
    rows = pool.folds == fold
    made.append(fold_soup(fold, items, images[positions[rows]], pool.labels[rows], pool.task, metric, batch_size,
                          folder / split_name(fold), pool.class_names, seed))
    honest[rows], in_sample[rows] = made[-1].honest, made[-1].in_sample
  write_ensemble(folder, made)
  return made, honest, in_sample


def record(made: list, out: pathlib.Path, metric) -> dict:
  """What ensemble.json keeps of the soups: per fold, the ingredients kept (relative to `out`), on each half too,
  and every average the final choice tried with the score before and after."""
  def named(s, kept):
    return [os.path.relpath(s.items[i].path, out) for i in kept]
  def averages(s):   # the scores as the metric gives them (key_of negates a loss)
    sign = 1.0 if metric.higher_is_better else -1.0
    return [dict(ingredients=named(s, kept), before=sign * before, after=sign * after, kept=bool(after > before))
            for kept, before, after in s.tried]
  return dict(folds=[dict(fold=s.fold, kept=named(s, s.kept), halves=[named(s, h) for h in s.halves],
                          ingredients=len(s.items), averages=averages(s)) for s in made])


def write_ensemble(folder: pathlib.Path, soups: list) -> None:
  """`folder` as the ensemble of its fold soups (`split_name(fold)` each), equally weighted."""
  names = [split_name(s.fold) for s in soups]
  metadata = sidecar.read_metadata(folder / names[0])
  metadata.update(model=f'soup of {metadata["model"]}', num_params=metadata['num_params'] * len(names))
  metadata[ENSEMBLE_KEY] = dict(members=[dict(folder='.', weight=1.0, models=names)], kind='soup')
  sidecar.write_metadata(folder, metadata)


def write_workdir(workdir: pathlib.Path, kitchen: Kitchen, kept: list, fold: int, class_names) -> None:
  """metadata.json (the first kept ingredient's config, the ingredients named under `soup`) and `best` and
  `last` checkpoints of the averaged variables, so every mode restores it as a trained run."""
  workdir.mkdir(parents=True, exist_ok=True)
  first = kitchen.items[kept[0]]
  variables = kitchen.variables_of(kept)
  restored = kitchen.trained[kept[0]]   # restored under its stored config, parsed then
  config = sidecar.config_from_json(first.metadata['config'])
  metadata = sidecar.build_metadata(config, restored.settings, class_names, optim.count_params(variables['params']),
                                    first.metadata['normalisation'])
  metadata['soup'] = dict(fold=fold, ingredients=[os.path.relpath(kitchen.items[i].path, workdir) for i in kept],
                          tried=[os.path.relpath(i.path, workdir) for i in kitchen.items])
  sidecar.write_metadata(workdir, metadata)
  task = restored.task
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'], batch_stats=variables['batch_stats'],
                     opt_state=task.tx.init(variables['params']))
  loop = LoopState(epoch=1, best_epoch=1, finished=True, stop_reason='soup').to_json()
  store = checkpoint.CheckpointStore(workdir, writer=True)
  try:
    store.save('best', 1, state, loop)
    store.save('last', 1, state, loop)
  finally:
    store.close()
