"""Calibrating an ensemble workdir (`--mode ensemble`'s, or an auto run's final ensemble): the temperature and
two-class threshold (single-label) or per-label thresholds (multi-label), fitted on the ensemble's out-of-fold
probabilities with the maths of one model's calibration (`fpclass.infer.calibrate_models`), and stored as the
ensemble's own `calibration` in its metadata.json. Its readers (`fpclass.infer.ensemble.WeightedEnsemble`, submit)
apply it to the mix: the temperature divides the mix's logits (`heads.as_logits`), after the models' probabilities
are averaged, so it is fitted on the mix's probabilities, not on any member's. No model runs, and the members'
own sidecars are untouched.

The probabilities are ensemble_predictions.csv when --mode ensemble wrote it (cross-fitted: each fold's examples
mixed with the weights chosen on the other folds), else the weighted mean, per example id, of the members'
oof_predictions.csv (their folder's, or their models' workdirs'; each member's seeds averaged first, as --mode
ensemble chose the weights on them).
"""
import dataclasses
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import metric_registry, multilabel_calibration
from fpclass.analysis.calibration import calibrate_predictions, scaled_probabilities
from fpclass.config.run import RunSettings
from fpclass.errors import UserInputError
from fpclass.infer import ensemble, tta
from fpclass.infer.calibrate_models import calibration_section, plot_reliability, store_in_sidecar
from fpclass.models.heads import as_logits, head_of
from fpclass.runtime import report
from fpclass.train import oof, sidecar

PREDICTIONS = oof.ENSEMBLE_FILE   # --mode ensemble's cross-fitted out-of-fold probabilities, or auto's fixed mix
STORED_IN = 'the ensemble\'s metadata.json (its members\' own are untouched)'
MIX_NOTE = ('\n\nThe temperature divides the logits of the ensemble\'s mix (the log of its models\' weighted mean '
            'probabilities): it is applied after the models are averaged, as it was fitted.')


@dataclasses.dataclass
class OutOfFold:
  """An ensemble's out-of-fold probabilities: one row per example (id, split, label columns, p_<class>)."""
  frame: pd.DataFrame
  what: str     # what they are, for the report
  detail: str   # where they come from


def out_of_fold(workdir) -> OutOfFold:
  """The ensemble's cross-fitted predictions file, else its members' out-of-fold probabilities mixed with the
  ensemble's weights."""
  workdir = pathlib.Path(workdir)
  record = ensemble.ensemble_record(workdir)
  if (workdir / PREDICTIONS).is_file():
    frame = pd.read_csv(workdir / PREDICTIONS, dtype={'id': str, 'label': str})
    return OutOfFold(frame, 'cross-fitted out-of-fold probabilities of the ensemble',
                     f'{PREDICTIONS}: each fold\'s examples mixed with weights fixed or chosen on the other '
                     'folds')
  frames, weights = [], []
  for entry in record['members']:
    folder = workdir / entry['folder']
    frames.append((folder, oof.mean_by_id(_member_predictions(workdir, folder, entry['models']), keep=('split',))))
    weights.append(float(entry['weight']))
  first_folder, first = frames[0]
  names, labels = oof.class_names(first), oof.label_columns(first)
  for folder, frame in frames[1:]:
    if oof.class_names(frame) != names:
      raise UserInputError(f'{folder / oof.FILE}: classes {oof.class_names(frame)} differ from {names} of '
                           f'{first_folder / oof.FILE}')
    if set(frame.index) != set(first.index):
      raise UserInputError(f'{folder / oof.FILE}: predicted {len(frame)} examples, {first_folder / oof.FILE} '
                           f'{len(first)} others; the members of the ensemble in {workdir} must share their examples')
    if not frame.loc[first.index, labels].equals(first[labels]):
      raise UserInputError(f'{folder / oof.FILE}: its examples carry other labels than {first_folder / oof.FILE}\'s '
                           '(a relabelled run?)')
  columns = [f'p_{c}' for c in names]
  mixed = ensemble.weighted_mean([frame.loc[first.index, columns].to_numpy(np.float64) for _, frame in frames],
                                 weights)
  frame = first[['split', *labels]].assign(**dict(zip(columns, mixed.T))).reset_index()
  shares = ', '.join(f'{entry["folder"]} x{weight:.2f}' for entry, weight in zip(record['members'], weights))
  return OutOfFold(frame, 'out-of-fold probabilities of the ensemble\'s members, mixed per example with its weights',
                   f'{shares}; no {PREDICTIONS} here, and the weights were chosen on these same predictions, so '
                   'the figures are a little optimistic')


