"""A sweep's results as tables, a figure and a report section: per variant the mean, spread and corrected 95%
interval of each metric over its runs, paired differences from the baseline, and calibration.

The metrics are accuracy, macro F1 and ROC AUC, or for a multi-label sweep (an experiment with task
'multilabel') mAP and macro F1 at 0.5, whose calibration is per-label thresholds (macro F1 at 0.5 and tuned)
rather than a temperature (ECE before and after)."""
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fpclass.analysis import metric_registry, stats
from fpclass.config.variants import describe_changes
from fpclass.errors import UserInputError
from fpclass.runtime import report

METRICS = metric_registry.summarised(metric_registry.SINGLE)
MULTILABEL_METRICS = metric_registry.summarised(metric_registry.MULTI)


def task_of(experiments: list[dict]) -> str:
  """'multilabel' or 'single_label', the same for every experiment (an experiment.json written before
  multi-label sweeps existed has no task: single-label)."""
  tasks = {e.get('task', 'single_label') for e in experiments}
  if len(tasks) > 1:
    raise UserInputError(f'config.sweep.variants mix single-label and multi-label variants '
                         f'({", ".join(e["name"] + ": " + e.get("task", "single_label") for e in experiments)}); '
                         'compare them in separate sweeps')
  return tasks.pop()


def metrics_of(experiments: list[dict]) -> tuple[str, ...]:
  """The metrics summarised with intervals and compared pairwise, the first of them the headline one."""
  return metric_registry.summarised(task_of(experiments))


def summarise(experiments: list[dict]) -> pd.DataFrame:
  out, names = [], metrics_of(experiments)
  for e in experiments:
    rows = pd.DataFrame(e['rows'])
    entry = dict(experiment=e['name'], changes=describe_changes(e['changes']), models=len(rows))
    for metric in names:
      ci = stats.corrected_interval(rows[metric], e['test_train_ratio'])
      entry.update({f'{metric}_mean': ci.mean, f'{metric}_std': ci.std, f'{metric}_ci_low': ci.low,
                    f'{metric}_ci_high': ci.high})
    calib, timing = e['calibration'], e['timing']
    entry.update(loss_mean=float(rows['loss'].mean()), epochs_trained_mean=float(rows['epochs_trained'].mean()))
    if calib.get('head') == 'multilabel':
      entry.update(macro_f1_at_half=calib['macro_f1_at_half'], macro_f1_tuned=calib['macro_f1_tuned'],
                   thresholds=' '.join(f'{k}={v:.3f}' for k, v in calib['thresholds'].items()))
    else:
      entry.update(ece_before=calib['ece_before'], ece_after=calib['ece_after'], temperature=calib['temperature'],
                   threshold=calib['threshold'])
    entry.update(num_params=e['num_params'],
                 seconds_per_model_epoch=timing['seconds_per_model_epoch'], train_seconds=timing['train_seconds'],
                 wall_seconds=timing['wall_seconds'], test_train_ratio=e['test_train_ratio'])
    out.append(entry)
  return pd.DataFrame(out)


def paired_differences(models: pd.DataFrame, experiments: list[dict], baseline: str) -> pd.DataFrame:
  """Per variant and metric: the variant minus the baseline on the same split and seed (matched on the
  validation indices themselves), with the corrected interval."""
  ratio, names = {e['name']: e['test_train_ratio'] for e in experiments}, metrics_of(experiments)
  base = models[models['experiment'] == baseline].set_index(['split', 'seed'])
  out = []
  for name in [e['name'] for e in experiments if e['name'] != baseline]:
    other = models[models['experiment'] == name].set_index(['split', 'seed'])
    common = other.index.intersection(base.index)
    same = common[(other.loc[common, 'val_hash'] == base.loc[common, 'val_hash']).to_numpy()]
    for metric in names:
      diff = (other.loc[same, metric].astype(float) - base.loc[same, metric].astype(float)).to_numpy()
      ci = stats.corrected_interval(diff, ratio[name])
      out.append(dict(experiment=name, baseline=baseline, metric=metric, pairs=ci.n, mean_difference=ci.mean,
                      std=ci.std, ci_low=ci.low, ci_high=ci.high, wins=int(np.sum(diff > 0)),
                      losses=int(np.sum(diff < 0))))
  return pd.DataFrame(out, columns=['experiment', 'baseline', 'metric', 'pairs', 'mean_difference', 'std', 'ci_low',
                                    'ci_high', 'wins', 'losses'])


