"""Gradient accumulation (config.train.accumulate_steps = k > 1): `optax.MultiSteps` around the optimizer that
`fpclass.train.optim.make_optimizer` builds, its cycles aligned to epochs as timm's train.py aligns them.

An epoch of S steps (micro-batches) makes ceil(S / k) optimizer updates: one every k micro-batches, the last
one after the epoch's remaining S - k (ceil(S / k) - 1), so no cycle spans two epochs and an epoch's end is
always a clean resume point. Each update applies the mean of its cycle's gradients. The learning-rate schedule
counts optimizer updates (the wrapped optimizer's own count) and is built for ceil(S / k) updates per epoch, so
warmup_epochs and decay_epochs keep meaning epochs. What BatchNorm does meanwhile: docs/finetuning.md.
"""
import jax.numpy as jnp
import optax


def updates_per_epoch(steps: int, k: int) -> int:
  return -(-int(steps) // int(k))


def cycle_length(steps: int, k: int):
  """`every_k_schedule` for optax.MultiSteps: the micro-batches of the cycle that makes update
  `gradient_step` + 1 (k, or the epoch's remainder for its last update)."""
  updates = updates_per_epoch(steps, k)
  last = int(steps) - int(k) * (updates - 1)

  def every_k(gradient_step):
    return jnp.where(gradient_step % updates == updates - 1, last, int(k))
  return every_k


def accumulate(tx: optax.GradientTransformation, steps: int, k: int) -> optax.GradientTransformation:
  """`tx` updating once per cycle with its micro-batches' mean gradient; `tx` itself when k is 1."""
  if int(k) == 1:
    return tx
  return optax.MultiSteps(tx, every_k_schedule=cycle_length(steps, k)).gradient_transformation()
