"""Running one bracket of `--mode auto`'s search (`fpclass.auto.search`): its trials asked from the study (the first
batch seeded with the config as given and its neighbours), each rung trained as one round, values reported and
trials told, the scheduler's promotions (with the one-standard-error rule that keeps the config as given), a
rung's start counted so that a trial whose process keeps dying fails, and the slack top rung that leaves a model
when no trial reached the top. Everything a relaunch needs is saved in the bracket (`Budget.brackets`)."""
import dataclasses
import math
import pathlib

import optuna
from tqdm.auto import tqdm

from fpclass.auto import one_se
from fpclass.auto import study as study_lib
from fpclass.auto.budget import SLACK
from fpclass.auto.context import TAIL, Context, Entry, kept_after
from fpclass.auto.first_trials import BASELINE
from fpclass.auto.rungs import Costs, Rung
from fpclass.auto.study import changes_of
from fpclass.errors import UserInputError
from fpclass.train import oof
from fpclass.train import workdir_layout as layout
from fpclass.train.records import StopOnSignals


def completed(ctx: Context) -> bool:
  return any(t.state == optuna.trial.TrialState.COMPLETE for t in study_lib.searched(ctx.study))


def run_bracket(ctx: Context, bracket: dict, costs: Costs) -> bool:
  """Runs the bracket's rungs from where it stands (its trials asked: `fpclass.auto.search`); False when the
  deadline stopped it."""
  rungs = [Rung(**r) for r in bracket['rungs']]
  if not bracket['trials']:
    return False
  by_number, cut = ctx.trials(), False
  alive = list(bracket['promoted'][-1] if bracket['promoted'] else bracket['trials'])
  for level in range(len(bracket['promoted']), len(rungs)):
    rung, top = rungs[level], level == len(rungs) - 1
    reserve = kept_for_after(ctx, costs, rungs, level)
    # The first top rung makes the only final model there can be: it ends in the budget's slack, planned or not
    # (where the cost model read it a little cheap, not one epoch short with the final model falling back to a
    # cheap rung's one fold; 2026-11-28, MNIST: cut at epoch 29 of 30, 0.966 against the hand sweep's 0.986).
    first_model = top and not completed(ctx)
    stop = (StopOnSignals(deadline=ctx.budget.deadline(TAIL * ctx.budget.seconds, slack=True)) if first_model
            else ctx.stop(reserve))
    if ctx.budget.left() - reserve < Rung(1, rung.folds, rung.epochs).cost(costs):
      first = first_top_rung(ctx, costs, rung) if first_model else None
      if first is None:
        end_bracket(ctx, bracket, {})
        return False
      alive, rung = alive[:1], first   # the best alone, within the budget's slack
    folder = ctx.workdir / layout.TRIALS if top else layout.rung_folder(ctx.workdir, bracket['index'], level)
    alive = attempted(ctx, alive, level, by_number)
    if not alive:
      break
    entries = [Entry(by_number[n].user_attrs[study_lib.FOLDER], changes_of(by_number[n])) for n in alive]
    with stop:
      # The first model keeps what ended: a trial the deadline cut is scored on the fold models that had ended, or
      # had trained half their epochs (`kept_after`).
      outcomes, cut = ctx.round(ctx.base, entries, ctx.splits(rung.folds), (int(ctx.base.seed),), rung.epochs,
                                folder, stop, keep_ended=first_model,
                                keep_cut_from=kept_after(rung.epochs) if first_model else 0)
    values = {}
    for n, entry in zip(alive, entries):
      outcome = outcomes.get(entry.name)
      if outcome is None:
        continue
      if by_number[n].state != optuna.trial.TrialState.RUNNING:
        # Told in a launch killed before this rung's promotion was saved: its reported value ranks it again.
        if level in by_number[n].intermediate_values:
          values[n] = by_number[n].intermediate_values[level]
        continue
      if outcome.seconds:
        ctx.budget.add_measure(outcome.members, outcome.member_epochs, outcome.seconds, outcome.compile_seconds)
      live = optuna.trial.Trial(ctx.study, by_number[n]._trial_id)
      if outcome.error or not math.isfinite(outcome.value):
        live.set_user_attr('error', (outcome.error or f'{ctx.metric} is not a number')[:500])
        ctx.study.tell(n, state=optuna.trial.TrialState.FAIL)
        continue
      values[n] = outcome.value
      live.report(outcome.value, level)   # the rung is the step: every trial's rung r has the same fidelity
    bracket['values'].append({str(n): v for n, v in values.items()})
    if level == 0 and not values and not cut:   # not one trial trains: the next bracket would draw the same
      errors = [by_number[n].user_attrs.get('error') or (outcomes.get(e.name) and outcomes[e.name].error)
                for n, e in zip(alive, entries)]
      bracket['failed'] = next((e for e in errors if e), 'no value')
    costs = ctx.budget.costs
    if top:
      end_bracket(ctx, bracket, values)
      return not cut
    ranked = sorted(values, key=lambda n: values[n], reverse=ctx.higher)
    keep = promoted(ctx, ranked, ctx.scheduler.promoted(ranked, values, tuple(rungs), level), values, folder,
                     by_number)
    if len(keep) > rungs[level + 1].configs:   # a tie went on beside the best: both, on the folds that fit
      wider = widened(ctx, costs, rungs, level + 1, len(keep))
      if wider is None:
        keep = keep[-1:]   # not even one fold each: the config as given alone, Breiman's rule
        tqdm.write('auto: the budget affords one configuration at the next rung: the config as given goes on')
      else:
        rungs[level + 1] = wider
        bracket['rungs'][level + 1] = dataclasses.asdict(wider)
    for n in alive:
      if n not in keep and n in values and by_number[n].state == optuna.trial.TrialState.RUNNING:
        ctx.study.tell(n, state=optuna.trial.TrialState.PRUNED)
    bracket['promoted'].append(keep)
    ctx.budget.save()
    tqdm.write(f'auto: rung {level + 1}/{len(rungs)}: {len(values)} of {len(alive)} trained'
               + (' (the rest cut by the deadline)' if cut else '') + f'; kept trials {keep}; '
               + ctx.budget.describe())
    alive = keep
    if not alive:
      break
  end_bracket(ctx, bracket, {})
  return not cut   # a rung the deadline cut left none to promote


