"""`--mode label_next`: which unlabelled images a person should label next, and the files to label them with.

    python launch.py --workdir runs/fp-exp4 --mode label_next --config.data.unlabelled=photos/

--workdir: a run, an ensemble, a sweep (a variant's fold models, or its root) or an auto run (its final model).
config.data.unlabelled: a folder, glob, CSV or 'test' (`fpclass.data.unlabelled`; copies of labelled images leave).
Images are ranked by config.label_next (`fpclass.analysis.acquisition`); with config.ood.enabled, those the OOD
score flags come last, why='foreign: none of the classes', with no guess, and are left out of the task file.
Writes in the workdir: label_next.csv (rank, path, score, why, guess, ...), label_next.png (the contact sheet),
label_next_labels.csv (filename, an empty label to fill in, the guess), label_next_label_studio.json (Label
Studio tasks, the guesses as pre-annotations) and .xml (its labelling interface), label_next_quarantine.csv.
The loop back, filled in: train with --config.data.source=kaggle_csv --config.data.root=<the pool's folder, as the
report names it> --config.data.train_dir=. --config.data.labels_csv=<abs. path of label_next_labels.csv>
--config.data.id_column=filename --config.data.label_column=label, or merge the rows into the labelled root;
docs/unlabelled.md ('What to label next') has both, and how to read back a Label Studio export.
"""
import pathlib

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import acquisition
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import LabelNextSettings, OodSettings
from fpclass.data import pipeline, unlabelled
from fpclass.deploy import ood, shift
from fpclass.errors import UserInputError
from fpclass.explain.figures import Tile, contact_sheet
from fpclass.infer import labelling
from fpclass.infer.ensemble import as_one_model, workdir_models
from fpclass.models.heads import probabilities
from fpclass.runtime import report

FOREIGN = 'foreign: none of the classes'
COLUMNS = ['rank', 'path', 'score', 'why', 'guess', 'guess_probability', 'ood_score', 'foreign']


def label_next(config, workdir) -> pathlib.Path:
  """Writes the files above; returns label_next.csv's path."""
  workdir = pathlib.Path(workdir)
  settings = LabelNextSettings.from_config(config.label_next)
  data = DataSettings.from_config(config.data)
  if not data.unlabelled.unlabelled:
    raise UserInputError(f"{unlabelled.KEY} is empty: give the images to rank (a folder, a glob such as "
                         "'photos/**/*.png', a CSV of paths, or 'test' for the source's test images)")
  decoded = pipeline.decode_source(data, progress=False)   # the labelled images, whose copies leave the pool
  labelled = [decoded.pool.images] + ([decoded.val.images] if decoded.val is not None else [])
  pool = unlabelled.load_pool(data, labelled, decoded.test)
  models = workdir_models(workdir, '--workdir')
  if settings.strategy == 'disagreement' and len(models) < 2:
    raise UserInputError(f"config.label_next.strategy='disagreement' needs several models (a sweep's fold models, "
                         f"an ensemble, an auto run); {workdir} holds one: use 'margin' or 'entropy'")
  batch = max(1, min(settings.batch_size or int(config.eval.batch_size), len(pool)))

  weights = np.asarray([m.weight for m in models], np.float64)
  member_probabilities, features = [], []
  for model, weight in zip(models, weights / weights.sum()):
    logits, pooled = ood.outputs(model.trained, pool.images, batch)
    member_probabilities.append(probabilities(logits, model.trained.task.head))
    features.append(acquisition.unit_rows(pooled) * np.sqrt(weight))   # squared distance: the weighted sum
  members = np.stack(member_probabilities)
  mix = np.einsum('m,mnk->nk', weights / weights.sum(), members)
  scores = acquisition.uncertainty(settings.strategy, members, weights)
  model, folder = as_one_model(models, workdir)
  scorer = ood.configured_scorer(OodSettings.from_config(config.ood), folder, model)
  ood_scores = scorer.scores(pool.images, batch) if scorer is not None else None
  foreign = ood_scores > scorer.threshold if scorer is not None else None
  ranking = acquisition.rank(scores, settings.count,
                             np.concatenate(features, axis=1) if settings.diversity == 'kcenter' else None,
                             foreign, ood_scores, settings.candidates)

  class_names = list(models[0].trained.class_names)
  reasons = Reasons(settings, class_names, members, mix, scores, scorer)
  rows = [reasons.picked(i, rank, d, ood_scores) for rank, (i, d) in enumerate(zip(ranking.picks, ranking.distances), 1)]
  rows += [reasons.foreign(i, rank, ood_scores) for rank, i in enumerate(ranking.foreign, len(rows) + 1)]
  for row, i in zip(rows, [*ranking.picks, *ranking.foreign]):
    row['path'] = pool.names[i]
  out = workdir / settings.output
  fileio.write_csv(out, pd.DataFrame(rows, columns=COLUMNS if scorer is not None else COLUMNS[:-2]))
  quarantine = out.with_name(f'{out.stem}_quarantine.csv')
  fileio.write_csv(quarantine, pd.DataFrame(pool.problems, columns=['path', 'reason']))
  order = [*ranking.picks, *ranking.foreign]
  sheet = _contact_sheet(workdir / f'{out.stem}.png', settings, pool, order, rows)
  labels = _labelling_files(out, settings, data, pool, ranking, rows, class_names, workdir, models)
  verdict = shift.of_fitted(scorer.fitted, ood_scores) if scorer is not None else None
  report.write_section(workdir, '46-label-next', _section(out, settings, pool, models, ranking, scorer, sheet,
                                                           labels, verdict))
  print(f'wrote {out}: {len(ranking.picks)} of {len(pool)} unlabelled images to label next'
        + (f', {len(ranking.foreign)} foreign listed after them' if len(ranking.foreign) else '')
        + (f'; fill in {labels[0]}' if labels else ''))
  return out


