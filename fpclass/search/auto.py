"""`run_auto(config, workdir)`: the best defensible model for the data within a time budget, in four stages.

1. Screen: a linear probe (`fpclass.search.screen`) of the backbones whose weights are at hand; the best
   `auto.keep` of them become candidates beside the config's own model.
2. Search: Optuna trials (`fpclass.search.study`, TPE, seeded), each a k-fold plan run by the one training loop
   with one workdir per member (`MEMBER_WORKDIRS`), reporting fold by fold to the Wilcoxon pruner.
3. Confirm: the best `auto.finalists` trials again on fresh seeds x folds, with paired 95% intervals against
   the best of them.
4. Refit: the chosen configuration trained into `<workdir>/final`, an ordinary workdir, and evaluated.
The budget (`fpclass.search.budget`) decides how many trials fit beside a reserve for stages 3 and 4. A relaunch
resumes: the study from its storage, each member from its checkpoints. Details and figures: docs/auto.md.
"""
import ast
import dataclasses
import json
import pathlib
import statistics
import time

import numpy as np
import optuna
import pandas as pd
from tqdm.auto import tqdm

from fpclass import fileio, models
from fpclass.analysis import metric_registry, sweep_report
from fpclass.config.inputs import DecodeSettings, SplitSettings, StorageSettings
from fpclass.config.model import ModelSettings
from fpclass.config.search import AutoSettings
from fpclass.errors import RunInterrupted, UserInputError
from fpclass.infer.evaluation import evaluate_workdir
from fpclass.models import probe_backbones
from fpclass.models.heads import head_of
from fpclass.runtime import tracking, workdir_lock
from fpclass.search import study as study_lib
from fpclass.search.budget import Budget
from fpclass.search.screen import ProbeRun, run_probe
from fpclass.search.space import Candidate, baseline_params, default_space, parse_space, sample
from fpclass.train import oof, sidecar
from fpclass.train.loop import MemberRun, run_plan
from fpclass.train.plan import MEMBER_WORKDIRS, Plan, Variant, apply_changes, solo_plan
from fpclass.train.records import StopOnSignals
from fpclass.train.validation import validate

CLAIM = 'confirm.claim'


@dataclasses.dataclass
class AutoRun:
  settings: AutoSettings
  metric: str
  task: str
  screen: ProbeRun | None
  screen_note: str
  candidates: list
  study: optuna.Study
  confirm: pd.DataFrame | None     # one row per confirmed member: variant, split, seed, every metric
  differences: pd.DataFrame | None
  confirm_note: str
  chosen: dict                     # name, trial, changes, config (JSON)
  final: pathlib.Path | None
  final_note: str
  budget: Budget


