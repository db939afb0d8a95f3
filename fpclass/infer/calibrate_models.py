"""Calibrating trained models: fit temperature and threshold on validation predictions, store them in each
model's sidecar (metadata.json, key `calibration`), where submit and predict find them, and report before/after.
`--mode calibrate` runs it on a workdir; `--mode sweep` on each variant's fold models. With test-time
augmentation on (config.submit.tta or config.predict.tta), they are fitted on the TTA predictions. An ensemble
workdir is calibrated on its mix by `fpclass.ensemble.calibration`."""
import pathlib

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fpclass import fileio
from fpclass.analysis import multilabel_calibration
from fpclass.analysis.calibration import (
  calibrate_predictions,
  expected_calibration_error,
  reliability_bins,
  scaled_probabilities,
)
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.infer import ensemble, tta
from fpclass.models.heads import head_of, probabilities
from fpclass.runtime import report
from fpclass.train import sidecar


def plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray, bins: int, title: str = '',
                     after_label: str = 'after') -> Figure:
  """Accuracy against confidence per bin, before and after calibration, over a histogram of confidences."""
  fig = Figure(figsize=(5.2, 5.6), layout='constrained')
  top, bottom = fig.subplots(2, 1, gridspec_kw=dict(height_ratios=(3, 1)), sharex=True)
  top.plot([0, 1], [0, 1], color='grey', ls='--', lw=1, label='perfect calibration')
  for name, probs, style in (('before', before, 'o-'), (after_label, after, 's-')):
    count, conf, acc = reliability_bins(probs, labels, bins)
    used = count > 0
    top.plot(conf[used], acc[used], style, ms=4,
             label=f'{name}: ECE {expected_calibration_error(probs, labels, bins):.3f}')
    bottom.hist(probs.max(1), bins=np.linspace(0, 1, bins + 1), histtype='step', label=name)
  top.set_ylabel('accuracy')
  top.set_title(title or 'reliability (validation)', fontsize=10)
  top.legend(fontsize=8, loc='upper left')
  top.grid(alpha=0.3)
  bottom.set_xlabel('top-class confidence')
  bottom.set_ylabel('images')
  return fig


def store_in_sidecar(workdir, calibration: dict) -> None:
  """Adds the calibration to the model's metadata.json, where submit finds it next to the checkpoint."""
  metadata = sidecar.read_metadata(workdir)
  metadata['calibration'] = calibration
  sidecar.write_metadata(workdir, metadata)


def calibrate(config, workdir, decoded=None, predictions: dict | None = None) -> dict:
  """`--mode calibrate`: fit on a workdir's validation predictions, or on the out-of-fold predictions of
  the member workdirs (fold0/, fold1/, ...) of a sweep experiment folder; store and report the result.
  `predictions` ({member folder name: validation logits}) are the members' own, computed while they trained
  (a sweep's), so no model predicts its split again, unless test-time augmentation is on: its predictions
  are the restored models' own (`fpclass.infer.tta.calibration_settings`)."""
  workdir = pathlib.Path(workdir)
  if ensemble.ensemble_record(workdir) is not None:   # storing here would rewrite its members' own runs
    raise UserInputError(f'{workdir} is an ensemble workdir (--mode ensemble): --mode calibrate fits it on its '
                         'out-of-fold probabilities (fpclass.ensemble.calibration), not on its members\' own')
  tta_settings = tta.calibration_settings(config)
  if tta_settings.on:
    predictions = None   # the logits training computed are plain ones
  members = ensemble.load_members(config, workdir, folds=bool(ensemble.member_workdirs(workdir)),
                                  restore=predictions is None)
  run = members[0].settings   # the given config with the first member's split: its sweep, eval and data sections
  bins, metric = run.sweep.ece_bins, run.sweep.threshold_metric   # both checked by SweepSettings
  decoded = decoded or pipeline.decode_source(run.data)
  batch_size = run.eval.batch_size
  frames, logits, labels, groups = [], [], [], []
  for g, member in enumerate(members):
    val = pipeline.split_dataset(decoded, member.settings.data.split).val
    member_logits = (predictions[member.path.name] if predictions is not None else
                     member.trained.logits(val.images, batch_size, tta_settings=tta_settings))
    logits.append(member_logits)
    labels.append(val.labels)
    groups.append(np.full(len(val), g))
    frames.append(pd.DataFrame({'member': member.path.name if member.path != workdir else '.', 'id': val.ids}))
  logits, labels, groups = np.concatenate(logits), np.concatenate(labels), np.concatenate(groups)
  head = head_of(run)
  class_names = tuple(members[0].metadata['class_names'])
  what = (f'out-of-fold predictions of {len(members)} fold models' if len(members) > 1
          else 'validation predictions of this run')
  fitted_on = f'{what} (n={len(labels)})' + (f', with {tta_settings.describe()}' if tta_settings.on else '')
  oof = pd.concat(frames, ignore_index=True)
  if head == 'multilabel':
    return _calibrate_multilabel(workdir, members, oof, logits, labels, groups, class_names, metric, fitted_on,
                                 tta_settings)
  if metric == 'f2':
    raise UserInputError("config.sweep.threshold_metric='f2' is for multi-label thresholds; choose f1 or macro_f1")
  oof['label'] = labels
  result, crossfit = calibrate_predictions(logits, labels, head, groups, bins, metric)
  result['fitted_on'] = fitted_on
  before, after = scaled_probabilities(logits, head), scaled_probabilities(logits, head, result['temperature'])
  after_label = f'after (T={result["temperature"]:.2f}, cross-fitted over {result["crossfit_groups"]} groups)'
  for i, name in enumerate(class_names):
    oof[f'p_{name}'] = before[:, i]
  for i, name in enumerate(class_names):
    oof[f'p_{name}_calibrated'] = after[:, i]
  fileio.save_figure(workdir / 'reliability.png', plot_reliability(before, crossfit, labels, bins, what, after_label))
  _store(workdir, members, result, tta_settings, oof, calibration_section(result))
  print(f'{workdir}: temperature {result["temperature"]:.3f}, ECE {result["ece_before"]:.4f} -> '
        f'{result["ece_after"]:.4f} (cross-fitted)'
        + (f', threshold {result["threshold"]:.3f}' if result['threshold'] is not None else ''))
  return result


