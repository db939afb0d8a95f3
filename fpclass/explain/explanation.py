"""The explanations of a single-label model on a split: where it looks (Grad-CAM grids of the worst images and
of each true class and outcome), what it gets wrong (top losses, most confused pairs), an inference grid, the
feature maps of one image, and the report section linking them (`--mode explain` writes them; docs/explain.md).
"""
import pathlib
import re

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.explain import cam
from fpclass.explain import figures as explain_figures
from fpclass.infer.predictions import predictions_frame
from fpclass.runtime import report

FOLDER = 'explain'


def explain_single_label(workdir, seed: int, settings, explainer, trained, val, probs) -> dict:
  """The explanations of a single-label model (one class per image): CAM grids of the worst images and of
  each true class and outcome, top losses, the most confused class pairs, the inference grid."""
  class_names = trained.class_names
  out = workdir / FOLDER
  frame = predictions_frame(val, probs, class_names)
  frame.insert(0, 'index', np.arange(len(frame)))
  frame['correct'] = frame['label'] == frame['predicted']

  groups = select_groups(frame, val.labels, class_names, settings.num_images)
  written = write_cam_grids(out, explainer, val, frame, probs, groups, settings)
  top_losses = frame.sort_values('loss', ascending=False, kind='stable').drop(columns=['correct'])
  written['top_losses'] = out / 'top_losses.csv'
  fileio.write_csv(written['top_losses'], top_losses)
  confused = most_confused(val.labels, probs.argmax(1), class_names)
  written['most_confused'] = out / 'most_confused.csv'
  fileio.write_csv(written['most_confused'], confused)
  if settings.inference_grid:
    written['inference_grid'] = out / 'inference_grid.png'
    fileio.save_figure(written['inference_grid'],
                       inference_grid(val, probs, class_names, settings.inference_grid, seed), trim=False)
  if settings.feature_image >= 0:
    written['feature_maps'] = write_feature_maps(out, explainer, val, settings.feature_image, settings.max_channels)

  report.write_section(workdir, '30-explanations', explanations_section(
      workdir, settings, explainer, trained, groups, top_losses, confused, written,
      val.ids[settings.feature_image] if settings.feature_image >= 0 else None))
  return written


def write_cam_grids(out, explainer, val, frame, probs, groups, settings) -> dict:
  """One overlay grid per non-empty group; every image shown is explained in one batched pass."""
  shown = np.unique(np.concatenate([g['index'].to_numpy() for g in groups.values()]))
  predicted = probs.argmax(1)
  targets = (predicted if settings.target == 'predicted' else val.labels)[shown].astype(np.int32)
  maps, guided = explainer.maps(val.images[shown], targets)
  row_of = {int(i): r for r, i in enumerate(shown)}
  written = {}
  for key, group in groups.items():
    if group.empty:
      continue
    rows = [row_of[int(i)] for i in group['index']]
    tiles = [explain_figures.Tile(image=val.images[i], title=tile_title(frame.loc[i], probs[i]),
                                  correct=bool(frame.loc[i, 'correct'])) for i in group['index']]
    figure = explain_figures.cam_grid(tiles, maps[rows], None if guided is None else guided[rows],
                                      alpha=settings.alpha, method=settings.method, layer=explainer.layer)
    written[key] = out / f'gradcam_{key}.png'
    fileio.save_figure(written[key], figure, trim=False)
  return written


def inference_grid(val, probs, class_names, count: int, seed: int):
  """The inference grid: a seeded sample of validation images titled with prediction and truth."""
  chosen = np.sort(np.random.default_rng(seed).permutation(len(val))[:count])
  predicted = probs.argmax(1)
  tiles = [explain_figures.Tile(image=val.images[i],
                                title=f'pred {class_names[predicted[i]]} ({probs[i, predicted[i]]:.2f})\n'
                                      f'true {class_names[val.labels[i]]}',
                                correct=bool(predicted[i] == val.labels[i]))
           for i in chosen]
  return explain_figures.inference_grid(tiles)


def write_feature_maps(out, explainer, val, index: int, max_channels: int) -> pathlib.Path:
  """Every recorded feature map of validation image `index`, in one figure."""
  features = explainer.feature_maps(val.images[index:index + 1])
  path = out / 'feature_maps.png'
  fileio.save_figure(path, explain_figures.feature_map_grid(
      val.images[index], {name: np.asarray(value[0]) for name, value in features.items()},
      f'feature maps of validation image {val.ids[index]}', max_channels))
  return path


