"""Successive halving, `config.auto.scheduler='successive_halving'` (the default): a bracket starts `n`
configurations on the cheapest rung (few epochs on one fold); each rung keeps the best 1/eta of the one below it
and trains them with eta times the epochs (and more folds), so only the survivors reach the top rung: the config's
epochs on every one of the k folds (Jamieson and Talwalkar, 2016; Li et al., Hyperband, 2018).

`plan_bracket` sizes the bracket to the seconds left: the most rungs and starting configurations whose cost fits,
then the lower rungs' epochs raised into what is left. When even one configuration at the top rung does not fit,
the top rung itself is made cheaper (fewer folds, then fewer epochs) and the note says what the budget could
afford.
"""
import dataclasses

from fpclass.auto.rungs import Bracket, Costs, Rung
from fpclass.auto.schedulers.scheduler import Scheduler

FOLDS_FIRST_EPOCHS = 2   # a middle rung goes wide only when the bottom's epochs are at least this: one epoch ranks
                         # the warm-up (MNIST at 9 epochs: Spearman 0.75 on 3 folds x 1 epoch, 0.82 on 1 fold x 3)


class SuccessiveHalving(Scheduler):
  name = 'successive_halving'

  def bracket(self, costs: Costs, seconds: float, folds: int, epochs: int, most: int = 0,
              index: int = 0, warm: tuple = ()) -> Bracket | None:
    return plan_bracket(costs, seconds, folds, epochs, self.settings.eta, most,
                        self.settings.rung_shape == 'folds_first', warm)

  def describe(self) -> str:
    return f'successive halving (eta {self.settings.eta})'


def rungs_for(start: int, levels: int, folds: int, epochs: int, eta: int, folds_first: bool = True,
              warm: tuple = ()) -> tuple:
  """`levels` rungs from `start` configurations: rung r (0 = the cheapest) trains the best floor(start / eta^r)
  of them (at least 1) for epochs / eta^(top - r) epochs on folds / eta^(top - r) folds (at least 1 of each);
  the top rung has every fold and the config's epochs. Floor, as successive halving keeps the best 1/eta: a
  configuration more at the bottom then costs one bottom-rung run, so a bracket fills its time finely.
  `folds_first` (config.auto.rung_shape='folds_first', the default): a rung between the bottom and the top spends
  those member-epochs on more folds at the bottom rung's epochs, up to every fold, when those are at least
  `FOLDS_FIRST_EPOCHS` (measured in docs/auto.md: at the same cost, 3 folds at E/9 ranked the moves more like
  their top values than 1 fold at E/3 where E/9 was 2 or 3 epochs, and less where it was 1). The bottom rung's
  configurations that `warm` marks (the first `start`) set up without compiling (`Rung.warm`)."""
  top = levels - 1
  out = []
  for r in range(levels):
    shrink = eta ** (top - r)
    f, e = max(1, round(folds / shrink)), max(1, round(epochs / shrink))
    floor = max(1, round(epochs / eta ** top))   # the bottom rung's epochs
    if folds_first and 0 < r < top and floor >= FOLDS_FIRST_EPOCHS:
      wide = min(folds, max(f, (f * e) // floor))
      f, e = wide, max(floor, round(f * e / wide))
    out.append(Rung(max(1, start // eta ** r), f, e, sum(map(bool, warm[:start])) if r == 0 else 0))
  return tuple(out)


def plan_bracket(costs: Costs, seconds: float, folds: int, epochs: int, eta: int, most: int = 0,
                 folds_first: bool = True, warm: tuple = ()) -> Bracket | None:
  """The bracket that fits `seconds`: the most rungs (up to 3), then the most starting configurations (at most
  `most` when given), that it pays to start; a single configuration on a cheaper top rung when nothing else
  fits; None when not even one epoch on one fold does."""
  best = None
  for levels in (3, 2, 1):
    fewest = eta ** (levels - 1)   # a bracket that promotes nobody is a waste of its lower rungs
    start = fewest
    if costs.of(1, 1, 1) <= 0 or rungs_for(start, levels, folds, epochs, eta, folds_first, warm)[0].configs < fewest:
      continue
    if Bracket(rungs_for(start, levels, folds, epochs, eta, folds_first, warm)).cost(costs) > seconds:
      continue
    while (not most or start + 1 <= most) and \
        Bracket(rungs_for(start + 1, levels, folds, epochs, eta, folds_first, warm)).cost(costs) <= seconds:
      start += 1
    if most and start > most:
      continue
    best = Bracket(rungs_for(start, levels, folds, epochs, eta, folds_first, warm))
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
