"""Before `--mode auto`'s search: what a configuration costs, measured on the config as given (one fold, at most
`EPOCHS` epochs, compiled afresh: `measure`), and how many folds a trial can afford at that price (`fit_folds`). The
measurement's value is kept in the study, for the search to adopt when no bracket fits (`fpclass.auto.search`)."""
import math
import pathlib

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass.auto import portfolio
from fpclass.auto import study as study_lib
from fpclass.auto.context import TAIL, Context, Entry
from fpclass.auto.rungs import Costs
from fpclass.errors import UserInputError
from fpclass.runtime import process
from fpclass.train import workdir_layout as layout
from fpclass.train.members import split_name

ENTRY = 'baseline'   # the measurement round's one variant: the config as given
FIRST_TRIALS = 1 + len(portfolio.PORTFOLIO)   # the first batch a search should hold: the config and the portfolio
EPOCHS = 2   # the measurement trains the config as given this many epochs (its epochs, if fewer), on one fold


def fit_folds(ctx: Context, costs: Costs, warm: tuple = ()) -> list[str]:
  """Fewer folds a trial (down to 3) when at k folds the budget affords no search that holds the first batch
  (`FIRST_TRIALS`: a bracket of two rungs starting the config as given and the portfolio): the most folds whose
  search does, else the folds whose search starts the most trials (the more folds on a tie). A search among
  several configurations on 3 folds beats one configuration, or the config and two moves, on 5 (2026-11-28, on
  Fashion-MNIST: at 4 folds three trials fitted, and the hand sweep's winner, the portfolio's fourth move, was not
  among them). The trials then train the first of the data's k folds, not a split of fewer folds: each model
  still sees (k-1)/k of the images (a model of a 3-fold split sees 2/3, and on MNIST three such fold models
  scored 0.976 on the test images where one model on 4/5 scored 0.986, 2026-11-28), and the final stage can
  complete the k folds. Decided once and kept in the study (`study_lib.FOLDS`), so a relaunch, or another
  launch sharing the study, trains the same splits; a `config.auto.folds` given is kept as given. `warm`: the
  first trials' set-ups, as the first bracket prices them (`Scheduler.bracket`)."""
  folds = ctx.study.user_attrs.get(study_lib.FOLDS)
  if folds is None:
    folds = ctx.folds
    if not ctx.own_split and not ctx.settings.folds:
      seconds = ctx.budget.left() - TAIL * ctx.budget.seconds
      starts = {}   # folds -> the trials a two-rung (or deeper) bracket starts
      for k in range(ctx.folds, min(3, ctx.folds) - 1, -1):
        planned = ctx.scheduler.bracket(costs, seconds - ctx.confirm_seconds(costs, ctx.settings.finalists, k), k,
                                        ctx.epochs, warm=warm)
        if planned is not None and len(planned.rungs) >= 2:
          starts[k] = planned.rungs[0].configs
      holding = [k for k, start in starts.items() if start >= FIRST_TRIALS]
      if holding:
        folds = max(holding)
      elif starts:
        folds = max(starts, key=lambda k: (starts[k], k))
    ctx.study.set_user_attr(study_lib.FOLDS, folds)
  if folds == ctx.folds:
    return []
  note = f'the budget affords a search on {folds} of the {ctx.folds} folds'
  tqdm.write(f'auto: {note}')
  ctx.folds = folds   # the first `folds` of the data's split: each model still trains on (k-1)/k of the images
  return [note]


def measured_folder(workdir: pathlib.Path) -> pathlib.Path:
  """Where the measurement round trains its one variant, the config as given (auto adopts it as the search's
  one trial when no bracket fits)."""
  return workdir / layout.ROUNDS / layout.MEASURE / ENTRY


def measure(ctx: Context) -> Costs:
  """The costs, from the config as given on one fold for `EPOCHS` epochs: its wall time, and its epochs' after the first."""
  epochs = min(EPOCHS, ctx.epochs)
  folder = measured_folder(ctx.workdir).parent
  # Compiled afresh, as the trials' programs will be: the config as given is the one most likely to be in the
  # persistent compilation cache already, which would make a configuration's set-up look free.
  with process.compilation_cache_off(), ctx.stop(TAIL * ctx.budget.seconds) as stop:
    outcomes, _ = ctx.round(ctx.base, [Entry(ENTRY, {})], ctx.splits(1), (int(ctx.base.seed),), epochs,
                            folder, stop)
  outcome = outcomes.get(ENTRY)
  if outcome is None:
    raise UserInputError(f'auto: config.auto.time_budget={ctx.settings.time_budget!r} ran out before the config as '
                         f'given trained {epochs} epoch{"s" * (epochs != 1)} on one fold; give it more time')
  if outcome.error:
    raise UserInputError(f'auto: the config as given cannot train: {outcome.error}')
  if math.isfinite(outcome.value):
    ctx.study.set_user_attr(study_lib.MEASURED, float(outcome.value))
  rows = pd.read_csv(folder / ENTRY / split_name(ctx.splits(1)[0]) / 'metrics.csv')
  per_epoch = float(np.median(rows['seconds'][1:])) if len(rows) > 1 else outcome.seconds / 2
  measures = [(outcome.members, outcome.member_epochs, outcome.seconds, outcome.compile_seconds)]
  costs = Costs.fitted(measures, per_epoch)
  ctx.budget.record_costs(costs, measures)
  tqdm.write(f'auto: a configuration\'s set-up {costs.setup:.1f}s ({costs.compile:.1f}s compiling), a member '
             f'{costs.member:.1f}s, a member-epoch {per_epoch:.2f}s')
  return costs
