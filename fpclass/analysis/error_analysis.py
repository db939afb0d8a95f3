"""Which source classes get confused, for data whose classes were grouped by config.data.label_map.

A label map groups classes (CIFAR-10 into vehicle/animal, say); the question is which original classes the
errors come from (birds taken for planes). Every example keeps its source class in extras['fine_label']; this tables predictions by it.
"""
import numpy as np
import pandas as pd

from fpclass.data.label_map import FINE_LABEL
from fpclass.runtime import report

FILE = 'confusion_by_fine_label.csv'


def confusion_by_fine_label(split_name: str, fine, labels, predictions, class_names, order) -> pd.DataFrame:
  """One row per source class: its (mapped) class, n, how many were predicted as each class, error rate."""
  fine = np.asarray(fine).astype(str)
  rows = []
  for name in order:
    mask = fine == name
    if not mask.any():
      continue
    true = int(np.bincount(labels[mask]).argmax())  # a source class maps to one class
    counts = np.bincount(predictions[mask], minlength=len(class_names))
    rows.append(dict(split=split_name, fine_label=name, label=class_names[true], n=int(mask.sum()),
                     **{f'predicted_{c}': int(counts[i]) for i, c in enumerate(class_names)},
                     errors=int(mask.sum() - counts[true]), error_rate=float(1 - counts[true] / mask.sum())))
  return pd.DataFrame(rows)


def has_fine_labels(split) -> bool:
  return split is not None and split.labels is not None and FINE_LABEL in split.extras


def section(table: pd.DataFrame, class_names) -> str:
  """Markdown: the table per split, and the source classes behind most errors."""
  lines = ['## Errors by source class', '',
           'Each example keeps its source class (`config.data.label_map`); rows count its predictions. '
           f'All splits: [{FILE}]({FILE}).', '']
  columns = ['fine_label', 'label', 'n', *[f'predicted_{c}' for c in class_names], 'errors', 'error_rate']
  for split_name, part in table.groupby('split', sort=False):
    worst = part[part['errors'] > 0].sort_values('errors', ascending=False).head(3)
    total = int(part['errors'].sum())
    lines += [f'### {split_name}', '', report.table(part.to_dict('records'), columns), '']
    if total:
      lines += [f'Most of the {total} errors: ' + ', '.join(
          f'{r.fine_label} {r.errors} ({r.error_rate:.1%} of its images)' for r in worst.itertuples()) + '.', '']
  return '\n'.join(lines)
