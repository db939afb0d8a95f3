"""`run_auto(config, workdir)`: the best defensible model for the data within a time budget.

1. Screen: a linear probe (`fpclass.probe.screen`) of the backbones whose weights are at hand; the best
   `auto.keep` become candidates beside the config's own model, each with its learning-rate centre
   (`fpclass.auto.lr_centres`).
2. Search: the costs measured (`fpclass.auto.measure`), brackets of rungs planned by the scheduler
   (`fpclass.auto.schedulers`, successive halving by default), each rung a population round: a batch of TPE's
   trials as one sweep plan, few epochs on one fold at the bottom, every fold at the top (`trials/`).
3. Confirm: the finalists, and the config as given, on folds cut anew (data.split_seed + 1000) x seeds that
   chose nothing, with paired 95% intervals against the choice: the search reserves it at most
   `auto.confirm_share` of the budget, and it takes what the search leaves.
4. Final (`fpclass.auto.final`): the choice's fold models as an ensemble workdir in `final/`, completed and
   widened (missing folds, more seeds) with the budget's rest.
The budget (`fpclass.auto.budget`) holds across launches: a relaunch resumes the study, the bracket where it
stopped (its members after their latest epoch) and the confirmation. Details and figures: docs/auto.md."""
import dataclasses
import pathlib
import time

import optuna
import pandas as pd
from tqdm.auto import tqdm

from fpclass.analysis import metric_registry
from fpclass.auto import brackets, failed_values
from fpclass.auto import confirm as confirm_stage
from fpclass.auto import measure as measure_stage
from fpclass.auto import report as auto_report
from fpclass.auto import study as study_lib
from fpclass.auto.budget import SLACK, Budget
from fpclass.auto.candidates import screen_candidates
from fpclass.auto.context import TAIL, Context
from fpclass.auto.final import final_model
from fpclass.auto.first_trials import BASELINE, COMBINED, NEIGHBOUR, combination, first_batch
from fpclass.auto.lr_centres import LR_FIND_SHARE, centre_learning_rates
from fpclass.auto.population import outcomes, round_plan
from fpclass.auto.rungs import Bracket, Costs
from fpclass.auto.schedulers.configured import scheduler_for
from fpclass.auto.space import Candidate, baseline_params, default_space, parse_space, sample
from fpclass.config.outputs import LrFindSettings, ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.config.search import AutoSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.models.heads import head_of
from fpclass.probe.screen import ProbeRun
from fpclass.runtime import timings
from fpclass.train import sidecar
from fpclass.train import workdir_layout as layout
from fpclass.train.cohort import program_settings
from fpclass.train.loop import run_plan
from fpclass.train.plan import Variant, apply_changes
from fpclass.train.shared_work import SharedWork

WARM_LOOKAHEAD = 32   # the first trials `_warm_start` prices: more than a first bracket on a short budget starts
CLAIM_SLACK = 0.5   # a claim from another host expires this share of the budget after the claimer's own end


@dataclasses.dataclass
class AutoRun:
  settings: AutoSettings
  metric: str
  task: str
  screen: ProbeRun | None
  screen_note: str
  candidates: list
  study: optuna.Study
  brackets: list                   # as stored in auto_state.json: rungs, trials and values
  search_note: str
  confirm: pd.DataFrame | None     # one row per confirmed member: experiment, split, seed, every metric
  differences: pd.DataFrame | None
  confirm_note: str
  chosen: dict                     # name, trial, candidate, changes, value, confirmed, config (JSON)
  final: pathlib.Path | None
  final_note: str
  budget: Budget
  splits_note: str


