"""Checks of what a run wrote, by content rather than by existence.

Each check recomputes a written figure from a more primitive file of the same workdir (the scores from
val_predictions.csv, the predictions from their probabilities) or opens the file and looks at it (a plot is
not blank), so a bug that writes a wrong number or an empty figure fails the end-to-end test that calls it.
"""
import json
import pathlib

import numpy as np
import pandas as pd
from PIL import Image
from pytest import approx
from sklearn import metrics as skm

from fpclass.infer.evaluation import PLOTS


def val_predictions(workdir) -> pd.DataFrame:
  return pd.read_csv(pathlib.Path(workdir) / 'val_predictions.csv',
                     dtype={'id': str, 'label': str, 'predicted': str})


def check_scores_match_predictions(workdir) -> dict:
  """scores.json and classification_report.txt recomputed with scikit-learn from val_predictions.csv,
  whose own columns are checked against each other (argmax, probabilities summing to 1, per-image loss).
  Returns scores.json."""
  workdir = pathlib.Path(workdir)
  scores = json.loads((workdir / 'scores.json').read_text())
  names = [str(c) for c in scores['class_names']]
  table = val_predictions(workdir)
  probs = table[[f'p_{c}' for c in names]].to_numpy(np.float64)
  labels = np.array([names.index(c) for c in table['label']])
  pred = probs.argmax(1)
  index = np.arange(len(names))

  assert np.allclose(probs.sum(1), 1.0, atol=1e-5), 'val_predictions.csv: probabilities do not sum to 1'
  assert table['predicted'].tolist() == [names[i] for i in pred], 'val_predictions.csv: predicted is not argmax'
  image_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1))
  assert np.allclose(table['loss'], image_loss, rtol=1e-4, atol=1e-6), 'val_predictions.csv: loss is not -log p(label)'
  assert scores['n'] == len(table)
  assert scores['accuracy'] == approx(skm.accuracy_score(labels, pred))
  assert scores['macro_f1'] == approx(skm.f1_score(labels, pred, average='macro', labels=index,
                                                          zero_division=0))
  assert scores['confusion_matrix'] == skm.confusion_matrix(labels, pred, labels=index).tolist()
  assert scores['loss'] == approx(image_loss.mean(), rel=1e-4)
  if len(np.unique(labels)) == len(names):
    auc = (skm.roc_auc_score(labels, probs[:, 1]) if len(names) == 2 else
           skm.roc_auc_score(labels, probs, multi_class='ovr', average='macro', labels=index))
    assert scores['roc_auc'] == approx(auc)
  else:
    assert scores['roc_auc'] is None
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=index, zero_division=0)
  for i, name in enumerate(names):
    row = scores['per_class'][name]
    assert (row['precision'], row['recall'], row['f1']) == (
        approx(precision[i]), approx(recall[i]), approx(f1[i])) and row['support'] == support[i]
  report = skm.classification_report(labels, pred, labels=index, target_names=names, digits=4, zero_division=0)
  assert (workdir / 'classification_report.txt').read_text().strip() == report.strip()
  return scores


def check_fine_label_table(workdir) -> pd.DataFrame:
  """confusion_by_fine_label.csv against val_predictions.csv: each source class's row counts add up to its
  n, the validation rows add up to the split, and their errors to the misclassified images."""
  workdir = pathlib.Path(workdir)
  table = pd.read_csv(workdir / 'confusion_by_fine_label.csv', dtype={'fine_label': str, 'label': str})
  predicted = [c for c in table.columns if c.startswith('predicted_')]
  assert (table[predicted].sum(axis=1) == table['n']).all()
  for row in table.itertuples():
    assert row.errors == row.n - getattr(row, f'predicted_{row.label}')
    assert row.error_rate == approx(row.errors / row.n)
  val = table[table['split'] == 'val']
  rows = val_predictions(workdir)
  assert val['n'].sum() == len(rows)
  assert val['errors'].sum() == int((rows['label'] != rows['predicted']).sum())
  for name in predicted:  # per predicted class, the source rows add up to the image-level predictions
    assert val[name].sum() == int((rows['predicted'] == name.removeprefix('predicted_')).sum())
  return table


def check_not_blank(path, min_colours: int = 4, min_ink: float = 0.005) -> np.ndarray:
  """A PNG that shows something: several colours, and at least `min_ink` of its pixels away from the
  most common (background) colour. Returns the RGB pixels."""
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.shape[0] > 50 and pixels.shape[1] > 50, f'{path}: {pixels.shape} is too small to be a plot'
  # One integer per colour: a histogram of 2^24 bins is a single pass (np.unique over rows sorts, seconds
  # on a large figure).
  packed = (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1].astype(np.uint32) << 8) | pixels[..., 2]
  counts = np.bincount(packed.ravel(), minlength=1 << 24)
  colours = int(np.count_nonzero(counts))
  assert colours >= min_colours, f'{path}: only {colours} colours'
  ink = 1 - counts.max() / packed.size
  assert ink >= min_ink, f'{path}: {ink:.2%} of the pixels differ from the background'
  return pixels


def check_plots(workdir, names=PLOTS) -> None:
  for name in names:
    check_not_blank(pathlib.Path(workdir) / name)
