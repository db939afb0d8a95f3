"""Successive halving for `--mode auto`: which rungs a bracket has, and what they cost.

A bracket starts `n` configurations on the cheapest rung (few epochs on one fold); each rung keeps the best
1/eta of the one below it and trains them with eta times the epochs (and more folds), so only the survivors
reach the top rung: the config's epochs on every one of the k folds. Epochs and folds are the fidelity, never a
searched parameter (Li et al., Hyperband, 2018; Jamieson and Talwalkar, 2016). Each rung is one plan through the
one training loop, so a rung's cost is what a sweep of its size costs: a set-up per configuration (data placed,
programs compiled), a share per member, and its member-epochs.

`plan_bracket` sizes the bracket to the seconds left: the most rungs and starting configurations whose cost fits,
then the lower rungs' epochs raised into what is left.
When even one configuration at the top rung does not fit, the top rung itself is made cheaper (fewer folds, then
fewer epochs) and the note says what the budget could afford.
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

  def of(self, configs: int, folds: int, epochs: int) -> float:
    return configs * (self.setup + folds * (self.member + epochs * self.member_epoch))

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
  configs: int
  folds: int
  epochs: int

  def cost(self, costs: Costs) -> float:
    return costs.of(self.configs, self.folds, self.epochs)


@dataclasses.dataclass(frozen=True)
class Bracket:
  rungs: tuple
  note: str = ''

  def cost(self, costs: Costs) -> float:
    return sum(r.cost(costs) for r in self.rungs)


def rungs_for(start: int, levels: int, folds: int, epochs: int, eta: int) -> tuple:
  """`levels` rungs from `start` configurations: rung r (0 = the cheapest) trains the best floor(start / eta^r)
  of them (at least 1) for epochs / eta^(top - r) epochs on folds / eta^(top - r) folds (at least 1 of each);
  the top rung has every fold and the config's epochs. Floor, as successive halving keeps the best 1/eta: a
  configuration more at the bottom then costs one bottom-rung run, so a bracket fills its time finely."""
  top = levels - 1
  out = []
  for r in range(levels):
    shrink = eta ** (top - r)
    out.append(Rung(max(1, start // eta ** r), max(1, round(folds / shrink)), max(1, round(epochs / shrink))))
  return tuple(out)


def plan_bracket(costs: Costs, seconds: float, folds: int, epochs: int, eta: int, most: int = 0) -> Bracket | None:
  """The bracket that fits `seconds`: the most rungs (up to 3), then the most starting configurations (at most
  `most` when given), that it pays to start; a single configuration on a cheaper top rung when nothing else
  fits; None when not even one epoch on one fold does."""
  best = None
  for levels in (3, 2, 1):
    fewest = eta ** (levels - 1)   # a bracket that promotes nobody is a waste of its lower rungs
    start = fewest
    if costs.of(1, 1, 1) <= 0 or rungs_for(start, levels, folds, epochs, eta)[0].configs < fewest:
      continue
    if Bracket(rungs_for(start, levels, folds, epochs, eta)).cost(costs) > seconds:
      continue
    while (not most or start + 1 <= most) and \
        Bracket(rungs_for(start + 1, levels, folds, epochs, eta)).cost(costs) <= seconds:
      start += 1
    if most and start > most:
      continue
    best = Bracket(rungs_for(start, levels, folds, epochs, eta))
    break
  if best is not None:
    return _stretched(best, costs, seconds)
  return _cheapest(costs, seconds, folds, epochs)


def _stretched(bracket: Bracket, costs: Costs, seconds: float) -> Bracket:
  """The lower rungs' epochs raised, the bottom first and each at most to the next rung's, while the bracket
  fits: the seconds too few for one more configuration buy the cheap rungs a surer ranking instead of idling."""
  rungs = list(bracket.rungs)
  for r in range(len(rungs) - 1):
    while rungs[r].epochs < rungs[r + 1].epochs:
      longer = [*rungs[:r], dataclasses.replace(rungs[r], epochs=rungs[r].epochs + 1), *rungs[r + 1:]]
      if Bracket(tuple(longer)).cost(costs) > seconds:
        break
      rungs = longer
  return Bracket(tuple(rungs), bracket.note)


def _cheapest(costs: Costs, seconds: float, folds: int, epochs: int) -> Bracket | None:
  """One configuration on the most folds, then the most epochs, that fit."""
  for f in range(folds, 0, -1):
    spare = seconds - costs.setup - f * costs.member
    fitting = int(spare // (f * costs.member_epoch)) if costs.member_epoch > 0 else (epochs if spare > 0 else 0)
    if fitting >= 1 and (f == 1 or fitting >= epochs):
      e = min(epochs, fitting)
      return Bracket((Rung(1, f, e),), f'the budget affords one configuration on {f} of {folds} folds for {e} of '
                                         f'{epochs} epochs')
  return None
