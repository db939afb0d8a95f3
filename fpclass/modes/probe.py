"""`--mode probe`: which backbone for my data? Each backbone of `config.probe.backbones` is screened by a linear
probe on its frozen, pooled features, over data.num_folds stratified folds x `config.probe.seeds`, and the
backbones are compared with confidence intervals.

Multi-label data (config.data.task='multilabel'): per-label stratified folds, one-vs-rest probes (one binary
logistic regression per class, `fpclass.analysis.linear_probe`), scored by mAP, macro F1 at 0.5 and the binary
log loss (`fpclass.analysis.multilabel_metrics`); probe.rank_by='accuracy' then ranks by mAP.

Design notes: docs/modules.md (`fpclass/modes/probe.py`).
"""
import pathlib
import time

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fpclass import fileio
from fpclass.analysis import linear_probe, metrics, multilabel_metrics, stats
from fpclass.config.outputs import ProbeSettings
from fpclass.data import multilabel_splits, pipeline, splits
from fpclass.errors import UserInputError
from fpclass.infer import pooled_features
from fpclass.infer.predictions import tags_text
from fpclass.models import probe_backbones
from fpclass.runtime import report

METRICS = ('accuracy', 'macro_f1', 'log_loss')
MULTILABEL_METRICS = ('map', 'macro_f1', 'log_loss')
TITLES = dict(accuracy='accuracy', macro_f1='macro F1', log_loss='log loss', map='mAP')
LOWER_IS_BETTER = ('log_loss',)


def fold_scores(labels: np.ndarray, probs: np.ndarray, class_names) -> dict:
  """A fold's figures: accuracy, macro F1, log loss; multi-label: mAP, macro F1 deciding each class at 0.5,
  and the binary log loss averaged over every (image, class)."""
  if labels.ndim == 2:
    scores = metrics.multilabel_epoch_metrics(labels, probs)
    return dict(map=scores['map'], macro_f1=scores['macro_f1'], log_loss=scores['loss'],
                micro_f1=multilabel_metrics.f1(labels, multilabel_metrics.predict(probs, 0.5), 'micro'))
  scores = metrics.scores(labels, probs, class_names)
  return dict(accuracy=scores['accuracy'], macro_f1=scores['macro_f1'], log_loss=scores['loss'])


def labelled_set(decoded: pipeline.Decoded):
  """(uint8 images, int labels, ids, note): every labelled image of the source."""
  pool = decoded.pool
  if decoded.val is None:
    return pool.images, pool.labels.astype(np.int64), list(pool.ids), 'the labelled training images'
  return (np.concatenate([pool.images, decoded.val.images]),
          np.concatenate([pool.labels, decoded.val.labels]).astype(np.int64), list(pool.ids) + list(decoded.val.ids),
          "the labelled training images and the source's own validation images, pooled")


def outer_folds(labels: np.ndarray, config, class_names=None) -> list[linear_probe.OuterFold]:
  """data.num_folds stratified folds for each probe seed, split with data.split_seed + seed (multi-label:
  stratified per label, with a warning naming any class a training part has no positive of)."""
  out = []
  for seed in config.probe.seeds:
    count, split_seed = int(config.data.num_folds), int(config.data.split_seed) + int(seed)
    parts = (multilabel_splits.multilabel_kfold_indices(labels, count, split_seed, class_names) if labels.ndim == 2
             else splits.kfold_indices(labels, count, split_seed))
    for fold, (train, val) in enumerate(parts):
      out.append(linear_probe.OuterFold(int(seed), fold, train, val))
  return out