def _member_predictions(workdir, folder: pathlib.Path, models) -> pd.DataFrame:
  """A member's out-of-fold predictions: its folder's file, else those of its models' workdirs together."""
  if (folder / oof.FILE).is_file():
    return oof.read(folder)
  found = [folder / name for name in models if (folder / name / oof.FILE).is_file()]
  if not found:
    raise UserInputError(f'{folder}: no {oof.FILE} in this member of the ensemble in {workdir}, nor in its models\' '
                         f'workdirs ({", ".join(models)}); run --mode ensemble again on its sweep or auto workdir')
  return pd.concat([oof.read(path) for path in found], ignore_index=True)


def calibrate_ensemble(config, run: RunSettings, workdir) -> dict:
  """`--mode calibrate` on an ensemble workdir: fit on its out-of-fold probabilities, store the result as the
  ensemble's calibration, and write reliability.png, calibration.json, calibration_predictions.csv and the
  report section. `run`: `config`'s typed sections."""
  workdir = pathlib.Path(workdir)
  if tta.calibration_settings(config).on:
    raise UserInputError(f'{workdir} is an ensemble workdir: it is calibrated on its out-of-fold probabilities, which '
                         'are plain predictions; set config.submit.tta and config.predict.tta off to calibrate it')
  bins, metric = run.sweep.ece_bins, run.sweep.threshold_metric
  source = out_of_fold(workdir)
  frame = source.frame
  class_names = tuple(sidecar.read_metadata(workdir)['class_names'])
  if tuple(oof.class_names(frame)) != tuple(map(str, class_names)):
    raise UserInputError(f'{workdir}: its out-of-fold probabilities have the classes {oof.class_names(frame)}, its '
                         f'metadata.json {list(class_names)}; run --mode ensemble again')
  labels, probs, task = oof.labels_and_probabilities(frame)
  groups = frame['split'].to_numpy(np.int64)
  fitted_on = f'{source.what} (n={len(labels)}; {source.detail})'
  out = frame[['id', 'split', *oof.label_columns(frame)]].copy()
  if task == metric_registry.MULTI:
    result = multilabel_calibration.calibrate_thresholds(probs, labels, class_names, groups, metric)
    result['fitted_on'] = fitted_on
    section = multilabel_calibration.calibration_section(result, STORED_IN)
    out = out.assign(**{f'p_{c}': probs[:, k] for k, c in enumerate(class_names)})
    shown = ', '.join(f'{name} {t:.3f}' for name, t in result['thresholds'].items())
    summary = (f'per-label thresholds {shown}; macro F1 {result["macro_f1_at_half"]:.4f} at 0.5 -> '
               f'{result["macro_f1_tuned"]:.4f} (cross-fitted)')
  else:
    if metric == 'f2':
      raise UserInputError("config.sweep.threshold_metric='f2' is for multi-label thresholds; choose f1 or macro_f1")
    head = head_of(run)
    logits = as_logits(probs, head)   # the mix's logits, as WeightedEnsemble gives them to the decision
    result, crossfit = calibrate_predictions(logits, labels, head, groups, bins, metric)
    result['fitted_on'] = fitted_on
    after = scaled_probabilities(logits, head, result['temperature'])
    out = out.assign(**{f'p_{c}': probs[:, k] for k, c in enumerate(class_names)},
                     **{f'p_{c}_calibrated': after[:, k] for k, c in enumerate(class_names)})
    after_label = f'after (T={result["temperature"]:.2f}, cross-fitted over {result["crossfit_groups"]} groups)'
    fileio.save_figure(workdir / 'reliability.png',
                       plot_reliability(probs, crossfit, labels, bins, 'the ensemble\'s out-of-fold mix', after_label))
    section = calibration_section(result, STORED_IN) + MIX_NOTE
    summary = (f'temperature {result["temperature"]:.3f} on the mix, ECE {result["ece_before"]:.4f} -> '
               f'{result["ece_after"]:.4f} (cross-fitted)'
               + (f', threshold {result["threshold"]:.3f}' if result['threshold'] is not None else ''))
  result['tta'] = tta.TTA().as_dict()   # fitted on plain predictions: predict and submit refuse TTA with it
  store_in_sidecar(workdir, result)
  fileio.write_csv(workdir / 'calibration_predictions.csv', out)
  fileio.write_json(workdir / 'calibration.json', result)
  report.write_section(workdir, '45-calibration', section)
  print(f'{workdir} (ensemble): {summary}')
  return result
