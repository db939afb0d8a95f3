"""The default search space of `--mode auto`, and what it measures on the data to set it.

`default_space` writes `fpclass.auto.space` entries: the learning rate as a factor of each candidate's centre,
regularisation and augmentation (geometry, and horizontal flips only where `flip_check` finds that mirrored
images keep their class), the seed CNN's switches for from-scratch models, the fine-tuning settings for
pretrained ones, and with config.data.unlabelled whether to train on those images (config.semi.method) and with
which pseudo-label thresholds. Every range holds the config's own value, so the first trial is the config as given.
`fpclass.auto.lr_centres` moves a screened backbone's centre from the guess here to a short lr_find's
suggestion when that fits the time given. The table of defaults and their reasons: docs/auto.md.
"""
import dataclasses
import math

import jax
import numpy as np

from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline, rows
from fpclass.errors import UserInputError
from fpclass.train.plan import Variant, apply_changes
from fpclass.train.task import build_task

FACTOR = (0.2, 10.0)        # the learning rate's range around a candidate's centre (x 3 sits at its 69th percentile)
FINE_TUNE_FACTOR = 0.1      # a pretrained backbone fine-tuned whole: a tenth of a from-scratch rate (the guess)
GEOMETRY = {'rotation': 15.0, 'translate': 0.1, 'zoom': 0.15}   # the ranges' upper ends
FLIP_IMAGES = 1000          # images the flip check reads (half as class means, half as queries)
FLIP_SIDE = 64              # ... subsampled to at most this many pixels a side
FLIP_SIGNAL = 0.1           # below this margin over chance, the class means cannot tell: flips are allowed
FLIP_MIN_QUERIES = 100      # ... and with fewer queries, or a loss short of FLIP_Z (McNemar's z on the pairs)
FLIP_Z = 3.0


def _number(value):
  return float(value) if isinstance(value, float) else value


def _range(kind: str, key: str, low, high, own) -> str:
  """`key: kind(low, high)` widened to hold the config's own value."""
  if isinstance(own, (int, float)) and not isinstance(own, bool):
    low, high = min(low, own), max(high, own)
  return f'{key}: {kind}({_number(low)!r}, {_number(high)!r})'


def _choice(key: str, own, *others) -> str:
  """`key: choice(own, others...)`: the config's value first, so the first trial keeps it."""
  values = [own]
  for other in others:
    if not any(other == v and isinstance(other, bool) == isinstance(v, bool) for v in values):
      values.append(other)
  return f'{key}: choice({", ".join(repr(v) for v in values)})'


def _scoped(entry: str, names: list, having: list) -> str:
  """`entry for names`, unless `names` are all the candidates that have the key."""
  return entry if names == having else f'{entry} for {", ".join(dict.fromkeys(names))}'


def candidate_variants(base: Variant, candidates: list) -> dict[str, Variant]:
  """{name: the base config with the candidate's changes, as a plan's variant: its config and typed sections}."""
  return {c.name: base if not c.changes else
          Variant(c.name, dict(c.changes), apply_changes(base.config, c.changes, f'candidate {c.name}'))
          for c in candidates}


def fine_tunes(run: RunSettings) -> bool:
  """Whether a candidate starts from pretrained weights."""
  return bool(run.model.get('pretrained', ''))


def guessed_centre(base: RunSettings, candidate: RunSettings) -> tuple[float, str]:
  """(learning rate, why) for a candidate without a measured centre: the config's rate, a tenth of it for a
  pretrained backbone when the config trains from scratch (ten times it the other way round)."""
  rate = base.train.learning_rate
  own, other = fine_tunes(base), fine_tunes(candidate)
  if other and not own:
    return rate * FINE_TUNE_FACTOR, f"the config's rate x {FINE_TUNE_FACTOR:g} (fine-tuning pretrained weights)"
  if own and not other:
    return rate / FINE_TUNE_FACTOR, f"the config's rate / {FINE_TUNE_FACTOR:g} (from scratch)"
  return rate, "the config's rate"


