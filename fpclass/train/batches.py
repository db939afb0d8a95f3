"""The one pad-and-batch rule of prediction: any number of rows, in chunks padded up to a few fixed batch sizes.

A jitted program compiles once per input shape, so predicting in fixed sizes (the last chunk padded with zeros,
its padding rows cut from the output) keeps every later call free of compilation. Training's validation pass,
evaluate, predict, explain and serve all batch through `in_fixed_batches`; `predict_logits` is it over a
task's own `predict` (any object with `predict(params, batch_stats, images)`, `head` and `num_classes`).
"""
from collections.abc import Callable, Sequence

import jax
import numpy as np


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
  """`array` with zero rows appended up to `size` rows."""
  if len(array) >= size:
    return array
  return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


def in_fixed_batches(fn: Callable, inputs, sizes: Sequence[int]):
  """`fn` over the rows of `inputs` (an array, or a tuple of arrays with the same rows), on the host.

  Chunks hold at most max(sizes) rows; each is padded up to the smallest size that holds it, so `fn` only ever
  sees those batch sizes. `fn` returns an array or a pytree of arrays (None leaves stay None), whose first
  axis is the batch: the outputs are cut to the real rows and concatenated. `inputs` holds at least one row.
  """
  arrays = inputs if isinstance(inputs, tuple) else (inputs,)
  sizes = sorted(int(s) for s in sizes)
  largest, n = sizes[-1], len(arrays[0])
  outs = []
  for start in range(0, n, largest):
    rows = min(largest, n - start)
    size = next(s for s in sizes if s >= rows)
    chunk = tuple(pad_rows(a[start:start + rows], size) for a in arrays)
    outs.append((rows, fn(*chunk)))
  outs = [jax.tree_util.tree_map(lambda x, r=rows: np.asarray(x)[:r], jax.device_get(out)) for rows, out in outs]
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outs)


def predict_logits(task, state, images: np.ndarray, batch_size: int,
                   predict_fn=None, chunk: int | None = None) -> np.ndarray:
  """Logits for uint8 images in fixed-size batches (the last one padded), so one compilation serves all.

  The batch is min(batch_size, len(images)), or `chunk` when given: callers that predict several splits
  pass one chunk for all of them (`fpclass.infer.predictions.prediction_chunk`), so the splits share one
  compiled program instead of one per split size."""
  predict_fn = predict_fn or jax.jit(task.predict)
  n = len(images)
  if n == 0:
    return np.zeros((0, 1 if task.head == 'sigmoid' else task.num_classes), np.float32)
  size = int(chunk) if chunk else min(batch_size, n)
  return in_fixed_batches(lambda batch: predict_fn(state.params, state.batch_stats, batch), images, (size,))
