"""The frozen-backbone feature cache (`config.train.feature_cache`: auto | on | off).

When every trainable parameter is in the model's head, the network before the head is frozen and draws no
randomness in training, and augmentation is off (mixup and cutmix included), the head's input is the same in
every epoch. It is then computed once for the train and val sets, and the head trains on it: the same updates
as the uncached run at a fraction of the cost (the Keras transfer-learning guide's "feature extraction").

Design notes: docs/modules.md (`fpclass/train/feature_cache.py`).
"""
import dataclasses
import hashlib
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tqdm.auto import tqdm

from fpclass import models
from fpclass.config.inputs import AugmentSettings
from fpclass.config.model import ModelSettings
from fpclass.config.run import RunSettings
from fpclass.config.training import FEATURE_CACHE, TrainSettings
from fpclass.data.rows import ImageRows, mapped_file
from fpclass.errors import UserInputError
from fpclass.models import transfer
from fpclass.train import optim
from fpclass.train import task as task_lib
from fpclass.train.steps import CompiledSteps

TOP = 'top'   # the name `transfer.new_top` gives the new top
# The model's fields that shape only its head (`transfer.new_top`, a source head's outputs) or which parameters
# train: models that differ in them alone compute the same features before the head.
HEAD_FIELDS = ('num_outputs', 'top', 'top_hidden', 'top_dropout', 'freeze_till')


def check_setting(train: TrainSettings, augment: AugmentSettings) -> None:
  """The checks that need no model: a known value, and `on` only without augmentation."""
  mode = train.feature_cache
  if mode not in FEATURE_CACHE:
    raise UserInputError(f'config.train.feature_cache={mode!r}: choose one of {FEATURE_CACHE}')
  if mode == 'on' and augment.randomises_input:
    raise UserInputError(
        "config.train.feature_cache='on' needs augmentation off: config.augment transforms every image anew "
        '(or mixes images: mixup, cutmix) each epoch before the backbone sees it, so the backbone output differs '
        "from epoch to epoch and cannot be computed once. Turn the config.augment.* entries off, or use "
        "feature_cache='auto' (which then trains without the cache)")


@dataclasses.dataclass(frozen=True)
class HeadSplit:
  """Where the model splits into a frozen prefix and the trainable head."""
  name: str                 # the head module's name at the model's root ('top', 'fc', 'predictions', ...)
  module_cls: type          # its class (transfer.Top or nn.Dense)
  fields: tuple             # its dataclass fields as (name, value) pairs, to rebuild it
  is_top: bool              # a transfer.Top, called as (x, features, train); else called as (x)
  feature_shape: tuple      # one example's head input
  feature_dtype: Any


class HeadOnly(nn.Module):
  """The head alone, under its own name at the root, so its variables and PRNG paths are the full model's."""
  split: HeadSplit

  @nn.compact
  def __call__(self, x, train: bool = False):
    head = self.split.module_cls(**dict(self.split.fields), name=self.split.name)
    logits = head(x, {}, train) if self.split.is_top else head(x)
    return logits.astype(jnp.float32)


def _head_interceptor(name: str, found: list):
  """A flax interceptor that records the head's call (module, input) in `found` and skips the head."""
  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or module.path != (name,):
      return next_fun(*args, **kwargs)
    found.append((module, args, kwargs))
    outputs = getattr(module, 'num_outputs', None) or getattr(module, 'features', 1)
    return jnp.zeros((args[0].shape[0], outputs), jnp.float32)
  return intercept


def _head_name(model: ModelSettings, spec) -> str | None:
  if model.get('top', 'source') != 'source':
    return TOP
  parts = spec.source_head.removeprefix('^').split('/')   # '^params/fc/' -> ['params', 'fc', '']
  return parts[1] if len(parts) == 3 and parts[0] == 'params' and parts[2] == '' else None


