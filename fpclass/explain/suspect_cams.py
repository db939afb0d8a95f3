"""Grad-CAM of the label-issue suspects, on request (`config.label_issues.cam`): for each, the map of its given
label beside the map of the label the models suggest, drawn by a model that held the image out.

Why a held-out model: the suspects were found on out-of-fold predictions, so the model that explains one must be
one that did not train on it; a model that did would have learnt the given label. The model is found from the
out-of-fold record itself: the first prediction file (in `out_of_fold.find_files` order) that scored the image
names the split it was validated on, and any trained workdir below that file's folder with that split
(`data.fold`, -1 for the holdout) held it out. Each model is restored once with its own training config (its
sidecar's) and explains all the suspects it held out in one batched call (`Explainer.pair_maps`).
"""
import dataclasses
import os
import pathlib

import numpy as np
import pandas as pd

from fpclass.analysis.metric_registry import MULTI
from fpclass.config.outputs import ExplainSettings
from fpclass.errors import UserInputError
from fpclass.explain import figures as explain_figures
from fpclass.explain.explainer import build_explainer
from fpclass.infer.ensemble import ENSEMBLE_KEY
from fpclass.infer.inference import load_trained
from fpclass.train import oof, sidecar


@dataclasses.dataclass(frozen=True)
class Suspect:
  """One flagged example to explain: its decoded image, its row of label_issues.csv and the classes to map."""
  image: np.ndarray
  row: object            # a label_issues.csv row (rank, file, given_label, suggested_label, self_confidence)
  given: tuple           # class indices of the given label(s)
  suggested: tuple       # class indices of the suggested label(s)


def suspects(images, rows: pd.DataFrame, class_names, task: str) -> list[Suspect]:
  """`rows` (label_issues.csv's) with their decoded `images`, their given and suggested labels as class indices."""
  index = {name: k for k, name in enumerate(class_names)}

  def classes(text) -> tuple:
    names = str(text).split() if task == MULTI else [str(text)]
    return tuple(index[name] for name in names if name in index)

  return [Suspect(image, row, classes(row.given_label), classes(row.suggested_label))
          for image, row in zip(images, rows.itertuples())]


def explained_classes(suspect: Suspect, task: str) -> list[tuple[int, str, bool]]:
  """(class, caption, suggested) for each map of one suspect. Single-label: the given class, then the suggested
  one. Multi-label: the labels given but not suggested, then those suggested but not given (where the two
  disagree); the given labels when they agree. `suggested` colours the caption green (the models' view), a
  given label the models doubt red."""
  if task != MULTI:
    maps = [(suspect.given[0], 'given', False)] if suspect.given else []
    return maps + [(k, 'suggested', True) for k in suspect.suggested if k not in suspect.given]
  dropped = [(k, 'given, not suggested', False) for k in suspect.given if k not in suspect.suggested]
  added = [(k, 'suggested, not given', True) for k in suspect.suggested if k not in suspect.given]
  return dropped + added or [(k, 'given and suggested', True) for k in suspect.given]


def holding_models(prediction_files, ids) -> dict[str, pathlib.Path]:
  """{example id: a trained workdir that validated on it}, for the `ids` that some out-of-fold file scored."""
  wanted, found = {str(i) for i in ids}, {}
  for path in prediction_files:
    path = pathlib.Path(path)
    frame = oof.read(path.parent)
    frame = frame[frame['id'].astype(str).isin(wanted - set(found))].drop_duplicates('id')
    if not len(frame):
      continue
    by_split = _workdirs_by_split(path.parent)
    for example_id, split in zip(frame['id'].astype(str), frame['split'].astype(int)):
      if split in by_split:
        found[example_id] = by_split[split]
  return found


def cam_figure(prediction_files, chosen: list[Suspect], class_names, task: str, settings: ExplainSettings):
  """The figure: one row per suspect (the image, then one map per explained class), drawn with `settings`'
  method and opacity (Guided Grad-CAM off)."""
  models = holding_models(prediction_files, [s.row.file for s in chosen])
  missing = [s.row.file for s in chosen if s.row.file not in models]
  if missing:
    raise UserInputError(f'config.label_issues.cam: no trained model below the prediction files held out '
                         f'{missing[0]!r} (its workdir was moved or deleted?); set --config.label_issues.cam=0')
  settings = dataclasses.replace(settings, guided=False)
  explained = {s.row.file: explained_classes(s, task) for s in chosen}
  rows, layers = {}, []
  for workdir in sorted(set(models.values())):
    mine = [s for s in chosen if models[s.row.file] == workdir]
    model_config = sidecar.config_from_json(sidecar.read_metadata(workdir)['config'])
    trained = load_trained(model_config, workdir)
    images = np.stack([s.image for s in mine])
    explainer = build_explainer(trained, settings, images.shape[1:])
    layers.append(explainer.layer)
    maps = explainer.pair_maps(images, [(i, k) for i, s in enumerate(mine) for k, _, _ in explained[s.row.file]])
    for i, s in enumerate(mine):
      heat = [explain_figures.LabelMap(maps[(i, k)][0], f'{caption}: {class_names[k]}', suggested)
              for k, caption, suggested in explained[s.row.file]]
      rows[s.row.file] = (explain_figures.Tile(s.image, f'#{s.row.rank} {s.row.file}\nheld out by {workdir.name}',
                                               False), heat)
  return explain_figures.label_cam_rows([rows[s.row.file] for s in chosen], settings.alpha, settings.method,
                                        ', '.join(dict.fromkeys(layers)))


def _workdirs_by_split(folder: pathlib.Path) -> dict[int, pathlib.Path]:
  """{split: the first trained workdir at or below `folder` validated on it} (natural order: fold0 before fold1)."""
  found = {}
  for here, subfolders, files in os.walk(folder):
    subfolders.sort()
    if sidecar.METADATA not in files:
      continue
    metadata = sidecar.read_metadata(here) or {}
    if 'config' not in metadata or ENSEMBLE_KEY in metadata:   # an ensemble workdir has no checkpoint of its own
      continue
    split = sidecar.settings_from_json(metadata['config']).data.split.fold
    found.setdefault(int(split), pathlib.Path(here))
  return found
