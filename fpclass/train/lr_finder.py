"""The learning-rate finder, as fastai's `Learner.lr_find`: an exponential learning-rate sweep and its suggestions.

From the run's initial state (its seed's init, pretrained weights loaded as training loads them), step i trains
the run's own batch i, through its own task and train step (`Task.train_batch`: augmentation, class weights,
frozen stages), with the learning rate start * (end / start) ** (i / num_it), the optimizer's schedule. The
loss is smoothed (an exponential moving average, debiased) and the sweep stops after num_it steps, or once
the smoothed loss exceeds 4x its minimum so far. Suggestions (fastai's `valley`, `minimum`, `steep`) read the
smoothed losses from step num_it // 10 to the fifth-last, cut at the first NaN. Nothing is written here:
`--mode lr_find` writes the record and the plot.
"""
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.config.outputs import LR_FIND_SUGGESTIONS, LrFindSettings
from fpclass.train import optim
from fpclass.train.sampling import batch_order, epoch_key
from fpclass.train.steps import CompiledSteps

DIVERGENCE = 4.0   # fastai's rule: stop once the smoothed loss exceeds this multiple of its minimum
SKIP_END = 5       # the last points left out of the suggestions (and of fastai's plot)


def sweep_lr(settings: LrFindSettings, step: int) -> float:
  """The learning rate of step `step` (from 0), in float64."""
  return settings.start_lr * (settings.end_lr / settings.start_lr) ** (step / settings.num_it)


def sweep_schedule(settings: LrFindSettings):
  """`sweep_lr` as an optax schedule of the optimizer's step count."""
  ratio = settings.end_lr / settings.start_lr
  return lambda count: settings.start_lr * ratio ** (jnp.asarray(count, jnp.float32) / settings.num_it)


@dataclasses.dataclass
class Record:
  """Per step: the learning rate, the raw and the smoothed loss; why the sweep stopped (num_it | diverged |
  nan: the smoothed loss is NaN, and would stay NaN for the remaining steps | deadline: `find`'s time ran out)."""
  lrs: list = dataclasses.field(default_factory=list)
  losses: list = dataclasses.field(default_factory=list)
  smoothed: list = dataclasses.field(default_factory=list)
  stopped: str = 'num_it'


class Recorder:
  """The smoothed loss and the stop rule, one step at a time."""

  def __init__(self, settings: LrFindSettings):
    self.settings, self.record = settings, Record()
    self._average, self._best = 0.0, math.inf

  def add(self, loss: float) -> bool:
    """Records step len(record)'s loss; returns whether the sweep stops after it."""
    s, r = self.settings, self.record
    r.lrs.append(sweep_lr(s, len(r.losses)))
    r.losses.append(float(loss))
    self._average = s.beta * self._average + (1.0 - s.beta) * float(loss)
    smoothed = self._average / (1.0 - s.beta ** len(r.losses))
    r.smoothed.append(smoothed)
    self._best = min(self._best, smoothed)
    if s.stop_div and smoothed > DIVERGENCE * self._best:
      r.stopped = 'diverged'
    elif math.isnan(smoothed):
      r.stopped = 'nan'
    return r.stopped != 'num_it' or len(r.losses) >= s.num_it


