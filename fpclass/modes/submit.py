"""`--mode submit`: restore the selected checkpoint and write submission.csv, without training.

With `submit.average_folds` the workdir is a sweep experiment folder and the fold models' probabilities
are averaged; `submit.tta` blends augmented passes in (fastai's TTA, `fpclass.infer.tta`) and `submit.tta_hflip`
averages each image's prediction with its mirror's; a temperature and threshold stored by --mode calibrate
or sweep (fitted on the same kind of prediction) are applied unless `submit.calibrated=False`.

The submission has exactly the test files, in sample_submission order when that file exists, with the
configured id and label columns; class probabilities go to a second file. Both are written atomically.

A multi-label model (config.data.task='multilabel') writes each image's predicted classes in the label
column, space-separated in class order (Planet's format; empty for none): those whose averaged sigmoid
probability reaches the per-label threshold stored by --mode calibrate (every fold model must share them),
or 0.5 without one or with `submit.calibrated=False`. An undecodable test image (data.bad_test_images=prior)
gets each label's training prevalence as its probabilities.
"""
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import multilabel_metrics
from fpclass.analysis.calibration import decide
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import OodSettings
from fpclass.data import pipeline
from fpclass.data.kaggle_csv import read_csv
from fpclass.deploy import shift
from fpclass.errors import UserInputError
from fpclass.infer import ensemble, tta
from fpclass.infer.predictions import tags_text
from fpclass.runtime import report

# The embedded synthetic sets' own id and label columns (whatever config.data names); each set's solution.csv,
# its hidden test labels, is scored against the submission.
SYNTHETIC_COLUMNS = {'synthetic_footprints': ('filename', 'SEX'), 'synthetic_shapes': ('image_name', 'tags')}


def submit(config, workdir) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  members = ensemble.load_members(config, workdir, folds=bool(config.submit.average_folds))
  trained = members[0].trained
  decoded = pipeline.decode_source(DataSettings.from_config(config.data))
  test = decoded.test
  if test is None:
    raise UserInputError(f'config.data.source={config.data.source!r} has no test split to submit: '
                         + ('; '.join(decoded.notes) or 'this source provides none'))
  if tuple(decoded.class_names) != trained.class_names:
    raise UserInputError(f'the data has classes {list(decoded.class_names)} but the checkpoint was trained on '
                         f'{list(trained.class_names)}')
  calibrated = bool(config.submit.calibrated)
  tta_settings = tta.TTA.from_section(config.submit, 'submit')
  probs = ensemble.predict_probabilities(members, test.images, int(config.eval.batch_size),
                                         tta_hflip=bool(config.submit.tta_hflip), calibrated=calibrated,
                                         tta_settings=tta_settings)
  multilabel = trained.task.head == 'multilabel'
  threshold = None if multilabel else ensemble.decision_threshold(members, calibrated)
  thresholds = ensemble.label_thresholds(members, calibrated) if multilabel else None
  failed = ~np.asarray(test.extras.get('decoded', np.ones(len(test), bool)))
  if failed.any():  # only reachable with data.bad_test_images=prior
    labels = decoded.pool.labels
    prior = (labels.mean(0) if multilabel  # each label's training prevalence
             else np.bincount(labels, minlength=len(decoded.class_names)) / len(decoded.pool))
    probs[failed] = prior
  names = list(trained.class_names)
  if multilabel:
    pred = multilabel_metrics.predict(probs, thresholds)
    predicted = [tags_text(row, names) for row in pred]
  else:
    pred = decide(probs, threshold)
    predicted = [names[i] for i in pred]

  id_col, label_col = config.data.id_column, config.data.label_column
  if decoded.source_name in SYNTHETIC_COLUMNS:
    id_col, label_col = SYNTHETIC_COLUMNS[decoded.source_name]
  submission = pd.DataFrame({id_col: test.ids, label_col: predicted})
  if len(submission) != len(test.ids) or submission[id_col].duplicated().any():
    raise AssertionError('submission rows do not match the test ids one to one')
  probabilities = pd.DataFrame({id_col: test.ids, **{f'p_{c}': probs[:, i] for i, c in enumerate(names)}})
  out = workdir / config.submit.filename
  fileio.write_csv(out, submission)
  fileio.write_csv(workdir / config.submit.probabilities_filename, probabilities)

  lines = ['## Submission', '',
           f'[{out.name}]({out.name}): {len(submission)} rows (`{id_col}`, `{label_col}`) from '
           + _models_note(members, workdir) + '; probabilities in '
           f'[{config.submit.probabilities_filename}]({config.submit.probabilities_filename}).',
           '', _prediction_note(members, calibrated, threshold, bool(config.submit.tta_hflip), tta_settings,
                                thresholds), '', _counts_note(pred, names, multilabel)]
  if failed.any():
    lines.append(f'{int(failed.sum())} undecodable test image(s) got the '
                 + ('per-label training prevalence' if multilabel else 'class prior') + ' (see quarantine.csv).')
  shifted = _shift_check(config, workdir, members, test.images[~failed])
  shift_line = None if shifted is None else shifted.describe('The test images', '`--mode predict` on them (`unknown`)')
  if shift_line is not None:
    lines += ['', shift_line]
  hidden = _score_hidden_labels(decoded, submission, id_col, label_col, names if multilabel else None)
  what = 'Planet F2 (samples-averaged F-beta, beta 2)' if multilabel else 'Accuracy'
  if hidden is not None:
    lines.append(f'{what} against the synthetic set\'s hidden test labels (solution.csv): {hidden:.4f}.')
  report.write_section(workdir, '40-submission', '\n'.join(lines))
  print(f'wrote {out} ({len(submission)} rows)'
        + (f'; hidden-label {"F2" if multilabel else "accuracy"} {hidden:.4f}' if hidden else ''))
  if shifted is not None and shifted.shifted:
    print(shift_line.replace('**', ''))
  return out


