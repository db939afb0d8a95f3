"""Evaluating a trained workdir on its validation split (and a labelled test split, if any): `--mode evaluate`,
the evaluation chained after training, and `--mode auto`'s final model.

Writes scores.json, classification_report.txt, val_predictions.csv, learning_curves.png,
confusion_matrix.png, roc_curve.png, and the evaluation section of report.md; with classes grouped by
config.data.label_map, also confusion_by_fine_label.csv and its section.
"""
import pathlib

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skm

from fpclass import fileio
from fpclass.analysis import error_analysis, metrics, multilabel_metrics
from fpclass.analysis.calibration import Decision
from fpclass.data import pipeline
from fpclass.data.label_map import FINE_LABEL, source_class_order
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk, predictions_frame
from fpclass.runtime import report
from fpclass.train import sidecar

PLOTS = ('learning_curves.png', 'confusion_matrix.png', 'roc_curve.png')
TEST_UNLABELLED_NOTE = ('The test images trained this model without their labels ({how}): its test score is not a '
                        'score on unseen images.')


def test_unlabelled_note(trained) -> str | None:
  """The line every test score of `trained` carries when the source's test images trained it unlabelled: as a
  distillation student's inputs (metadata), or as semi-supervised training's pool (its config); else None."""
  run = trained.settings
  if trained.metadata.get(sidecar.TEST_UNLABELLED):
    return TEST_UNLABELLED_NOTE.format(how="config.distill.unlabelled='test': the teacher labelled them")
  if run.data.unlabelled.unlabelled == 'test' and run.semi.method != 'none':
    return TEST_UNLABELLED_NOTE.format(how=f"config.data.unlabelled='test': {run.semi.method} pseudo-labelled them")
  return None


def evaluate_workdir(config, workdir, dataset=None, trained=None, val_probabilities=None) -> dict:
  """Scores the selected checkpoint and writes scores.json, the predictions, plots and report sections.
  `dataset`, `trained` (the restored model) and its `val_probabilities` are passed by a job that already
  holds them (the runner, which computes them once for evaluate and explain)."""
  workdir = pathlib.Path(workdir)
  trained = trained or load_trained(config, workdir)
  run = trained.settings
  dataset = dataset or pipeline.load_dataset(run.data)
  score_train, model_name = run.eval.score_train, run.model.name
  if tuple(dataset.class_names) != trained.class_names:
    raise UserInputError(f'the data has classes {list(dataset.class_names)} but the checkpoint in {workdir} '
                         f'was trained on {list(trained.class_names)}')
  batch, chunk = run.eval.batch_size, prediction_chunk(run, dataset)
  val_probs = val_probabilities if val_probabilities is not None else trained.probabilities(
      dataset.val.images, batch, chunk)
  if trained.task.head == 'multilabel':
    return evaluate_multilabel(workdir, dataset, trained, val_probs, batch, chunk)
  result = metrics.scores(dataset.val.labels, val_probs, dataset.class_names)
  result.update(split='val', split_note=dataset.split_note, checkpoint=trained.checkpoint, epoch=trained.epoch,
                model=model_name, num_params=trained.metadata['num_params'])
  scored = {'val': (dataset.val, val_probs)}
  if dataset.test is not None and dataset.test.labels is not None:
    keep = dataset.test.extras.get('decoded', np.ones(len(dataset.test), bool))
    test = dataset.test.take(np.flatnonzero(keep))
    scored['test'] = (test, trained.probabilities(test.images, batch, chunk))
    result['test'] = metrics.scores(test.labels, scored['test'][1], dataset.class_names)
    if test_unlabelled_note(trained):
      result['test_note'] = test_unlabelled_note(trained)
  if score_train:  # un-augmented, with the restored weights (Keras' model.evaluate on train)
    scored['train'] = (dataset.train, trained.probabilities(dataset.train.images, batch, chunk))
    result['train'] = metrics.scores(dataset.train.labels, scored['train'][1], dataset.class_names)

  fileio.write_json(workdir / 'scores.json', result)
  fileio.write_text(workdir / 'classification_report.txt',
                    metrics.classification_report(dataset.val.labels, val_probs.argmax(1), dataset.class_names))
  fileio.write_csv(workdir / 'val_predictions.csv', predictions_frame(dataset.val, val_probs, dataset.class_names))
  history_path = workdir / 'metrics.csv'
  history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
  fileio.save_figure(workdir / 'learning_curves.png', plot_learning_curves(history, trained.loop))
  fileio.save_figure(workdir / 'confusion_matrix.png',
                     plot_confusion(np.array(result['confusion_matrix']), dataset.class_names))
  fileio.save_figure(workdir / 'roc_curve.png', plot_roc(dataset.val.labels, val_probs, dataset.class_names))
  report.write_section(workdir, '00-data', data_section(dataset))
  report.write_section(workdir, '10-evaluation', evaluation_section(result, trained, history))
  fine_labelled = {name: scored[name] for name in ('train', 'val', 'test')
                   if name in scored and error_analysis.has_fine_labels(scored[name][0])}
  if fine_labelled:
    table = pd.concat([error_analysis.confusion_by_fine_label(
        name, split.extras[FINE_LABEL], split.labels, probs.argmax(1), dataset.class_names,
        source_class_order(run.data.files.label_map, split.extras[FINE_LABEL]))
        for name, (split, probs) in fine_labelled.items()], ignore_index=True)
    fileio.write_csv(workdir / error_analysis.FILE, table)
    report.write_section(workdir, '15-fine-labels', error_analysis.section(table, dataset.class_names))
  print(f'{workdir}: val accuracy {result["accuracy"]:.4f}, macro F1 {result["macro_f1"]:.4f}'
        + (f', ROC AUC {result["roc_auc"]:.4f}' if result['roc_auc'] is not None else '')
        + f' ({trained.checkpoint} checkpoint, epoch {trained.epoch})')
  return result