class Reasons:
  """Each listed image's row: its score, guess and why it is on the list, in words."""

  def __init__(self, settings, class_names, members, mix, scores, scorer):
    self.settings, self.class_names, self.members, self.mix = settings, class_names, members, mix
    self.scores, self.scorer = scores, scorer

  def picked(self, i: int, rank: int, distance: float, ood_scores) -> dict:
    guess = int(np.argmax(self.mix[i]))
    why = [self._uncertain(i)]
    if self.settings.diversity == 'kcenter':
      why.append('the most uncertain' if rank == 1 else f'{distance:.2f} from the nearest earlier pick (features)')
    return dict(rank=rank, score=float(self.scores[i]), why='; '.join(why), guess=self.class_names[guess],
                guess_probability=float(self.mix[i, guess]), **self._ood(i, ood_scores, False))

  def foreign(self, i: int, rank: int, ood_scores) -> dict:
    why = f'{FOREIGN} (ood_score {ood_scores[i]:.3g} > threshold {self.scorer.threshold:.3g})'
    return dict(rank=rank, score=float(self.scores[i]), why=why, guess='', guess_probability=np.nan,
                **self._ood(i, ood_scores, True))

  def _ood(self, i: int, ood_scores, foreign: bool) -> dict:
    return {} if ood_scores is None else {'ood_score': float(ood_scores[i]), 'foreign': foreign}

  def _uncertain(self, i: int) -> str:
    strategy, p = self.settings.strategy, self.mix[i]
    top = np.argsort(-p, kind='stable')
    if strategy == 'margin':
      return (f'margin: {self.class_names[top[0]]} {p[top[0]]:.2f} against {self.class_names[top[1]]} '
              f'{p[top[1]]:.2f}')
    if strategy == 'entropy':
      return f'entropy {self.scores[i]:.2f} of at most {np.log(len(p)):.2f}'
    votes = pd.Series([self.class_names[k] for k in self.members[:, i].argmax(1)]).value_counts()
    return (f'models disagree ({self.scores[i]:.3f}): '
            + ', '.join(f'{n} of {len(self.members)} say {c}' for c, n in votes.items()))