def run_auto(config, workdir) -> AutoRun | None:
  """The four stages; None in a launch that shares the study with another, which then confirms and refits."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  settings = AutoSettings.from_config(config.auto)
  task = metric_registry.task_of_head(head_of(config))
  metric = settings.metric or metric_registry.summarised(task)[0]
  if metric not in metric_registry.REGISTRY or not metric_registry.REGISTRY[metric].applies_to(task):
    raise UserInputError(f'config.auto.metric={metric!r}: choose a metric of the {task} task: '
                         f'{[m.name for m in metric_registry.for_task(task)]}')
  folds = settings.folds or SplitSettings.from_config(config.data).num_folds
  base = apply_changes(config, {'data.num_folds': folds}, 'config.auto.folds')
  budget = Budget.load(settings.budget_seconds, workdir)
  tqdm.write(f'auto: {settings.time_budget} budget ({budget.describe()}), {folds}-fold trials by {metric}')
  screen, candidates, screen_note = _screen(base, settings, workdir, budget)
  dims = parse_space(settings.space or default_space(base, candidates), base, candidates)
  direction = 'maximize' if metric_registry.REGISTRY[metric].higher_is_better else 'minimize'
  study = study_lib.open_study(settings.study or str(config.name), settings.storage, workdir, direction,
                               settings.seed, settings.p_threshold)
  _search(base, settings, study, dims, candidates, workdir, budget, metric, folds)
  if not _claim(workdir):
    tqdm.write(f'auto: another live process of this study runs the confirmation and the refit ({workdir / CLAIM}); '
               'this one has done its share of the search')
    return None
  running = study_lib.wait_for_others(study, budget.deadline(_reserve(budget, settings, folds, study)))
  if running:
    tqdm.write(f'auto: trials {running} of other processes still run at the end of the search; the '
               'confirmation chooses among the finished ones')
  confirm, differences, confirm_note, chosen = _confirm(base, settings, study, workdir, budget, metric, folds)
  final, final_note = _refit(config, chosen, workdir, budget)
  return AutoRun(settings, metric, task, screen, screen_note, candidates, study, confirm, differences,
                 confirm_note, chosen, final, final_note, budget)


# ------------------------------------------------------------------------------------------------- 1. screen

def _at_hand(config, settings: AutoSettings) -> tuple[list, list[str]]:
  """(backbones to screen, notes): auto.backbones, or every registered pretrained model whose named weights are
  already in the cache (nothing is downloaded to screen)."""
  if settings.backbones:
    with config.unlocked():
      config.probe.backbones = tuple(settings.backbones)
    return probe_backbones.parse_backbones(config), []
  cache, found, missing = fileio.cache_root(StorageSettings.from_config(config.data).cache_dir), [], []
  for name in probe_backbones.valid_backbones():
    spec = models.get_spec(name)
    named = [w for w in spec.weights.values() if (cache / 'weights' / w.filename).is_file()]
    (found if named else missing).append(name)
  with config.unlocked():
    config.probe.backbones = tuple(f'{name}={next(iter(models.get_spec(name).weights))}' for name in found)
  notes = [f'{len(missing)} registered backbones have no weights in the cache ({cache / "weights"}) and were not '
           'screened; name them with their files in config.auto.backbones'] if missing else []
  return (probe_backbones.parse_backbones(config) if found else []), notes


def _screen(base, settings: AutoSettings, workdir: pathlib.Path, budget: Budget):
  """(probe run or None, candidates, note): the config's own model first, then the best screened backbones."""
  own = Candidate(ModelSettings.from_config(base.model).name, {})
  if settings.keep == 0:
    return None, [own], 'no screen (config.auto.keep=0)'
  config = apply_changes(base, {}, 'auto')
  backbones, notes = _at_hand(config, settings)
  if not backbones:
    return None, [own], ' '.join(notes) or 'no backbone to screen'
  start = time.perf_counter()
  found = run_probe(config, backbones)
  budget.add_stage('screen', time.perf_counter() - start)
  order = found.summary.sort_values(f'{found.rank_by}_mean', ascending=found.rank_by == 'log_loss', kind='stable')
  kept = []
  for _, row in order.head(settings.keep).iterrows():
    weights = row['weights'] if row['weights'] != 'random init' else ''
    kept.append(Candidate(str(row['backbone']), {
        'model.name': str(row['model']), 'model.pretrained': weights, 'model.top': 'avg',
        'model.in_channels': DecodeSettings.from_config(base.data).channels, 'model.freeze_till': 0}))
  note = ' '.join(notes + [f'{len(backbones)} backbones screened; kept {", ".join(c.name for c in kept)}'])
  return found, [own, *kept], note


# ------------------------------------------------------------------------------------------------- 2. search

def _reserve(budget: Budget, settings: AutoSettings, folds: int, study: optuna.Study) -> float:
  """Seconds to keep for the confirmation and the refit, from the members' times so far."""
  member = budget.member()
  if member is None:
    return 0.3 * budget.seconds
  finalists = max(1, min(settings.finalists, len(study_lib.completed(study))))
  return finalists * len(settings.confirm_seeds) * folds * member + 1.5 * member


def _search(base, settings, study, dims, candidates, workdir, budget: Budget, metric: str, folds: int) -> None:
  retried = study_lib.retry_stale_trials(study)
  if retried:
    tqdm.write(f'auto: trials {retried} were left running by a process that is gone; asked for again')
  start, started = time.perf_counter(), False
  if not study.trials:   # a new study starts from the config as given
    study.enqueue_trial(baseline_params(dims, base, candidates), skip_if_exists=True)
  try:
    while not settings.trials or study_lib.taken_count(study) < settings.trials:
      # A choice needs one finished trial: until the study has one, this launch's first trial runs to its end
      # whatever the budget says (a budget shorter than a trial is overrun by that trial, and the report says so).
      first = not study_lib.completed(study) and not started
      reserve, member = _reserve(budget, settings, folds, study), budget.member()
      if not first and member is not None and budget.left() < folds * member + reserve:
        break
      if not first and member is None and budget.left() <= reserve:
        break
      started = True
      if not _trial(base, settings, study, dims, candidates, workdir, budget, metric, folds,
                    None if first else budget.deadline(reserve)):
        break
  finally:
    budget.add_stage('search', time.perf_counter() - start)


