"""The members of a training job: each one model trained on its split with its seed. `--mode train` has
one member; `--mode sweep` has one per split x seed of each variant, grouped by optimizer and chunked by
memory (`fpclass.train.memory_plan`)."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.analysis.metric_registry import monitor_mode
from fpclass.config.training import TrainSettings
from fpclass.train import optim
from fpclass.train.loop_state import LoopState, improves


@dataclasses.dataclass(frozen=True)
class Member:
  """One model: its split (fold k, or -1 for the holdout or the source's own validation split), its seed,
  and its example indices into the job's train and val arrays (`fpclass.train.axis.TrainData`)."""
  split: int
  seed: int
  train_index: np.ndarray
  val_index: np.ndarray

  @property
  def name(self) -> str:
    return f'{split_name(self.split)}-seed{self.seed}'


def split_name(split: int) -> str:
  return 'holdout' if split < 0 else f'fold{split}'


@dataclasses.dataclass
class MemberResult:
  """A trained member: its loop state (history, best epoch, stop reason), the checkpoint selected by
  config.train.select_checkpoint, its validation logits there, and host copies of its last train state and
  of its best variables (params, batch_stats) as evaluated (averaged, under config.train.ema_decay), or None
  when no epoch improved."""
  member: Member
  loop: LoopState
  checkpoint: str          # best | last
  epoch: int
  val_logits: np.ndarray
  last: object = None
  best: object = None
  train_seconds: float = 0.0   # its share of the training time (an epoch's wall time over the members in it)

  def monitor_value(self, monitor: str):
    """The monitored metric at the selected checkpoint (what choosing among seeds compares)."""
    if self.checkpoint == 'best':
      return self.loop.best_value
    return self.loop.history[-1][monitor] if self.loop.history else None


def better_result(a: MemberResult | None, b: MemberResult, monitor: str) -> bool:
  """Whether b beats a on the monitored metric at their selected checkpoints (a None loses)."""
  if a is None:
    return True
  value = b.monitor_value(monitor)
  return value is not None and not np.isnan(value) and improves(value, a.monitor_value(monitor),
                                                                monitor_mode(monitor))


def batch_size_for(train: TrainSettings, n_train: int) -> int:
  return min(train.batch_size, n_train)


def optimizer_groups(train: TrainSettings, members) -> list[list[Member]]:
  """Members that can share one optimizer: the same batch size and the same learning rate at every step.

  The optimizer depends on a member's split only through steps per epoch in the schedule, and in the cycles
  of gradient accumulation (config.train.accumulate_steps, aligned to epochs); with the usual constant
  schedule and no accumulation every member shares one group even when splits differ in size by one example."""
  batches = {len(m.train_index): batch_size_for(train, len(m.train_index)) for m in members}
  steps = {n: math.ceil(n / b) for n, b in batches.items()}
  horizon = (train.epochs + train.finetune_epochs) * max(steps.values())
  learning_rates = {s: np.asarray(jax.vmap(optim.learning_rate_schedule(train, s))(jnp.arange(horizon)),
                                  np.float32).tobytes() for s in set(steps.values())}
  accumulating = train.accumulate_steps > 1
  groups: dict = {}
  for m in members:
    n = len(m.train_index)
    groups.setdefault((batches[n], learning_rates[steps[n]], steps[n] if accumulating else None), []).append(m)
  return list(groups.values())


def balanced_chunks(items: list, chunk: int) -> list[list]:
  """Splits into ceil(n / chunk) chunks of near-equal size, so at most two chunk shapes get compiled."""
  count = max(1, math.ceil(len(items) / chunk))
  bounds = np.linspace(0, len(items), count + 1).round().astype(int)
  return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