def evaluate_multilabel(workdir, dataset, trained, val_probs, batch, chunk) -> dict:
  """`evaluate_workdir` for a multi-label model: every figure of `fpclass.analysis.multilabel_metrics.scores`
  at the stored per-label thresholds (0.5 before `--mode calibrate`), and the per-label table."""
  decision = Decision.for_model(trained, calibrated=True)
  thresholds = decision.label_thresholds(len(dataset.class_names))
  result = multilabel_metrics.scores(dataset.val.labels, val_probs, dataset.class_names, thresholds)
  score_train, model_name = trained.settings.eval.score_train, trained.settings.model.name
  result.update(split='val', split_note=dataset.split_note, checkpoint=trained.checkpoint, epoch=trained.epoch,
                model=model_name, num_params=trained.metadata['num_params'], decision=decision.describe())
  if dataset.test is not None and dataset.test.labels is not None:
    test = dataset.test.take(np.flatnonzero(dataset.test.extras.get('decoded', np.ones(len(dataset.test), bool))))
    result['test'] = multilabel_metrics.scores(test.labels, trained.probabilities(test.images, batch, chunk),
                                               dataset.class_names, thresholds)
  if score_train:
    result['train'] = multilabel_metrics.scores(dataset.train.labels, trained.probabilities(
        dataset.train.images, batch, chunk), dataset.class_names, thresholds)
  fileio.write_json(workdir / 'scores.json', result)
  fileio.write_csv(workdir / 'val_predictions.csv',
                   predictions_frame(dataset.val, val_probs, dataset.class_names, thresholds))
  history_path = workdir / 'metrics.csv'
  history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
  fileio.save_figure(workdir / 'learning_curves.png', plot_learning_curves(history, trained.loop))
  report.write_section(workdir, '00-data', data_section(dataset))
  report.write_section(workdir, '10-evaluation', multilabel_section(result, trained))
  print(f'{workdir}: val mAP {result["mean_average_precision"]:.4f}, macro F1 {result["macro_f1"]:.4f}, '
        f'subset accuracy {result["subset_accuracy"]:.4f} ({trained.checkpoint} checkpoint, epoch {trained.epoch})')
  return result


def multilabel_section(result: dict, trained) -> str:
  overall = ['mean_average_precision', 'macro_f1', 'micro_f1', 'samples_f1', 'planet_f2', 'subset_accuracy',
             'hamming_loss', 'n', 'untagged']
  rows = [dict(label=name, **v) for name, v in result['per_label'].items()]
  return '\n'.join([
      '## Validation results (multi-label)', '',
      f'Model `{result["model"]}` ({result["num_params"]:,} parameters), {trained.checkpoint} checkpoint (epoch '
      f'{trained.epoch}). Decisions: {result["decision"]}.', '',
      report.table([{k: result[k] for k in overall}], overall), '',
      report.table(rows, ['label', 'support', 'precision', 'recall', 'f1', 'average_precision', 'threshold']), '',
      '![learning curves](learning_curves.png)', '',
      'Files: [scores.json](scores.json), [val_predictions.csv](val_predictions.csv), [metrics.csv](metrics.csv).'])


def plot_learning_curves(history: pd.DataFrame, loop) -> Figure:
  fig = Figure(figsize=(10, 3.8))
  for ax, name in zip(fig.subplots(1, 2), ('loss', 'accuracy')):
    if not history.empty:
      ax.plot(history['epoch'], history[f'train_{name}'], marker='.', label='train')
      ax.plot(history['epoch'], history[f'val_{name}'], marker='.', label='validation')
      if loop.best_epoch:
        ax.axvline(loop.best_epoch, color='grey', ls='--', lw=1, label=f'best epoch {loop.best_epoch}')
      ax.legend()
    ax.set_xlabel('epoch')
    ax.set_title(name)
    ax.grid(alpha=0.3)
  return fig