def default_space(base: Variant, candidates: list, learning_rates: dict | None = None, *, flips=None) -> list[str]:
  """The task's default entries for the `base` config (a plan's variant: its config and typed sections).
  `learning_rates` ({candidate name: centre}, `centre_learning_rates`) overrides the guessed centres; `flips` (a
  bool or a FlipCheck) whether mirrored images keep their class, else measured here when the config has flips off
  (`flip_check`)."""
  variants = candidate_variants(base, candidates)
  own = next((c for c in candidates if not c.changes), candidates[0])
  entries = ['model.name: backbones'] if len(candidates) > 1 else []
  entries.append(_learning_rate(base.settings, candidates, variants, own, learning_rates or {}))
  train = base.settings.train
  entries += [_range('float', 'train.label_smoothing', 0.0, 0.15, train.label_smoothing),
              _choice('train.ema_decay', train.ema_decay, 0.0, 0.999)]
  if train.feature_cache != 'on':   # 'on' trains on features computed once: nothing may change the images
    entries += _augmentation(base.settings, flips)
  entries += _model_switches(candidates, variants)
  with_bn = [c.name for c in candidates if trains_batch_norm(variants[c.name].settings)]
  if with_bn:   # scoped: a trial whose model has none would move a knob that does nothing
    entries.append(_scoped(_choice('train.bn_statistics', train.bn_statistics, 'running', 'precise'), with_bn,
                           [c.name for c in candidates]))
  if base.settings.data.unlabelled.unlabelled:   # the images nobody labelled: trained on (FixMatch) or not
    semi = base.settings.semi
    entries.append(_choice('semi.method', semi.method, 'none' if semi.method != 'none' else 'fixmatch'))
    # and with which bar for a pseudo-label: FixMatch's fixed 0.95 takes few of a small set's pool within a short
    # schedule, FreeMatch's adaptive thresholds took more and closed more of the gap on all three bench sets
    # (docs/unlabelled.md). A trial without the pool ignores it.
    entries.append(_choice('semi.thresholds', semi.thresholds, 'adaptive' if semi.thresholds == 'fixed' else 'fixed'))
  return entries


def trains_batch_norm(run: RunSettings) -> bool:
  """Whether the run's model has a batch norm that trains (its variables' shapes, nothing computed): then its
  statistics are searched, the running averages or recomputed ones (`fpclass.train.precise_bn`), since on a small
  set the averages can leave a good model at chance (docs/finetuning.md)."""
  try:
    task = build_task(run, ('a', 'b'), np.array([0, 1]), steps_per_epoch=1)
  except UserInputError:   # a model the trials cannot build either: their own check names it
    return False
  shape = (*run.data.decode.image_size, run.data.decode.channels)
  shapes = jax.eval_shape(lambda key: task.init_variables(key, shape), jax.random.PRNGKey(0))
  if not jax.tree_util.tree_leaves(shapes['batch_stats']):
    return False
  groups = task.param_groups
  return groups is None or not all(label == 'frozen' for label in jax.tree_util.tree_leaves(groups(shapes['params'])))


def _learning_rate(base: RunSettings, candidates, variants: dict, own, given: dict) -> str:
  centres = {c.name: float(given[c.name]) if c.name in given else
             (variants[c.name].settings.train.learning_rate if c is own else guessed_centre(base, variants[c.name].settings)[0])
             for c in candidates}
  ratio = variants[own.name].settings.train.learning_rate / centres[own.name]
  low, high = min(FACTOR[0], ratio), max(FACTOR[1], 3 * ratio)   # the config's rate and 3x it, always inside
  return f'train.learning_rate: factor({low!r}, {high!r}, {centres!r})'


def _augmentation(base: RunSettings, flips) -> list[str]:
  augment = base.augment
  entries = [_choice('augment.mixup_alpha', augment.mixup_alpha, 0.0, 0.2),
             _choice('augment.policy', augment.policy, '', 'trivialaugment')]
  entries += [_range('float', f'augment.{name}', 0.0, high, getattr(augment, name)) for name, high in GEOMETRY.items()]
  entries.append(_range('float', 'augment.erasing', 0.0, 0.5, augment.erasing))
  if augment.hflip:   # the user turned flips on: the search may turn them off
    entries.append(_choice('augment.hflip', augment.hflip, 0.0))
  elif (flip_check(base.data).allowed if flips is None else bool(flips.allowed if hasattr(flips, 'allowed') else flips)):
    entries.append(_choice('augment.hflip', augment.hflip, 0.5))
  return entries