def _trial(base, settings, study, dims, candidates, workdir, budget, metric, folds, deadline) -> bool:
  """Runs one trial; False when the budget stopped it."""
  trial = study_lib.ask(study, settings.seed)
  name, changes = sample(trial, dims, base, candidates)
  trial.set_user_attr(study_lib.CANDIDATE, name)
  trial.set_user_attr(study_lib.CHANGES, {k: repr(v) for k, v in changes.items()})
  variant = Variant(trial.user_attrs[study_lib.FOLDER], changes, apply_changes(base, changes, f'trial {trial.number}'))
  try:
    validate(variant.config)
  except UserInputError as e:
    tqdm.write(f'auto: trial {trial.number} cannot train ({e}); failed')
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return True
  values = []

  def on_member(member: MemberRun):
    budget.add_member(name, member.seconds)
    values.append(oof.scores(member.predictions)[metric])
    trial.report(values[-1], step=len(values) - 1)   # the fold's place: the same in every trial
    tracking.current().log_metrics({metric: values[-1]}, step=len(values) - 1)
    if trial.should_prune():
      raise optuna.TrialPruned()

  tqdm.write(f'auto: trial {trial.number} ({name}): {sweep_report.describe_changes(changes)}; {budget.describe()}')
  plan = Plan((variant,), MEMBER_WORKDIRS, tuple(range(folds)), (int(base.seed),))
  with tracking.current().nested(f'trial{trial.number}', params=dict(changes, candidate=name)):
    with StopOnSignals(deadline=deadline) as stop:
      try:
        run_plan(plan, workdir / 'trials', stop=stop, on_member=on_member)
      except optuna.TrialPruned:
        tqdm.write(f'auto: trial {trial.number} pruned after {len(values)} folds')
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return True
      except RunInterrupted:
        if not stop.deadline_passed:
          raise   # a signal: the trial stays running, and the next launch asks for it again
        tqdm.write(f'auto: trial {trial.number} stopped by the time budget after {len(values)} folds')
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    value = float(np.mean(values))
    study.tell(trial, value)
    tracking.current().log_metrics({metric: value}, step=len(values))
    tqdm.write(f'auto: trial {trial.number}: {metric} {value:.4f} over {len(values)} folds')
    return True


def _claim(workdir: pathlib.Path) -> bool:
  """Whether this process runs the confirmation and refit: it holds the claim file (the workdir lock's
  mechanism), taken when no live process of the study holds it."""
  return workdir_lock.claim(workdir, CLAIM, 'auto')


# ------------------------------------------------------------------------------------------------ 3. confirm

def _finalists(study: optuna.Study, count: int) -> list:
  """The best completed trials, one per configuration (a retried trial repeats its predecessor's)."""
  reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
  seen, out = set(), []
  for t in sorted(study_lib.completed(study), key=lambda t: t.value, reverse=reverse):
    changes = json.dumps(t.user_attrs.get(study_lib.CHANGES, {}), sort_keys=True)
    if changes not in seen:
      seen.add(changes)
      out.append(t)
  return out[:count]


def _changes_of(trial) -> dict:
  return {k: ast.literal_eval(v) for k, v in trial.user_attrs.get(study_lib.CHANGES, {}).items()}


