"""Test-time augmentation as fastai's `Learner.tta(n, beta, use_max)`, for submit, predict and calibrate.

n passes of the run's own per-image augmentation (`fpclass.train.augment.augment_batch`, batch mixing left out as
at fastai's inference) and one plain pass, each through the model in inference mode, blended on
probabilities: beta * plain + (1 - beta) * mean(augmented), or with use_max the elementwise maximum of
every pass (divided by its sum). Pass k augments batch b with the key fold_in(fold_in(PRNGKey(0), k), b),
so a prediction is reproducible for a given batch size.

The blend is handed on as "TTA logits" (log-probabilities, or the log-odds of a one-logit head) whose
probabilities are the blend, so the temperature, threshold and ensemble average treat it as any logits,
and `--mode calibrate` fits them on the same outputs that predict and submit then make.
"""
import dataclasses

import jax
import numpy as np

from fpclass.errors import UserInputError
from fpclass.models.heads import as_logits, probabilities
from fpclass.runtime.compiler_options import jit_options
from fpclass.runtime.sharding import DataParallel


@dataclasses.dataclass(frozen=True)
class TTA:
  """`config.<section>.tta`, `tta_beta`, `tta_use_max` (submit or predict); passes=0 is off."""
  passes: int = 0
  beta: float = 0.25
  use_max: bool = False

  @property
  def on(self) -> bool:
    return self.passes > 0

  @classmethod
  def from_section(cls, section, name: str) -> 'TTA':
    """The checked settings of `config.<name>` (submit or predict)."""
    passes, beta, use_max = section.get('tta', 0), section.get('tta_beta', 0.25), section.get('tta_use_max', False)
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 0:
      raise UserInputError(f'config.{name}.tta={passes!r}: the number of augmented passes, a whole number >= 0 '
                           '(0: off)')
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
      raise UserInputError(f'config.{name}.tta_beta={beta!r}: the plain pass\'s weight, in [0, 1]')
    if not isinstance(use_max, (bool, np.bool_)):
      raise UserInputError(f'config.{name}.tta_use_max={use_max!r}: must be True or False')
    return cls(int(passes), float(beta), bool(use_max))

  def as_dict(self) -> dict | None:
    """What a stored calibration records of the outputs it was fitted on (None: plain predictions)."""
    return dataclasses.asdict(self) if self.on else None

  def describe(self) -> str:
    if not self.on:
      return 'no test-time augmentation'
    how = ('the elementwise maximum of the plain pass and' if self.use_max
           else f'{self.beta:g} x the plain pass + {1 - self.beta:g} x the mean of')
    return f'test-time augmentation: {how} {self.passes} augmented passes'


def calibration_settings(config) -> TTA:
  """The TTA that --mode calibrate (and a sweep's calibration) fits on: that of config.submit or
  config.predict, whichever is on; both on must agree, since one stored temperature serves both."""
  submit, predict = TTA.from_section(config.submit, 'submit'), TTA.from_section(config.predict, 'predict')
  if submit.on and predict.on and submit != predict:
    raise UserInputError(f'config.submit.tta* ({submit}) and config.predict.tta* ({predict}) differ: the stored '
                         'temperature and threshold are fitted on one kind of prediction; set them alike, or '
                         'leave one at tta=0 while calibrating')
  return submit if submit.on else predict


def check_calibration(calibration: dict | None, settings: TTA, name: str) -> None:
  """Refuses to apply a stored calibration fitted on other outputs than `settings` makes (config.<name>)."""
  if not calibration:
    return
  stored = calibration.get('tta')
  if stored != settings.as_dict():
    fitted = f'TTA {stored}' if stored else 'plain predictions'
    raise UserInputError(f'the stored temperature and threshold were fitted on {fitted}, but config.{name}.tta='
                         f'{settings.passes} makes {settings.describe()}: run --mode calibrate with the same '
                         f'config.{name}.tta* keys, or pass --config.{name}.calibrated=False')


def blend(plain: np.ndarray, augmented: np.ndarray, beta: float, use_max: bool = False,
          head: str = 'softmax') -> np.ndarray:
  """fastai's blend of the plain pass's probabilities (N, C) with the augmented passes' (n, N, C). use_max's
  elementwise maxima are divided by their sum (fastai returns them as they are): the same class wins, and
  the outputs stay probabilities for the temperature, the threshold and the CSVs."""
  if use_max:
    top = np.maximum(plain, augmented.max(0))
    return top if head == 'multilabel' else top / top.sum(1, keepdims=True)  # each sigmoid stands alone
  return beta * plain + (1.0 - beta) * augmented.mean(0)


def pass_key(index: int, batch: int) -> jax.Array:
  """The augmentation key of pass `index` on batch number `batch`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), index), batch)


class AugmentedPredict:
  """(params, batch_stats, uint8 images, key) -> logits of the augmented batch, in inference mode; one
  jitted program per batch shape, data parallel as `fpclass.train.steps.CompiledSteps.predict`."""

  def __init__(self, task, parallel: DataParallel | None = None):
    self.task, self.parallel = task, parallel or DataParallel.over()
    self._program = jax.jit(self._logits, out_shardings=self.parallel.batch, compiler_options=jit_options())

  def _logits(self, params, batch_stats, images_u8, key):
    logits, _, _ = self.task.apply(params, batch_stats, self.task.prepare(images_u8, key), train=False)
    return logits

  def __call__(self, params, batch_stats, images_u8: np.ndarray, key) -> np.ndarray:
    n = len(images_u8)
    pad = -n % self.parallel.size   # keys are split over the padded batch: a batch size's results are its own
    if pad:
      images_u8 = np.concatenate([images_u8, np.zeros((pad, *images_u8.shape[1:]), images_u8.dtype)])
    out = self._program(params, batch_stats, self.parallel.shard_batch(images_u8), key)
    return self.parallel.to_host(out)[:n]


def tta_logits(task, state, images, plain_logits: np.ndarray, settings: TTA, augmented: AugmentedPredict,
               batch: int, first_batch: int = 0) -> np.ndarray:
  """The TTA logits of `images` given their plain pass's logits: `settings.passes` augmented passes in
  batches of `batch` (the last padded), batch b of them numbered first_batch + b for its key."""
  n = len(images)
  if n == 0 or not settings.on:
    return plain_logits
  passes = []
  for k in range(settings.passes):
    out = []
    for b, start in enumerate(range(0, n, batch)):
      chunk = np.asarray(images[start:start + batch])
      if len(chunk) < batch:
        chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
      out.append(augmented(state.params, state.batch_stats, chunk, pass_key(k, first_batch + b)))
    passes.append(probabilities(np.concatenate(out)[:n], task.head))
  return as_logits(blend(probabilities(plain_logits, task.head), np.stack(passes), settings.beta, settings.use_max,
                         task.head),
                   task.head)
