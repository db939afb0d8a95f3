"""The explanations of a multi-label model (any number of classes per image) on a split, at the decisions evaluate
reports: a CAM row per highest-loss image with one map per explained label, per label its most confident false
positives and negatives, the top losses by summed binary cross-entropy, each label's error counts.
"""
import numpy as np
import pandas as pd

from fpclass import fileio
from fpclass.analysis import multilabel_metrics
from fpclass.analysis.calibration import Decision
from fpclass.explain import cam
from fpclass.explain import figures as explain_figures
from fpclass.explain.explanation import FOLDER, figure_lines, short_name, slug, write_feature_maps
from fpclass.infer.predictions import predictions_frame, tags_text
from fpclass.runtime import report


def explain_multilabel(workdir, seed: int, settings, explainer, trained, val, probs) -> dict:
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
        val, truth, predicted, class_names, settings.inference_grid, seed), trim=False)
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
      groups[f'{slug(name)}_{kind}'] = (k, images[np.argsort(order[images], kind='stable')][:n], len(images))
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
                                title=f'{short_name(frame.loc[i, "id"])} loss {frame.loc[i, "loss"]:.2f}\n'
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
                                  title=f'{short_name(frame.loc[i, "id"])}\n{class_names[k]} p={probs[i, k]:.2f}\n'
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
             for key in [f'{slug(name)}_{kind}'] if key in written]
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
  return '\n'.join(lines + figure_lines(written, feature_id, link))
