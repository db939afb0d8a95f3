"""`--mode ensemble`: the best weighted mix of a sweep's variants or an auto run's trials, chosen on their
out-of-fold predictions (`fpclass.ensemble.selection`), and a greedy soup (`fpclass.ensemble.soup`), each
scored cross-fitted against the best single candidate. Writes `<workdir>/<config.ensemble.output>/`:
- metadata.json: an ensemble workdir (members, their models and weights): submit and predict use it as a run;
- ensemble.json: the selection record (every round, each fold's cross-fitted selection, intervals, costs);
- ensemble_predictions.csv: the ensemble's cross-fitted out-of-fold probabilities;
- ensemble.md and a report.md section: best single, ensemble and soup with intervals, parameters, ms per image;
- soup/ (config.ensemble.soup): each fold's soup an ordinary workdir, the folder their ensemble.
"""
import pathlib

import numpy as np

from fpclass import fileio
from fpclass.analysis import metric_registry, stats
from fpclass.analysis.multilabel_calibration import calibrate_thresholds
from fpclass.config.search import EnsembleSettings
from fpclass.config.training import EvalSettings, SweepSettings
from fpclass.ensemble import caruana, selection
from fpclass.ensemble import soup as soups
from fpclass.infer import tta
from fpclass.runtime import report
from fpclass.train import oof, sidecar


def ensemble(config, workdir) -> dict:
  workdir = pathlib.Path(workdir)
  settings = EnsembleSettings.from_config(config.ensemble)
  pool = selection.read_pool(workdir, settings.candidates)
  metric = selection.resolve_metric(settings.metric, pool.task)
  probs, labels, names, task = pool.stacked, pool.labels, [c.name for c in pool.candidates], pool.task
  groups = caruana.crossfit_groups(pool.folds, settings.seed)
  crossfit = caruana.cross_fit(probs, labels, groups, task, metric, settings.max_size, names)
  final = caruana.caruana(probs, labels, task, metric, settings.max_size)
  single, single_scores = caruana.best_single(probs, labels, task, metric)
  def in_sample(predictions):   # chosen on these predictions too; a mean over the folds, as the other columns
    return float(np.nanmean(caruana.group_scores(metric, labels, predictions, groups, task)))
  out = workdir / settings.output
  out.mkdir(parents=True, exist_ok=True)
  members = [(c, w) for c, w in zip(pool.candidates, final.weights) if w > 0]
  metadata = selection.workdir_metadata(out, members, metric.name)
  mixed = final.mix(probs)
  if task == metric_registry.MULTI:   # per-label thresholds of the mix, applied by submit and predict
    threshold_metric = SweepSettings.from_config(config.sweep).threshold_metric
    thresholds = calibrate_thresholds(mixed, labels, pool.class_names, groups, threshold_metric)
    metadata['calibration'] = dict(thresholds, tta=tta.TTA().as_dict())
    pool.notes.append(f'per-label thresholds fitted on the ensemble\'s out-of-fold probabilities ({threshold_metric}): '
                      f'macro F1 {thresholds["macro_f1_at_half"]:.4f} at 0.5, {thresholds["macro_f1_tuned"]:.4f} '
                      'tuned (cross-fitted over the folds); submit and predict apply them')
  sidecar.write_metadata(out, metadata)
  split, positions = selection.examples(pool)
  batch = split.images[positions[:settings.timing_batch]]
  rows = [_row('best single', names[single], [pool.candidates[single]], crossfit.interval('best_single'), None,
               in_sample(probs[single]), batch),
          _row('ensemble', ', '.join(f'{c.name} x{w:.2f}' for c, w in members), [c for c, _ in members],
               crossfit.interval('ensemble'), crossfit.interval('difference'),
               in_sample(mixed), batch)]
  soup_record, notes = None, list(pool.notes)
  by_fold = soups.ingredients(pool.candidates)
  if settings.soup and soups.soupable(by_fold) and set(by_fold) == set(pool.folds.tolist()):
    folder = out / 'soup'
    made, honest, soup_in_sample = soups.make(folder, by_fold, pool, split.images, positions, metric,
                                         EvalSettings.from_config(config.eval).batch_size, settings.seed)
    per_group = caruana.group_scores(metric, labels, honest, groups, task)
    rows.append(_row('soup', f'{len(made)} fold soups of {sum(len(s.kept) for s in made)} of '
                     f'{sum(len(s.items) for s in made)} fold models', None,
                     stats.corrected_interval(per_group, crossfit.ratio),
                     caruana.paired(per_group, [r['best_single'] for r in crossfit.rows], crossfit.ratio),
                     in_sample(soup_in_sample), batch, folder))
    soup_record = dict(soups.record(made, out, metric), per_group=per_group)
  elif settings.soup:
    notes.append('no soup: ' + ('the candidates\' fold models do not cover the folds their predictions name'
                                if soups.soupable(by_fold) else 'no two fold models share their model keys and '
                                'initialisation (pretrained weights, or the seed of a random init)'))
  selection.write_predictions(out / oof.ENSEMBLE_FILE, pool, crossfit.ensemble)
  record = dict(metric=metric.name, task=task, max_size=settings.max_size, candidates=names,
                single_scores=dict(zip(names, single_scores)),
                rounds=[dict(candidate=names[i], score=s) for i, s in zip(final.path, final.scores)],
                kept_rounds=final.rounds, weights={c.name: float(w) for c, w in members},
                crossfit=crossfit.rows, table=rows, soup=soup_record, notes=notes)
  fileio.write_json(out / 'ensemble.json', record)
  section = _section(workdir, out, metric, rows, crossfit, notes, len(names))
  fileio.write_text(out / 'ensemble.md', section + '\n')
  report.write_section(out, '55-ensemble', section)
  print(report.table(rows, COLUMNS))
  print(f'{out}: ensemble of {len(members)} of {len(names)} candidates; submit or predict with --workdir {out}')
  return record


