"""Optax optimizers and learning-rate schedules from `config.train`."""
import re

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from fpclass.errors import UserInputError

OPTIMIZERS = ('adam', 'adamw', 'rmsprop', 'sgd')
SCHEDULES = ('constant', 'cosine', 'exponential', 'step')


def learning_rate_schedule(train_cfg, steps_per_epoch: int) -> optax.Schedule:
  lr = float(train_cfg.learning_rate)
  total = max(1, int(train_cfg.epochs) * steps_per_epoch)
  warmup = int(train_cfg.warmup_epochs) * steps_per_epoch
  name = train_cfg.schedule
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
  elif name == 'exponential':
    main = optax.exponential_decay(lr, int(train_cfg.decay_epochs) * steps_per_epoch,
                                   float(train_cfg.decay_rate), staircase=True)
  elif name == 'step':
    every = int(train_cfg.decay_epochs) * steps_per_epoch
    boundaries = {b: float(train_cfg.decay_rate) for b in range(every, total, every)} if every > 0 else {}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise UserInputError(f'config.train.schedule={name!r}: choose one of {SCHEDULES}')
  if warmup > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(train_cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_cfg, steps_per_epoch)
  name, wd = train_cfg.optimizer, float(train_cfg.weight_decay)
  if name == 'adam':
    tx = optax.adam(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps)
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps, weight_decay=wd)
  elif name == 'rmsprop':
    tx = optax.rmsprop(schedule, decay=train_cfg.rmsprop_decay, eps=train_cfg.eps)
  elif name == 'sgd':
    tx = optax.sgd(schedule, momentum=train_cfg.momentum or None, nesterov=bool(train_cfg.nesterov))
  else:
    raise UserInputError(f'config.train.optimizer={name!r}: choose one of {OPTIMIZERS}')
  chain = []
  if float(train_cfg.grad_clip_norm) > 0:
    chain.append(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)))
  if wd > 0 and name != 'adamw':
    # PyTorch-style coupled weight decay: added to the gradient before the optimizer's scaling.
    chain.append(optax.add_decayed_weights(wd))
  return optax.chain(*chain, tx)


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
