"""Optax optimizers and learning-rate schedules from `config.train` (`TrainSettings`)."""
import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.config.training import TrainSettings
from fpclass.errors import UserInputError
from fpclass.train import layer_decay

OPTIMIZERS = ('adam', 'adamw', 'rmsprop', 'sgd')
SCHEDULES = ('constant', 'cosine', 'exponential', 'step')


# The schedules whose lengths can be a train program's arguments (`lengths_are_arguments`): their values are
# formulas of the step and the lengths. 'step' puts its boundaries in the program, so its epochs stay a constant.
LENGTHS_AS_ARGUMENTS = ('constant', 'cosine', 'exponential')


def lengths_are_arguments(train: TrainSettings) -> bool:
  """Whether train.epochs and train.warmup_epochs may be traced values of `learning_rate_schedule`."""
  return train.schedule in LENGTHS_AS_ARGUMENTS


def learning_rate_schedule(train: TrainSettings, steps_per_epoch: int, learning_rate=None, epochs=None,
                           warmup_epochs=None) -> optax.Schedule:
  """config.train's schedule; `learning_rate`, `epochs` and `warmup_epochs` (default config.train's) may be traced
  values, a train program's arguments (`fpclass.train.task.Task.arguments`): every schedule is the rate times a
  function of the step, and the cosine decay and linear warmup (`_cosine`, `_warmup`) take their lengths as
  values, so runs that differ in their epochs alone (a search's rungs) share compiled programs."""
  lr = train.learning_rate if learning_rate is None else learning_rate
  epochs = train.epochs if epochs is None else epochs
  warmup_epochs = train.warmup_epochs if warmup_epochs is None else warmup_epochs
  total = _maximum(1, _steps(epochs, steps_per_epoch))
  warmup = _steps(warmup_epochs, steps_per_epoch)
  name = train.schedule
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'cosine':
    main = _cosine(lr, _maximum(1, total - warmup))
  elif name == 'exponential':
    main = optax.exponential_decay(lr, int(train.decay_epochs) * steps_per_epoch,
                                   float(train.decay_rate), staircase=True)
  elif name == 'step':
    every = int(train.decay_epochs) * steps_per_epoch
    boundaries = {b: float(train.decay_rate) for b in range(every, int(total), every)} if every > 0 else {}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise UserInputError(f'config.train.schedule={name!r}: choose one of {SCHEDULES}')
  if not _concrete(warmup) or warmup > 0:
    return _warmup(lr, warmup, main)
  return main


def _concrete(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating))


def _steps(epochs, steps_per_epoch: int):
  return int(epochs) * steps_per_epoch if _concrete(epochs) else jnp.asarray(epochs, jnp.float32) * steps_per_epoch


def _maximum(a, b):
  return max(a, b) if _concrete(a) and _concrete(b) else jnp.maximum(a, b)


def _cosine(lr, decay_steps) -> optax.Schedule:
  """optax.cosine_decay_schedule(lr, decay_steps) (alpha 0, exponent 1), its operations in its order, with
  `decay_steps` possibly traced (optax checks it is positive in Python, which a traced value cannot answer)."""
  def schedule(count):
    count = jnp.minimum(count, decay_steps)
    return lr * (0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps)))
  return schedule


def _warmup(lr, warmup_steps, main: optax.Schedule) -> optax.Schedule:
  """optax.join_schedules([optax.linear_schedule(0, lr, warmup_steps), main], [warmup_steps]), its operations in
  its order, with `warmup_steps` possibly traced."""
  def schedule(count):
    fraction = 1 - jnp.clip(count, 0, warmup_steps) / warmup_steps
    return jnp.where(count < warmup_steps, (0.0 - lr) * fraction + lr, main(count - warmup_steps))
  return schedule


