"""An exponential moving average of the model's variables (config.train.ema_decay > 0), as timm's ModelEmaV3.

After optimizer update n of a training phase (n = 1, 2, ..., counted as timm's train.py counts `num_updates`)
every float variable, the weights and the batch-norm statistics alike (ModelEmaV3 averages every float entry
of the state_dict), moves towards its current value: ema <- lerp(ema, x, 1 - d_n). d_1 = 0, so the average
starts at the weights of the first update; after it d_n = ema_decay, or with the warmup
(config.train.ema_warmup) min(ema_decay, 1 - n^(-2/3)), ModelEmaV3's warmup with its defaults (gamma 1,
power 2/3). The weight 1 - d_n is worked out on the host in float64, as timm's get_decay does in Python, and
only then rounded to float32: taken on the device, 1 - float32(0.9998) is 1.99974e-4, not 2e-4, a drift
timm does not have. The interpolation is torch.lerp's two-sided form, exact at both ends, so a variable that
did not change (a frozen stage) keeps its value bit for bit.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

WARMUP_POWER = 2.0 / 3.0   # timm ModelEmaV3's default warmup_power (warmup_gamma 1)


def decay_at(updates: int, decay: float, warmup: bool) -> float:
  """The decay of update number `updates` (1 for a phase's first), in float64, as ModelEmaV3.get_decay."""
  if updates <= 1:
    return 0.0
  if warmup:
    return max(min(decay, 1.0 - updates ** -WARMUP_POWER), 0.0)
  return decay


def warmup_end(decay: float, warmup: bool) -> int:
  """The first update from which the decay stays at `decay` (2 without the warmup)."""
  if not warmup or decay <= 0.0:
    return 2
  return int(np.ceil((1.0 - decay) ** (-1.0 / WARMUP_POWER))) + 1


def table_length(decay: float, warmup: bool, updates: int) -> int:
  """The length of `weight_table`: what of a phase's planned `updates` a train program holds as constants."""
  return min(max(int(updates), 1), warmup_end(decay, warmup)) + 1


@functools.lru_cache(maxsize=16)
def weight_table(decay: float, warmup: bool, updates: int) -> np.ndarray:
  """float32 weights 1 - d_n for n = 0 .. min(updates, the warmup's end), each taken in float64 first."""
  return np.array([1.0 - decay_at(n, decay, warmup) for n in range(table_length(decay, warmup, updates))],
                  np.float32)


def weight_at(updates, decay: float, warmup: bool, planned: int):
  """The weight of update number `updates` (a traced integer): the host-computed table over the phase's
  `planned` updates, and float32(1 - decay) past the warmup. Beyond a plan still in its warmup (a phase run
  longer than planned) it falls back to the same formula in float32."""
  table = weight_table(float(decay), bool(warmup), int(planned))
  n = jnp.asarray(updates, jnp.int32)
  past = len(table) - 1
  if past >= warmup_end(decay, warmup) - 1:
    beyond = jnp.float32(1.0 - decay)
  else:
    beyond = jnp.maximum(jnp.float32(1.0 - decay), jnp.asarray(n, jnp.float32) ** -WARMUP_POWER)
  return jnp.where(n <= past, jnp.asarray(table)[jnp.clip(n, 0, past)], beyond)


def init(variables):
  """The average before any update: a float32 copy of `variables` (its own buffers, so the state can be donated)."""
  return jax.tree_util.tree_map(
      lambda x: jnp.array(x, jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, copy=True),
      variables)


def update(average, current, weight):
  """The average moved towards `current` (a tree of the same structure) by `weight` (1 - decay, float32);
  integer leaves are copied."""
  weight = jnp.asarray(weight, jnp.float32)

  def lerp(a, x):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      return x.astype(a.dtype)
    x = x.astype(a.dtype)
    return jnp.where(weight < 0.5, a + weight * (x - a), x - (x - a) * (1.0 - weight))
  return jax.tree_util.tree_map(lerp, average, current)
