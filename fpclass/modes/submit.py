"""`--mode submit`: restore the selected checkpoint and write submission.csv, without training.

With `submit.average_folds` the workdir is a sweep experiment folder and the fold models' probabilities
are averaged; `submit.tta` blends augmented passes in (fastai's TTA, `fpclass.infer.tta`) and `submit.tta_hflip`
averages each image's prediction with its mirror's; a temperature and threshold stored by --mode calibrate
or sweep (fitted on the same kind of prediction) are applied unless `submit.calibrated=False`.

The submission has exactly the test files, in sample_submission order when that file exists, with the
configured id and label columns; class probabilities go to a second file. Both are written atomically.
"""
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis.calibration import decide
from fpclass.data import pipeline
from fpclass.data.kaggle_csv import read_csv
from fpclass.errors import UserInputError
from fpclass.infer import ensemble, tta
from fpclass.runtime import report


def submit(config, workdir) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  members = ensemble.load_members(config, workdir, folds=bool(config.submit.average_folds))
  trained = members[0].trained
  decoded = pipeline.decode_source(config)
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
  threshold = ensemble.decision_threshold(members, calibrated)
  failed = ~np.asarray(test.extras.get('decoded', np.ones(len(test), bool)))
  if failed.any():  # only reachable with data.bad_test_images=prior
    prior = np.bincount(decoded.pool.labels, minlength=len(decoded.class_names)) / len(decoded.pool)
    probs[failed] = prior
  pred = decide(probs, threshold)

  id_col, label_col = config.data.id_column, config.data.label_column
  if decoded.source_name == 'synthetic_footprints':
    id_col, label_col = 'filename', 'SEX'
  names = list(trained.class_names)
  submission = pd.DataFrame({id_col: test.ids, label_col: [names[i] for i in pred]})
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
           '', _prediction_note(members, calibrated, threshold, bool(config.submit.tta_hflip), tta_settings),
           '', 'Predicted class counts: ' + ', '.join(f'{c}: {int((pred == i).sum())}' for i, c in enumerate(names))]
  if failed.any():
    lines.append(f'{int(failed.sum())} undecodable test image(s) got the class prior (see quarantine.csv).')
  hidden = _score_hidden_labels(decoded, submission, id_col, label_col)
  if hidden is not None:
    lines.append(f'Accuracy against the synthetic set\'s hidden test labels (solution.csv): {hidden:.4f}.')
  report.write_section(workdir, '40-submission', '\n'.join(lines))
  print(f'wrote {out} ({len(submission)} rows)' + (f'; hidden-label accuracy {hidden:.4f}' if hidden else ''))
  return out


def _models_note(members, workdir) -> str:
  if len(members) == 1:
    return f'the {members[0].trained.checkpoint} checkpoint (epoch {members[0].trained.epoch})'
  return (f'the mean probability of {len(members)} fold models ('
          + ', '.join(f'{m.path.relative_to(workdir)}: {m.trained.checkpoint} epoch {m.trained.epoch}' for m in members)
          + ')')


def _prediction_note(members, calibrated, threshold, tta_hflip, tta_settings) -> str:
  temperatures = [(m.calibration or {}).get('temperature') for m in members]
  parts = [tta_settings.describe()] if tta_settings.on else []
  if calibrated and any(t is not None for t in temperatures):
    parts.append('temperature-scaled probabilities (T = ' + ', '.join(f'{t:.3f}' for t in temperatures if t) + ')')
  else:
    parts.append('uncalibrated probabilities' + ('' if calibrated else ' (config.submit.calibrated=False)'))
  if tta_hflip:
    parts.append('averaged with the horizontally flipped image')
  parts.append(f'class 1 when its probability is at least the tuned threshold {threshold:.3f}'
               if threshold is not None else 'the most probable class')
  return 'Predictions: ' + '; '.join(parts) + '.'


def _score_hidden_labels(decoded, submission, id_col, label_col):
  """The synthetic footprints ship their test labels; score against them so a newcomer sees a
  leaderboard-like figure. Real Kaggle data has no solution.csv and this returns None."""
  if decoded.source_name != 'synthetic_footprints' or decoded.root is None:
    return None
  path = decoded.root / 'solution.csv'
  if not path.exists():
    return None
  truth = read_csv(path, [(id_col, 'id_column'), (label_col, 'label_column')]).set_index(id_col)[label_col]
  return float(np.mean(submission[label_col].astype(str).to_numpy() == truth.loc[submission[id_col]].to_numpy()))
