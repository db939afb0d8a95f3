"""The files and report of `--mode auto` (`fpclass.auto.search`): auto_report.md with the screen, the search's
brackets and trials and Optuna's figures, the confirmation with paired intervals, the time per stage, the final
model and why, and the chosen configuration as a config file that `--mode train` re-runs."""
import json
import pathlib
import warnings

import matplotlib
import optuna
import pandas as pd

from fpclass import fileio
from fpclass.analysis import metric_registry, stats, sweep_report
from fpclass.auto import failed_values, first_trials
from fpclass.auto import study as study_lib
from fpclass.auto.schedulers.configured import scheduler_for
from fpclass.config.variants import describe_changes
from fpclass.probe.report import results_table as probe_table
from fpclass.runtime import report

REPORT, CHOSEN_CONFIG = 'auto_report.md', 'chosen_config.py'
FIGURES = {'auto_history.png': 'plot_optimization_history', 'auto_importances.png': 'plot_param_importances',
           'auto_parallel.png': 'plot_parallel_coordinate'}
CONFIG_FILE = '''"""The configuration `--mode auto` chose for {workdir} ({name}); re-run it with

    python launch.py --config {path} --workdir runs/<new>
"""
import json

from fpclass.train.sidecar import config_from_json

CONFIG = json.loads({text!r})


def get_config(arg: str = ''):
  return config_from_json(CONFIG)
'''


def write_report(run, workdir) -> str:
  """`run`: the `fpclass.auto.search.AutoRun` of a finished launch."""
  workdir = pathlib.Path(workdir)
  study, metric = run.study, run.metric
  trials = study.trials_dataframe(attrs=('number', 'value', 'state', 'duration', 'params', 'user_attrs',
                                         'intermediate_values'))
  # The confirmation's claim markers are bookkeeping in the study, not trials: trials.csv leaves them out.
  markers = [t.number for t in study.get_trials(deepcopy=False) if study_lib.is_marker(t)]
  trials = trials[~trials['number'].isin(markers)].drop(columns=[f'user_attrs_{study_lib.CLAIM}'], errors='ignore')
  fileio.write_csv(workdir / 'trials.csv', trials)
  figures = _optuna_figures(study, workdir)
  config_path = workdir / CHOSEN_CONFIG
  fileio.write_text(config_path, CONFIG_FILE.format(workdir=workdir, name=run.chosen['name'], path=config_path,
                                                   text=json.dumps(run.chosen['config'], sort_keys=True)))
  fileio.write_json(workdir / 'auto.json', dict(metric=metric, chosen={k: v for k, v in run.chosen.items()
                                                                       if k != 'changes'},
                                                changes={k: repr(v) for k, v in run.chosen['changes'].items()},
                                                stages=run.budget.stages, used_seconds=run.budget.used(),
                                                budget_seconds=run.budget.seconds, brackets=run.brackets,
                                                costs=run.budget.costs and vars(run.budget.costs),
                                                search_note=run.search_note, final_note=run.final_note,
                                                splits=run.splits_note))
  lines = ['## Auto: the best model within the budget', '',
           f'Budget {run.settings.budget_label}: {run.budget.describe()}. Trials on {run.splits_note} splits, scored by '
           f'{metric_registry.title(metric)} (mean over the members); batches from Optuna TPE (seed '
           f'{run.settings.seed}, constant liar) through {scheduler_for(run.settings).describe()}: '
           f'{_brackets_text(run.brackets)}' + (f' ({run.search_note})' if run.search_note else '') + '.', '',
           report.table([dict(stage=k, seconds=f'{v:.1f}') for k, v in run.budget.stages.items()],
                        ['stage', 'seconds']), '',
           '### 1. Screen', '', run.screen_note + '.', '']
  if run.screen is not None:
    lines += [probe_table(run.screen.summary, run.screen.names), '']
  lines += ['Candidates: ' + ', '.join(f'`{c.name}`' for c in run.candidates) + '.', '',
            '### 2. Search', '', _trials_table(study, metric), '', *[f'![{name}]({name})' for name in figures], '',
            '### 3. Confirm on folds and seeds that chose nothing', '', f'{run.confirm_note}.', '']
  if run.confirm is not None:
    names = metric_registry.summarised(run.task)
    folds = int(run.chosen['config']['data']['num_folds'])
    summary = confirm_summary(run.confirm, names, folds)
    fileio.write_csv(workdir / 'confirm_members.csv', run.confirm)
    fileio.write_csv(workdir / 'confirm_differences.csv', run.differences)
    lines += [report.table([dict(variant=s['variant'], members=int(s['members']),
                                 **{metric_registry.title(m): f'{s[f"{m}_mean"]:.3f} [{s[f"{m}_ci_low"]:.3f}, '
                                                              f'{s[f"{m}_ci_high"]:.3f}]' for m in names})
                            for _, s in summary.iterrows()], ['variant', 'members', *map(metric_registry.title, names)]),
              '', 'Paired differences from the choice (same fold and seed; * marks an interval that '
              'excludes 0, a real difference):', '',
              sweep_report.differences_table(run.differences, names) if len(run.differences) else '(one finalist)',
              '']
  lines += ['### 4. The chosen configuration', '',
            f'`{run.chosen["name"]}` ({run.chosen.get("candidate")}): '
            f'{describe_changes(run.chosen["changes"])}.', '', *_unlabelled_lines(run, study),
            *([f'Final model: [{run.final.name}/]({run.final.name}/): {run.final_note}. An ensemble workdir that '
               'submit, predict, serve, export and calibrate read. It keeps the fold models rather than refitting '
               'on all the data: their out-of-fold score is the honest one, a refit has none of its own. It '
               'holds for images drawn as the training images were: submit says whether the test images look '
               'like them (the OOD score\'s flag rate; fpclass docs/deploy.md).',
               '', '```bash', f'python launch.py --workdir {run.final} --mode submit', '```', '']
              if run.final is not None else [f'Final model: none ({run.final_note}).', '']),
            f'Re-run the configuration: `python launch.py --config {config_path} --workdir runs/<new>` '
            f'([{CHOSEN_CONFIG}]({CHOSEN_CONFIG})). Files: [trials.csv](trials.csv), [auto.json](auto.json)'
            + (', [confirm_members.csv](confirm_members.csv), [confirm_differences.csv](confirm_differences.csv).'
               if run.confirm is not None else '.')]
  text = '\n'.join(lines)
  fileio.write_text(workdir / REPORT, text + '\n')
  report.write_section(workdir, '50-auto', text)
  return text


