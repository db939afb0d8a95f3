"""Per-label decision thresholds for a multi-label model, fitted and judged without scoring on the data they
were fitted to: the maths behind `--mode calibrate` when config.data.task='multilabel'.

One threshold per label maximises that label's F-beta on all validation predictions
(`fpclass.analysis.multilabel_metrics.fit_thresholds`; beta 1 for config.sweep.threshold_metric f1 or macro_f1,
2 for f2). The "tuned" figures beside 0.5's are cross-fitted, as the single-label calibration's: each group's
predictions (a fold model's, or a per-label stratified part of one validation split) are decided with
thresholds fitted on the other groups. Probabilities are the sigmoid's own (temperature 1): a per-label
threshold already moves each decision where a shared temperature would.
"""
import numpy as np

from fpclass.analysis import multilabel_metrics as mlm

CROSSFIT_PARTS = 5
BETAS = {'f1': 1.0, 'macro_f1': 1.0, 'f2': 2.0}


def crossfit_groups(labels: np.ndarray, groups: np.ndarray | None, seed: int = 0) -> np.ndarray:
  """The folds when there are several, else CROSSFIT_PARTS parts of the one split, stratified per label."""
  if groups is not None and len(np.unique(groups)) > 1:
    return np.asarray(groups)
  out = np.zeros(len(labels), int)
  if len(labels) < 2 * CROSSFIT_PARTS:
    return out
  from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # lazy: multi-label runs only
  parts = MultilabelStratifiedKFold(CROSSFIT_PARTS, shuffle=True, random_state=seed)
  for g, (_, held) in enumerate(parts.split(np.zeros(len(labels)), labels)):
    out[held] = g
  return out


def calibrate_thresholds(probs: np.ndarray, labels: np.ndarray, class_names, groups=None,
                         threshold_metric: str = 'f1') -> dict:
  """The calibration entry a multi-label model's sidecar stores: per-label thresholds (by class name) and the
  figures at 0.5 and at the thresholds, those cross-fitted over `groups`."""
  beta = BETAS[threshold_metric]
  labels = np.asarray(labels).astype(np.uint8)
  fitted = mlm.fit_thresholds(labels, probs, beta, class_names)
  parts = crossfit_groups(labels, groups)
  crossfit = np.zeros_like(labels)
  for g in np.unique(parts):
    held, rest = parts == g, parts != g
    if not rest.any():   # one group: fitted and scored on the same predictions
      rest = held
    crossfit[held] = mlm.predict(probs[held], mlm.fit_thresholds(labels[rest], probs[rest], beta).thresholds)
  at_half = mlm.predict(probs, 0.5)
  half_k = mlm.fbeta(labels, at_half, beta, None)
  tuned_k = mlm.fbeta(labels, crossfit, beta, None)
  return dict(
      head='multilabel', temperature=1.0, threshold=None, threshold_metric=threshold_metric, beta=beta,
      n=int(len(labels)), crossfit_groups=int(len(np.unique(parts))),
      thresholds={name: float(t) for name, t in zip(class_names, fitted.thresholds)},
      macro_f1_at_half=mlm.f1(labels, at_half, 'macro'), macro_f1_tuned=mlm.f1(labels, crossfit, 'macro'),
      macro_f1_tuned_in_sample=mlm.f1(labels, mlm.predict(probs, fitted.thresholds), 'macro'),
      per_label={name: dict(threshold=float(fitted.thresholds[k]), positives=int(labels[:, k].sum()),
                            f_at_half=float(half_k[k]), f_tuned=float(tuned_k[k]))
                 for k, name in enumerate(class_names)})


def calibration_section(result: dict, stored_in: str = "each model's metadata.json") -> str:
  """The report section of a multi-label calibration; `stored_in` names where its thresholds are kept."""
  f = f'F{result["beta"]:g}'
  lines = ['## Calibration (per-label thresholds)', '',
           f'Fitted on the {result["fitted_on"]}: each label\'s threshold maximises its {f}. The "tuned" figures '
           f'are cross-fitted over {result["crossfit_groups"]} groups (each decided with thresholds fitted on the '
           'others).', '',
           f'Macro F1: {result["macro_f1_at_half"]:.4f} at 0.5, {result["macro_f1_tuned"]:.4f} tuned.', '',
           f'| label | positives | threshold | {f} at 0.5 | {f} tuned |', '|---|---|---|---|---|']
  for name, row in result['per_label'].items():
    lines.append(f'| {name} | {row["positives"]} | {row["threshold"]:.3f} | {row["f_at_half"]:.4f} | '
                 f'{row["f_tuned"]:.4f} |')
  lines += ['', f'The thresholds are stored in {stored_in} and applied by predict, serve, submit '
            'and export (switch off with `--config.<mode>.calibrated=False`). Files: '
            '[calibration.json](calibration.json), [calibration_predictions.csv](calibration_predictions.csv).']
  return '\n'.join(lines)