def _model_switches(candidates, variants: dict) -> list[str]:
  """The seed CNN's switches for from-scratch models; freezing, layer decay and the head's dropout for
  pretrained ones; drop path wherever a model has it."""
  entries, models = [], {c.name: variants[c.name].settings.model for c in candidates}

  def having(key, scratch=None):
    return [c.name for c in candidates if key in models[c.name].options
            and (scratch is None or fine_tunes(variants[c.name].settings) != scratch)]

  def own_value(key, names):
    return models[names[0]].get(key)

  for key, high in (('dropout', 0.5), ('dense_dropout', 0.5)):
    if having(key, scratch=True):
      names = having(key, scratch=True)
      entries.append(_scoped(_range('float', f'model.{key}', 0.0, high, own_value(key, names)), names, having(key)))
  if having('batch_norm', scratch=True):
    names = having('batch_norm', scratch=True)
    value = bool(own_value('batch_norm', names))
    entries.append(_scoped(_choice('model.batch_norm', value, not value), names, having('batch_norm')))
  if having('fc_sizes', scratch=True):
    names = having('fc_sizes', scratch=True)
    sizes = tuple(own_value('fc_sizes', names))
    entries.append(_scoped(_choice('model.fc_sizes', sizes, tuple(max(8, s // 4) for s in sizes)), names,
                           having('fc_sizes')))
  if having('drop_path_rate'):
    entries.append(_range('float', 'model.drop_path_rate', 0.0, 0.2, own_value('drop_path_rate',
                                                                               having('drop_path_rate'))))
  pretrained = [c.name for c in candidates if fine_tunes(variants[c.name].settings)]
  if pretrained:
    entries.append(_scoped('train.layer_decay: float(0.65, 1.0)', pretrained, [c.name for c in candidates]))
    if having('freeze_till', scratch=False):
      names = having('freeze_till', scratch=False)
      entries.append(_scoped(_choice('model.freeze_till', own_value('freeze_till', names), 0, -1), names,
                             having('freeze_till')))
    if having('top_dropout', scratch=False):
      names = having('top_dropout', scratch=False)
      entries.append(_scoped(_range('float', 'model.top_dropout', 0.0, 0.3, own_value('top_dropout', names)),
                             names, having('top_dropout')))
  return entries


# ------------------------------------------------------------------------------------------------- flips

@dataclasses.dataclass(frozen=True)
class FlipCheck:
  """Nearest-class-mean accuracy on held-out training images, as they are and mirrored left to right."""
  allowed: bool
  accuracy: float
  mirrored: float
  chance: float      # the majority class's share of the queries
  images: int        # queries
  note: str = ''

  def describe(self) -> str:
    if self.note:
      return self.note
    verdict = 'keep their class: flips are searched' if self.allowed else 'look like another class: flips stay off'
    return (f'flip check on {self.images} images: nearest class mean {self.accuracy:.3f} as they are, '
            f'{self.mirrored:.3f} mirrored (chance {self.chance:.3f}); mirrored images {verdict}')


def flip_check(data: DataSettings, images: int = FLIP_IMAGES, seed: int = 0) -> FlipCheck:
  """Whether mirroring keeps an image's class: class means from half of a sample of the training images classify
  the other half as they are and mirrored. Flips are refused when mirroring loses more than half of the means'
  accuracy above chance, and the loss is significant (digits: 0.89 -> 0.34, refused; the footprints: 0.74 -> 0.71)."""
  dataset = pipeline.load_dataset(data, progress=False, mapped=True)
  labels = np.asarray(dataset.train.labels)
  if labels.ndim != 1:
    return FlipCheck(True, math.nan, math.nan, math.nan, 0,
                     'flip check: multi-label data has no one class per image to check; flips are searched')
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.permutation(len(labels))[:images])
  pixels = rows.in_memory(dataset.train.take(chosen).images)
  step = -(-max(pixels.shape[1:3]) // FLIP_SIDE)   # a stride that keeps at most FLIP_SIDE pixels a side
  pixels, labels = np.asarray(pixels[:, ::step, ::step], np.float32) / 255.0, labels[chosen]
  order = rng.permutation(len(labels))
  reference, query = order[::2], order[1::2]
  classes = np.unique(labels[reference])
  means = np.stack([pixels[reference][labels[reference] == k].mean(0) for k in classes]).reshape(len(classes), -1)

  def right(x):
    distance = (means ** 2).sum(1)[None] - 2 * x.reshape(len(x), -1) @ means.T
    return classes[distance.argmin(1)] == labels[query]

  plain, mirrored = right(pixels[query]), right(pixels[query][:, :, ::-1])
  chance = float(np.bincount(labels[query]).max() / len(query))
  lost, gained = int((plain & ~mirrored).sum()), int((~plain & mirrored).sum())
  significant = len(query) >= FLIP_MIN_QUERIES and lost - gained >= FLIP_Z * math.sqrt(max(lost + gained, 1))
  margin = plain.mean() - chance
  refused = margin >= FLIP_SIGNAL and mirrored.mean() - chance < 0.5 * margin and significant
  return FlipCheck(not refused, float(plain.mean()), float(mirrored.mean()), chance, len(query))
