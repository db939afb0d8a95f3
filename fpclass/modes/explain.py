"""`--mode explain`: where a trained model looks, and what it gets wrong, on the validation split.

Writes under `<workdir>/explain/`:
- `gradcam_worst.png`: the N highest-loss validation images with their CAM overlays, and
  `gradcam_<class>_<correct|wrong>.png`: the same for each true class and outcome;
- `inference_grid.png`: validation images titled with the prediction, green when right, red when wrong;
- `top_losses.csv` (every validation image, highest loss first) and `most_confused.csv` (class pairs);
- `feature_maps.png`: each recorded feature map of one validation image, channel by channel;
and the 'Explanations' section of report.md, which links all of them. Settings: `config.explain`. The work is the
core's (`fpclass.explain.explanation`, `fpclass.explain.explanation_multilabel`); this mode restores and reads.

A multi-label model (head 'multilabel') gets the same files, adapted (`explain_multilabel`): in
`gradcam_worst.png` one row per image with one map per predicted label (the gradient of that label's logit),
the images ranked by binary cross-entropy summed over the labels; per label, `gradcam_<class>_false_positives`
and `_false_negatives.png`; `label_errors.csv` (per label counts) instead of `most_confused.csv`.
"""
import pathlib

from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import ExplainSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.explain.explainer import build_explainer
from fpclass.explain.explanation import FOLDER, explain_single_label
from fpclass.explain.explanation_multilabel import explain_multilabel
from fpclass.infer.inference import load_trained
from fpclass.infer.predictions import prediction_chunk


def explain_workdir(config, workdir, dataset=None, trained=None, val_probabilities=None) -> dict:
  """Restores the selected checkpoint (unless `trained` is given) and writes the explanations and error
  analysis; returns the paths of the files written, by name."""
  workdir = pathlib.Path(workdir)
  settings = ExplainSettings.from_config(config.explain)
  trained = trained or load_trained(config, workdir)
  image_shape = (*trained.metadata['image_size'], trained.metadata['channels'])
  explainer = build_explainer(trained, settings, image_shape)  # checks the layer before any decoding
  dataset = dataset or pipeline.load_dataset(DataSettings.from_config(config.data))
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
      val.images, int(config.eval.batch_size), prediction_chunk(trained.settings, dataset))
  explain_split = explain_multilabel if trained.task.head == 'multilabel' else explain_single_label
  written = explain_split(workdir, int(config.seed), settings, explainer, trained, val, probs)
  print(f'{workdir}: wrote the explanations to {workdir / FOLDER}')
  return written
