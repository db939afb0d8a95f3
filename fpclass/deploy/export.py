"""A trained model's inference function as ONNX and as a serialized `jax.export` (StableHLO) artifact, with the
preprocessing inside the graph, each checked against fpclass's own predictions before it is kept.

- `model.onnx`: converted with jax2onnx and checked with onnxruntime (`fpclass.deploy.onnx_export`).
- `model.jax_export`: `jax.export.Exported.serialize()` bytes; `jax.export.deserialize(data).call(images)`
  runs it with no fpclass code, on CPU or CUDA.
- `model.json`: the class names, the input and output contract, the stored calibration and each artifact.
A multi-label model exports its K logits: class k is predicted when sigmoid(logit k) reaches its threshold,
stored in model.json (`calibration.thresholds`) and the ONNX metadata_props (`thresholds`, JSON by class).
An ensemble workdir exports as one graph of every member (each with its own preprocessing) whose output is their
weighted mean `probabilities`, not logits; model.json lists members and weights (`export_ensemble`).
With an OOD scorer (`fpclass.deploy.ood.Scorer`) a second output, `ood_score` (N,), checked likewise; model.json's
`ood` gives its threshold (unknown above it).
Both pass `fpclass.deploy.artifact`'s check. Design notes: docs/modules.md (`fpclass/deploy/export.py`).
"""
import pathlib
import time

import jax
import numpy as np

from fpclass import fileio
from fpclass.analysis.calibration import Decision
from fpclass.deploy import artifact, onnx_export, ood
from fpclass.errors import UserInputError

ONNX_FILE, JAX_EXPORT_FILE, DESCRIPTION_FILE = 'model.onnx', 'model.jax_export', 'model.json'
ENSEMBLE_OUTPUT_NAME = 'probabilities'   # an ensemble's graph: the weighted mean of its members' probabilities
# Exported programs run where these lower; the traced computation is plain XLA, valid on each.
JAX_PLATFORMS = ('cpu', 'cuda')


def export_model(task, variables: dict, image_shape, folder, formats=('onnx', 'stablehlo'), batch_size: int = 0,
                 description: dict | None = None, scorer=None) -> dict:
  """Writes `task`'s inference function with `variables` ({'params', 'batch_stats'}) in `formats`, plus
  model.json, into `folder`; returns {format: path}, model.json under 'description'. With `scorer` (the
  model's `ood.Scorer`), the OOD score is the graph's second output."""
  params, batch_stats = variables['params'], variables.get('batch_stats', {})

  def forward(images_u8):  # the weights become constants of the exported graph
    if scorer is not None:
      return scorer.traced((params, batch_stats), images_u8)
    return task.predict(params, batch_stats, images_u8)

  output = {'name': artifact.OUTPUT_NAME, 'head': task.head, 'shape': ['batch', 1 if task.head == 'sigmoid' else task.num_classes],
            'note': _output_note(task.head)}
  probe = artifact.probe_images(image_shape)
  # fpclass's own answer, from its usual jitted predict (weights as arguments, as evaluation runs it).
  expected = np.asarray(jax.jit(task.predict)(params, batch_stats, probe))
  if scorer is not None:   # and its own score, from the program serve runs
    expected = (expected, scorer.batch(probe)[1].astype(np.float32))
  return _export(forward, task.num_classes, output, image_shape, folder, formats, batch_size,
                 _with_ood(description, scorer), probe, expected)


def export_ensemble(ensemble, image_shape, folder, formats=('onnx', 'stablehlo'), batch_size: int = 0,
                    description: dict | None = None, scorer=None) -> dict:
  """Writes an ensemble workdir's models (`fpclass.infer.ensemble.WeightedEnsemble`) as one graph whose output is
  the weighted mean of their probabilities, checked against fpclass's own mix (each member's predict program,
  mixed on the host, as predict computes it); model.json lists the members and weights under 'ensemble'. With
  `scorer`, the ensemble's OOD score is the second output."""
  variables = ensemble.variables

  def forward(images_u8):  # every member's weights become constants of the one graph
    if scorer is not None:
      return scorer.traced(variables, images_u8)
    return ensemble.mixed_probabilities(variables, images_u8)

  head, num_classes = ensemble.task.head, len(ensemble.class_names)
  description = dict(description or {}, ensemble=ensemble.describe())
  output = {'name': ENSEMBLE_OUTPUT_NAME, 'head': head, 'shape': ['batch', num_classes],
            'note': _ensemble_output_note(head)}
  probe = artifact.probe_images(image_shape)
  expected = ensemble.probabilities(probe, len(probe)).astype(np.float32)
  if scorer is not None:
    expected = (expected, scorer.batch(probe)[1].astype(np.float32))
  return _export(forward, num_classes, output, image_shape, folder, formats, batch_size,
                 _with_ood(description, scorer), probe, expected)


