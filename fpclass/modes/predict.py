"""`--mode predict`: classify new images with the selected checkpoint of a trained workdir.

    python launch.py --workdir runs/fp-exp4 --mode predict --config.predict.inputs=photos/

`config.predict.inputs` is one image file, a folder (searched recursively for image files), a glob
('photos/**/*.png'), or a CSV whose `config.predict.path_column` lists the images (relative paths are
taken from the CSV's folder). Writes, in the workdir:
- `predictions.csv` (`config.predict.output`): the path as listed, the predicted class and one `p_<class>`
  column per class, with the stored temperature and threshold applied (`config.predict.calibrated`), and
  test-time augmentation with `config.predict.tta` (`fpclass.infer.tta`). Multi-label: `tags` in place of
  `predicted`, the classes whose probability reaches their stored threshold (else 0.5), space-separated. With
  config.ood.enabled, `ood_score` and `unknown`: like none of the classes (`fpclass.deploy.ood`);
- `predictions_quarantine.csv`: every input that could not be read, with the reason (a bad file never stops the run);
- with `config.predict.explain`, one Grad-CAM overlay PNG per image under `predict_explain/`.
Images are decoded exactly as at training (`fpclass.data.decode`) and predicted in fixed-size batches.
"""
import dataclasses
import pathlib

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import fileio
from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DecodeSettings
from fpclass.config.outputs import ExplainSettings, OodSettings, PredictSettings
from fpclass.data.decode import decode_files
from fpclass.data.new_images import list_inputs
from fpclass.deploy import ood, shift
from fpclass.explain.explainer import build_explainer, overlay_rgb, save_png
from fpclass.infer import tta
from fpclass.infer.ensemble import load_model
from fpclass.infer.predictions import tags_text
from fpclass.runtime import report

EXPLAIN_FOLDER = 'predict_explain'
TAGS_COLUMN = 'tags'  # a multi-label model's predicted classes, space-separated (Planet's format)
OOD_COLUMNS = ['ood_score', 'unknown']