def make_optimizer(train: TrainSettings, steps_per_epoch: int, groups=None, schedule: optax.Schedule | None = None,
                   learning_rate=None, epochs=None, warmup_epochs=None) -> optax.GradientTransformation:
  """The configured optax optimizer.

  `groups` (from `param_groups`) labels each parameter 'head', 'backbone' or 'frozen': frozen ones get
  zero updates, backbone ones a learning rate scaled by config.train.backbone_lr_factor
  (`optax.multi_transform`). With config.train.layer_decay < 1, each update is then multiplied by its
  parameter's depth multiplier (`fpclass.train.layer_decay`), on top of backbone_lr_factor; frozen ones stay zero.
  Gradient clipping, when on, is over all parameters together. `schedule`
  replaces config.train's learning-rate schedule (the learning-rate finder's sweep, `fpclass.train.lr_finder`);
  `learning_rate`, `epochs` and `warmup_epochs` its rate and lengths (a train program's arguments,
  `fpclass.train.task.Task.optimizer`).
  """
  schedule = schedule or learning_rate_schedule(train, steps_per_epoch, learning_rate, epochs, warmup_epochs)
  name, wd = train.optimizer, float(train.weight_decay)
  if name not in OPTIMIZERS:
    raise UserInputError(f'config.train.optimizer={name!r}: choose one of {OPTIMIZERS}')

  def optimizer(scale: float) -> optax.GradientTransformation:
    lr = schedule if scale == 1.0 else (lambda step: scale * schedule(step))
    if name == 'adam':
      tx = optax.adam(lr, b1=train.b1, b2=train.b2, eps=train.eps)
    elif name == 'adamw':
      tx = optax.adamw(lr, b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=wd)
    elif name == 'rmsprop':
      tx = optax.rmsprop(lr, decay=train.rmsprop_decay, eps=train.eps)
    else:
      tx = optax.sgd(lr, momentum=train.momentum or None, nesterov=bool(train.nesterov))
    if wd > 0 and name != 'adamw':
      # PyTorch-style coupled weight decay: added to the gradient before the optimizer's scaling.
      tx = optax.chain(optax.add_decayed_weights(wd), tx)
    return tx

  factor = float(train.backbone_lr_factor)
  if factor < 0:
    raise UserInputError(f'config.train.backbone_lr_factor={factor}: must be >= 0')
  decay = float(train.layer_decay)
  if not 0 < decay <= 1:
    raise UserInputError(f'config.train.layer_decay={decay}: must be > 0 and <= 1 (1 = off)')
  if decay < 1 and groups is None:
    raise UserInputError(f'config.train.layer_decay={decay}: layer-wise decay needs a pretrained model with '
                         'stages (config.model.name); this one has none')
  tx = optimizer(1.0) if groups is None else optax.multi_transform(
      {'head': optimizer(1.0), 'backbone': optimizer(factor), 'frozen': optax.set_to_zero()}, groups)
  if decay < 1:
    tx = optax.chain(tx, layer_decay.scale_by_depth(groups.spec, decay))
  if float(train.grad_clip_norm) > 0:
    tx = optax.chain(optax.clip_by_global_norm(float(train.grad_clip_norm)), tx)
  return tx


@dataclasses.dataclass(frozen=True, eq=False)   # hashed by identity: a ModelSpec holds dicts
class ParamGroups:
  """`param_groups`' answer. Called on params, their labels; `spec` is the model's (for `fpclass.train.layer_decay`)."""
  spec: models.ModelSpec
  label: Callable[[str], str]   # '/'-joined parameter path -> 'head' | 'backbone' | 'frozen'

  def __call__(self, params):
    flat = traverse_util.flatten_dict(params, sep='/')
    return traverse_util.unflatten_dict({k: self.label(k) for k in flat}, sep='/')


def param_groups(model: ModelSettings) -> ParamGroups | None:
  """Labels each parameter 'head', 'backbone' or 'frozen' by the model's stages and config.model.freeze_till;
  None for models without stages (every parameter trains alike).

  With the source framework's own classifier (`top='source'`), its hidden layers (AlexNet's and VGG's
  4096-wide Linears) count as one more stage after the last, so freeze_till=-1 trains only the replaced
  last layer ("replace and train the final layer").
  """
  spec = models.get_spec(model.name)
  if not spec.stages:
    return None
  in_stage = [re.compile(regex).search for _, regex in spec.stages]  # one membership test per stage
  if model.get('top', 'source') == 'source' and spec.source_top and spec.source_top != spec.source_head:
    body, head = re.compile(spec.source_top), re.compile(spec.source_head)
    in_stage.append(lambda path: body.search('params/' + path) and not head.search('params/' + path))
  freeze_till = int(model.get('freeze_till', 0))
  if not -1 <= freeze_till <= len(in_stage):
    raise UserInputError(f'config.model.freeze_till={freeze_till}: use 0..{len(in_stage)} (stages '
                         f'{list(spec.stage_names)}{" + classifier" if len(in_stage) > len(spec.stages) else ""})'
                         ' or -1 for all')

  def label(path: str) -> str:
    for index, member in enumerate(in_stage):
      if member(path):
        return 'frozen' if models.frozen(index, freeze_till) else 'backbone'
    return 'head'
  return ParamGroups(spec, label)


def l2_penalty(params, l2: float, pattern: str):
  """Keras kernel_regularizer: l2 * sum(w**2) over parameters whose '/'-joined path matches `pattern`."""
  if l2 <= 0:
    return jnp.zeros((), jnp.float32)
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise UserInputError(f'config.train.l2_params={pattern!r}: not a regular expression ({e})') from None
  flat = traverse_util.flatten_dict(params, sep='/')
  chosen = [v for k, v in flat.items() if regex.search(k)]
  if not chosen:
    raise UserInputError(f'config.train.l2_params={pattern!r} matches no parameter; paths look like '
                         f'{sorted(flat)[:4]}')
  return l2 * sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in chosen)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