def run_auto(config, workdir) -> AutoRun | None:
  """The four stages; None in a launch that shares the study with another, which then confirms, and in a relaunch
  of a study that finished (confirmed) earlier. Where the job's config enters the search: its auto, probe and
  lr_find sections and the base config's typed sections are parsed here, once, and the stages read those."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  settings = AutoSettings.from_config(config.auto)
  scheduler = scheduler_for(settings)
  given = RunSettings.from_config(config)
  task = metric_registry.task_of_head(head_of(given))
  metric = settings.metric or metric_registry.summarised(task)[0]
  if metric not in metric_registry.REGISTRY or not metric_registry.REGISTRY[metric].applies_to(task):
    raise UserInputError(f'config.auto.metric={metric!r}: choose a metric of the {task} task: '
                         f'{[m.name for m in metric_registry.for_task(task)]}')
  higher = metric_registry.REGISTRY[metric].higher_is_better
  study = study_lib.open_study(settings.study or str(config.name), settings.storage, workdir,
                               'maximize' if higher else 'minimize', settings.seed)
  if _finished_earlier(study, workdir):
    return None
  folds = settings.folds or given.data.split.num_folds
  base = Variant('base', {}, apply_changes(config, {'data.num_folds': folds}, 'config.auto.folds'))
  own_split = pipeline.list_source(base.settings.data).val is not None
  if own_split and settings.folds:
    raise UserInputError(f'config.auto.folds={settings.folds}: the source has its own validation split, which every '
                         'trial validates on, so no folds are cut; leave config.auto.folds at 0, or merge the '
                         'validation images into the training folder to search over folds')
  splits_note = ("the source's own validation split (one holdout per trial; the confirmation repeats it with "
                 'fresh seeds, on the same images)') if own_split else f'{folds}-fold'
  budget = Budget.load(settings.budget_seconds, workdir, timings.job_elapsed())
  with budget.heartbeat():   # a kill between two saves of the state loses at most one beat
    tqdm.write(f'auto: {settings.budget_label} budget ({budget.describe()}), {splits_note} trials by {metric}')
    screen, pairs, screen_note = screen_candidates(base.settings, settings, ProbeSettings.from_config(config.probe),
                                                   budget)
    candidates = [Candidate(name, changes) for name, changes in pairs]
    centres = None
    if any(c.changes for c in candidates) and not settings.space:
      centres = centre_learning_rates(base, candidates, LrFindSettings.from_config(config.lr_find),
                                      LR_FIND_SHARE * budget.left())
      budget.add_stage('lr_find', centres.seconds)
      screen_note += '; learning-rate centres: ' + '; '.join(f'{n}: {r:.3g} ({centres.how[n]})'
                                                             for n, r in centres.rates.items())
    entries = settings.space or default_space(base, candidates, centres.rates if centres else None)
    dims = parse_space(entries, base.config, candidates)
    ctx = Context(base.config, settings, metric, higher, 1 if own_split else folds, base.settings.train.epochs,
                  own_split, dims, candidates, study, budget, workdir, SharedWork(), _train_round, scheduler,
                  base.settings)
    search_note = _search(ctx)
    marker = study_lib.claim(study, budget.left() + CLAIM_SLACK * budget.seconds)
    if marker is None:
      tqdm.write('auto: another live process of this study confirms (its claim is in the study\'s storage); this '
                 'one has done its share of the search')
      return None
    try:
      running = study_lib.wait_for_others(study, budget.deadline(ctx.confirm_seconds(budget.costs,
                                                                                  ctx.settings.finalists)))
      if running:
        tqdm.write(f'auto: trials {running} of other processes still run; the confirmation chooses among the rest')
      confirm, differences, confirm_note, chosen = confirm_stage.confirm(ctx)
      final, final_note = final_model(ctx, chosen)
    except BaseException:
      study_lib.release(study, marker, confirmed=False)
      raise
    study_lib.release(study, marker, confirmed=True)
    return AutoRun(settings, metric, task, screen, screen_note, candidates, study, budget.brackets, search_note,
                   confirm, differences, confirm_note, chosen, final, final_note, budget, splits_note)


def _finished_earlier(study: optuna.Study, workdir: pathlib.Path) -> bool:
  """Whether a launch (this workdir's earlier one, or another sharing the study) confirmed already: then there is
  nothing left to search, confirm or train, and it says where the run's results are."""
  confirmed_by = study.user_attrs.get(study_lib.CONFIRMED)
  if not confirmed_by:
    return False
  final = workdir / sidecar.AUTO_FINAL
  where = (f'its report is {workdir / auto_report.REPORT} and its final model {final}'
           if (final / sidecar.METADATA).is_file() else
           f'its report and final model are in the workdir of the launch that confirmed (host '
           f'{confirmed_by.get("host")}, pid {confirmed_by.get("pid")})')
  tqdm.write(f'auto: this study finished earlier: {where}; nothing is left to do (a new search: another '
             '--workdir, or config.auto.study)')
  return True


# ------------------------------------------------------------------------------------------------- 1. screen

# ------------------------------------------------------------------------------------------------- 2. search

def _train_round(ctx: Context, base, entries: list, folds: tuple, seeds: tuple, epochs: int, folder, stop,
                 keep_ended: bool = False, keep_cut_from: int = 0):
  """`Context.round`: the entries as one plan through the one training loop, each variant isolated."""
  plan, failed = round_plan(base, entries, folds, seeds, epochs)
  runs = (run_plan(plan, folder, shared=ctx.shared, stop=stop, isolate=True, keep_ended=keep_ended,
                   keep_cut_from=keep_cut_from) if plan.variants else [])
  result = dict(failed, **outcomes(runs, ctx.metric))
  return result, len(result) < len(entries) or any(o.cut_members for o in result.values())


def _search(ctx: Context) -> str:
  """Brackets while one fits beside the confirmation's share; returns what the search could afford."""
  budget, start = ctx.budget, time.perf_counter()
  try:
    costs = budget.costs or measure_stage.measure(ctx)
    warm = _warm_start(ctx)
    notes = measure_stage.fit_folds(ctx, costs, warm)
    while True:
      bracket = budget.open_bracket()
      if bracket is None:
        # Read once: with a shared study the count moves between two reads, and `most` = 0 means no limit.
        most = ctx.settings.trials - study_lib.taken_count(ctx.study) if ctx.settings.trials else 0
        if ctx.settings.trials and most <= 0:
          break
        reserve = ctx.confirm_seconds(costs, ctx.settings.finalists) + TAIL * budget.seconds
        planned = ctx.scheduler.bracket(costs, budget.left() - reserve, ctx.folds, ctx.epochs, most,
                                        index=len(budget.brackets), warm=() if budget.brackets else warm)
        if planned is None or (planned.note and budget.brackets):
          break   # no bracket fits (a cheapened single trial, the note's, is worth it only when nothing else ran)
        planned = _into_the_slack(ctx, planned, costs, budget.left() - reserve)
        if planned.note:
          notes.append(planned.note)
        bracket = budget.new_bracket([dataclasses.asdict(r) for r in planned.rungs])
        tqdm.write(f'auto: bracket {len(budget.brackets)}: ' + ', then '.join(
            f'{r.configs} x {r.folds} fold(s) x {r.epochs} epoch(s)' for r in planned.rungs)
            + f'; {budget.describe()}')
      if not _run_bracket(ctx, bracket, costs):
        notes.append('the search stopped at the budget\'s deadline')
        break
      if bracket.get('failed'):
        notes.append(f'every trial of bracket {bracket["index"] + 1} failed, so the search stopped (the first: '
                     f'{bracket["failed"][:200]})')
        tqdm.write(f'auto: {notes[-1]}')
        break
      costs = budget.costs
    if not brackets.completed(ctx):   # no bracket fitted, or the deadline cut its trials
      notes.append(_adopt_measurement(ctx, cut=bool(budget.brackets)))
  finally:
    budget.add_stage('search', time.perf_counter() - start)
  return '; '.join(n for n in notes if n)


def _into_the_slack(ctx: Context, planned: Bracket, costs: Costs, seconds: float) -> Bracket:
  """A single configuration, the only final model there can be while no trial has completed, with one epoch more
  where it ends within the budget's slack past `seconds` (which keep the tail): that model's round stops at the
  slack's end less the tail (`brackets.run_bracket`), and keeps a member the deadline cuts after half its epochs,
  so a plan that reads the epochs a little cheap ends on time with the epochs before the cut. At 60 s an epoch of
  the footprint CNN is 7 to 9% of the budget, and within half the slack the part of one left over went unused in
  two runs of three (docs/auto.md, "The budget holds")."""
  if len(planned.rungs) != 1 or planned.rungs[0].configs != 1 or brackets.completed(ctx):
    return planned
  rung = planned.rungs[0]
  longer = dataclasses.replace(rung, epochs=rung.epochs + 1)
  if rung.epochs >= ctx.epochs or longer.cost(costs) > seconds + SLACK * ctx.budget.seconds:
    return planned
  note = planned.note.replace(f'for {rung.epochs} of', f'for {longer.epochs} of') if planned.note else ''
  return Bracket((longer,), note)


def _ask(ctx: Context, count: int) -> list:
  """`count` new trials (enqueued ones first), each with its candidate and config changes recorded; a draw near
  a trial that failed at run time is set aside and drawn again (`fpclass.auto.failed_values`)."""
  asked = []
  for trial in study_lib.ask_batch(ctx.study, ctx.settings.seed, count):
    for _ in range(failed_values.REDRAWS):
      name, changes = sample(trial, ctx.dims, ctx.base, ctx.candidates)
      failed = failed_values.failed_near(trial, ctx.study, ctx.dims)
      if failed is None:
        break
      trial.set_user_attr(failed_values.SKIPPED, failed)
      ctx.study.tell(trial, state=optuna.trial.TrialState.FAIL)
      (trial,) = study_lib.ask_batch(ctx.study, ctx.settings.seed, 1)
    else:
      name, changes = sample(trial, ctx.dims, ctx.base, ctx.candidates)
    trial.set_user_attr(study_lib.CANDIDATE, name)
    trial.set_user_attr(study_lib.CHANGES, {k: repr(v) for k, v in changes.items()})
    asked.append(trial)
  return asked


def _run_bracket(ctx: Context, bracket: dict, costs: Costs) -> bool:
  """A new bracket's trials asked (the first batch seeded, `_enqueue_first_trials`) and saved, then its rungs run
  (`fpclass.auto.brackets.run_bracket`); False when the deadline stopped it."""
  if not bracket['trials']:
    configs = bracket['rungs'][0]['configs']
    _enqueue_first_trials(ctx, configs)
    bracket['trials'] = [t.number for t in _ask(ctx, configs)]
    ctx.budget.save()
  return brackets.run_bracket(ctx, bracket, costs)


def _enqueue_first_trials(ctx: Context, batch: int) -> None:
  """A new study's first batch: the config as given, then as many of the portfolio's moves and its one-knob
  neighbours as the batch holds;
  the second bracket's: the neighbours that beat the config on the first bottom rung, combined
  (`fpclass.auto.first_trials`). TPE samples the rest of each batch."""
  if not ctx.study.trials:
    baseline, moves = _first_batch(ctx, batch)
    ctx.study.enqueue_trial(baseline, user_attrs={BASELINE: True}, skip_if_exists=True)
    for label, params in moves:
      ctx.study.enqueue_trial(params, user_attrs={NEIGHBOUR: label}, skip_if_exists=True)
    return
  first = ctx.budget.brackets[0]
  if ctx.study.user_attrs.get(COMBINED) or first is ctx.budget.brackets[-1] or not first['values']:
    return
  values = {int(n): v for n, v in first['values'][0].items()}
  params = combination(ctx.trials(), values, ctx.higher)
  if params is not None:
    ctx.study.enqueue_trial(params, user_attrs={NEIGHBOUR: 'combined'}, skip_if_exists=True)
  ctx.study.set_user_attr(COMBINED, True)


def _first_batch(ctx: Context, size: int) -> tuple[dict, list]:
  """(the config as given's parameters, (label, parameters) of the moves after it): a new study's first `size`
  trials (`fpclass.auto.first_trials.first_batch`)."""
  baseline = baseline_params(ctx.dims, ctx.base, ctx.candidates)
  others = {c.name: baseline_params(ctx.dims, ctx.base, ctx.candidates, target=c) for c in ctx.candidates}
  return baseline, first_batch(ctx.dims, baseline, others, size - 1)


def _warm_start(ctx: Context) -> tuple:
  """For a new study's first bracket: whether each of its first `WARM_LOOKAHEAD` trials, in the order they start,
  shares the train programs of the config as given (`fpclass.train.cohort.program_settings`), which the set-up
  measurement compiled, so it sets up without compiling (`fpclass.auto.rungs.Rung.warm`): the config itself,
  and the moves of what the programs take as arguments (the learning rate, smoothing, augmentation magnitudes).
  Priced as compiling, such a move costs a short budget's first bracket whole trials (docs/auto.md, "Four
  repeats"). () for a study with trials (a later bracket, another launch's): TPE's draws are priced as compiling."""
  if ctx.study.trials:
    return ()
  baseline, moves = _first_batch(ctx, WARM_LOOKAHEAD)
  given = _programs_of(ctx, baseline)
  return (given is not None, *(given is not None and _programs_of(ctx, params) == given for _, params in moves))


def _programs_of(ctx: Context, params: dict) -> tuple | None:
  """`program_settings` of a trial of these parameters; None where its settings do not resolve (its own checks
  will say why when it trains: a price is no place to fail)."""
  try:
    _, changes = sample(optuna.trial.FixedTrial(params), ctx.dims, ctx.base, ctx.candidates)
    trial = Variant('a first trial', changes, apply_changes(ctx.base, changes, 'a first trial'))   # parsed as a plan
    return program_settings(trial.settings)
  except (ValueError, TypeError, KeyError):   # UserInputError and ConfigError among them
    return None


def _adopt_measurement(ctx: Context, cut: bool = False) -> str:
  """When the search completed no trial (the budget afforded no bracket, or, `cut`, the deadline cut the trials of
  those that ran: a loaded machine, a configuration dearer than the cost model's): the measurement round (the
  config as given on one fold, for at most two epochs) becomes the search's one trial, its fold model moved to
  `trials/`, so that the run still ends in a model, and the report says what it could afford. '' when there is
  nothing to adopt."""
  value = ctx.study.user_attrs.get(study_lib.MEASURED)
  measured = measure_stage.measured_folder(ctx.workdir)
  if value is None or not measured.is_dir():
    return ''
  ctx.study.enqueue_trial(baseline_params(ctx.dims, ctx.base, ctx.candidates), user_attrs={BASELINE: True})
  (trial,) = _ask(ctx, 1)
  (ctx.workdir / layout.TRIALS).mkdir(exist_ok=True)
  measured.rename(ctx.workdir / layout.TRIALS / trial.user_attrs[study_lib.FOLDER])   # one filesystem: atomic
  trial.report(value, 0)
  ctx.study.tell(trial, value)
  why = 'the deadline cut every trial of the search' if cut else 'the budget affords no search'
  note = (f'{why}: the config as given, measured on one fold for {min(measure_stage.EPOCHS, ctx.epochs)} of '
          f'{ctx.epochs} epochs, is its one trial')
  tqdm.write(f'auto: {note}')
  return note


