"""`--mode submit`: restore the selected checkpoint and write submission.csv, without training.

The submission has exactly the test files, in sample_submission order when that file exists, with the
configured id and label columns; class probabilities go to a second file. Both are written atomically.
"""
import pathlib

import numpy as np
import pandas as pd

from fpclass import data, fileio, report
from fpclass.data.kaggle_csv import read_csv
from fpclass.errors import UserInputError
from fpclass.inference import load_trained


def submit(config, workdir) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  trained = load_trained(config, workdir)
  decoded = data.decode_source(config)
  test = decoded.test
  if test is None:
    raise UserInputError(f'config.data.source={config.data.source!r} has no test split to submit: '
                         + ('; '.join(decoded.notes) or 'this source provides none'))
  if tuple(decoded.class_names) != trained.class_names:
    raise UserInputError(f'the data has classes {list(decoded.class_names)} but the checkpoint was trained on '
                         f'{list(trained.class_names)}')
  probs = trained.probabilities(test.images, int(config.eval.batch_size))
  failed = ~np.asarray(test.extras.get('decoded', np.ones(len(test), bool)))
  if failed.any():  # only reachable with data.bad_test_images=prior
    prior = np.bincount(decoded.pool.labels, minlength=len(decoded.class_names)) / len(decoded.pool)
    probs[failed] = prior
  pred = probs.argmax(1)

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
           f'[{out.name}]({out.name}): {len(submission)} rows (`{id_col}`, `{label_col}`) from the '
           f'{trained.checkpoint} checkpoint (epoch {trained.epoch}); probabilities in '
           f'[{config.submit.probabilities_filename}]({config.submit.probabilities_filename}).',
           '', 'Predicted class counts: ' + ', '.join(f'{c}: {int((pred == i).sum())}' for i, c in enumerate(names))]
  if failed.any():
    lines.append(f'{int(failed.sum())} undecodable test image(s) got the class prior (see quarantine.csv).')
  hidden = _score_hidden_labels(decoded, submission, id_col, label_col)
  if hidden is not None:
    lines.append(f'Accuracy against the synthetic set\'s hidden test labels (solution.csv): {hidden:.4f}.')
  report.write_section(workdir, '40-submission', '\n'.join(lines))
  print(f'wrote {out} ({len(submission)} rows)' + (f'; hidden-label accuracy {hidden:.4f}' if hidden else ''))
  return out


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