def predict(config, workdir) -> pathlib.Path:
  """Writes the predictions (and quarantine list, and overlays) of config.predict.inputs; returns the CSV."""
  workdir = pathlib.Path(workdir)
  settings = PredictSettings.from_config(config.predict)
  inputs = list_inputs(settings.inputs, settings.path_column)  # before the restore: a typo fails fast
  trained = load_model(config, workdir, explained=settings.explain)   # a run, or an ensemble workdir's members
  decode_settings = DecodeSettings.from_config(config.data)
  decision = Decision.for_model(trained, settings.calibrated)
  tta_settings = tta.TTA.from_section(config.predict, 'predict')
  if settings.calibrated:
    tta.check_calibration(trained.metadata.get('calibration'), tta_settings, 'predict')
  batch_size = settings.batch_size or int(config.eval.batch_size)
  explainer = None
  if settings.explain:
    explain_settings = dataclasses.replace(ExplainSettings.from_config(config.explain), guided=False)
    image_shape = (decode_settings.height, decode_settings.width, decode_settings.channels)
    explainer = build_explainer(trained, explain_settings, image_shape)
  scorer = ood.configured_scorer(OodSettings.from_config(config.ood), workdir, trained)

  names = trained.class_names
  multilabel = trained.task.head == 'multilabel'
  predicted = TAGS_COLUMN if multilabel else 'predicted'
  rows, problems = [], list(inputs.problems)
  batch = max(1, min(batch_size, len(inputs.paths)))  # one compiled shape; the last batch is padded
  with tqdm(total=len(inputs.paths), desc='predict', unit='img') as progress:
    for start in range(0, len(inputs.paths), batch):
      paths = inputs.paths[start:start + batch]
      images, ok, failed = decode_files(paths, decode_settings, split='predict',
                                        workers=int(config.data.decode_workers), progress=False)
      problems.extend((inputs.names[start + int(i)], p.reason)
                      for i, p in zip(np.flatnonzero(~ok), failed))
      good = np.flatnonzero(ok)
      if len(good):
        images = np.asarray(images)[good]
        if scorer is not None and not tta_settings.on:   # one program gives both: the model runs once
          logits, scores = scorer.outputs(images, batch)
        else:
          logits = trained.logits(images, batch, chunk=batch, tta_settings=tta_settings, first_batch=start // batch)
          scores = scorer.scores(images, batch) if scorer is not None else None
        probs, pred = decision(logits)
        # A multi-label image's overlay explains its most probable class.
        explained = probs.argmax(1) if multilabel else pred
        overlays = (write_overlays(workdir / EXPLAIN_FOLDER, explainer, images, explained, start + good,
                                   [inputs.paths[start + int(i)] for i in good])
                    if explainer is not None else [None] * len(good))
        for row, i in enumerate(good):
          rows.append({'path': inputs.names[start + int(i)],
                       predicted: tags_text(pred[row], names) if multilabel else names[pred[row]],
                       **{f'p_{c}': float(probs[row, k]) for k, c in enumerate(names)},
                       **({'ood_score': float(scores[row]), 'unknown': bool(scores[row] > scorer.threshold)}
                          if scorer is not None else {}),
                       **({'overlay': overlays[row]} if explainer is not None else {})})
      progress.update(len(paths))

  columns = (['path', predicted, *(f'p_{c}' for c in names)] + (OOD_COLUMNS if scorer is not None else [])
             + (['overlay'] if explainer is not None else []))
  out = workdir / settings.output
  fileio.write_csv(out, pd.DataFrame(rows, columns=columns))
  quarantine = quarantine_path(out)
  fileio.write_csv(quarantine, pd.DataFrame(problems, columns=['path', 'reason']))
  verdict = None if scorer is None else shift.of_fitted(scorer.fitted, np.asarray([r['ood_score'] for r in rows]))
  report.write_section(workdir, '45-predictions', section(out, quarantine, rows, problems, trained, decision,
                                                          settings, explainer is not None, tta_settings, scorer,
                                                          verdict))
  print(f'wrote {out} ({len(rows)} images)'
        + (f'; {len(problems)} could not be read, listed with reasons in {quarantine}' if problems else ''))
  if verdict is not None and verdict.shifted:
    print(verdict.describe('These images', f"{out.name}'s `unknown` column").replace('**', ''))
  return out


def quarantine_path(output: pathlib.Path) -> pathlib.Path:
  return output.with_name(f'{output.stem}_quarantine.csv')


def write_overlays(folder: pathlib.Path, explainer, images, predicted, numbers, sources) -> list:
  """One Grad-CAM overlay PNG per image, for its predicted class; returns their paths (as strings)."""
  maps, _ = explainer.maps(images, np.asarray(predicted, np.int32))
  out = []
  for image, heat, number, source in zip(images, maps, numbers, sources):
    # Numbered by input order, since file names may repeat across folders.
    path = folder / f'{int(number):06d}_{pathlib.Path(source).stem}.png'
    save_png(path, overlay_rgb(image, heat, explainer.settings.alpha))
    out.append(str(path))
  return out


def section(out, quarantine, rows, problems, trained, decision, settings, explained, tta_settings, scorer,
            verdict: shift.Shift | None) -> str:
  lines = ['## Predictions', '',
           f'[{out.name}]({out.name}): {len(rows)} images of `{settings.inputs}` classified with the '
           f'{trained.checkpoint} checkpoint (epoch {trained.epoch}); '
           + (f'{tta_settings.describe()}; ' if tta_settings.on else '') + f'{decision.describe()}.', '']
  if trained.task.head == 'multilabel':
    tags = [r[TAGS_COLUMN].split() for r in rows]
    lines.append('Images tagged with each class: '
                 + ', '.join(f'{c}: {sum(c in t for t in tags)}' for c in trained.class_names)
                 + f'; with no class: {sum(not t for t in tags)}.')
  else:
    counts = pd.Series([r['predicted'] for r in rows], dtype=object).value_counts()
    lines.append('Predicted class counts: '
                 + ', '.join(f'{c}: {int(counts.get(c, 0))}' for c in trained.class_names))
  if scorer is not None:
    fitted = ood.describe(scorer.fitted)
    threshold = 'no threshold (too few held-out images)' if fitted['threshold'] is None else \
        f'{fitted["threshold"]:.4g}'
    lines.append(f'Unknown (none of {", ".join(trained.class_names)}): {sum(r["unknown"] for r in rows)} of '
                 f'{len(rows)} images, {fitted["score"]} score above {threshold}, the threshold that '
                 f'flags {fitted["false_rejection"]:.0%} of held-out images of these classes '
                 f'({fitted["held_out_flagged"]:.1%} of its {fitted["held_out"]}).')
  if verdict is not None:
    lines.append(verdict.describe('These images', f"{out.name}'s `unknown` column"))
  if problems:
    lines.append(f'{len(problems)} input(s) could not be read; see [{quarantine.name}]({quarantine.name}).')
  if explained:
    lines.append(f'Grad-CAM overlays of each image are in `{EXPLAIN_FOLDER}/`.')
  return '\n'.join(lines)
