"""The confirmation of `--mode auto` (`fpclass.auto.search`): the finalists, and the config as given, on folds
and seeds that chose nothing, with paired intervals against the choice."""
import json
import time

import pandas as pd

from fpclass.analysis import metric_registry, sweep_report
from fpclass.auto import study as study_lib
from fpclass.auto.context import CONFIRM_SPLIT, TAIL, Context, Entry
from fpclass.auto.ranking import best_per_configuration
from fpclass.auto.study import changes_of
from fpclass.errors import UserInputError
from fpclass.models.heads import head_of
from fpclass.runtime import tracking
from fpclass.train import sidecar
from fpclass.train import workdir_layout as layout
from fpclass.train.plan import EXPERIMENT_FILE, apply_changes


def finalists(ctx: Context) -> list:
  """The best trials, one per configuration, and the config as given (the first trial) when it is not one."""
  out = best_per_configuration(ctx)
  best = out[:ctx.settings.finalists]
  given = sidecar.config_as_json(ctx.base)
  baseline = next((t for t in out if sidecar.config_as_json(apply_changes(ctx.base, changes_of(t), 'a trial'))
                   == given), None)
  if baseline is not None and baseline not in best:
    best.append(baseline)
  return best


def confirm(ctx: Context):
  """(member rows, paired differences, note, chosen): the finalists on folds cut with another split seed x the
  confirm seeds: data no choice was made on, so the differences against the choice are not biased towards it."""
  chosen_few = finalists(ctx)
  if not chosen_few:
    raise UserInputError(f'config.auto.time_budget={ctx.settings.time_budget!r}: no trial finished within it; give '
                         'it more time (the log shows what a configuration\'s set-up and a member-epoch cost), or '
                         'fewer folds (config.auto.folds)')
  best = chosen_few[0]
  chosen = dict(name=best.user_attrs[study_lib.FOLDER], trial=best.number, changes=changes_of(best),
                candidate=best.user_attrs.get(study_lib.CANDIDATE),
                value=ranked_value(best), rung=max(best.intermediate_values, default=0))
  seeds = tuple(ctx.settings.confirm_seeds)
  if not seeds:
    return None, None, 'skipped (config.auto.confirm_seeds=())', chosen
  costs = ctx.budget.costs
  # The search reserved at most the confirmation's share; what the search could not use is the confirmation's too.
  room = ctx.budget.left() - TAIL * ctx.budget.seconds
  folds = ctx.folds
  while len(chosen_few) > 1 and costs.of(len(chosen_few), folds, ctx.epochs * len(seeds)) > room:
    chosen_few = chosen_few[:-1]   # the config as given, then the weaker finalists, go first
  if costs.of(1, folds, ctx.epochs * len(seeds)) > max(room, 0.0) and not ctx.budget.confirm_started:
    return None, None, (f'skipped: {costs.of(1, folds, ctx.epochs * len(seeds)):.0f}s for one configuration, '
                        f'{max(room, 0):.0f}s left for it'), chosen
  ctx.budget.confirm_started = True
  ctx.budget.save()
  confirm_base = ctx.fresh_folds()
  entries = [Entry(t.user_attrs[study_lib.FOLDER], changes_of(t)) for t in chosen_few]
  start, note = time.perf_counter(), (f'{len(entries)} configurations x {ctx.splits_text()} x seeds '
                                      f'{list(seeds)} ' + (
                                          'on the source\'s own validation images, the ones that chose: fresh seeds, '
                                          'not fresh images, so the differences are optimistic for the choice'
                                          if ctx.own_split else
                                          f'on folds cut with data.split_seed + {CONFIRM_SPLIT}'))
  with ctx.stop(TAIL * ctx.budget.seconds) as stop, tracking.current().nested('confirm'):
    outcomes, cut = ctx.round(confirm_base, entries, ctx.splits(folds), seeds, ctx.epochs, ctx.workdir / layout.CONFIRM,
                              stop)
  if cut:
    note += '; cut by the budget'
  ctx.budget.add_stage('confirm', time.perf_counter() - start)
  runs = [e.name for e in entries if e.name in outcomes and not outcomes[e.name].error]
  rows = []
  for name in runs:
    rows += json.loads((ctx.workdir / layout.CONFIRM / name / EXPERIMENT_FILE).read_text())['rows']
  models = pd.DataFrame(rows)
  if models.empty or chosen['name'] not in runs:
    return (None if models.empty else models), None, note + '; the choice did not finish', chosen
  ratio = 0.0 if ctx.own_split or folds < 2 else 1.0 / (ctx.data_folds - 1)   # held out : trained on, per model
  experiments = [dict(name=n, test_train_ratio=ratio, task=metric_registry.task_of_head(head_of(ctx.run)))
                 for n in runs]
  differences = sweep_report.paired_differences(models, experiments, chosen['name'])
  chosen['confirmed'] = float(models.loc[models['experiment'] == chosen['name'], ctx.metric].mean())
  return models, differences, note, chosen


def ranked_value(trial) -> float:
  level = max(trial.intermediate_values, default=None)
  return float(trial.intermediate_values[level]) if level is not None else float(trial.value)
