"""How the train loop gets its batches: from the training set resident on the devices, or streamed.

`train_feed(compiled, split)` follows the choice `fpclass.data.stream.place` made for the run:
- resident: the whole split is one replicated device array and each step gathers its batch by index
  (`CompiledSteps.train_step` / `train_epoch`, in the configured loop form);
- streamed: each step's batch is read on the host and put on the devices ahead of it
  (`fpclass.data.stream.device_batches`), then `CompiledSteps.train_batch_step` trains on it, one jitted
  call per step whatever the loop form (a scan cannot take data the host has not read yet).
Both run `Task.train_batch` on the same batches, in the same order, with the same keys, so a run gives
the same numbers, bit for bit, whichever feed it takes (tests/test_streaming.py).
"""
import numpy as np

from fpclass.data import stream
from fpclass.data.rows import ImageRows
from fpclass.train.batches import predict_logits as predict_resident


class ResidentFeed:
  """The training split on every device; batches are index gathers inside the step. `placed`: the split's
  (images, labels) already replicated on the mesh, so programs of several tasks share one copy; `arguments`: the
  member's train-program arguments (`CompiledSteps.arguments`; default: the compiled task's)."""

  def __init__(self, compiled, split, placed=None, arguments=None):
    self.compiled, self.arguments = compiled, arguments
    self.images, self.labels = placed or compiled.parallel.replicate((split.images, split.labels))

  def run_epoch(self, state, order: np.ndarray, epoch_key, on_step=None, start: int = 0, should_stop=None):
    """`CompiledSteps.run_epoch` over the host order (steps, batch)."""
    return self.compiled.run_epoch(state, self.images, self.labels, self.compiled.parallel.replicate(order),
                                   epoch_key, on_step, start, should_stop, self.arguments)


class StreamedFeed:
  """The training split stays on the host (a memory-mapped cache); each step's batch is streamed in."""

  def __init__(self, compiled, split, arguments=None):
    self.compiled, self.images, self.labels = compiled, split.images, np.asarray(split.labels)
    self.arguments = compiled.arguments() if arguments is None else arguments

  def run_epoch(self, state, order: np.ndarray, epoch_key, on_step=None, start: int = 0, should_stop=None):
    """Trains one epoch over `order` from step `start`; returns (state, per-step metrics), as
    `CompiledSteps.run_epoch` (including its `should_stop`)."""
    metrics = []
    parallel = self.compiled.parallel
    # A mesh of this process's devices alone (a sweep's member on one process of several) reads whole batches.
    share = dict(process_index=0, process_count=1) if parallel.process_local else {}
    batches = stream.device_batches(self.images, self.labels, order[start:], parallel.batch, **share)
    for i, (images, labels) in enumerate(batches, start=start):
      state, out = self.compiled.train_batch_step(state, images, labels, i, epoch_key, self.arguments)
      metrics.append(out)
      if on_step is not None:
        on_step(i + 1, metrics)
      if should_stop is not None and i + 1 < len(order) and should_stop():
        break
    return state, metrics


def train_feed(compiled, split, placed=None, arguments=None):
  """The feed `fpclass.data.stream.place` chose for `split`; `placed` and `arguments` as in `ResidentFeed`."""
  if stream.is_streamed(split):
    return StreamedFeed(compiled, split, arguments)
  return ResidentFeed(compiled, split, placed, arguments)


def predict_logits(compiled, state, images, batch_size: int) -> np.ndarray:
  """Logits of `images` as validation computes them during training: the chunks and program of
  `fpclass.train.batches.predict_logits`, with a streamed split's chunks read ahead on threads."""
  if not isinstance(images, ImageRows) or len(images) == 0:
    return predict_resident(compiled.task, state, images, batch_size, compiled.predict)
  size = min(batch_size, len(images))
  out = [compiled.predict(state.params, state.batch_stats, chunk) for chunk in stream.host_chunks(images, size)]
  return np.concatenate(out)[:len(images)]
