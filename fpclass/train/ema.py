"""An exponential moving average of the model's variables (config.train.ema_decay > 0), as timm's ModelEmaV3.

After optimizer update n of a training phase (n = 1, 2, ..., counted as timm's train.py counts `num_updates`)
every float variable, the weights and the batch-norm statistics alike (ModelEmaV3 averages every float entry
of the state_dict), moves towards its current value: ema <- lerp(ema, x, 1 - d_n). d_1 = 0, so the average
starts at the weights of the first update; after it d_n = ema_decay, or with the warmup
(config.train.ema_warmup) min(ema_decay, 1 - n^(-2/3)), ModelEmaV3's warmup with its defaults (gamma 1,
power 2/3). The average is kept in float32. The interpolation is torch.lerp's two-sided form, exact at both
ends, so a variable that did not change (a frozen stage) keeps its value bit for bit.
"""
import jax
import jax.numpy as jnp

WARMUP_POWER = 2.0 / 3.0   # timm ModelEmaV3's default warmup_power (warmup_gamma 1)


def init(variables):
  """The average before any update: a float32 copy of `variables` (its own buffers, so the state can be donated)."""
  return jax.tree_util.tree_map(
      lambda x: jnp.array(x, jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, copy=True),
      variables)


def decay_at(updates, decay: float, warmup: bool):
  """The decay of update number `updates` (1 for a phase's first), as a float32 scalar array."""
  n = jnp.asarray(updates, jnp.float32)
  d = jnp.float32(decay)
  if warmup:
    d = jnp.minimum(d, 1.0 - n ** -WARMUP_POWER)
  return jnp.where(n <= 1, jnp.float32(0.0), jnp.maximum(d, 0.0))


def update(average, current, decay):
  """The average moved towards `current` (a tree of the same structure) with `decay`; integer leaves are copied."""
  weight = 1.0 - jnp.asarray(decay, jnp.float32)

  def lerp(a, x):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      return x.astype(a.dtype)
    x = x.astype(a.dtype)
    return jnp.where(weight < 0.5, a + weight * (x - a), x - (x - a) * (1.0 - weight))
  return jax.tree_util.tree_map(lerp, average, current)
