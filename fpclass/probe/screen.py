"""Screening backbones by a linear probe: each backbone's frozen, pooled features (cached on disk,
`fpclass.probe.pooled_features`), a logistic regression fitted per fold with its L2 strength chosen by inner
cross-validation (`fpclass.probe.linear_probe`), over data.num_folds stratified folds x `config.probe.seeds`,
and the backbones compared with corrected 95% intervals and paired differences. `--mode probe` reports it;
`--mode auto` screens with it.

Multi-label data (config.data.task='multilabel'): per-label stratified folds, one-vs-rest probes, scored by mAP,
macro F1 at 0.5 and the binary log loss; probe.rank_by='accuracy' then ranks by mAP.
"""
import dataclasses
import time

import numpy as np
import pandas as pd

from fpclass.analysis import metrics, multilabel_metrics, stats
from fpclass.config.inputs import SplitSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.data import multilabel_splits, pipeline, splits
from fpclass.infer.predictions import tags_text
from fpclass.probe import linear_probe, pooled_features
from fpclass.probe.report import LOWER_IS_BETTER, METRICS, MULTILABEL_METRICS, TITLES


@dataclasses.dataclass
class ProbeRun:
  """What a probe found: per fold, per backbone (with the intervals) and the paired differences from the best."""
  folds: pd.DataFrame
  predictions: pd.DataFrame
  summary: pd.DataFrame
  differences: pd.DataFrame
  best: str
  names: tuple
  rank_by: str
  note: str            # which images were probed
  count: int
  ratio: float         # n_val / n_train of the folds
  decoded: pipeline.Decoded
  decode_seconds: float
  left_out: tuple = ()  # the backbones a deadline left unprobed


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


def outer_folds(labels: np.ndarray, split: SplitSettings, probe: ProbeSettings,
                class_names=None) -> list[linear_probe.OuterFold]:
  """data.num_folds stratified folds for each probe seed, split with data.split_seed + seed (multi-label:
  stratified per label, with a warning naming any class a training part has no positive of)."""
  out = []
  for seed in probe.seeds:
    count, split_seed = split.num_folds, split.split_seed + int(seed)
    parts = (multilabel_splits.multilabel_kfold_indices(labels, count, split_seed, class_names) if labels.ndim == 2
             else splits.kfold_indices(labels, count, split_seed))
    for fold, (train, val) in enumerate(parts):
      out.append(linear_probe.OuterFold(int(seed), fold, train, val))
  return out


def run_probe(run: RunSettings, settings: ProbeSettings, backbones: list,
              decoded: pipeline.Decoded | None = None, deadline: float | None = None) -> ProbeRun | None:
  """Probes `backbones` (`fpclass.models.probe_backbones.Backbone`s) on every labelled image of the source (`run`:
  the config's typed sections; `settings`: config.probe). With a `deadline` (a time.monotonic() value, auto's
  screen) no backbone starts after it: those left are named in `left_out`, and None says none was probed."""
  start = time.perf_counter()
  decoded = decoded or pipeline.decode_source(run.data)
  images, labels, ids, note = labelled_set(decoded)
  class_names = decoded.class_names
  multilabel = labels.ndim == 2
  names = MULTILABEL_METRICS if multilabel else METRICS
  rank_by = 'map' if multilabel and settings.rank_by == 'accuracy' else settings.rank_by
  folds = outer_folds(labels, run.data.split, settings, class_names)
  linear_probe.check_inner_folds(labels, folds, settings.inner_folds, len(class_names))   # before any pass
  digest = pooled_features.images_digest(images)
  decode_seconds = time.perf_counter() - start
  rows, backbone_rows, predictions, left_out = [], [], [], ()
  for i, backbone in enumerate(backbones):
    if deadline is not None and time.monotonic() >= deadline:
      left_out = tuple(b.label for b in backbones[i:])
      break
    found = pooled_features.features(run, settings, backbone, images, class_names, digest)
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
  if not rows:
    return None
  folds_table = pd.DataFrame(rows)
  ratio = float(np.mean([len(f.val_index) / len(f.train_index) for f in folds]))
  summary = summarise(folds_table, pd.DataFrame(backbone_rows), ratio, names)
  best = best_backbone(summary, rank_by)
  return ProbeRun(folds_table, pd.concat(predictions, ignore_index=True), summary,
                  paired_differences(folds_table, best, ratio, names), best, names, rank_by, note, len(labels),
                  ratio, decoded, decode_seconds, left_out)


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