def find_split(run: RunSettings, task, variables: dict, image_shape) -> tuple[HeadSplit | None, str]:
  """(the split, '') when the head can train on cached features; else (None, why not). `variables` may be
  abstract (only shapes are read)."""
  model = run.model
  spec = models.get_spec(model.name)
  groups = optim.param_groups(model)
  if groups is None:
    return None, f'model {spec.name!r} has no frozen stages'
  if run.train.grad_clip_norm > 0:
    return None, ('config.train.grad_clip_norm > 0: the clipping norm counts the frozen parameters\' '
                  'gradients, which the cache does not compute')
  name = _head_name(model, spec)
  params, batch_stats = variables['params'], variables.get('batch_stats') or {}
  if name is None or name not in params:
    return None, f'model {spec.name!r} has no head module at its root'
  labels = traverse_util.flatten_dict(groups(params), sep='/')
  trainable = sorted(k for k, v in labels.items() if v != 'frozen' and k.split('/')[0] != name)
  if trainable:
    return None, (f'{len(trainable)} parameters before the head train ({trainable[0]}, ...); '
                  f'config.model.freeze_till={model.get("freeze_till", 0)} (-1 freezes every stage)')
  if name in batch_stats:
    return None, f'the head {name!r} has batch statistics'

  found, untouched = [], []
  x = jax.ShapeDtypeStruct((1, *task.model_input_shape(image_shape)), jnp.float32)

  def train_mode(variables, x):
    with nn.intercept_methods(_head_interceptor(name, found)):
      _, updates = task.model.apply(variables, x, train=True, mutable=['batch_stats'])
    before = jax.tree_util.tree_leaves(variables.get('batch_stats', {}))
    after = jax.tree_util.tree_leaves(updates.get('batch_stats', {}))
    untouched.append(len(before) == len(after) and all(a is b for a, b in zip(before, after)))

  try:
    jax.eval_shape(train_mode, {'params': params, 'batch_stats': batch_stats} if batch_stats else {'params': params},
                   x)
  except flax.errors.InvalidRngError:
    return None, 'a layer before the head draws random numbers in training (dropout or stochastic depth)'
  if len(found) != 1:
    return None, f'the head {name!r} is called {len(found)} times'
  if not untouched[0]:
    return None, 'a BatchNorm before the head uses batch statistics in training'
  module, args, kwargs = found[0]
  is_top = isinstance(module, transfer.Top)
  if kwargs or (not is_top and len(args) != 1):
    return None, f'the head {name!r} takes more than its input'
  fields = tuple((f.name, getattr(module, f.name)) for f in dataclasses.fields(module)
                 if f.init and f.name not in ('parent', 'name'))
  return HeadSplit(name, type(module), fields, is_top, tuple(args[0].shape[1:]), args[0].dtype), ''


@dataclasses.dataclass(frozen=True)
class CachedTask(task_lib.Task):
  """A Task whose inputs are the head's cached inputs (see the module docstring). Build with `cached_task`."""
  head_model: Any = None    # HeadOnly

  def prepare(self, features, key=None):
    return features   # augmentation is off and normalisation happened before the backbone

  def apply(self, params, batch_stats, x, train: bool = False, rngs=None):
    name = self.head_model.split.name
    logits = self.head_model.apply({'params': {name: params[name]}}, x, train, rngs=rngs)
    return logits, {}, batch_stats   # the frozen prefix's statistics stay as they are


def cached_task(task: task_lib.Task, split: HeadSplit) -> CachedTask:
  values = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
  return CachedTask(**values, head_model=HeadOnly(split))


@dataclasses.dataclass(frozen=True)
class FeaturePass(task_lib.TaskView):
  """`predict(params, batch_stats, uint8 images)` -> the head's input, in inference mode."""
  split: HeadSplit

  def predict(self, params, batch_stats, images_u8):
    found = []
    with nn.intercept_methods(_head_interceptor(self.split.name, found)):
      self.task.apply(params, batch_stats, self.task.prepare(images_u8), train=False)
    return found[0][1][0]


