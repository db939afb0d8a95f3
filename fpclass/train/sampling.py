"""Each epoch's batch order: (steps, batch) int32 example indices, the same shape every epoch,
deterministic from (seed, epoch), so a resumed run and a run on another input path see the same batches.

`epoch_order` is a fresh permutation per epoch; `class_balanced_order` is the balanced sampler,
an alternative to class weights for imbalanced data: instead of weighting the loss, every class fills an
equal share of the epoch's slots. Within a class, examples come from successive permutations of that class,
so minority examples repeat as evenly as possible and majority examples are subsampled without replacement
(unlike PyTorch's WeightedRandomSampler, which draws with replacement and lets the class shares vary).
"""
import math

import jax
import numpy as np


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
  """A fresh permutation each epoch; the last batch wraps around to the permutation's start, so every
  example is seen each epoch and every batch has the same shape."""
  steps = math.ceil(n / batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[np.arange(steps * batch_size) % n].reshape(steps, batch_size).astype(np.int32)


def batch_order(sampler: str, seed: int, epoch: int, labels: np.ndarray, batch_size: int) -> np.ndarray:
  """(steps, batch) indices into `labels` for one epoch under config.train.sampler."""
  if sampler == 'balanced':
    return class_balanced_order(seed, epoch, labels, batch_size)
  return epoch_order(seed, epoch, len(labels), batch_size)


def class_balanced_order(seed: int, epoch: int, labels: np.ndarray, batch_size: int) -> np.ndarray:
  labels = np.asarray(labels)
  n = len(labels)
  steps = math.ceil(n / batch_size)
  slots = steps * batch_size
  # A different stream from epoch_order's, so switching samplers never reuses its permutation.
  rng = np.random.default_rng([seed, epoch, 1])
  classes = np.unique(labels)
  share = np.full(len(classes), slots // len(classes))
  share[rng.choice(len(classes), slots - share.sum(), replace=False)] += 1  # the remainder, at random
  picks = []
  for c, count in zip(classes, share):
    members = np.flatnonzero(labels == c)
    rounds = max(1, math.ceil(count / len(members)))
    picks.append(np.concatenate([rng.permutation(members) for _ in range(rounds)])[:count])
  order = rng.permutation(np.concatenate(picks))
  return order.reshape(steps, batch_size).astype(np.int32)


def epoch_key(seed: int, epoch: int):
  """A member's key of epoch `epoch` (0-based); step i of it draws fold_in(this, i)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), epoch)
