"""`--mode compare`: one table across the runs in the subfolders of a workdir.

E.g. four backbones by macro F1, or freeze_till values. Each variant trains in
its own workdir (`runs/climbing/resnet50`, `runs/climbing/vgg16`, ...); compare reads the scores.json and
metadata.json of every direct subfolder that has both, and writes comparison.csv and a report section in
the parent, best macro F1 first. It reads only; it trains nothing.
"""
import json
import pathlib

import pandas as pd

from fpclass import fileio
from fpclass.analysis import metric_registry
from fpclass.errors import UserInputError
from fpclass.runtime import report

FILE = 'comparison.csv'
# A multi-label run's scores.json has these instead of accuracy, balanced accuracy, ROC AUC and loss.
MULTILABEL_SCORES = ('mean_average_precision', 'micro_f1', 'subset_accuracy', 'hamming_loss')


def find_runs(parent) -> list[pathlib.Path]:
  """Direct subfolders of `parent` holding an evaluated run, by name."""
  parent = pathlib.Path(parent)
  return sorted(p for p in parent.iterdir() if (p / 'scores.json').is_file() and (p / 'metadata.json').is_file()) \
      if parent.is_dir() else []


def comparison_table(runs) -> pd.DataFrame:
  """One row per run: what it trained (model, freeze_till, checkpoint) and its validation scores, with
  the F1 of each class; best macro F1 first."""
  # Every registered single-label metric (scores.json holds each), and evaluate's balanced accuracy.
  single = ('balanced_accuracy', *(m.name for m in metric_registry.for_task(metric_registry.SINGLE)))
  rows = []
  for run in runs:
    scores = json.loads((run / 'scores.json').read_text())
    config = json.loads((run / 'metadata.json').read_text()).get('config', {})
    model = config.get('model', {})
    row = dict(run=run.name, model=model.get('name', scores.get('model', '')),
               freeze_till=model.get('freeze_till', ''), checkpoint=scores.get('checkpoint', ''),
               epoch=scores.get('epoch', ''), n=scores['n'],
               **{k: scores.get(k) for k in single + MULTILABEL_SCORES if k in scores or k in single})
    per_class = scores.get('per_class') or scores['per_label']   # single-label, or multi-label
    row.update({f'f1_{name}': per_class[name]['f1'] for name in scores['class_names']})
    if 'test' in scores:
      row.update(test_accuracy=scores['test'].get('accuracy', scores['test'].get('subset_accuracy')),
                 test_macro_f1=scores['test']['macro_f1'])
    rows.append(row)
  return pd.DataFrame(rows).sort_values('macro_f1', ascending=False, kind='stable').reset_index(drop=True)


def compare_workdir(config, workdir) -> pd.DataFrame:
  workdir = pathlib.Path(workdir)
  runs = find_runs(workdir)
  if not runs:
    raise UserInputError(f'--mode compare: no evaluated run (scores.json and metadata.json) in any subfolder of '
                         f'{workdir}; train each variant with --workdir {workdir}/<name> first')
  table = comparison_table(runs)
  fileio.write_csv(workdir / FILE, table)
  best = table.iloc[0]
  lines = ['## Comparison of runs', '',
           f'Validation scores of the {len(table)} runs below this folder, best macro F1 first '
           f'([{FILE}]({FILE})). Best: {best["run"]} ({best["model"]}), macro F1 {best["macro_f1"]:.4f}.', '',
           report.table(table.to_dict('records'), list(table.columns))]
  report.write_section(workdir, '50-comparison', '\n'.join(lines))
  print(table.to_string(index=False, float_format=lambda v: f'{v:.4f}'))
  return table