def select_groups(frame: pd.DataFrame, labels, class_names, n: int) -> dict:
  """The images each CAM grid shows, highest loss first: 'worst' (any class), and for each true class
  '<class>_correct' and '<class>_wrong'. Empty groups are kept (and drawn as no figure)."""
  ranked = frame.sort_values('loss', ascending=False, kind='stable')
  groups = {'worst': ranked.head(n)}
  ranked_labels = np.asarray(labels)[ranked['index'].to_numpy()]
  for c, name in enumerate(class_names):
    for outcome, correct in (('correct', True), ('wrong', False)):
      keep = (ranked_labels == c) & (ranked['correct'].to_numpy() == correct)
      groups[f'{slug(name)}_{outcome}'] = ranked[keep].head(n)
  return groups


def most_confused(labels, predictions, class_names) -> pd.DataFrame:
  """Every (true, predicted) pair of different classes that occurs, most frequent first, with the share
  of the true class it takes."""
  k = len(class_names)
  counts = np.zeros((k, k), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  support = counts.sum(1)
  rows = [dict(true=class_names[a], predicted=class_names[b], count=int(counts[a, b]),
               share_of_true=float(counts[a, b] / support[a]))
          for a in range(k) for b in range(k) if a != b and counts[a, b]]
  frame = pd.DataFrame(rows, columns=['true', 'predicted', 'count', 'share_of_true'])
  return frame.sort_values(['count', 'share_of_true'], ascending=False, kind='stable').reset_index(drop=True)


def explanations_section(workdir, settings, explainer, trained, groups, top_losses, confused, written,
                         feature_id) -> str:
  def link(path):
    return path.relative_to(workdir).as_posix()

  method = cam.METHODS[settings.method]
  lines = ['## Explanations', '',
           f'{method} at feature map `{explainer.layer}` for the {settings.target} class of each validation image '
           f'({trained.checkpoint} checkpoint, epoch {trained.epoch})'
           + ('; the last row of each grid is Guided Grad-CAM' if settings.guided else '') + '. Title colour: '
           'green right, red wrong.', '']
  if 'worst' in written:
    lines += [f'### The {len(groups["worst"])} highest-loss validation images', '',
              f'![highest-loss validation images]({link(written["worst"])})', '']
  per_group = [f'[{key.replace("_", " ")}]({link(written[key])}) ({len(groups[key])})'
               for key in groups if key != 'worst' and key in written]
  if per_group:
    lines += ['By true class and outcome, highest loss first: ' + ', '.join(per_group) + '.', '']
  columns = ['index', 'id', 'label', 'predicted', 'loss']
  lines += ['### Top losses', '', report.table(top_losses.head(settings.num_images).to_dict('records'), columns), '',
            f'All validation images ranked: [top_losses.csv]({link(written["top_losses"])}).', '',
            '### Most confused class pairs', '',
            report.table(confused.head(10).to_dict('records'), list(confused.columns)) if len(confused)
            else 'No validation image is misclassified.', '',
            f'All pairs: [most_confused.csv]({link(written["most_confused"])}).', '']
  return '\n'.join(lines + figure_lines(written, feature_id, link))


def figure_lines(written: dict, feature_id, link) -> list:
  """The report lines of the inference grid and the feature maps, when they were drawn."""
  lines = []
  if 'inference_grid' in written:
    lines += ['### Inference grid', '', f'![inference grid]({link(written["inference_grid"])})', '']
  if 'feature_maps' in written:
    lines += [f'### Feature maps of validation image `{feature_id}`', '',
              f'![feature maps]({link(written["feature_maps"])})']
  return lines


def tile_title(row, probs) -> str:
  return (f'{short_name(row["id"])}\ntrue {row["label"]} pred {row["predicted"]}\n'
          f'p={probs.max():.2f} loss {row["loss"]:.2f}')


def short_name(name, limit=18) -> str:
  name = str(name).rsplit('/', 1)[-1]
  return name if len(name) <= limit else name[:limit - 1] + '…'


def slug(name) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '-', str(name)).strip('-') or 'class'
