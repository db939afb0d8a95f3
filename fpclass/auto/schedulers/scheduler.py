"""The interface every scheduler of `--mode auto`'s search implements: which rungs the next bracket has within the
seconds it may spend, and which trials of a rung train on the next one.

The search (`fpclass.auto.search`) owns the rest: asking the study for trials, training each rung as one plan,
the deadlines, resuming a bracket after a relaunch, and the one-standard-error rule that keeps the config as
given among the promoted. A scheduler only decides, from its settings and what it is shown; it keeps no state
between calls, so a relaunch that builds it again decides the same. Optuna's `BaseSampler` and `BasePruner` are
the model, with one difference: the rungs are planned before any trains, so their cost is held against the
budget up front.
"""
from typing import ClassVar

from fpclass.auto.rungs import Bracket, Costs, Rung
from fpclass.config.search import AutoSettings


class Scheduler:
  """One way to spend the search's seconds. `name` is what config.auto.scheduler says to choose it."""
  name: ClassVar[str] = ''

  def __init__(self, settings: AutoSettings):
    self.settings = settings

  def bracket(self, costs: Costs, seconds: float, folds: int, epochs: int, most: int = 0,
              index: int = 0, warm: tuple = ()) -> Bracket | None:
    """The next bracket's rungs, cheapest first, that cost at most `seconds` by `costs`: its top rung trains on
    `folds` folds for `epochs` epochs, or less with a note saying what the seconds afford; at most `most`
    configurations start it when `most` is given. `index` counts the brackets planned before this one (a
    scheduler may vary its brackets, as Hyperband does). `warm`: whether each of the configurations that start
    it, in the order they start, sets up without compiling (`Rung.warm`; beyond it, each compiles). None:
    nothing fits, and the search stops."""
    raise NotImplementedError

  def promoted(self, ranked: list, values: dict, rungs: tuple[Rung, ...], level: int) -> list:
    """The trials of rung `level` that train on rung `level + 1`, best first, from `ranked` (the rung's trials
    that have a value, best first; `values` maps each to its value). By default the best as many as the next
    rung has configurations."""
    return list(ranked[:rungs[level + 1].configs])

  def describe(self) -> str:
    """How the report names it: 'successive halving (eta 3)'."""
    return self.name