COLUMNS = ['model', 'what', 'models', 'cross-fitted', 'vs best single', 'in-sample', 'parameters', 'ms per image']


def _row(name, what, candidates, interval, difference, in_sample, batch, soup_folder=None) -> dict:
  """A table row; its cost is that of every model a prediction runs (the soup: one per fold)."""
  if soup_folder is not None:
    models = sorted(p for p in soup_folder.iterdir() if (p / sidecar.METADATA).is_file())
    count, params = len(models), sum(sidecar.read_metadata(p)['num_params'] for p in models)
    ms = count * selection.ms_per_image(models[0], batch)
  else:
    count = sum(len(c.models) for c in candidates)
    params = sum(c.num_params * len(c.models) for c in candidates)
    ms = sum(len(c.models) * selection.ms_per_image(c.models[0], batch) for c in candidates)
  return {'model': name, 'what': what, 'models': count, 'cross-fitted': interval.format(4),
          'vs best single': difference.format(4) if difference is not None else '',
          'in-sample': in_sample, 'parameters': params, 'ms per image': round(ms, 3)}


def _section(workdir, out, metric, rows, crossfit, notes, candidates) -> str:
  groups = len(crossfit.rows)
  lines = ['## Ensemble', '',
           f'{candidates} candidates of `{workdir}`, selected by {metric.title} (Caruana, with replacement). '
           f'Cross-fitted: each of {groups} folds scored by a selection (and a best single candidate) chosen on '
           f'the other {groups - 1}; the soup chosen on half of each fold\'s images and scored on the other half. '
           'Means over the folds with 95% intervals (Nadeau-Bengio); "vs best single" is the paired difference. '
           'In-sample: chosen and scored on the same predictions (optimistic).', '',
           report.table(rows, COLUMNS), '',
           f'Submit or predict with `--workdir {out}`' + (f', or the soup with `--workdir {out / "soup"}`'
                                                          if any(r['model'] == 'soup' for r in rows) else '')
           + '. Record: [ensemble.json](ensemble.json).']
  return '\n'.join(lines + [f'- {n}' for n in notes])