def plot_confusion(matrix: np.ndarray, class_names) -> Figure:
  k = len(class_names)
  fig = Figure(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k) if k > 4 else (4.2, 3.6))
  ax = fig.subplots()
  ax.imshow(matrix, cmap='Blues')
  for i in range(k):
    for j in range(k):
      ax.text(j, i, str(matrix[i, j]), ha='center', va='center',
              color='white' if matrix[i, j] > matrix.max() / 2 else 'black')
  ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45 if k > 4 else 0)
  ax.set_yticks(range(k), [str(c) for c in class_names])
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title('confusion matrix (validation)')
  return fig


def plot_roc(labels, probs, class_names) -> Figure:
  fig = Figure(figsize=(4.6, 4.2))
  ax = fig.subplots()
  k = len(class_names)
  classes = [1] if k == 2 else range(k)
  for c in classes:
    truth = labels == c
    if truth.all() or not truth.any():
      continue
    fpr, tpr, _ = skm.roc_curve(truth, probs[:, c])
    label = f'{class_names[c]} (AUC {skm.auc(fpr, tpr):.3f})' if k > 2 else f'AUC {skm.auc(fpr, tpr):.3f}'
    ax.plot(fpr, tpr, label=label)
  ax.plot([0, 1], [0, 1], color='grey', ls='--', lw=1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title('ROC (validation)' + (f', positive class {class_names[1]}' if k == 2 else ', one-vs-rest'))
  ax.legend(loc='lower right', fontsize=8)
  return fig


def data_section(dataset) -> str:
  counts = pipeline.class_counts(dataset)
  rows = [dict(split=s, **c, total=sum(c.values())) for s, c in counts.items()]
  if dataset.test is not None and dataset.test.labels is None:
    rows.append(dict(split='test (unlabelled)', total=len(dataset.test)))
  lines = ['## Data', '', f'Source: `{dataset.source_name}`. Validation: {dataset.split_note}.', '',
           report.table(rows, ['split', *dataset.class_names, 'total']), '',
           f'Skipped inputs: {len(dataset.quarantine)} (see [quarantine.csv](quarantine.csv)).']
  lines += [f'- {note}' for note in dataset.notes]
  return '\n'.join(lines)


def split_row(scores: dict) -> dict:
  return dict(n=scores['n'], accuracy=scores['accuracy'], macro_f1=scores['macro_f1'],
              **{f'precision_{c}': v['precision'] for c, v in scores['per_class'].items()})


def pseudo_label_lines(history: pd.DataFrame) -> list[str]:
  """A semi-supervised run's take-up of its unlabelled images (metrics.csv's train_pseudo_rate), with the advice the
  measurements give when fewer than half of them passed the threshold by the end (docs/unlabelled.md)."""
  if 'train_pseudo_rate' not in history or not len(history):
    return []
  rate = float(history['train_pseudo_rate'].iloc[-1])
  advice = (' Fewer than half: on the measured sets more epochs let more of them in and closed more of the gap to '
            'labelling them all (docs/unlabelled.md).' if rate < 0.5 else '')
  return [f'Unlabelled images (config.data.unlabelled): {rate:.0%} of those of the last epoch passed the '
          f'pseudo-label threshold.{advice}', '']


def evaluation_section(result: dict, trained, history: pd.DataFrame) -> str:
  auc = 'n/a' if result['roc_auc'] is None else f'{result["roc_auc"]:.4f}'
  loop = trained.loop
  lines = ['## Validation results', '',
           f'Model `{result["model"]}` ({result["num_params"]:,} parameters), {trained.checkpoint} checkpoint '
           f'(epoch {trained.epoch}; training stopped by {loop.stop_reason or "n/a"} after '
           f'{loop.epoch or len(history)} epochs).', '',
           *(['The validation split also chose this checkpoint, so its figures are optimistic; '
              'k-fold cross-validation gives unbiased ones.', '']
             if trained.checkpoint == 'best' else []),
           '| accuracy | macro F1 | ROC AUC | loss | n |', '|---|---|---|---|---|',
           f'| {result["accuracy"]:.4f} | {result["macro_f1"]:.4f} | {auc} | {result["loss"]:.4f} | {result["n"]} |',
           '',
           report.table([dict(cls=name, **v) for name, v in result['per_class'].items()],
                        ['cls', 'precision', 'recall', 'f1', 'support']).replace('| cls |', '| class |', 1),
           '']
  by_split = [dict(split=name, **split_row(result if name == 'val' else result[name]))
              for name in ('train', 'val', 'test') if name == 'val' or name in result]
  if len(by_split) > 1:
    lines += ['Scores by split (precision per class):', '',
              report.table(by_split, list(by_split[0])), '']
  if result.get('test_note'):
    lines += [f'**{result["test_note"]}**', '']
  lines += pseudo_label_lines(history)
  lines += ['![learning curves](learning_curves.png)', '', '![confusion matrix](confusion_matrix.png) '
            '![ROC](roc_curve.png)', '',
            'Files: [scores.json](scores.json), [classification_report.txt](classification_report.txt), '
            '[val_predictions.csv](val_predictions.csv), [metrics.csv](metrics.csv), '
            '[metadata.json](metadata.json).']
  return '\n'.join(lines)
