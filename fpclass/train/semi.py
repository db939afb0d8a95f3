"""Semi-supervised training in the one engine: FixMatch's objective over the images nobody labelled.

The unlabelled images sit after the labelled ones in the train array, labelled UNLABELLED. Each step's index row
holds `batch` labelled rows and then `ratio x batch` unlabelled ones (`order`), so the step, the vmap axis and the
streamed path gather them as they gather any batch, and `Task.train_batch` splits them by position. For an unlabelled
image the weak view (config.augment) is predicted under the current weights in a forward pass of its own, outside
the gradient (cheaper than FixMatch's one pass over every view; batch norm normalises it by its own batch, and its
dropout stays on: without it MNIST's pool closed less of the gap, docs/unlabelled.md); where its
top class's probability reaches the threshold, that class is the target of a strong view of the same image
(`strong_augment`), and the masked cross-entropy, times the weight, joins the labelled loss (Sohn et al., 2020).
A fold's held-out images are never in the pool: it is read apart from the labelled images, and an exact copy of a
labelled image leaves it (`fpclass.data.unlabelled`).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.config.inputs import AugmentSettings
from fpclass.config.training import SemiSettings

UNLABELLED = -1   # the label of an unlabelled row (semi-supervised training's, and distillation's)


def strong_augment(weak: AugmentSettings, semi: SemiSettings) -> AugmentSettings:
  """The strong view: the weak view's geometry and flips, then `semi.strong_policy` and Cutout (random erasing),
  with batch mixing off (a pseudo-label is one class)."""
  return dataclasses.replace(weak, policy=semi.strong_policy, erasing=semi.strong_erasing, erasing_value=0.5,
                             mixup_alpha=0.0, cutmix_alpha=0.0)


def pseudo_targets(weak_probabilities, threshold):
  """(one-hot targets, mask): the weak view's predicted class, and whether its probability reaches `threshold`
  (a number, or (C,) thresholds, each class's own: the predicted class's applies).
  The loss is the strong views' cross-entropy against the targets, times the mask, averaged over every unlabelled
  image of the batch (FixMatch's normalisation: an image below the threshold counts 0)."""
  probs = jax.lax.stop_gradient(weak_probabilities)
  predicted = jnp.argmax(probs, axis=-1)
  cut = threshold[predicted] if jnp.ndim(threshold) else threshold
  confident = jnp.max(probs, axis=-1) >= cut
  return jax.nn.one_hot(predicted, probs.shape[-1]), confident


def adaptive_init(classes: int) -> dict:
  """FreeMatch's running means at the start: a uniform guess (confidence 1/C, each class 1/C)."""
  return {'confidence': jnp.full((), 1.0 / classes, jnp.float32),
          'classes': jnp.full((classes,), 1.0 / classes, jnp.float32)}


def adaptive_thresholds(running: dict):
  """(C,): the global running confidence times each class's running mean probability over the largest
  (FreeMatch's self-adaptive thresholds, Wang et al. 2023)."""
  return running['confidence'] * running['classes'] / jnp.max(running['classes'])


def adaptive_update(running: dict, weak_probabilities, momentum: float) -> dict:
  """The running means after a batch of weak views: their mean top probability, and their mean probabilities."""
  probs = jax.lax.stop_gradient(weak_probabilities)
  return {'confidence': momentum * running['confidence'] + (1 - momentum) * jnp.mean(jnp.max(probs, axis=-1)),
          'classes': momentum * running['classes'] + (1 - momentum) * jnp.mean(probs, axis=0)}


def split(batch_images, batch_labels, ratio: int):
  """(labelled images, labels, unlabelled images) of a step's batch laid out by `order`."""
  labelled = batch_images.shape[0] // (1 + ratio)
  return batch_images[:labelled], batch_labels[:labelled], batch_images[labelled:]


def batch_rows(batch: int, settings: SemiSettings | None) -> int:
  """The rows of a step's index: `batch` labelled ones, then `ratio` times as many unlabelled ones (none without)."""
  return batch if settings is None else batch * (1 + settings.ratio)


def unlabelled_rows(seed: int, epoch: int, start: int, count: int, steps: int, per_step: int) -> np.ndarray:
  """(steps, per_step) rows of the pool (rows start .. start + count of the train array) for one epoch: successive
  seeded permutations of the pool, so each image comes round as evenly as the epoch allows."""
  rng = np.random.default_rng([seed, epoch, 2])   # a stream of its own (epoch_order's is [seed, epoch])
  need = steps * per_step
  rounds = -(-need // count)
  drawn = np.concatenate([rng.permutation(count) for _ in range(rounds)])[:need]
  return (start + drawn).reshape(steps, per_step).astype(np.int32)


def order(labelled_order: np.ndarray, seed: int, epoch: int, start: int, count: int, ratio: int) -> np.ndarray:
  """A step order (steps, batch) widened to (steps, batch x (1 + ratio)): each row's labelled rows, then its
  unlabelled ones."""
  steps, batch = labelled_order.shape
  return np.concatenate([labelled_order, unlabelled_rows(seed, epoch, start, count, steps, batch * ratio)], axis=1)