def compute_features(compiled: CompiledSteps, split: HeadSplit, state, images, batch_size: int) -> np.ndarray:
  """The head's input for every image (in memory or streamed from the decode cache), in fixed-size batches
  (one compilation), as validation reads its images (`CompiledSteps.logits`)."""
  if len(images) == 0:
    return np.zeros((0, *split.feature_shape), split.feature_dtype)
  passes = CompiledSteps(FeaturePass(compiled.task, split), compiled.parallel, compiled.form,
                         compiled.compiler_options)
  return passes.logits(state, images, batch_size)


def head_split(run: RunSettings, task, variables: dict, image_shape, count: int, budget: int) -> HeadSplit | None:
  """The split when training phase 0's head can take cached features (config.train.feature_cache), else
  None, saying why in the log (or, for 'on', raising). `count`: the images whose features would be held;
  `budget`: the device bytes they may take (`fpclass.data.stream.memory_budget`)."""
  train, augment = run.train, run.augment
  has_stages = bool(models.get_spec(run.model.name).stages)
  mode = train.feature_cache
  check_setting(train, augment)
  if mode == 'off':
    return None
  if augment.randomises_input:
    if has_stages:
      tqdm.write('feature cache: off (augmentation comes before the backbone)')
    return None
  split, why = find_split(run, task, variables, image_shape)
  if split is not None:
    why = _over_budget(split, count, budget)
  if why:
    if mode == 'on':
      raise UserInputError(f"config.train.feature_cache='on': the head cannot train on cached features: {why}")
    if split is not None or has_stages:
      tqdm.write(f'feature cache: off ({why})')
    return None
  return split


def images_digest(images) -> str:
  """The content of a uint8 image array, or an unread view's file and rows (its content is that file's)."""
  digest = hashlib.sha1()
  if isinstance(images, ImageRows) and mapped_file(images.array) is not None:
    digest.update(repr(mapped_file(images.array)).encode() + images.index.tobytes())
  else:
    array = np.ascontiguousarray(np.asarray(images))
    digest.update(str(array.shape).encode() + str(array.dtype).encode() + array.tobytes())
  return digest.hexdigest()


def pass_key(task, split: HeadSplit, backbone: str, images, batch_size: int) -> tuple:
  """The key of `split`'s features of `images` under `task`'s model and preparation, for a job's
  `fpclass.train.shared_work.SharedWork`: what determines them, so sweep variants that change only the head
  share one pass."""
  prefix = task.model.clone(**{f.name: None for f in dataclasses.fields(task.model) if f.name in HEAD_FIELDS})
  preparation = (repr(prefix), repr(task.normalisation), task.device_resize, task.repeat_rgb)
  return ('features', backbone, images_digest(images), split.name, split.feature_shape, repr(preparation),
          int(batch_size))


def backbone_digest(split: HeadSplit, variables: dict) -> str:
  """A digest of every variable outside the head: models with equal digests share one feature pass (the
  members of a sweep that load one pretrained backbone)."""
  digest = hashlib.sha1()
  flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if v}, sep='/')
  for key in sorted(flat):
    if key.split('/')[1] != split.name:
      value = np.asarray(flat[key])
      digest.update(key.encode() + str(value.dtype).encode() + str(value.shape).encode() + value.tobytes())
  return digest.hexdigest()


def _over_budget(split: HeadSplit, count: int, budget: int) -> str:
  """Why the features do not fit the device budget (`fpclass.data.stream.memory_budget`), else ''."""
  nbytes = count * math.prod(split.feature_shape) * np.dtype(split.feature_dtype).itemsize
  if nbytes <= budget:
    return ''
  return (f'the features take {nbytes / 2**20:,.1f} MiB, over config.data.device_memory_budget='
          f'{budget / 2**20:,.1f} MiB, and are not streamed from the host')
