"""Batch-norm statistics recomputed from the training images under the current weights (config.train.bn_statistics
='precise'), after each epoch and before validation.

The running averages a batch norm keeps (Keras' momentum 0.99, PyTorch's 0.1) lag the weights they describe: they
average batches that earlier weights produced, and on a small data set trained fast they can describe another
model (a CNN at chance with them, and right with recomputed ones: docs/finetuning.md). "Precise BN" (Wu & Johnson
2021, "Rethinking 'Batch' in BatchNorm"; detectron2's PreciseBN) recomputes them: each batch norm's mean and
variance over the training images, un-augmented, with dropout off as in evaluation and the earlier batch norms on
each chunk's own statistics, combined over chunks exactly (Chan's parallel variance, in float64 on the host).
Training itself is unchanged (a batch norm trains on its batch's statistics); validation, checkpoints and the
served model read them.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fpclass.data.rows import take_rows


def _chunk_moments(task, params, batch_stats, images_u8, key) -> dict:
  """{batch norm path: (mean, sum of squared deviations, count)} of each training batch norm's input on one chunk."""
  found = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and isinstance(module, nn.Dropout):
      return args[0]   # evaluation's inputs: no dropout
    if context.method_name == '__call__' and isinstance(module, nn.BatchNorm) and module.axis == -1 \
       and not kwargs.get('use_running_average', module.use_running_average):
      x = args[0].astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      found['/'.join(module.scope.path)] = (mean, jnp.sum(jnp.square(x - mean), axes),
                                            jnp.asarray(x.size // x.shape[-1], jnp.float32))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    task.apply(params, batch_stats, task.prepare(images_u8), train=True, rngs={'dropout': key})
  return found


def program(task):
  """(params, batch_stats, uint8 images, key) -> each training batch norm's moments on the images, jitted; the
  caller keeps it (one per model axis). None for a feature cache's task (`head_model`: a head trained on
  features, whose frozen backbone keeps its statistics)."""
  if getattr(task, 'head_model', None) is not None:
    return None
  return jax.jit(functools.partial(_chunk_moments, task))


def recomputed(program, state, images, rows: np.ndarray, chunk: int):
  """`state` with the batch statistics it is evaluated with (the average's, with train.ema_decay) recomputed over
  `images[rows]` (uint8, in memory or memory-mapped), `chunk` images at a time, by `program` (`program(task)`); the
  state itself when the model has no batch norm that trains."""
  evaluated = state.for_evaluation()
  if not jax.tree_util.tree_leaves(evaluated.batch_stats):
    return state
  key = jax.random.PRNGKey(0)
  totals = {}
  for start in range(0, len(rows), chunk):
    moments = jax.device_get(program(evaluated.params, evaluated.batch_stats,
                                     np.asarray(take_rows(images, rows[start:start + chunk])), key))
    for path, (mean, m2, count) in moments.items():
      mean, m2, count = np.float64(mean), np.float64(m2), float(count)
      if path not in totals:
        totals[path] = (mean, m2, count)
        continue
      mean_a, m2_a, count_a = totals[path]   # Chan et al.: two groups' mean and squared deviations combined
      total = count_a + count
      delta = mean - mean_a
      totals[path] = (mean_a + delta * count / total, m2_a + m2 + delta ** 2 * count_a * count / total, total)
  flat = dict(traverse_util.flatten_dict(jax.device_get(evaluated.batch_stats), sep='/'))
  for path, (mean, m2, count) in totals.items():
    if f'{path}/mean' in flat:
      flat[f'{path}/mean'] = mean.astype(np.float32)
      flat[f'{path}/var'] = (m2 / count).astype(np.float32)   # the biased variance, as a batch norm's own
  stats = jax.device_put(traverse_util.unflatten_dict(flat, sep='/'))
  if state.ema is not None:
    return state.replace(ema=dict(state.ema, batch_stats=stats))
  return state.replace(batch_stats=stats)
