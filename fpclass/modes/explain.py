"""`--mode explain`: where a trained model looks, and what it gets wrong, on the validation split.

Writes under `<workdir>/explain/`:
- `gradcam_worst.png`: the N highest-loss validation images with their CAM overlays, and
  `gradcam_<class>_<correct|wrong>.png`: the same for each true class and outcome;
- `inference_grid.png`: validation images titled with the prediction, green when right, red when wrong;
- `top_losses.csv` (every validation image, highest loss first) and `most_confused.csv` (class pairs);
- `feature_maps.png`: each recorded feature map of one validation image, channel by channel;
and the 'Explanations' section of report.md, which links all of them. Settings: `config.explain`.

A multi-label model (head 'multilabel') gets the same files, adapted (`explain_multilabel`): in
`gradcam_worst.png` one row per image with one map per predicted label (the gradient of that label's logit),
the images ranked by binary cross-entropy summed over the labels; per label, `gradcam_<class>_false_positives`
and `_false_negatives.png`; `label_errors.csv` (per label counts) instead of `most_confused.csv`.
"""
import pathlib
import re

import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import cam, explain_figures, multilabel_metrics
from fpclass.analysis.calibration import Decision
from fpclass.config.outputs import ExplainSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.infer.explainer import build_explainer
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk, predictions_frame, tags_text
from fpclass.runtime import report

FOLDER = 'explain'


def explain_workdir(config, workdir, dataset=None, trained=None, val_probabilities=None) -> dict:
  """Restores the selected checkpoint (unless `trained` is given) and writes the explanations and error
  analysis; returns the paths of the files written, by name."""
  workdir = pathlib.Path(workdir)
  settings = ExplainSettings.from_config(config.explain)
  trained = trained or load_trained(config, workdir)
  image_shape = (*trained.metadata['image_size'], trained.metadata['channels'])
  explainer = build_explainer(config, trained, settings, image_shape)  # checks the layer before any decoding
  dataset = dataset or pipeline.load_dataset(config)
  if tuple(dataset.class_names) != trained.class_names:
    raise UserInputError(f'the data has classes {list(dataset.class_names)} but the checkpoint in {workdir} '
                         f'was trained on {list(trained.class_names)}')
  val = dataset.val
  if len(val) == 0:
    raise UserInputError(f'{workdir}: the validation split is empty, so there is nothing to explain')
  if settings.feature_image >= len(val):
    raise UserInputError(f'config.explain.feature_image={settings.feature_image}: the validation split has '
                         f'{len(val)} images')
  # In evaluate's batch shape, so the program evaluate compiled (in the persistent cache) serves here too; from
  # the restored model (or the runner, which computed them for evaluate), not val_predictions.csv, maybe stale.
  probs = val_probabilities if val_probabilities is not None else trained.probabilities(
      val.images, int(config.eval.batch_size), prediction_chunk(config, dataset))
  explain_split = explain_multilabel if trained.task.head == 'multilabel' else explain_single_label
  written = explain_split(workdir, config, settings, explainer, trained, val, probs)
  print(f'{workdir}: wrote the explanations to {workdir / FOLDER}')
  return written