def _with_ood(description: dict | None, scorer) -> dict | None:
  """The description with the graph's second output, the OOD score, and its threshold."""
  if scorer is None:
    return description
  fitted = ood.describe(scorer.fitted)
  return dict(description or {}, ood={
      'output': artifact.OOD_OUTPUT_NAME, 'shape': ['batch'], **fitted,
      'unknown': f'{artifact.OOD_OUTPUT_NAME} > threshold: the image looks like none of the classes'
                 + ('' if fitted['threshold'] is not None else ' (no threshold: too few held-out images)')})


def _export(forward, num_classes: int, output: dict, image_shape, folder, formats, batch_size: int,
            description: dict | None, probe: np.ndarray, expected) -> dict:
  """Writes `forward` (uint8 images -> `output`, or (`output`, OOD score) with a description's `ood`) in
  `formats` and model.json, each artifact checked on `probe` against `expected` (fpclass's own answer, a tuple
  with the score) before it is kept."""
  folder = pathlib.Path(folder)
  description = dict(description or {})
  names = description.setdefault('class_names', [str(i) for i in range(num_classes)])
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for a model of {num_classes} classes')
  if output['head'] == 'multilabel':
    _describe_thresholds(description, names)
  forward_jit = jax.jit(forward)
  description.update(
      input={'name': artifact.INPUT_NAME, 'dtype': 'uint8', 'layout': 'NHWC', 'shape': ['batch', *image_shape],
             'note': 'decoded pixels 0..255, resized to height x width; scaling and normalisation run '
                     'inside the graph'},
      output=output, artifacts={})
  written = {}
  if 'onnx' in formats:  # first: the conversion most likely to fail, before anything else is written
    path, info = onnx_export.export_onnx(forward, image_shape, batch_size, folder / ONNX_FILE, probe, expected, description)
    written['onnx'], description['artifacts']['onnx'] = path, info
  if 'stablehlo' in formats:
    path, info = export_jax(forward_jit, image_shape, batch_size, folder / JAX_EXPORT_FILE, probe, expected)
    written['stablehlo'], description['artifacts']['stablehlo'] = path, info
  written['description'] = folder / DESCRIPTION_FILE
  fileio.write_json(written['description'], description)
  return written


def _output_note(head: str) -> str:
  """How to read the exported logits, for model.json and the ONNX metadata."""
  if head == 'multilabel':
    return ('logits, one per class; probabilities are sigmoid(logit) per class, independently, and a class is '
            'predicted when its probability is at least its threshold (thresholds, by class name)')
  return (('logits; probabilities are sigmoid(logit / T) for the second class' if head == 'sigmoid'
           else 'logits; probabilities are softmax(logits / T)')
          + ', T the calibration temperature (1 when uncalibrated)')


def _ensemble_output_note(head: str) -> str:
  if head == 'multilabel':
    return ('probabilities, one per class: the weighted mean of the member models\' sigmoid probabilities (members '
            'and weights: ensemble); a class is predicted when its probability is at least its threshold '
            '(thresholds, by class name)')
  return ('probabilities, one per class: the weighted mean of the member models\' class probabilities (members '
          'and weights: ensemble); the prediction is the most probable class')


def _describe_thresholds(description: dict, class_names) -> None:
  """Completes a multi-label description's `calibration` with one threshold per class, in class order: the
  stored ones (`--mode calibrate`, by class name), 0.5 for a class with none, as `Decision` decides."""
  calibration = description['calibration'] = dict(description.get('calibration') or {})
  stored = calibration.get('thresholds') or {}
  decision = Decision.from_stored('multilabel', {'thresholds': stored}, class_names)
  calibration['thresholds'] = dict(zip(class_names, map(float, decision.label_thresholds(len(class_names)))))
  calibration['thresholds_source'] = (calibration.get('thresholds_source')
                                     or ('--mode calibrate' if stored else 'default 0.5 (not calibrated)'))


# -- jax.export (StableHLO) ------------------------------------------------------------------------------

def export_jax(forward_jit, image_shape, batch_size: int, path: pathlib.Path, probe, expected) -> tuple:
  start = time.perf_counter()
  try:
    exported = jax.export.export(forward_jit, platforms=JAX_PLATFORMS)(artifact.input_spec(image_shape, batch_size))
    data = exported.serialize()
  except Exception as e:  # noqa: BLE001 - any lowering failure is reported with what failed
    raise UserInputError(f'{path.name}: jax.export cannot export this model: {artifact.one_line(e)}') from None
  images = artifact.check_images(probe, batch_size)
  with fileio.atomic_path(path) as tmp:
    tmp.write_bytes(data)
    # Checked from the written bytes, as a user would load them.
    reloaded = jax.export.deserialize(bytearray(tmp.read_bytes()))
    difference = artifact.check_outputs(path.name, reloaded.call(images), artifact.expected_at(expected, batch_size))
  return path, {'file': path.name, 'format': 'jax.export serialized (StableHLO)', 'platforms': list(JAX_PLATFORMS),
                'batch_size': batch_size or 'any', 'check_max_abs_difference': difference,
                'seconds': round(time.perf_counter() - start, 2),
                'load': 'jax.export.deserialize(open(path, "rb").read()).call(images_uint8)'}


