"""The report of a linear probe (`fpclass.probe.screen`): its figure, its tables and its report section."""
import pathlib

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fpclass.analysis import stats
from fpclass.config.inputs import SplitSettings
from fpclass.runtime import report

METRICS = ('accuracy', 'macro_f1', 'log_loss')
MULTILABEL_METRICS = ('map', 'macro_f1', 'log_loss')
TITLES = dict(accuracy='accuracy', macro_f1='macro F1', log_loss='log loss', map='mAP')
LOWER_IS_BETTER = ('log_loss',)


def plot_results(summary: pd.DataFrame, folds_table: pd.DataFrame, best: str,
                 names: tuple[str, ...] = METRICS) -> Figure:
  labels = summary['backbone'].tolist()
  colours = ['#fdae6b' if label == best else '#9ecae1' for label in labels]
  fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(labels)), 8.5), layout='constrained')
  rng = np.random.default_rng(0)
  x = np.arange(len(labels))
  for ax, metric in zip(fig.subplots(len(names), 1, sharex=True), names):
    mean = summary[f'{metric}_mean'].to_numpy(float)
    low = np.nan_to_num(mean - summary[f'{metric}_ci_low'].to_numpy(float))
    high = np.nan_to_num(summary[f'{metric}_ci_high'].to_numpy(float) - mean)
    ax.bar(x, mean, color=colours, edgecolor='#3182bd', yerr=[low, high], capsize=4)
    for i, label in enumerate(labels):
      values = folds_table.loc[folds_table['backbone'] == label, metric].to_numpy(float)
      ax.plot(i + rng.uniform(-0.2, 0.2, len(values)), values, '.', color='#08306b', ms=3, alpha=0.7)
    values = np.concatenate([mean, folds_table[metric].to_numpy(float)])
    if metric not in LOWER_IS_BETTER:
      ax.set_ylim(max(0.0, values.min() - 0.05), min(1.0, values.max() + 0.05))
    ax.set_ylabel(TITLES[metric])
    ax.grid(axis='y', alpha=0.3)
  ax.set_xticks(x, labels, rotation=30 if len(labels) > 4 else 0)
  fig.suptitle(f'linear probe per backbone: bars are means with 95% CI (corrected), dots are single folds; '
               f'orange: the best, {best}', fontsize=9)
  return fig


def _interval(s, metric) -> str:
  return stats.Interval(s[f'{metric}_mean'], s[f'{metric}_std'], s[f'{metric}_ci_low'], s[f'{metric}_ci_high'],
                        int(s['folds'])).format()


def results_table(summary: pd.DataFrame, names: tuple[str, ...] = METRICS) -> str:
  rows = []
  for _, s in summary.iterrows():
    weights = pathlib.Path(s['weights']).name if '/' in s['weights'] else s['weights']   # a file: its name
    row = dict(backbone=s['backbone'], weights=weights, features=int(s['feature_dim']), folds=int(s['folds']))
    row.update({TITLES[m]: _interval(s, m) for m in names})
    row['C (median)'] = f'{s["c_median"]:.3g}'
    row['feature s'] = (f'{s["feature_seconds"]:.1f} (cached; {s["feature_pass_seconds"]:.1f} when computed)'
                        if s['feature_cached'] else f'{s["feature_seconds"]:.1f}')
    row['fit s'] = f'{s["fit_seconds"]:.1f}'
    rows.append(row)
  return report.table(rows, ['backbone', 'weights', 'features', 'folds', *[TITLES[m] for m in names], 'C (median)',
                             'feature s', 'fit s'])


def differences_table(differences: pd.DataFrame, names: tuple[str, ...] = METRICS) -> str:
  rows, wins = {}, f'{TITLES[names[0]]} wins/losses'

  for _, d in differences.iterrows():
    row = rows.setdefault(d['backbone'], dict(backbone=d['backbone'], pairs=int(d['pairs'])))
    excludes_zero = np.isfinite(d['ci_low']) and (d['ci_low'] > 0 or d['ci_high'] < 0)
    row[f'Δ {TITLES[d["metric"]]}'] = 'n/a' if d['pairs'] < 2 else \
        f'{d["mean_difference"]:+.3f} [{d["ci_low"]:+.3f}, {d["ci_high"]:+.3f}]' + (' *' if excludes_zero else '')
    if d['metric'] == names[0]:
      row[wins] = f'{d["wins"]}/{d["losses"]}'
  return report.table(list(rows.values()), ['backbone', 'pairs', *[f'Δ {TITLES[m]}' for m in names], wins])


def probe_section(split: SplitSettings, settings, summary, differences, best, note, count, ratio, seconds,
                  names: tuple[str, ...] = METRICS, rank_by: str | None = None) -> str:
  feature_seconds = float(summary['feature_seconds'].sum())
  fit_seconds = float(summary['fit_seconds'].sum())
  rank_by = rank_by or settings.rank_by
  multilabel = 'map' in names
  model = ('one-vs-rest logistic regressions (one binary probe per class, each with its own C)' if multilabel
           else 'a logistic regression')
  lines = [
      '## Linear probe: which backbone?', '',
      f'{len(summary)} backbones, each {model} on its frozen, pooled features '
      f'(`probe.pooling={settings.pooling}`{", with flip TTA" if settings.flip_tta else ""}) of {count} images '
      f'({note}), over {split.num_folds} {"per-label " if multilabel else ""}stratified folds × seeds '
      f'{list(settings.seeds)} (split_seed '
      f'{split.split_seed} + seed). In each fold the L2 strength C is chosen from {len(settings.c_values)} '
      f'values ({min(settings.c_values):.0e} to {max(settings.c_values):.0e}) by {settings.inner_folds}-fold inner '
      f'cross-validation on log loss, then refitted on the fold\'s training rows (solver `{settings.solver}`).'
      + (' Macro F1 decides each class at 0.5; log loss is the binary one, averaged over every (image, class).'
         if multilabel else ''), '',
      'Each cell is mean ± std [95% CI] over the folds. Intervals are the corrected resampled t-interval (Nadeau & '
      f'Bengio): mean ± t·sqrt((1/J + n_val/n_train)·s²) over the J folds, with n_val/n_train = {ratio:.3f}.', '',
      results_table(summary, names), '',
      f'### Paired differences from the best backbone, `{best}` (by {TITLES[rank_by]})', '',
      'Per fold (same seed, same split), the backbone minus the best; * marks an interval that excludes 0 '
      '(log loss: lower is better). Wins/losses: the folds where the backbone beat the best / lost to it.', '',
      differences_table(differences, names) if len(differences) else '(only one backbone)', '',
      '![probe results](probe_results.png)', '',
      f'Time: {seconds["wall"]:.1f} s for this launch: decoding {seconds["decode"]:.1f} s, feature passes '
      f'{feature_seconds:.1f} s (cached ones: reading them), fits {fit_seconds:.1f} s, the rest (tables, plot) '
      f'{seconds["wall"] - seconds["decode"] - feature_seconds - fit_seconds:.1f} s.', '',
      'Files: [probe_results.csv](probe_results.csv), [probe_differences.csv](probe_differences.csv), '
      '[probe_folds.csv](probe_folds.csv), [probe_predictions.csv](probe_predictions.csv).']
  return '\n'.join(lines)
