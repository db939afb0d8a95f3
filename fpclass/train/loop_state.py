"""Model selection and each member's loop state: the one rule for "did this epoch improve", early
stopping and phases, kept per member by the epoch loop (`fpclass.train.loop`). The state travels in every
checkpoint as JSON, so a killed run resumes with its history, best epoch and patience intact.
"""
import dataclasses
import math

from fpclass.analysis.metric_registry import monitor_mode
from fpclass.config.training import TrainSettings


def improves(value, best, mode: str, min_delta: float = 0.0) -> bool:
  """Whether a finite monitored value beats the best so far (None: nothing to beat)."""
  if best is None:
    return True
  return value < best - min_delta if mode == 'min' else value > best + min_delta


@dataclasses.dataclass(frozen=True)
class SelectionRules:
  """What "better" means for a run: the monitored metric, its direction, the margin, and the patience."""
  monitor: str = 'val_loss'
  min_delta: float = 0.0
  patience: int = 0            # 0: no early stopping

  @classmethod
  def of(cls, train: TrainSettings) -> 'SelectionRules':
    return cls(train.monitor, train.min_delta, train.early_stopping_patience)

  @property
  def mode(self) -> str:
    return monitor_mode(self.monitor)

  def improves(self, value, best) -> bool:
    return value is not None and not math.isnan(value) and improves(value, best, self.mode, self.min_delta)


@dataclasses.dataclass
class LoopState:
  """Where a run stands after its last completed epoch."""
  epoch: int = 0
  best_value: float | None = None
  best_epoch: int | None = None
  wait: int = 0                # epochs since the monitor last improved
  history: list = dataclasses.field(default_factory=list)   # one metrics row per epoch (metrics.csv)
  finished: bool = False
  stop_reason: str = ''        # 'epochs' | 'early_stopping'
  phase: int = 0               # 1: the fine-tuning phase
  phase_start: int = 0         # the epoch the current phase started after
  phase_over: bool = False     # phase 0 ended and a fine-tuning phase follows

  def record(self, row: dict, rules: SelectionRules, phase_end: int, last_phase: bool = True) -> tuple[bool, bool]:
    """Appends an epoch's metrics row and updates best epoch, patience and the stop decision; returns
    (improved, stop). `phase_end` is the epoch the current phase ends at; a phase other than the last ends
    with `phase_over` instead of `finished`."""
    epoch = int(row['epoch'])
    self.history.append(row)
    self.epoch = epoch
    value = row[rules.monitor]
    improved = rules.improves(value, self.best_value)
    if improved:
      self.best_value, self.best_epoch, self.wait = float(value), epoch, 0
    else:
      self.wait += 1
    stop = rules.patience > 0 and self.wait >= rules.patience
    if stop or epoch == phase_end:
      if last_phase:
        self.finished, self.stop_reason = True, 'early_stopping' if stop else 'epochs'
      else:
        self.phase_over = True
    return improved, stop

  def selected(self, select_checkpoint: str) -> tuple[str, int]:
    """('best' or 'last', its epoch): the checkpoint config.train.select_checkpoint picks among the completed
    epochs; 'last' where no epoch improved."""
    if select_checkpoint == 'best' and self.best_epoch is not None:
      return 'best', int(self.best_epoch)
    return 'last', int(self.epoch)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, values: dict | None) -> 'LoopState':
    """The state stored in a checkpoint; keys this version does not know are ignored."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in known})


def phase_end(loop: LoopState, train: TrainSettings) -> int:
  """The epoch at which `loop`'s current phase ends."""
  if loop.phase == 0:
    return int(train.epochs)
  return loop.phase_start + int(train.finetune_epochs)


def total_epochs(train: TrainSettings) -> int:
  return int(train.epochs) + int(train.finetune_epochs)


def shown_total(loop: LoopState, train: TrainSettings) -> int:
  """The epoch count a solo run shows: its phase's end, plus the fine-tuning epochs still to come."""
  end = phase_end(loop, train)
  two_phases = int(train.finetune_epochs) > 0
  return end if loop.phase == 1 or not two_phases else end + int(train.finetune_epochs)


def epoch_row(epoch: int, train_totals: dict, val_metrics: dict, learning_rate: float, phase: int,
              seconds: float) -> dict:
  """One row of metrics.csv: the epoch's training loss and accuracy (from the summed step totals), the
  validation metrics prefixed with val_, the learning rate of its last step, and its wall time; with unlabelled
  images, the share of them whose weak view passed the threshold (train_pseudo_rate)."""
  semi = {'train_pseudo_rate': train_totals['pseudo_labelled'] / train_totals['unlabelled']} \
      if train_totals.get('unlabelled') else {}
  return dict(epoch=epoch, train_loss=train_totals['loss_sum'] / train_totals['count'],
              train_accuracy=train_totals['correct'] / train_totals['count'], **semi,
              **{f'val_{k}': v for k, v in val_metrics.items()}, learning_rate=learning_rate, phase=phase,
              seconds=seconds)
