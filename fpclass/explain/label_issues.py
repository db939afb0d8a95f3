"""Label issues: the given labels that out-of-fold probabilities say are probably wrong, by cleanlab's confident
learning (`cleanlab.filter.find_label_issues`, or its multi-label module), and the grid of the top suspects.

`find_label_issues` takes one probability row per example (averaged over the models that validated on it) and
returns every example with its given and suggested label (the argmax; multi-label: the tags at 0.5), its
self-confidence (the probability of the given label; multi-label: cleanlab's per-class scores pooled over the
classes), its rank by it (1 = least confident) and cleanlab's verdict. cleanlab is an extra (`fpclass[labels]`),
imported only here.
"""
import numpy as np
import pandas as pd
from scipy import stats

from fpclass.analysis.metric_registry import MULTI
from fpclass.errors import UserInputError

# The explain grids' one-image mosaic, so suspects look like the inference grid's tiles.
from fpclass.explain.figures import Tile, as_rgb, mosaic_figure
from fpclass.runtime import report

COLUMNS = ('file', 'given_label', 'suggested_label', 'self_confidence', 'rank', 'issue', 'members')
MULTILABEL_THRESHOLD = 0.5


def find_label_issues(ids, labels: np.ndarray, probabilities: np.ndarray, class_names, task: str,
                      filter_by: str = 'prune_by_noise_rate', members=None) -> pd.DataFrame:
  """Every example (`ids`, `labels`: class indices, or a 0/1 matrix for multi-label) with cleanlab's verdict on
  its label, least confident first. `members`: how many models' predictions each row averages (reported)."""
  try:   # an optional extra, imported when label issues are asked for
    from cleanlab import filter as cleanlab_filter
    from cleanlab import rank as cleanlab_rank
    from cleanlab.multilabel_classification import filter as multilabel_filter
    from cleanlab.multilabel_classification import rank as multilabel_rank
  except ImportError:
    raise UserInputError("finding label issues needs cleanlab: pip install 'fpclass[labels]'") from None
  probabilities = np.asarray(probabilities, np.float64)
  class_names = [str(c) for c in class_names]
  if task == MULTI:
    labels = np.asarray(labels, np.int64)
    given = [list(np.flatnonzero(row)) for row in labels]
    issue = multilabel_filter.find_label_issues(given, probabilities, filter_by=filter_by, n_jobs=1)
    confidence = multilabel_rank.get_label_quality_scores(given, probabilities)
    given_text = [' '.join(class_names[k] for k in row) for row in given]
    suggested = [' '.join(class_names[k] for k in np.flatnonzero(p >= MULTILABEL_THRESHOLD)) for p in probabilities]
  else:
    labels = np.asarray(labels, np.int64)
    probabilities = probabilities / probabilities.sum(1, keepdims=True)   # averaged rows, summing to 1 again
    issue = cleanlab_filter.find_label_issues(labels, probabilities, filter_by=filter_by, n_jobs=1)
    confidence = cleanlab_rank.get_label_quality_scores(labels, probabilities, method='self_confidence')
    given_text = [class_names[k] for k in labels]
    suggested = [class_names[k] for k in probabilities.argmax(1)]
  frame = pd.DataFrame(dict(file=[str(i) for i in ids], given_label=given_text, suggested_label=suggested,
                            self_confidence=np.asarray(confidence, np.float64), issue=np.asarray(issue, bool),
                            members=np.ones(len(given_text), np.int64) if members is None else np.asarray(members)))
  frame = frame.sort_values(['self_confidence', 'file'], kind='stable').reset_index(drop=True)
  frame['rank'] = np.arange(1, len(frame) + 1)
  return frame[list(COLUMNS)]


CHANCE_P = 0.05   # the one-sided level at which the predictions must beat chance for their flags to be trusted