def _confirm(base, settings, study, workdir, budget: Budget, metric: str, folds: int):
  """(member rows, paired differences, note, chosen): the finalists on fresh seeds x folds, as many seeds as
  the budget leaves room for."""
  finalists = _finalists(study, settings.finalists)
  if not finalists:
    raise UserInputError('auto: no trial completed within the budget; give config.auto.time_budget more time '
                         '(the log shows how long a trial took), or fewer folds (config.auto.folds)')
  best_trial = finalists[0]
  chosen = dict(name=f'trial{best_trial.number}', trial=best_trial.number, changes=_changes_of(best_trial),
                candidate=best_trial.user_attrs.get(study_lib.CANDIDATE), value=best_trial.value)
  member = budget.member() or 0.0
  refit = 1.5 * member
  per_seed = len(finalists) * folds * member
  seeds = list(settings.confirm_seeds)
  if per_seed > 0:
    seeds = seeds[:max(0, int((budget.left() - refit) // per_seed))]
  if not seeds or len(finalists) < 1:
    return None, None, 'skipped: the budget left no room for it' if settings.confirm_seeds else 'skipped', chosen
  variants = [Variant(f'trial{t.number}', _changes_of(t), apply_changes(base, _changes_of(t), f'trial {t.number}'))
              for t in finalists]
  rows, start = [], time.perf_counter()

  def on_member(m: MemberRun):
    budget.add_member(str(chosen['candidate']), m.seconds)
    rows.append(dict(experiment=m.variant, split=m.split, seed=m.seed, val_hash=f'fold{m.split}',
                     **oof.scores(m.predictions)))
    tracking.current().log_metrics({f'{m.variant}.{metric}': rows[-1][metric]}, step=len(rows) - 1)

  note = f'{len(finalists)} finalists x {folds} folds x seeds {seeds}'
  with StopOnSignals(deadline=budget.deadline(refit)) as stop, tracking.current().nested('confirm'):
    try:
      run_plan(Plan(tuple(variants), MEMBER_WORKDIRS, tuple(range(folds)), tuple(seeds)), workdir / 'confirm',
               stop=stop, on_member=on_member)
    except RunInterrupted:
      if not stop.deadline_passed:
        raise
      note += f'; stopped by the budget after {len(rows)} members'
  budget.add_stage('confirm', time.perf_counter() - start)
  models = pd.DataFrame(rows)
  if models.empty:
    return None, None, note + '; no member finished', chosen
  sign = 1.0 if metric_registry.REGISTRY[metric].higher_is_better else -1.0
  means = models.groupby('experiment', sort=False)[metric].mean()
  best_name = str((sign * means).idxmax())
  ratio = (folds - 1) ** -1 if folds > 1 else 0.0
  experiments = [dict(name=n, test_train_ratio=ratio, task=metric_registry.task_of_head(head_of(base)))
                 for n in means.index]
  differences = sweep_report.paired_differences(models, experiments, best_name)
  best = next(t for t in finalists if f'trial{t.number}' == best_name)
  chosen.update(name=best_name, trial=best.number, changes=_changes_of(best),
                candidate=best.user_attrs.get(study_lib.CANDIDATE), value=best.value,
                confirmed=float(means[best_name]))
  return models, differences, note, chosen


# -------------------------------------------------------------------------------------------------- 4. refit

def _refit(config, chosen: dict, workdir: pathlib.Path, budget: Budget):
  """(final workdir, note): the chosen configuration on the config's own split and seed, then evaluated."""
  final_config = apply_changes(config, chosen['changes'], 'the chosen configuration')
  validate(final_config)
  chosen['config'] = sidecar.config_as_json(final_config)
  final, start, note = workdir / 'final', time.perf_counter(), 'trained and evaluated'
  deadline = budget.deadline(slack=True)
  if deadline <= time.monotonic():   # nothing left: a model needs its epochs, so the refit overruns, and says so
    deadline, note = None, 'trained and evaluated in full after the budget was spent (it was shorter than a trial)'
  with StopOnSignals(deadline=deadline) as stop, tracking.current().nested('refit', epochs=True) as run:
    try:
      run_plan(solo_plan(final_config), final, stop=stop)
    except RunInterrupted:
      if not stop.deadline_passed:
        raise
      note = 'stopped by the budget before its last epoch (launch again to finish it); evaluated as it stands'
    if sidecar.read_metadata(final) is not None:
      evaluate_workdir(final_config, final)
      run.log_scores(final)
      run.log_files(final)
  budget.add_stage('refit', time.perf_counter() - start)
  return final, note


def trial_seconds(study: optuna.Study) -> float:
  durations = [t.duration.total_seconds() for t in study.trials if t.duration is not None]
  return statistics.median(durations) if durations else 0.0