def plot_results(summary: pd.DataFrame, models: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> Figure:
  names = summary['experiment'].tolist()
  fig = Figure(figsize=(max(6.0, 1.0 + 0.7 * len(names)), 2.8 * len(metrics) + 0.1), layout='constrained')
  rng = np.random.default_rng(0)
  for ax, metric in zip(fig.subplots(len(metrics), 1, sharex=True), metrics):
    x = np.arange(len(names))
    mean = summary[f'{metric}_mean'].to_numpy(float)
    low = np.nan_to_num(mean - summary[f'{metric}_ci_low'].to_numpy(float))
    high = np.nan_to_num(summary[f'{metric}_ci_high'].to_numpy(float) - mean)
    ax.bar(x, mean, color='#9ecae1', edgecolor='#3182bd', yerr=[low, high], capsize=4, label='mean, 95% CI')
    for i, name in enumerate(names):
      values = models.loc[models['experiment'] == name, metric].astype(float).to_numpy()
      ax.plot(i + rng.uniform(-0.2, 0.2, len(values)), values, '.', color='#08306b', ms=3, alpha=0.7)
    finite = np.concatenate([mean[np.isfinite(mean)], models[metric].astype(float).dropna().to_numpy()])
    if len(finite):
      ax.set_ylim(max(0.0, finite.min() - 0.05), min(1.0, finite.max() + 0.05))
    ax.set_ylabel(metric_registry.title(metric))
    ax.grid(axis='y', alpha=0.3)
  ax.set_xticks(np.arange(len(names)), names, rotation=45 if len(names) > 6 else 0)
  fig.suptitle('validation metrics per variant: bars are means with 95% CI, dots are single models', fontsize=9)
  return fig


def results_table(summary: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> str:
  multilabel = 'macro_f1_tuned' in summary.columns
  calibration = 'macro F1 at 0.5 → thresholds' if multilabel else 'ECE before → after'
  rows = []
  for _, s in summary.iterrows():
    row = dict(variant=s['experiment'], changes=s['changes'], models=int(s['models']))
    for metric in metrics:
      row[metric_registry.title(metric)] = stats.Interval(s[f'{metric}_mean'], s[f'{metric}_std'], s[f'{metric}_ci_low'],
                                                  s[f'{metric}_ci_high'], int(s['models'])).format()
    row[calibration] = (f'{s["macro_f1_at_half"]:.3f} → {s["macro_f1_tuned"]:.3f}' if multilabel else
                        f'{s["ece_before"]:.3f} → {s["ece_after"]:.3f}')
    row['params'] = f'{int(s["num_params"]):,}' if pd.notna(s['num_params']) else ''
    row['s / model-epoch'] = f'{s["seconds_per_model_epoch"]:.2f}'
    row['epochs'] = f'{s["epochs_trained_mean"]:.1f}'
    rows.append(row)
  columns = ['variant', 'changes', 'models', *[metric_registry.title(m) for m in metrics], calibration, 'params',
             's / model-epoch', 'epochs']
  return report.table(rows, columns)


def differences_table(differences: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> str:
  """One row per variant: the paired difference of each metric, and the wins/losses on the first metric."""
  rows, wins = {}, f'{metric_registry.title(metrics[0])} wins/losses'

  for _, d in differences.iterrows():
    row = rows.setdefault(d['experiment'], dict(variant=d['experiment'], pairs=int(d['pairs'])))
    excludes_zero = np.isfinite(d['ci_low']) and (d['ci_low'] > 0 or d['ci_high'] < 0)
    cell = 'n/a' if d['pairs'] < 2 else \
        f'{d["mean_difference"]:+.3f} [{d["ci_low"]:+.3f}, {d["ci_high"]:+.3f}]' + (' *' if excludes_zero else '')
    row[f'Δ {metric_registry.title(d["metric"])}'] = cell
    if d['metric'] == metrics[0]:
      row[wins] = f'{d["wins"]}/{d["losses"]}'
  columns = ['variant', 'pairs', *[f'Δ {metric_registry.title(m)}' for m in metrics], wins]
  return report.table(list(rows.values()), columns)


def sweep_section(config, experiments, summary, differences, baseline, wall) -> str:
  e0, names = experiments[0], metrics_of(experiments)
  multilabel = task_of(experiments) == 'multilabel'
  seeds = sorted({row['seed'] for e in experiments for row in e['rows']})
  splits_used = sorted({row['split'] for e in experiments for row in e['rows']})
  ratio = e0['test_train_ratio']
  interval_note = (f'Intervals are the corrected resampled t-interval (Nadeau & Bengio): mean ± t·sqrt((1/J + '
                   f'n_val/n_train)·s²) over the J runs, with n_val/n_train = {ratio:.3f}, which widens the naive '
                   'interval because folds share training data.' if ratio > 0 else
                   'There is one fixed validation split, so the intervals (t-intervals over the runs) cover '
                   'seed-to-seed variation only, not the choice of validation images.')
  timing = e0['timing']
  lines = ['## Sweep', '',
           f'{len(experiments)} variants × {len(splits_used)} splits ({e0["split_note"]}) × {len(seeds)} seeds '
           f'{seeds} = {int(summary["models"].sum())} models, {wall:.0f} s wall for this launch '
           f'(variants reused from an earlier launch are not counted). Model axis: `{timing["form"]}`, '
           f'{timing["plan"]}.', '',
           'Each cell is mean ± std [95% CI] over the runs of a variant, on each run\'s validation split at its '
           'selected checkpoint' + (' (multi-label: mAP, and macro F1 deciding each label at 0.5)' if multilabel
                                    else '') + '. ' + interval_note, '',
           results_table(summary, names), '',
           f'### Paired differences from `{baseline}`', '',
           'Per run (same split, same seed), the variant minus the baseline; * marks an interval that excludes 0.', '',
           differences_table(differences, names) if len(differences) else '(only one variant)', '',
           '![sweep results](sweep_results.png)', '',
           ('Each variant\'s fold models get one threshold per label, fitted on their out-of-fold predictions; the '
            'macro F1 beside them is at 0.5 and at those thresholds (cross-fitted; see `<variant>/report.md`).'
            if multilabel else
            'ECE is the expected calibration error of each variant\'s fold models on their out-of-fold predictions, '
            'before and after temperature scaling (cross-fitted; see `<variant>/report.md`).') +
           ' Each split\'s best seed '
           'is checkpointed as `<variant>/fold<k>/`; submit their average with '
           '`--mode submit --workdir <sweep>/<variant> --config.submit.average_folds=True` and the variant\'s config.',
           '', 'Files: [sweep_results.csv](sweep_results.csv), [sweep_differences.csv](sweep_differences.csv), '
           '[sweep_models.csv](sweep_models.csv), [sweep_results.md](sweep_results.md).']
  return '\n'.join(lines)