def _shift_check(config, workdir: pathlib.Path, members: list, images: np.ndarray) -> shift.Shift | None:
  """Whether the test images look like the training ones to the OOD score (config.ood; None when it is off):
  the one model, or the fold models or an ensemble workdir's as one weighted ensemble."""
  model, folder = ensemble.as_one_model(members, workdir)
  return shift.of_images(model, folder, OodSettings.from_config(config.ood), images, int(config.eval.batch_size))


def _counts_note(pred, names, multilabel) -> str:
  if multilabel:
    return ('Test images tagged with each class: ' + ', '.join(f'{c}: {int(pred[:, i].sum())}' for i, c in enumerate(names))
            + f'; with no class: {int((pred.sum(1) == 0).sum())}.')
  return 'Predicted class counts: ' + ', '.join(f'{c}: {int((pred == i).sum())}' for i, c in enumerate(names))


def _models_note(members, workdir) -> str:
  if len(members) == 1:
    return f'the {members[0].trained.checkpoint} checkpoint (epoch {members[0].trained.epoch})'
  return (f'the mean probability of {len(members)} fold models ('
          + ', '.join(f'{m.path.relative_to(workdir)}: {m.trained.checkpoint} epoch {m.trained.epoch}' for m in members)
          + ')')


def _prediction_note(members, calibrated, threshold, tta_hflip, tta_settings, thresholds=None) -> str:
  temperatures = [(m.calibration or {}).get('temperature') for m in members]
  parts = [tta_settings.describe()] if tta_settings.on else []
  if thresholds is not None:  # multi-label: the sigmoids as they are, each class decided on its own
    parts.append('sigmoid probability per class' + ('' if calibrated else ' (config.submit.calibrated=False)'))
    if tta_hflip:
      parts.append('averaged with the horizontally flipped image')
    names = members[0].metadata['class_names']
    parts.append('a class is predicted when its probability reaches '
                 + ('0.5' if np.all(thresholds == 0.5) else 'its stored threshold (' + ', '.join(
                     f'{c} {t:.3f}' for c, t in zip(names, thresholds)) + ')'))
    return 'Predictions: ' + '; '.join(parts) + '.'
  if calibrated and any(t is not None for t in temperatures):
    parts.append('temperature-scaled probabilities (T = ' + ', '.join(f'{t:.3f}' for t in temperatures if t) + ')')
  else:
    parts.append('uncalibrated probabilities' + ('' if calibrated else ' (config.submit.calibrated=False)'))
  if tta_hflip:
    parts.append('averaged with the horizontally flipped image')
  parts.append(f'class 1 when its probability is at least the tuned threshold {threshold:.3f}'
               if threshold is not None else 'the most probable class')
  return 'Predictions: ' + '; '.join(parts) + '.'


def _score_hidden_labels(decoded, submission, id_col, label_col, class_names=None):
  """The synthetic sets ship their test labels; score against them so a newcomer sees a leaderboard-like
  figure: accuracy, or with `class_names` (multi-label tags) Planet's F2. Real Kaggle data has no
  solution.csv and this returns None."""
  if decoded.source_name not in SYNTHETIC_COLUMNS or decoded.root is None:
    return None
  path = decoded.root / 'solution.csv'
  if not path.exists():
    return None
  truth = read_csv(path, [(id_col, 'id_column'), (label_col, 'label_column')]).set_index(id_col)[label_col]
  truth = truth.loc[submission[id_col]].to_numpy()
  if class_names is None:
    return float(np.mean(submission[label_col].astype(str).to_numpy() == truth))
  return multilabel_metrics.planet_f2(_indicator(truth, class_names), _indicator(submission[label_col], class_names))


def _indicator(tag_texts, class_names) -> np.ndarray:
  """Space-separated tag strings as an (N, K) 0/1 matrix in class order."""
  index = {c: k for k, c in enumerate(class_names)}
  out = np.zeros((len(tag_texts), len(class_names)), np.uint8)
  for row, text in enumerate(tag_texts):
    for tag in str(text).split():
      if tag in index:  # a class the model never saw cannot be predicted; it counts as missed
        out[row, index[tag]] = 1
  return out