def _contact_sheet(path: pathlib.Path, settings, pool, order, rows) -> pathlib.Path | None:
  """The first `contact_sheet` listed images, titled with rank, file and guess (foreign in red)."""
  shown = min(settings.contact_sheet, len(order))
  if not shown:
    return None
  tiles = [Tile(pool.images[i], f'#{row["rank"]} {pathlib.PurePath(row["path"]).name}\n'
                + (f'guess {row["guess"]} {row["guess_probability"]:.0%}' if row["guess"] else 'foreign'),
                bool(row['guess']))
           for i, row in zip(order[:shown], rows[:shown])]
  fileio.save_figure(path, contact_sheet(tiles, f'the first {shown} to label, in order (red: like none of the '
                                                'classes, not to label as one)'), trim=False)
  return path


def _labelling_files(out: pathlib.Path, settings, data, pool, ranking, rows, class_names, workdir, models):
  """(labels template, task file, labelling interface, the pool's folder) of the picks; None for a pool with no
  files (a 'test' pool of an array source)."""
  test_files = None
  if pool.from_test:
    test = pipeline.list_source(data).test
    if test is None or test.paths is None:
      return None
    test_files = dict(zip((str(i) for i in test.ids), test.paths))
  files = labelling.pool_files([pool.names[i] for i in ranking.picks], data.unlabelled.unlabelled, test_files)
  all_files = labelling.pool_files(pool.names, data.unlabelled.unlabelled, test_files)
  folder = labelling.common_folder(all_files)
  to_label = [labelling.ToLabel(f, name, row['guess'], row['guess_probability'], row['rank'], row['score'])
              for f, name, row in zip(files, labelling.relative_names(files, folder), rows)]
  template = out.with_name(f'{out.stem}_labels.csv')
  fileio.write_csv(template, labelling.labels_template(to_label))
  tasks = out.with_name(f'{out.stem}_label_studio.json')
  version = f'{workdir.name} ({len(models)} model{"s" if len(models) > 1 else ""}, {settings.strategy})'
  labelling.write_tasks(tasks, labelling.tasks(to_label, settings.image_prefix, version))
  interface = tasks.with_suffix('.xml')
  fileio.write_text(interface, labelling.labelling_config(class_names))
  return template, tasks, interface, folder


def _section(out, settings, pool, models, ranking, scorer, sheet, labels, verdict) -> str:
  diversity = (f'greedy k-center on the models\' pooled features among the {ranking.candidates} most uncertain'
               if settings.diversity == 'kcenter' else 'none (the most uncertain, in order)')
  lines = ['## What to label next', '',
           f'[{out.name}]({out.name}): {len(ranking.picks)} of {pool.describe()}, chosen by {settings.strategy} '
           f'over {len(models)} model(s); diversity: {diversity}.']
  if scorer is None:
    lines.append('config.ood.enabled is false: no image is set apart as foreign.')
  else:
    lines.append(f'Foreign (OOD score above {scorer.threshold:.4g}): {len(ranking.foreign)}, listed after the others '
                 'with no guess, and not in the task file.')
    if verdict is not None:
      lines.append(verdict.describe('The pool', f"{out.name}'s `foreign` column"))
  if sheet is not None:
    lines.append(f'Contact sheet: [{sheet.name}]({sheet.name}).')
  if labels is None:
    lines.append('The test images of this source are arrays, not files: no labels template or task file.')
  else:
    template, tasks, interface, folder = labels
    lines.append(f'Fill in `label` in [{template.name}]({template.name}) (file names relative to `{folder}`), or '
                 f'import [{tasks.name}]({tasks.name}) into Label Studio with the interface '
                 f'[{interface.name}]({interface.name}); then train on the labels (docs/unlabelled.md).')
  if pool.problems:
    lines.append(f'{len(pool.problems)} pool file(s) could not be read: {out.stem}_quarantine.csv.')
  return '\n'.join(lines)
