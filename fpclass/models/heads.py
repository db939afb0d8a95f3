"""What a model's head means: per-example loss, predicted class and probabilities from its logits.

A softmax head has one logit per class; a sigmoid head has one logit for a two-class task.
"""
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits, targets, head: str, smoothing: float = 0.0):
  """Per-example cross-entropy against (N, num_classes) class probabilities, label-smoothed. The sigmoid head
  (one logit, two classes) takes the probability of class 1 as its binary target."""
  if head == 'sigmoid':
    target = targets[:, 1] * (1.0 - smoothing) + 0.5 * smoothing
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], target)
  target = optax.smooth_labels(targets, smoothing) if smoothing else targets
  return optax.softmax_cross_entropy(logits, target)


def predicted_class(logits, head: str):
  return (logits[:, 0] > 0).astype(jnp.int32) if head == 'sigmoid' else jnp.argmax(logits, -1)


def probabilities(logits: np.ndarray, head: str) -> np.ndarray:
  """(N, num_classes) class probabilities from logits, on the host."""
  logits = np.asarray(logits, np.float64)
  if head == 'sigmoid':
    p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    return np.stack([1.0 - p1, p1], axis=1)
  z = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)
