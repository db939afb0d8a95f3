"""What every stage of `--mode auto` reads (`Context`): the base config, the space, the study, the budget, and
the one way a stage trains, `Context.round`: a population round (`fpclass.auto.population`) run as one plan by
the training loop, which `fpclass.auto.search` hands in, so the stages below it import neither (the import
chain stays short)."""
import dataclasses
import math
import pathlib

import optuna

from fpclass.auto.budget import Budget
from fpclass.auto.rungs import Costs
from fpclass.auto.schedulers.scheduler import Scheduler
from fpclass.config.run import RunSettings
from fpclass.config.search import AutoSettings
from fpclass.train.plan import Variant, apply_changes
from fpclass.train.records import StopOnSignals
from fpclass.train.shared_work import SharedWork

TAIL = 0.02           # the share of the budget kept for the report and the final workdir
# The share of a configuration's epochs after which a member the deadline cuts is kept, at its selected checkpoint,
# as an early-stopped one is; the final stage's shortest piece trains this share: a member trained half as long as
# its peers still adds to an equal-weight mix of fold models, a shorter one may not.
SHORTEST = 0.5
CONFIRM_SPLIT = 1000  # the confirmation's folds are cut with data.split_seed + this


def kept_after(epochs: int) -> int:
  """The epochs after which a member of `epochs` that the deadline cuts is kept (`SHORTEST` of them)."""
  return max(1, math.ceil(SHORTEST * epochs))


@dataclasses.dataclass(frozen=True)
class Entry:
  """A configuration of a round: its variant name (its folder) and config changes."""
  name: str
  changes: dict


@dataclasses.dataclass
class Context:
  """What every stage reads: the base config (with auto.folds applied), the space, the study and the budget."""
  base: object
  settings: AutoSettings
  metric: str
  higher: bool
  folds: int
  epochs: int
  own_split: bool                  # the source has its own validation split: one holdout, repeated with seeds
  dims: list
  candidates: list
  study: optuna.Study
  budget: Budget
  workdir: pathlib.Path
  shared: SharedWork
  train_round: object              # fpclass.auto.search's: (base, entries, folds, seeds, epochs, folder, stop)
  scheduler: Scheduler             # which rungs a bracket has, and who goes on (config.auto.scheduler)
  run: RunSettings = None          # the base config's typed sections, parsed once as a plan's variant
  data_folds: int = 0              # the data's folds; `folds` may be fewer, its first ones (`measure.fit_folds`)

  def __post_init__(self):
    if self.run is None and self.base is not None:
      self.run = Variant('base', {}, self.base).settings
    self.data_folds = self.data_folds or self.folds

  def better(self, a: float, b: float) -> bool:
    return (a > b) if self.higher else (a < b)

  def splits(self, count: int) -> tuple:
    return (-1,) if self.own_split else tuple(range(count))

  def splits_text(self) -> str:
    if self.own_split:
      return "the source's validation split"
    return f'{self.folds} folds' if self.folds == self.data_folds else f'{self.folds} of {self.data_folds} folds'

  def stop(self, reserve: float) -> StopOnSignals:
    return StopOnSignals(deadline=self.budget.deadline(reserve))

  def round(self, base, entries: list[Entry], folds: tuple, seeds: tuple, epochs: int, folder: pathlib.Path,
            stop: StopOnSignals, keep_ended: bool = False, keep_cut_from: int = 0) -> tuple[dict, bool]:
    """({name: Outcome} of the entries the round reached, whether the deadline cut it): one plan, isolated;
    `keep_ended`: an entry the deadline cut is scored on its fold models that had ended, where any had;
    `keep_cut_from`: and on those it cut after at least that many epochs (`fpclass.train.loop.finish_ended`)."""
    return self.train_round(self, base, entries, folds, seeds, epochs, folder, stop, keep_ended=keep_ended,
                            keep_cut_from=keep_cut_from)

  def confirm_seconds(self, costs: Costs, finalists: int, folds: int = 0) -> float:
    """The search's reserve for the confirmation: what confirming `finalists` configurations (and the config as
    given) on `folds` (default: the trials') would cost, capped by its share; 0 when not even one configuration
    fits the share (the confirmation then runs only if the search leaves it the time)."""
    if not self.settings.confirm_seeds:
      return 0.0
    share, epochs = self.settings.confirm_share * self.budget.seconds, self.epochs * len(self.settings.confirm_seeds)
    folds = folds or self.folds
    if costs.of(1, folds, epochs) > share:
      return 0.0
    return min(costs.of(finalists + 1, folds, epochs), share)

  def fresh_folds(self):
    """The base config with the confirmation's split seed: folds no choice was made on."""
    split_seed = self.run.data.split.split_seed + CONFIRM_SPLIT
    return apply_changes(self.base, {'data.split_seed': split_seed}, 'the confirmation')

  def trials(self) -> dict:
    return {t.number: t for t in self.study.get_trials(deepcopy=False)}