def explain_single_label(workdir, config, settings, explainer, trained, val, probs) -> dict:
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
                       inference_grid(val, probs, class_names, settings.inference_grid, int(config.seed)), trim=False)
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
    tiles = [explain_figures.Tile(image=val.images[i], title=_tile_title(frame.loc[i], probs[i]),
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
      groups[f'{_slug(name)}_{outcome}'] = ranked[keep].head(n)
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
  return '\n'.join(lines + _figure_lines(written, feature_id, link))


# -- multi-label -------------------------------------------------------------------------------------------

def explain_multilabel(workdir, config, settings, explainer, trained, val, probs) -> dict:
  """The explanations of a multi-label model (any number of classes per image), at the decisions evaluate
  reports (the stored per-label thresholds, else 0.5): a CAM row per highest-loss image with one map per
  predicted label (true label with config.explain.target='label'); per label, its most confident false
  positives and false negatives with that label's map; the top losses (binary cross-entropy summed over the
  labels, as val_predictions.csv has it); each label's error counts; the inference grid; the feature maps."""
  class_names = trained.class_names
  out = workdir / FOLDER
  decision = Decision.for_model(trained, calibrated=True)
  thresholds = decision.label_thresholds(len(class_names))
  truth = np.asarray(val.labels, np.uint8)
  predicted = multilabel_metrics.predict(probs, thresholds)
  frame = predictions_frame(val, probs, class_names, thresholds)
  frame.insert(0, 'index', np.arange(len(frame)))
  frame.insert(frame.columns.get_loc('loss'), 'wrong_labels', (truth != predicted).sum(1))
  top_losses = frame.sort_values('loss', ascending=False, kind='stable')
  worst = top_losses['index'].to_numpy()[:settings.num_images]
  groups = select_label_groups(probs, truth, predicted, class_names, settings.num_images)
  explained = explained_labels(probs, truth if settings.target == 'label' else predicted)
  written = write_label_cam_grids(out, explainer, val, frame, probs, truth, predicted, worst, explained, groups,
                                  settings, class_names)
  written['top_losses'] = out / 'top_losses.csv'
  fileio.write_csv(written['top_losses'], top_losses)
  errors = label_errors(truth, predicted, class_names, thresholds)
  written['label_errors'] = out / 'label_errors.csv'
  fileio.write_csv(written['label_errors'], errors)
  if settings.inference_grid:
    written['inference_grid'] = out / 'inference_grid.png'
    fileio.save_figure(written['inference_grid'], label_inference_grid(
        val, truth, predicted, class_names, settings.inference_grid, int(config.seed)), trim=False)
  if settings.feature_image >= 0:
    written['feature_maps'] = write_feature_maps(out, explainer, val, settings.feature_image, settings.max_channels)
  report.write_section(workdir, '30-explanations', label_explanations_section(
      workdir, settings, explainer, trained, decision, groups, top_losses, errors, written,
      val.ids[settings.feature_image] if settings.feature_image >= 0 else None))
  return written


def explained_labels(probs, chosen) -> list:
  """Per image, (the labels its maps explain, fallback): the labels of its `chosen` (N, K) 0/1 row, or, when
  the row is empty, its most probable label with fallback True (so every image shows a map)."""
  result = []
  for p, row in zip(np.asarray(probs), np.asarray(chosen)):
    labels = np.flatnonzero(row)
    result.append((labels, False) if len(labels) else (np.array([int(np.argmax(p))]), True))
  return result


def select_label_groups(probs, truth, predicted, class_names, n: int) -> dict:
  """Per label k, its most confident mistakes: '<class>_false_positives' (predicted, not true; highest p_k
  first) and '<class>_false_negatives' (true, not predicted; lowest p_k first), i.e. each ranked by label k's
  own binary cross-entropy, highest first. {key: (k, the first n image indices, how many there are)}; empty
  groups are kept (and drawn as no figure)."""
  groups = {}
  for k, name in enumerate(class_names):
    p = np.asarray(probs)[:, k]
    for kind, wrong, order in (('false_positives', (predicted[:, k] == 1) & (truth[:, k] == 0), -p),
                               ('false_negatives', (predicted[:, k] == 0) & (truth[:, k] == 1), p)):
      images = np.flatnonzero(wrong)
      groups[f'{_slug(name)}_{kind}'] = (k, images[np.argsort(order[images], kind='stable')][:n], len(images))
  return groups


def write_label_cam_grids(out, explainer, val, frame, probs, truth, predicted, worst, explained, groups, settings,
                          class_names) -> dict:
  """'worst': a row per highest-loss image, its input and one map per explained label; per label group, the
  single-label grid of that label's map (and Guided Grad-CAM). Every (image, label) map in one batched pass."""
  pairs = [(i, k) for i in worst for k in explained[i][0]]
  pairs += [(i, k) for k, shown, _ in groups.values() for i in shown]
  maps = explainer.pair_maps(val.images, pairs)
  tags = lambda i, rows: tags_text(rows[i], class_names) or '(none)'
  none_note = 'none predicted' if settings.target == 'predicted' else 'no true label'
  rows = []
  for i in worst:
    labels, fallback = explained[i]
    tile = explain_figures.Tile(image=val.images[i], correct=bool(frame.loc[i, 'wrong_labels'] == 0),
                                title=f'{_short(frame.loc[i, "id"])} loss {frame.loc[i, "loss"]:.2f}\n'
                                      f'true {tags(i, truth)}\npred {tags(i, predicted)}')
    rows.append((tile, [explain_figures.LabelMap(
        maps[(i, k)][0], f'{class_names[k]} p={probs[i, k]:.2f}' + (f'\nmost probable; {none_note}' if fallback
                                                                     else ''), bool(truth[i, k] == predicted[i, k]))
        for k in labels]))
  written = {'worst': out / 'gradcam_worst.png'}
  fileio.save_figure(written['worst'], explain_figures.label_cam_rows(
      rows, settings.alpha, settings.method, explainer.layer), trim=False)
  for key, (k, shown, _) in groups.items():
    if not len(shown):
      continue
    tiles = [explain_figures.Tile(image=val.images[i], correct=False,
                                  title=f'{_short(frame.loc[i, "id"])}\n{class_names[k]} p={probs[i, k]:.2f}\n'
                                        f'true {tags(i, truth)}') for i in shown]
    guided = None if maps[(shown[0], k)][1] is None else np.stack([maps[(i, k)][1] for i in shown])
    figure = explain_figures.cam_grid(tiles, np.stack([maps[(i, k)][0] for i in shown]), guided,
                                      alpha=settings.alpha, method=settings.method, layer=explainer.layer, wrap=24)
    written[key] = out / f'gradcam_{key}.png'
    fileio.save_figure(written[key], figure, trim=False)
  return written


def label_errors(truth, predicted, class_names, thresholds) -> pd.DataFrame:
  """Per label: its threshold, support (images that carry it), how often it is predicted, its false positives
  and false negatives and their sum, most errors first (the multi-label counterpart of most_confused)."""
  truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
  frame = pd.DataFrame({'label': list(class_names), 'threshold': np.asarray(thresholds, np.float64),
                        'support': truth.sum(0), 'predicted': predicted.sum(0),
                        'false_positives': (predicted & ~truth).sum(0), 'false_negatives': (~predicted & truth).sum(0)})
  frame['errors'] = frame['false_positives'] + frame['false_negatives']
  return frame.sort_values('errors', ascending=False, kind='stable').reset_index(drop=True)


def label_inference_grid(val, truth, predicted, class_names, count: int, seed: int):
  """The inference grid of a multi-label model: the same seeded sample as `inference_grid`, each image
  titled with its predicted and true tags, green when every tag is right."""
  chosen = np.sort(np.random.default_rng(seed).permutation(len(val))[:count])
  tiles = [explain_figures.Tile(image=val.images[i], correct=bool(np.array_equal(truth[i], predicted[i])),
                                title=f'pred {tags_text(predicted[i], class_names) or "(none)"}\n'
                                      f'true {tags_text(truth[i], class_names) or "(none)"}')
           for i in chosen]
  return explain_figures.inference_grid(tiles, right_means='with every tag right', wrap=22)


def label_explanations_section(workdir, settings, explainer, trained, decision, groups, top_losses, errors,
                               written, feature_id) -> str:
  def link(path):
    return path.relative_to(workdir).as_posix()

  which = 'predicted label' if settings.target == 'predicted' else 'true label'
  lines = ['## Explanations', '',
           f'{cam.METHODS[settings.method]} at feature map `{explainer.layer}` for each {which} of a validation '
           f"image, from the gradient of that label's logit ({trained.checkpoint} checkpoint, epoch {trained.epoch}). "
           f'Decisions: {decision.describe()}. An image with no {which} shows its most probable label, and says so. '
           'Title colour: green where the model is right about the label (about every label, for an image), red '
           'where not' + ('; the last row of each per-label grid is Guided Grad-CAM.' if settings.guided else '.'), '',
           f'### The {len(top_losses.head(settings.num_images))} highest-loss validation images', '',
           'Ranked by the binary cross-entropy summed over the labels.', '',
           f'![highest-loss validation images]({link(written["worst"])})', '']
  per_label = []
  for name in trained.class_names:
    parts = [f'[{kind.replace("_", " ")}]({link(written[key])}) ({len(groups[key][1])} of {groups[key][2]})'
             for kind in ('false_positives', 'false_negatives')
             for key in [f'{_slug(name)}_{kind}'] if key in written]
    if parts:
      per_label.append(f'{name}: ' + ', '.join(parts))
  if per_label:
    lines += ["Per label, its most confident mistakes with that label's map (false positives highest probability "
              'first, false negatives lowest first): ' + '; '.join(per_label) + '.', '']
  columns = ['index', 'id', 'label', 'predicted', 'wrong_labels', 'loss']
  lines += ['### Top losses', '', report.table(top_losses.head(settings.num_images).to_dict('records'), columns), '',
            f'All validation images ranked: [top_losses.csv]({link(written["top_losses"])}).', '',
            '### Errors per label', '',
            report.table(errors.to_dict('records'), list(errors.columns)) if errors['errors'].sum()
            else 'No validation label is wrong.', '',
            f'As a file: [label_errors.csv]({link(written["label_errors"])}).', '']
  return '\n'.join(lines + _figure_lines(written, feature_id, link))


def _figure_lines(written: dict, feature_id, link) -> list:
  """The report lines of the inference grid and the feature maps, when they were drawn."""
  lines = []
  if 'inference_grid' in written:
    lines += ['### Inference grid', '', f'![inference grid]({link(written["inference_grid"])})', '']
  if 'feature_maps' in written:
    lines += [f'### Feature maps of validation image `{feature_id}`', '',
              f'![feature maps]({link(written["feature_maps"])})']
  return lines


def _tile_title(row, probs) -> str:
  return (f'{_short(row["id"])}\ntrue {row["label"]} pred {row["predicted"]}\n'
          f'p={probs.max():.2f} loss {row["loss"]:.2f}')


def _short(name, limit=18) -> str:
  name = str(name).rsplit('/', 1)[-1]
  return name if len(name) <= limit else name[:limit - 1] + '…'


def _slug(name) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '-', str(name)).strip('-') or 'class'