def probe(config, workdir) -> pd.DataFrame:
  workdir = pathlib.Path(workdir)
  settings = ProbeSettings.from_config(config.probe)
  backbones = probe_backbones.parse_backbones(config)
  if not backbones:
    raise UserInputError('config.probe.backbones is empty: list the backbones to screen, e.g. '
                         "--config.probe.backbones=\"('resnet50', 'vit_b16')\"; registered: "
                         f'{probe_backbones.valid_backbones()}')
  start = time.perf_counter()
  workdir.mkdir(parents=True, exist_ok=True)
  decoded = pipeline.decode_source(config)
  pipeline.write_quarantine_report(workdir / 'quarantine.csv', decoded.quarantine)
  images, labels, ids, note = labelled_set(decoded)
  class_names = decoded.class_names
  multilabel = labels.ndim == 2
  names = MULTILABEL_METRICS if multilabel else METRICS
  rank_by = 'map' if multilabel and settings.rank_by == 'accuracy' else settings.rank_by
  folds = outer_folds(labels, config, class_names)
  linear_probe.check_inner_folds(labels, folds, settings.inner_folds, len(class_names))   # before any pass
  digest = pooled_features.images_digest(images)
  decode_seconds = time.perf_counter() - start
  rows, backbone_rows, predictions = [], [], []
  for backbone in backbones:
    found = pooled_features.features(config, backbone, images, class_names, digest)
    fit_start = time.perf_counter()
    fits = linear_probe.fit_folds(found.values, labels, folds, num_classes=len(class_names),
                                  c_values=settings.c_values, inner=settings.inner_folds, solver=settings.solver,
                                  max_iter=settings.max_iter, class_names=class_names)
    fit_seconds = time.perf_counter() - fit_start
    for fit in fits:
      val = fit.split.val_index
      label_c = {} if fit.label_c is None else {f'c_{c}': fit.label_c[j] for j, c in enumerate(class_names)}
      rows.append(dict(backbone=backbone.label, seed=fit.split.seed, fold=fit.split.fold,
                       **fold_scores(labels[val], fit.probabilities, class_names), c=fit.c, **label_c,
                       iterations=fit.iterations, n_train=len(fit.split.train_index), n_val=len(val)))
      shown = [tags_text(row, class_names) for row in labels[val]] if multilabel else \
          [class_names[i] for i in labels[val]]
      predictions.append(pd.DataFrame({'backbone': backbone.label, 'seed': fit.split.seed, 'fold': fit.split.fold,
                                       'id': [ids[i] for i in val], 'label': shown,
                                       **{f'p_{c}': fit.probabilities[:, j] for j, c in enumerate(class_names)}}))
    backbone_rows.append(dict(backbone=backbone.label, model=backbone.name,
                              weights=backbone.weights or 'random init', feature_dim=int(found.values.shape[1]),
                              feature_seconds=found.seconds, feature_cached=found.cached,
                              feature_pass_seconds=found.pass_seconds, fit_seconds=fit_seconds))
    headline = np.mean([r[names[0]] for r in rows if r['backbone'] == backbone.label])
    print(f'[{backbone.label}] mean {TITLES[names[0]]} {headline:.4f} over {len(fits)} folds (fit {fit_seconds:.1f}s)')
  folds_table = pd.DataFrame(rows)
  ratio = float(np.mean([len(f.val_index) / len(f.train_index) for f in folds]))
  summary = summarise(folds_table, pd.DataFrame(backbone_rows), ratio, names)
  best = best_backbone(summary, rank_by)
  differences = paired_differences(folds_table, best, ratio, names)
  fileio.write_csv(workdir / 'probe_folds.csv', folds_table)
  fileio.write_csv(workdir / 'probe_predictions.csv', pd.concat(predictions, ignore_index=True))
  fileio.write_csv(workdir / 'probe_results.csv', summary)
  fileio.write_csv(workdir / 'probe_differences.csv', differences)
  fileio.save_figure(workdir / 'probe_results.png', plot_results(summary, folds_table, best, names))
  wall = time.perf_counter() - start
  section = probe_section(config, settings, summary, differences, best, note, len(labels), ratio,
                          dict(wall=wall, decode=decode_seconds), names, rank_by)
  fileio.write_text(workdir / 'probe_results.md', section + '\n')
  report.write_section(workdir, '50-probe', section)
  print(results_table(summary, names))
  print(f'{workdir}: {len(backbones)} backbones x {len(folds)} folds, best {best} by {TITLES[rank_by]}, '
        f'{wall:.0f}s')
  return summary


def summarise(folds_table: pd.DataFrame, backbones: pd.DataFrame, ratio: float,
              names: tuple[str, ...] = METRICS) -> pd.DataFrame:
  out = []
  for _, b in backbones.iterrows():
    rows = folds_table[folds_table['backbone'] == b['backbone']]
    entry = dict(b)
    entry['folds'] = len(rows)
    for metric in names:
      ci = stats.corrected_interval(rows[metric], ratio)
      entry.update({f'{metric}_mean': ci.mean, f'{metric}_std': ci.std, f'{metric}_ci_low': ci.low,
                    f'{metric}_ci_high': ci.high})
    entry['c_median'] = float(rows['c'].median())   # multi-label: of each fold's median over its classes
    out.append(entry)
  return pd.DataFrame(out)


def best_backbone(summary: pd.DataFrame, rank_by: str) -> str:
  """The best mean `rank_by` (log loss: the lowest); ties go to the lower mean log loss, then the list order."""
  sign = 1.0 if rank_by in LOWER_IS_BETTER else -1.0
  order = sorted(range(len(summary)), key=lambda i: (sign * summary[f'{rank_by}_mean'].iloc[i],
                                                      summary['log_loss_mean'].iloc[i], i))
  return str(summary['backbone'].iloc[order[0]])


def paired_differences(folds_table: pd.DataFrame, best: str, ratio: float,
                       names: tuple[str, ...] = METRICS) -> pd.DataFrame:
  """Per backbone and metric: the backbone minus the best one on the same seed and fold, with the corrected
  interval (the folds' shared variation cancels)."""
  base = folds_table[folds_table['backbone'] == best].set_index(['seed', 'fold'])
  out = []
  for name in folds_table['backbone'].unique():
    if name == best:
      continue
    other = folds_table[folds_table['backbone'] == name].set_index(['seed', 'fold'])
    common = other.index.intersection(base.index)
    for metric in names:
      diff = (other.loc[common, metric] - base.loc[common, metric]).to_numpy(float)
      ci = stats.corrected_interval(diff, ratio)
      better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
      worse = diff > 0 if metric in LOWER_IS_BETTER else diff < 0
      out.append(dict(backbone=name, best=best, metric=metric, pairs=ci.n, mean_difference=ci.mean, std=ci.std,
                      ci_low=ci.low, ci_high=ci.high, wins=int(np.sum(better)), losses=int(np.sum(worse))))
  return pd.DataFrame(out, columns=['backbone', 'best', 'metric', 'pairs', 'mean_difference', 'std', 'ci_low',
                                    'ci_high', 'wins', 'losses'])


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


def probe_section(config, settings, summary, differences, best, note, count, ratio, seconds,
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
      f'({note}), over {config.data.num_folds} {"per-label " if multilabel else ""}stratified folds × seeds '
      f'{list(settings.seeds)} (split_seed '
      f'{config.data.split_seed} + seed). In each fold the L2 strength C is chosen from {len(settings.c_values)} '
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