def attempted(ctx: Context, alive: list, level: int, by_number: dict) -> list:
  """The trials of `alive` that start rung `level` in this launch, each start counted in the trial
  (`study_lib.ATTEMPTS`): a trial whose rung has started MAX_ATTEMPTS times without ending (its process died each
  time: out of memory, killed) fails, and is never asked again. A trial told in an earlier launch goes on: its
  reported value ranks it."""
  kept = []
  for n in alive:
    trial = by_number[n]
    if trial.state != optuna.trial.TrialState.RUNNING:
      kept.append(n)
      continue
    attempts = dict(trial.user_attrs.get(study_lib.ATTEMPTS) or {})
    started = int(attempts.get(str(level), 0))
    live = optuna.trial.Trial(ctx.study, trial._trial_id)
    if started >= study_lib.MAX_ATTEMPTS:
      live.set_user_attr('error', f'its rung {level} started in {started} launches and never ended (the process died)')
      ctx.study.tell(n, state=optuna.trial.TrialState.FAIL)
      tqdm.write(f'auto: trial {n} failed: {live.user_attrs["error"]}')
      continue
    attempts[str(level)] = started + 1
    live.set_user_attr(study_lib.ATTEMPTS, attempts)
    kept.append(n)
  return kept


def promoted(ctx: Context, ranked: list, chosen: list, values: dict, folder: pathlib.Path, by_number: dict) -> list:
  """The trials the scheduler chose to go on from a rung (`chosen`, best first), with the config as given in the last place when the
  best beats it by no more than one standard error of their difference on the rung's out-of-fold predictions
  (`fpclass.auto.one_se`)."""
  baseline = next((n for n in ranked if by_number[n].user_attrs.get(BASELINE)), None)
  if baseline is None or baseline in chosen or not chosen:
    return chosen
  best = ranked[0]
  try:
    frames = [oof.read(folder / by_number[n].user_attrs[study_lib.FOLDER]) for n in (best, baseline)]
  except UserInputError:
    return chosen
  gap, se = abs(values[best] - values[baseline]), one_se.rung_se(*frames, ctx.metric)
  keep = one_se.promoted([*chosen, *(n for n in ranked if n not in chosen)], len(chosen), baseline, gap, se)
  if baseline in keep:
    tqdm.write(f'auto: the config as given goes on{" beside it" if best in keep else ""}: trial {best} beat it by '
               f'{gap:.4f}, within one standard error ({se:.4f}) of the rung\'s evidence')
  return keep