def window(record: Record, num_it: int) -> tuple[np.ndarray, np.ndarray]:
  """(lrs, smoothed losses) the suggestions read: steps num_it // 10 up to the fifth-last, cut at the first
  NaN. A sweep stopped at a NaN reads as the full num_it steps it stands for (the rest NaN too)."""
  lrs, losses = np.asarray(record.lrs, np.float64), np.asarray(record.smoothed, np.float64)
  steps = num_it if record.stopped == 'nan' else len(losses)   # the steps past a NaN are cut below anyway
  end = max(0, steps - SKIP_END)
  lrs, losses = lrs[num_it // 10:end], losses[num_it // 10:end]
  nan = np.flatnonzero(np.isnan(losses))
  if len(nan):
    lrs, losses = lrs[:nan[0]], losses[:nan[0]]
  return lrs, losses


def valley(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple]:
  """The longest valley: the point a little past the first third of the longest run of ever-lower losses
  (a longest strictly decreasing subsequence, ending at its first occurrence). (lr, (lr, loss))."""
  n = len(losses)
  lengths = np.ones(n, int)   # lengths[i]: the longest strictly decreasing subsequence ending at i
  for i in range(1, n):
    lower = losses[i] < losses[:i]
    if lower.any():
      lengths[i] = 1 + lengths[:i][lower].max()
  end = int(np.argmax(lengths))
  begin = end - int(lengths[end]) if end > 0 else 0
  third = (end - begin) / 3
  index = begin + int(third) + int(third / 2)
  return float(lrs[index]), (float(lrs[index]), float(losses[index]))


def minimum(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple]:
  """A tenth of the learning rate at the lowest loss. (lr / 10, (lr, loss))."""
  index = int(np.argmin(losses))
  return float(lrs[index]) / 10, (float(lrs[index]), float(losses[index]))


def steep(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple]:
  """Where the loss falls fastest against log(lr): the left end of the steepest segment. (lr, (lr, loss))."""
  slopes = np.diff(losses) / np.diff(np.log(lrs))
  index = int(np.argmin(slopes))
  return float(lrs[index]), (float(lrs[index]), float(losses[index]))


SUGGESTIONS = dict(valley=valley, minimum=minimum, steep=steep)
assert tuple(SUGGESTIONS) == LR_FIND_SUGGESTIONS


def suggest(record: Record, num_it: int) -> dict:
  """{name: {'lr', 'point': [lr, loss]}} of every suggestion; {} when the window holds fewer than two
  points (the sweep diverged too early: lower config.lr_find.start_lr)."""
  lrs, losses = window(record, num_it)
  if len(losses) < 2:
    return {}
  out = {}
  for name, function in SUGGESTIONS.items():
    lr, point = function(lrs, losses)
    out[name] = dict(lr=lr, point=list(point))
  return out


def find(dataset, settings: LrFindSettings, cohort, state, deadline: float | None = None) -> Record:
  """Runs the sweep on `dataset` (a `fpclass.data.pipeline.Dataset` placed by `fpclass.data.stream.place`) from
  the training loop's initial `state` (`fpclass.train.cohort.solo_start`), as a training run would start;
  stopped after the step that ends past `deadline` (a `time.perf_counter()` value), if given."""
  run_task, run = cohort.task(0), cohort.run
  tx = optim.make_optimizer(run.train, cohort.steps[0], optim.param_groups(run.model),
                            schedule=sweep_schedule(settings))
  # Each step is one optimizer update of one batch, as fastai's sweep: config.train.accumulate_steps is not applied.
  task = dataclasses.replace(run_task, tx=tx, optimizer=None, accumulate_steps=1)
  state = cohort.parallel.replicate(state.replace(opt_state=tx.init(state.params)))
  compiled = CompiledSteps(task, cohort.parallel, 'step')   # the step form: the rule may stop after any step
  recorder, stop = Recorder(settings), [False]
  placed = compiled.place(cohort.data.train)   # once, for every epoch of the sweep

  def on_step(done, metrics):
    m = jax.device_get(metrics[-1])
    stop[0] = recorder.add(float(m['loss_sum']) / float(m['count']))
    if not stop[0] and deadline is not None and time.perf_counter() > deadline:
      recorder.record.stopped, stop[0] = 'deadline', True

  epoch, seed = 0, run.seed
  while not stop[0]:
    order = batch_order(run.train.sampler, seed, epoch, dataset.train.labels, cohort.batch)
    order = order[:settings.num_it - len(recorder.record.losses)].astype(np.int32)
    state, _ = compiled.epoch(state, cohort.data.train, order, epoch_key(seed, epoch), on_step, 0, lambda: stop[0],
                              placed=placed)
    epoch += 1
  return recorder.record
