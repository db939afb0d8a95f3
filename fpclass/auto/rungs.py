"""The rungs of `--mode auto`'s search and what they cost: the shape every scheduler plans in
(`fpclass.auto.schedulers`).

A rung trains some configurations on some folds for some epochs; a bracket is a ladder of rungs, the cheapest
first, whose top rung is the config's epochs on every fold. Epochs and folds are the fidelity, never a searched
parameter. Each rung is one plan through the one training loop, so a rung's cost is what a sweep of its size
costs: a set-up per configuration (data placed, programs compiled), a share per member, and its member-epochs
(`Costs`, fitted on what the search measured).
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Costs:
  """Seconds of a new configuration's set-up in a plan (data placed, programs compiled, its records written), of
  a member's own (its first state, its fold workdir and predictions saved) and of one member-epoch; and of the
  set-up, what compiling its programs takes (`compile`): a configuration the process has trained already (at
  any epochs: the schedule's lengths are the programs' arguments) sets up for `warm_setup`. On a small set the
  first two dominate: a run of the seed CNN on 24x16 footprints costs about 2 s whether it trains 1 epoch or 6
  (docs/auto.md)."""
  setup: float
  member: float
  member_epoch: float
  compile: float = 0.0

  def of(self, configs: int, folds: int, epochs: int, warm: int = 0) -> float:
    """`configs` configurations on `folds` folds for `epochs` epochs, `warm` of them set up without compiling."""
    return (configs * (self.setup + folds * (self.member + epochs * self.member_epoch))
            - min(warm, configs) * self.compile)

  @property
  def warm_setup(self) -> float:
    return max(0.0, self.setup - self.compile)

  @classmethod
  def fitted(cls, runs: list, member_epoch: float) -> 'Costs':
    """From measured variant runs, each (members, member-epochs, wall seconds[, of them compiling]) and the
    steady `member_epoch` measured in an epoch: what each run took beyond its member-epochs and its compiling,
    split into a set-up and a per-member part by a least-squares line over the member counts (where they
    differ; else a quarter of it per member); a new configuration's set-up adds the mean compiling of the runs
    that compiled (those that reused a configuration's programs compiled nothing, and would make it look free)."""
    compiles = [float(run[3]) if len(run) > 3 else 0.0 for run in runs]
    rest = [(float(m), max(0.0, w - e * member_epoch - c)) for (m, e, w, *_), c in zip(runs, compiles)]
    compiled = [c for c in compiles if c > 0]
    compile = sum(compiled) / len(compiled) if compiled else 0.0
    warm = cls._split(rest, member_epoch)
    return cls(warm.setup + compile, warm.member, member_epoch, compile)

  @classmethod
  def _split(cls, rest: list, member_epoch: float) -> 'Costs':
    """The set-up and per-member parts of (members, seconds beyond the member-epochs) pairs."""
    counts = {m for m, _ in rest}
    if len(counts) > 1:
      mean_m = sum(m for m, _ in rest) / len(rest)
      mean_r = sum(r for _, r in rest) / len(rest)
      slope = sum((m - mean_m) * (r - mean_r) for m, r in rest) / sum((m - mean_m) ** 2 for m, _ in rest)
      slope = max(0.0, slope)
      return cls(max(0.0, mean_r - slope * mean_m), slope, member_epoch)
    per_run = sorted(r / m for m, r in rest)[len(rest) // 2]   # the median, robust to a slow outlier
    return cls(0.75 * per_run, 0.25 * per_run, member_epoch)


@dataclasses.dataclass(frozen=True)
class Rung:
  """`configs` configurations on `folds` folds for `epochs` epochs; `warm` of them share programs the process has
  compiled (the first bracket's bottom rung: the config as given, which the set-up measurement trained, and the
  first batch's moves of what the programs take as arguments), so they set up for `Costs.warm_setup`."""
  configs: int
  folds: int
  epochs: int
  warm: int = 0

  def cost(self, costs: Costs) -> float:
    return costs.of(self.configs, self.folds, self.epochs, self.warm)


@dataclasses.dataclass(frozen=True)
class Bracket:
  rungs: tuple
  note: str = ''

  def cost(self, costs: Costs) -> float:
    return sum(r.cost(costs) for r in self.rungs)