def chance_warning(labels: np.ndarray, probabilities: np.ndarray, task: str) -> str:
  """'' when the out-of-fold predictions beat chance, else one sentence saying they do not. Confident learning
  flags the labels its predictions disagree with; from predictions no better than chance its flags describe the
  model, not the labels, and training without them would throw good images away.

  Single-label: the accuracy against always answering the commonest class, by an exact one-sided binomial test.
  Multi-label: each class's ranking of its positives above its negatives (one-sided Mann-Whitney U, i.e. ROC AUC
  above 0.5); the predictions beat chance when most classes that have both do."""
  labels, probabilities = np.asarray(labels), np.asarray(probabilities, np.float64)
  if task == MULTI:
    tested = [stats.mannwhitneyu(probabilities[labels[:, k] == 1, k], probabilities[labels[:, k] == 0, k],
                                 alternative='greater').pvalue for k in range(labels.shape[1])
              if 0 < labels[:, k].sum() < len(labels)]
    better = sum(p < CHANCE_P for p in tested)
    if not tested or 2 * better > len(tested):
      return ''
    return (f'the out-of-fold predictions rank positives above negatives better than chance for {better} of '
            f'{len(tested)} classes (one-sided Mann-Whitney U, p < {CHANCE_P}): the flags say more about the '
            'models than about the labels; train a better model before acting on them')
  right = int((probabilities.argmax(1) == labels).sum())
  majority = float(np.bincount(labels).max() / len(labels))
  if stats.binomtest(right, len(labels), majority, alternative='greater').pvalue < CHANCE_P:
    return ''
  return (f'the out-of-fold accuracy {right / len(labels):.3f} is no better than always answering the commonest '
          f'class ({majority:.3f}; one-sided binomial test, p >= {CHANCE_P}): the flags say more about the models '
          'than about the labels; train a better model before acting on them')


def flagged(frame: pd.DataFrame) -> pd.DataFrame:
  """The examples cleanlab flags, least confident first: what label_issues.csv holds."""
  return frame[frame['issue']].drop(columns=['issue']).reset_index(drop=True)


def suspects_grid(images, rows: pd.DataFrame, columns: int = 8, wrap: int = 24):
  """The top suspects (uint8 images, one per row of `rows`), each titled with its rank, file, given and
  suggested label, in red: a label to check."""
  tiles = [Tile(image, f'#{r.rank} {r.file}\ngiven {r.given_label or "(none)"}\nsuggested '
                       f'{r.suggested_label or "(none)"}', False)
           for image, r in zip(images, rows.itertuples())]
  return mosaic_figure([[as_rgb(t.image)] for t in tiles], tiles, None, columns, fontsize=7, wrap=wrap,
                        heading=f'the {len(tiles)} least confident of the flagged labels: given, then suggested')


def report_markdown(issues: pd.DataFrame, everything: pd.DataFrame, sources: list, grid_file: str | None,
                    cam_file: str | None = None, shown: int = 20, warning: str = '') -> str:
  """The report section: how many labels were flagged, from which predictions, and the top of the list;
  `warning` (`chance_warning`) first, where the predictions do not beat chance."""
  lines = ['## Label issues', '', *([f'**Warning:** {warning}.', ''] if warning else []),
           f'cleanlab flags {len(issues)} of the {len(everything)} labelled examples with out-of-fold predictions '
           f'({len(issues) / max(1, len(everything)):.1%}) as probably mislabelled. Each example\'s probabilities '
           f'average the {_count(everything["members"])} that validated on it, from '
           f'{", ".join(f"`{s}`" for s in sources)}.']
  if not len(issues):
    return '\n'.join(lines)
  top = issues.head(shown)
  lines += ['', 'Act on them without touching a file: `--config.data.exclude_csv=<this workdir>/label_issues.csv` '
            'trains without them, `--config.data.relabel_csv=<this workdir>/label_issues.csv` with their suggested '
            'labels (see docs/label_issues.md).', '',
            *([f'![top suspects]({grid_file})', ''] if grid_file else []),
            *(['Where the models look: Grad-CAM of the given label (red) and the suggested one (green), each by a '
               'model that held the image out:', '', f'![Grad-CAM of the top suspects]({cam_file})', '']
              if cam_file else []),
            f'The {len(top)} least confident (all: [label_issues.csv](label_issues.csv); every example: '
            '[label_quality.csv](label_quality.csv)):', '',
            report.table(top.to_dict('records'), ['rank', 'file', 'given_label', 'suggested_label',
                                                  'self_confidence'])]
  return '\n'.join(lines)


def _count(members: pd.Series) -> str:
  low, high = int(members.min()), int(members.max())
  return f'{low} model{"s" if low > 1 else ""}' if low == high else f'{low} to {high} models'