def kept_for_after(ctx: Context, costs: Costs, rungs: list, level: int) -> float:
  """The seconds rung `level` leaves for what follows it: the rest of the bracket (one configuration a rung), the
  confirmation and the report's tail. The rung stops where only they still fit."""
  rest = sum(Rung(1, r.folds, r.epochs).cost(costs) for r in rungs[level + 1:])
  return ctx.confirm_seconds(costs, ctx.settings.finalists) + TAIL * ctx.budget.seconds + rest


def widened(ctx: Context, costs: Costs, rungs: list, level: int, configs: int) -> Rung | None:
  """Rung `level` for `configs` configurations where it was planned for fewer (a tie went on, `one_se.promoted`):
  the most of its folds, at its epochs, that fit what the rung and the rest of the bracket may spend now (the
  planned rung's cost, or more where the budget has more left); None where not even one fold each fits. The trials
  are compared like with like, on the same folds, and the final stage completes the choice's missing folds."""
  rung = rungs[level]
  seconds = max(rung.cost(costs), ctx.budget.left() - kept_for_after(ctx, costs, rungs, level))
  fitting = [f for f in range(rung.folds, 0, -1) if Rung(configs, f, rung.epochs).cost(costs) <= seconds]
  return Rung(configs, fitting[0], rung.epochs) if fitting else None


def first_top_rung(ctx: Context, costs: Costs, rung: Rung) -> Rung | None:
  """The top rung one configuration may still train within the budget's slack (5%) when no trial has a top-rung
  result yet (without one there is no final model): on the most folds, then epochs, that fit; else None."""
  if completed(ctx):
    return None
  spare = ctx.budget.left() + SLACK * ctx.budget.seconds - TAIL * ctx.budget.seconds
  fitting = ctx.scheduler.bracket(costs, spare, rung.folds, rung.epochs, most=1)
  return Rung(1, fitting.rungs[-1].folds, fitting.rungs[-1].epochs) if fitting else None


def end_bracket(ctx: Context, bracket: dict, values: dict) -> None:
  """Tells the study each running trial's end: COMPLETE with its top-rung value, else PRUNED where it reported."""
  running, trials = optuna.trial.TrialState.RUNNING, ctx.trials()
  for n in bracket['trials']:
    trial = trials[n]
    if trial.state != running:
      continue
    if n in values and len(bracket['values']) == len(bracket['rungs']):
      ctx.study.tell(n, values[n])
    elif trial.intermediate_values:
      ctx.study.tell(n, state=optuna.trial.TrialState.PRUNED)
    else:   # cut by the deadline before its first rung ended: failed for the sampler, 'cut' in the report
      optuna.trial.Trial(ctx.study, trial._trial_id).set_user_attr(study_lib.CUT, True)
      ctx.study.tell(n, state=optuna.trial.TrialState.FAIL)
  bracket['done'] = True
  ctx.budget.save()