def _calibrate_multilabel(workdir, members, oof, logits, labels, groups, class_names, metric, fitted_on,
                          tta_settings) -> dict:
  """Per-label thresholds (`fpclass.analysis.multilabel_calibration`), stored in every member's sidecar."""
  probs = probabilities(logits, 'multilabel')
  result = multilabel_calibration.calibrate_thresholds(probs, labels, class_names, groups, metric)
  result['fitted_on'] = fitted_on
  for k, name in enumerate(class_names):
    oof[f'label_{name}'] = labels[:, k]
  for k, name in enumerate(class_names):
    oof[f'p_{name}'] = probs[:, k]
  _store(workdir, members, result, tta_settings, oof, multilabel_calibration.calibration_section(result))
  shown = ', '.join(f'{name} {t:.3f}' for name, t in result['thresholds'].items())
  print(f'{workdir}: per-label thresholds {shown}; macro F1 {result["macro_f1_at_half"]:.4f} at 0.5 -> '
        f'{result["macro_f1_tuned"]:.4f} (cross-fitted)')
  return result


def _store(workdir, members, result: dict, tta_settings, oof: pd.DataFrame, section: str) -> None:
  """Stores a calibration in every member's sidecar and writes its files and report section."""
  result['tta'] = tta_settings.as_dict()   # what predict and submit must make for these to apply (fpclass.infer.tta)
  for member in members:
    store_in_sidecar(member.path, result)
  fileio.write_csv(workdir / 'calibration_predictions.csv', oof)
  fileio.write_json(workdir / 'calibration.json', result)
  report.write_section(workdir, '45-calibration', section)


def calibration_section(result: dict, stored_in: str = "each model's metadata.json") -> str:
  """The report section of a single-label calibration; `stored_in` names where its temperature is kept."""
  lines = ['## Calibration', '',
           f'Fitted on the {result["fitted_on"]}. Temperature scaling divides the logits by '
           f'T = {result["temperature"]:.3f}. "After" figures are cross-fitted over {result["crossfit_groups"]} '
           'groups (each scored with a temperature and threshold fitted on the others).', '',
           '| | before | after |', '|---|---|---|',
           f'| ECE ({result["bins"]} bins) | {result["ece_before"]:.4f} | {result["ece_after"]:.4f} |',
           f'| NLL | {result["nll_before"]:.4f} | {result["nll_after"]:.4f} |']
  if result['threshold'] is not None:
    lines.append(f'| {result["threshold_metric"]} (argmax -> threshold {result["threshold"]:.3f}) | '
                 f'{result["f1_argmax"]:.4f} | {result["f1_tuned"]:.4f} |')
  lines += ['', '![reliability diagram](reliability.png)', '',
            f'The temperature and threshold are stored in {stored_in}, applied by submit, predict and serve '
            '(switch off with `--config.<mode>.calibrated=False`) and recorded in export\'s model.json. Files: '
            '[calibration.json](calibration.json), [calibration_predictions.csv](calibration_predictions.csv).']
  return '\n'.join(lines)