def _unlabelled_lines(run, study: optuna.Study) -> list[str]:
  """With config.data.unlabelled: whether the choice trains on those images, and the best trial each way."""
  config = run.chosen['config']
  spec = config['data'].get('unlabelled', '')
  if not spec:
    return []
  own = config['semi']['method']
  better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
  best = {}
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
    # The trial's config changes (its parameters are reprs: "'none'"); a space without the key: the choice's value.
    method = study_lib.changes_of(trial).get('semi.method', own)
    if trial.value is not None:
      best[method] = better(best.get(method, trial.value), trial.value)
  each = '; '.join(f'{"with them" if m != "none" else "without them"} ({m}): {v:.4f}' for m, v in sorted(best.items()))
  won = 'trains on them' if own != 'none' else 'leaves them out'
  return [f'Unlabelled images (`config.data.unlabelled={spec}`): the choice {won} (`semi.method={own}`). The best '
          f'trial {each or "(none completed)"}, each at its own last rung (not like for like). A pool pays off late '
          'and the cheap rungs rank it early: a longer `--mode train` of the choice with the pool '
          '(`semi.thresholds=adaptive`) can do better than this search (fpclass docs/unlabelled.md).', '']


def confirm_summary(models: pd.DataFrame, metrics: tuple, folds: int) -> pd.DataFrame:
  """Per finalist: each metric's mean with its corrected 95% interval over the confirmed members."""
  ratio = (folds - 1) ** -1 if folds > 1 else 0.0
  out = []
  for name, rows in models.groupby('experiment', sort=False):
    entry = dict(variant=name, members=len(rows))
    for m in metrics:
      ci = stats.corrected_interval(rows[m].astype(float), ratio)
      entry.update({f'{m}_mean': ci.mean, f'{m}_ci_low': ci.low, f'{m}_ci_high': ci.high})
    out.append(entry)
  return pd.DataFrame(out)


def _brackets_text(brackets: list) -> str:
  return '; '.join(f'bracket {b["index"] + 1}: ' + ', '.join(f'{r["configs"]} x {r["folds"]} fold x {r["epochs"]} '
                                                              'epochs' for r in b['rungs']) for b in brackets) \
      or 'no bracket'


def _trials_table(study: optuna.Study, metric: str) -> str:
  rows = []
  for t in sorted(study.trials, key=lambda t: t.number):
    if study_lib.is_marker(t):
      continue
    state = 'cut' if t.user_attrs.get(study_lib.CUT) else t.state.name.lower()
    if failed_values.SKIPPED in t.user_attrs:
      state = f'set aside: near failed trial {t.user_attrs[failed_values.SKIPPED]}'
    origin = ('the config as given' if t.user_attrs.get(first_trials.BASELINE)
              else t.user_attrs.get(first_trials.NEIGHBOUR, 'TPE'))
    rows.append(dict(trial=t.number, candidate=t.user_attrs.get('candidate', ''), origin=origin, state=state,
                     value='' if t.value is None else f'{t.value:.4f}',
                     seconds='' if t.duration is None else f'{t.duration.total_seconds():.1f}',
                     rungs=' '.join(f'{v:.3f}' for _, v in sorted(t.intermediate_values.items())),
                     params=', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                                      for k, v in t.params.items() if k != 'model.name')))
  return report.table(rows, ['trial', 'candidate', 'origin', 'state', 'value', 'seconds', 'rungs', 'params']) if rows \
      else '(no trial)'


def _optuna_figures(study: optuna.Study, workdir: pathlib.Path) -> list[str]:
  """Optuna's own matplotlib figures, where the study has enough trials for them."""
  matplotlib.use('Agg')   # optuna draws through pyplot; no window
  from optuna.visualization import matplotlib as optuna_plots  # noqa: E402 -- after choosing the backend
  made = []
  optuna.logging.set_verbosity(optuna.logging.ERROR)   # "no complete trials": the figure is left out, no more
  for name, function in FIGURES.items():
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      try:
        axes = getattr(optuna_plots, function)(study)
      except (ValueError, RuntimeError, ZeroDivisionError):   # too few completed trials, or no parameter varies
        continue
    figure = (axes.flat[0] if hasattr(axes, 'flat') else axes).figure
    fileio.save_figure(workdir / name, figure)
    matplotlib.pyplot.close(figure)
    made.append(name)
  return made
