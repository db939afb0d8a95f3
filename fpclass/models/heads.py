"""What a model's head means: per-example loss, predicted classes and probabilities from its logits.

Three heads: 'softmax' (one logit per class, one class per image), 'sigmoid' (one logit for a two-class
task) and 'multilabel' (one sigmoid logit per class, any number of classes per image; `config.data.task`).
"""
import jax.numpy as jnp
import numpy as np
import optax

from fpclass.config.inputs import LabelSettings
from fpclass.config.model import ModelSettings
from fpclass.errors import UserInputError

HEADS = ('softmax', 'sigmoid', 'multilabel')


def head_of(run) -> str:
  """The head a run describes (its `fpclass.config.run.RunSettings`): 'multilabel' when config.data.task is,
  else config.model.head. (Not annotated: importing the run's settings here would lengthen every chain through
  the heads.)"""
  return head_for(run.model, run.data.labels)


def head_for(model: ModelSettings, labels: LabelSettings) -> str:
  """`head_of` from the typed sections."""
  head = model.head
  if not labels.multilabel:
    return head
  if head == 'sigmoid':
    raise UserInputError("config.model.head='sigmoid' is the one-logit head of a two-class task; "
                         "config.data.task='multilabel' gives every class its own sigmoid (leave model.head as is)")
  return 'multilabel'


def binary_cross_entropy(logits, targets, smoothing: float = 0.0, pos_weight=None):
  """Elementwise (N, K) binary cross-entropy with logits, as torch's `binary_cross_entropy_with_logits(x, t,
  pos_weight=w)`: w t softplus(-x) + (1 - t) softplus(x). Smoothing is timm's `BinaryCrossEntropy`'s: every
  target moves to t (1 - s) + s / K (timm's on value 1 - s + s/K and off value s/K)."""
  # Applied at 0 too (exact: t * 1 + 0 is t), so the smoothing may be a traced train-program argument.
  targets = targets.astype(jnp.float32)
  targets = targets * (1.0 - smoothing) + smoothing / targets.shape[-1]
  positive = targets if pos_weight is None else targets * jnp.asarray(pos_weight, jnp.float32)
  logits = logits.astype(jnp.float32)
  return positive * jnp.logaddexp(0.0, -logits) + (1.0 - targets) * jnp.logaddexp(0.0, logits)


def cross_entropy(logits, targets, head: str, smoothing: float = 0.0):
  """Per-example cross-entropy against (N, num_classes) targets, label-smoothed. Softmax: class probabilities.
  The sigmoid head (one logit, two classes) takes the probability of class 1 as its binary target. Multilabel:
  0/1 (or mixed) label vectors, the binary cross-entropy averaged over the classes."""
  if head == 'multilabel':
    return jnp.mean(binary_cross_entropy(logits, targets, smoothing), axis=-1)
  if head == 'sigmoid':
    target = targets[:, 1] * (1.0 - smoothing) + 0.5 * smoothing
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], target)
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, smoothing))   # exact at 0, as above


def predicted_class(logits, head: str):
  """(N,) class indices, or for a multilabel head the (N, K) 0/1 predictions at probability 0.5."""
  if head == 'multilabel':
    return (logits > 0).astype(jnp.int32)
  return (logits[:, 0] > 0).astype(jnp.int32) if head == 'sigmoid' else jnp.argmax(logits, -1)


def probabilities(logits, head: str, xp=np):
  """(N, num_classes) class probabilities from logits; for a multilabel head each class's own. On the host in
  float64 (xp=numpy), or traced in float32 (xp=jax.numpy: a program that mixes models on the device, and its ONNX
  graph; the softmax is written out, max, exp and sum, rather than jax.nn.softmax's custom derivative)."""
  logits = xp.asarray(logits, xp.float64 if xp is np else xp.float32)
  if head == 'multilabel':
    return 1.0 / (1.0 + xp.exp(-logits))
  if head == 'sigmoid':
    p1 = 1.0 / (1.0 + xp.exp(-logits[:, 0]))
    return xp.stack([1.0 - p1, p1], axis=1)
  z = logits - logits.max(axis=1, keepdims=True)
  e = xp.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def as_logits(probs: np.ndarray, head: str) -> np.ndarray:
  """Logits whose `probabilities` are `probs`: log p (softmax), log(p1 / p0) for the one-logit sigmoid head,
  log(p / (1 - p)) per class for the multilabel head."""
  probs = np.asarray(probs, np.float64)
  log_p = np.log(np.clip(probs, np.finfo(np.float64).tiny, 1.0))
  if head == 'multilabel':
    return log_p - np.log(np.clip(1.0 - probs, np.finfo(np.float64).tiny, 1.0))
  return (log_p[:, 1] - log_p[:, 0])[:, None] if head == 'sigmoid' else log_p
