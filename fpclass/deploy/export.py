"""A trained model's inference function as ONNX and as a serialized `jax.export` (StableHLO) artifact, with the
preprocessing inside the graph, each checked against fpclass's own predictions before it is kept.

- `model.onnx`: converted with jax2onnx and checked with onnxruntime. Its metadata_props carry the class names
  (JSON) and how to read the output.
- `model.jax_export`: `jax.export.Exported.serialize()` bytes; `jax.export.deserialize(data).call(images)`
  runs it with no fpclass code, on CPU or CUDA.
- `model.json`: the class names, the input and output contract, the stored calibration and each artifact.
A multi-label model exports its K logits: class k is predicted when sigmoid(logit k) reaches its threshold,
stored in model.json (`calibration.thresholds`) and the ONNX metadata_props (`thresholds`, JSON by class).
An ensemble workdir exports as one graph of every member (each with its own preprocessing) whose output is their
weighted mean `probabilities`, not logits; model.json lists members and weights (`export_ensemble`).
With an OOD scorer (`fpclass.deploy.ood.Scorer`) a second output, `ood_score` (N,), checked likewise; model.json's
`ood` gives its threshold (unknown above it).
Design notes: docs/modules.md (`fpclass/deploy/export.py`).
"""
import contextlib
import io
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxpr_as_fun

from fpclass import fileio
from fpclass.analysis.calibration import Decision
from fpclass.deploy import onnx_graph, ood
from fpclass.errors import UserInputError

ONNX_FILE, JAX_EXPORT_FILE, DESCRIPTION_FILE = 'model.onnx', 'model.jax_export', 'model.json'
INPUT_NAME, OUTPUT_NAME = 'images', 'logits'
OOD_OUTPUT_NAME = 'ood_score'
ENSEMBLE_OUTPUT_NAME = 'probabilities'   # an ensemble's graph: the weighted mean of its members' probabilities
# Exported programs run where these lower; the traced computation is plain XLA, valid on each.
JAX_PLATFORMS = ('cpu', 'cuda')
TOLERANCE = 1e-4  # the check after writing, relative to the largest logit; tests hold parity to 1e-5


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

  output = {'name': OUTPUT_NAME, 'head': task.head, 'shape': ['batch', 1 if task.head == 'sigmoid' else task.num_classes],
            'note': _output_note(task.head)}
  probe = _probe_images(image_shape)
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
  probe = _probe_images(image_shape)
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
      'output': OOD_OUTPUT_NAME, 'shape': ['batch'], **fitted,
      'unknown': f'{OOD_OUTPUT_NAME} > threshold: the image looks like none of the classes'
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
      input={'name': INPUT_NAME, 'dtype': 'uint8', 'layout': 'NHWC', 'shape': ['batch', *image_shape],
             'note': 'decoded pixels 0..255, resized to height x width; scaling and normalisation run '
                     'inside the graph'},
      output=output, artifacts={})
  written = {}
  if 'onnx' in formats:  # first: the conversion most likely to fail, before anything else is written
    path, info = export_onnx(forward, image_shape, batch_size, folder / ONNX_FILE, probe, expected, description)
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


def _probe_images(image_shape, n: int = 2) -> np.ndarray:
  """Fixed random images the written files are checked on."""
  return np.random.default_rng(0).integers(0, 256, (n, *image_shape), dtype=np.uint8)


def input_spec(image_shape, batch_size: int) -> jax.ShapeDtypeStruct:
  batch = batch_size or jax.export.symbolic_shape('batch')[0]
  return jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)


def _check_images(images: np.ndarray, batch_size: int) -> np.ndarray:
  """The probe images a fixed-batch artifact accepts: the first `batch_size`, repeated as needed."""
  if not batch_size:
    return images
  return np.resize(images, (batch_size, *images.shape[1:]))


def _check(name: str, got: np.ndarray, expected: np.ndarray) -> float:
  """The largest difference from fpclass's logits; an error when it is over TOLERANCE (relative)."""
  got = np.asarray(got)
  if got.shape != expected.shape:
    raise UserInputError(f'{name}: the exported model returns shape {got.shape}, fpclass {expected.shape}')
  difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
  scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
  if not difference <= TOLERANCE * scale:
    raise UserInputError(f'{name}: the exported model differs from fpclass by {difference:.3g} on the check '
                         f'images (tolerance {TOLERANCE * scale:.3g}); nothing was written')
  return difference


# -- jax.export (StableHLO) ------------------------------------------------------------------------------

def export_jax(forward_jit, image_shape, batch_size: int, path: pathlib.Path, probe, expected) -> tuple:
  start = time.perf_counter()
  try:
    exported = jax.export.export(forward_jit, platforms=JAX_PLATFORMS)(input_spec(image_shape, batch_size))
    data = exported.serialize()
  except Exception as e:  # noqa: BLE001 - any lowering failure is reported with what failed
    raise UserInputError(f'{path.name}: jax.export cannot export this model: {_one_line(e)}') from None
  images = _check_images(probe, batch_size)
  with fileio.atomic_path(path) as tmp:
    tmp.write_bytes(data)
    # Checked from the written bytes, as a user would load them.
    reloaded = jax.export.deserialize(bytearray(tmp.read_bytes()))
    difference = check_outputs(path.name, reloaded.call(images), _expected(expected, batch_size))
  return path, {'file': path.name, 'format': 'jax.export serialized (StableHLO)', 'platforms': list(JAX_PLATFORMS),
                'batch_size': batch_size or 'any', 'check_max_abs_difference': difference,
                'seconds': round(time.perf_counter() - start, 2),
                'load': 'jax.export.deserialize(open(path, "rb").read()).call(images_uint8)'}


def _expected(expected, batch_size: int):
  if isinstance(expected, tuple):
    return tuple(_expected(e, batch_size) for e in expected)
  return np.resize(expected, (batch_size, *expected.shape[1:])) if batch_size else expected


def check_outputs(name: str, got, expected) -> float:
  """`_check` of each output (one array, or a tuple: the prediction and the OOD score); the largest difference."""
  if not isinstance(expected, tuple):
    return _check(name, got, expected)
  return max(_check(f'{name} ({which})', g, e)
             for which, g, e in zip((OUTPUT_NAME, OOD_OUTPUT_NAME), got, expected))


def _first(expected, rows: int):
  return tuple(e[:rows] for e in expected) if isinstance(expected, tuple) else expected[:rows]


# -- ONNX ---------------------------------------------------------------------------------------------------

def export_onnx(forward, image_shape, batch_size: int, path: pathlib.Path, probe, expected, description) -> tuple:
  jax2onnx, onnx, ort, quant_pre_process = _onnx_modules()
  start = time.perf_counter()
  note = None
  output_name = description['output']['name']
  output_names = [output_name, OOD_OUTPUT_NAME] if 'ood' in description else [output_name]
  try:
    model = _convert(jax2onnx, forward, image_shape, batch_size, output_names)
  except ConversionError as e:
    if batch_size or not e.symbolic:
      raise UserInputError(f'{path.name}: {e}') from None
    # A converter that cannot take the symbolic batch dimension: the file gets a fixed batch of 1.
    note = f'a fixed batch of 1: {e}'
    batch_size = 1
    try:
      model = _convert(jax2onnx, forward, image_shape, batch_size, output_names)
    except ConversionError as e2:
      raise UserInputError(f'{path.name}: {e2}; a symbolic batch dimension failed too') from None
  onnx_graph.pools_as_maxpool(onnx, model)
  model = onnx_graph.prepared_model(onnx, quant_pre_process, model)
  for key, value in _onnx_metadata(description, batch_size).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
  images = _check_images(probe, batch_size)
  with fileio.atomic_path(path) as tmp:
    onnx.save_model(model, str(tmp))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # jax2onnx's stamped shapes make onnxruntime warn while it merges them
    session = ort.InferenceSession(str(tmp), options, providers=['CPUExecutionProvider'])
    difference = check_outputs(path.name, _session_outputs(session, output_names, images),
                               _expected(expected, batch_size))
    if not batch_size:  # the symbolic batch also runs at another size
      check_outputs(path.name, _session_outputs(session, output_names, images[:1]), _first(expected, 1))
  info = {'file': path.name, 'format': f'ONNX (opset {_opset(model)})', 'batch_size': batch_size or 'any',
          'check_max_abs_difference': difference, 'seconds': round(time.perf_counter() - start, 2),
          'load': f'onnxruntime.InferenceSession(path).run({json.dumps(output_names)}, {{"images": images_uint8}})'}
  if note:
    info['note'] = note
    print(f'note: {path.name} has {note}; set --config.export.batch_size for another fixed size')
  return path, info


def _session_outputs(session, names: list, images: np.ndarray):
  """onnxruntime's outputs `names` of `images`: one array, or a tuple of them."""
  got = session.run(names, {INPUT_NAME: images})
  return got[0] if len(names) == 1 else tuple(got)


class ConversionError(Exception):
  """jax2onnx failed; `symbolic` says whether the batch dimension was symbolic."""

  def __init__(self, message: str, symbolic: bool):
    super().__init__(message)
    self.symbolic = symbolic


def _convert(jax2onnx, forward, image_shape, batch_size: int, output_names=(OUTPUT_NAME,)):
  """The ONNX ModelProto of `forward`'s traced jaxpr (one output per name), or a ConversionError naming the op
  that failed."""
  spec = input_spec(image_shape, batch_size)
  # Traced by JAX itself, before jax2onnx patches anything: the jaxpr is exactly what fpclass runs.
  closed = jax.make_jaxpr(forward)(spec)
  run = jaxpr_as_fun(closed)
  try:
    # Some converters print debugging lines, and onnx_ir warns about every shape it leaves unstamped.
    with contextlib.redirect_stdout(io.StringIO()), _quiet('onnx_ir'):
      return jax2onnx.to_onnx(lambda images: run(images)[0] if len(output_names) == 1 else tuple(run(images)),
                              [spec], model_name='fpclass', input_names=[INPUT_NAME],
                              output_names=list(output_names))
  except Exception as e:  # noqa: BLE001 - any converter failure is reported with the op it failed on
    op = _failing_op(e.__traceback__)
    where = f'the op {op!r}' if op else 'an op'
    batch = 'a symbolic batch dimension' if not batch_size else f'batch size {batch_size}'
    raise ConversionError(f'jax2onnx cannot convert {where} of this model with {batch} '
                          f'({_first_sentence(e)})', symbolic=not batch_size) from None


def _failing_op(traceback) -> str | None:
  """The innermost jaxpr equation jax2onnx was converting when it failed (e.g. 'pad'), from its frames."""
  op = None
  while traceback is not None:
    eqn = traceback.tb_frame.f_locals.get('eqn')
    primitive = getattr(eqn, 'primitive', None)
    if primitive is not None:
      op = getattr(primitive, 'name', str(primitive))
    traceback = traceback.tb_next
  return op


def _onnx_metadata(description: dict, batch_size: int) -> dict:
  calibration = description.get('calibration') or {}
  return {'class_names': json.dumps(description['class_names']), 'fpclass_model': str(description.get('model', '')),
          'input': f'{INPUT_NAME}: uint8 NHWC {description["input"]["shape"][1:]}, batch '
                   f'{batch_size or "any"}; normalisation inside the graph',
          'output': f'{description["output"]["name"]}: {description["output"]["note"]}',
          'temperature': json.dumps(calibration.get('temperature')),
          'threshold': json.dumps(calibration.get('threshold')),
          'checkpoint_epoch': json.dumps(description.get('epoch')),
          **({'head': 'multilabel', 'thresholds': json.dumps(calibration['thresholds'])}
             if description['output']['head'] == 'multilabel' else {}),
          **({'ensemble': json.dumps({k: description['ensemble'][k] for k in ('kind', 'metric', 'members')})}
             if 'ensemble' in description else {}),
          **({'ood': json.dumps(description['ood'])} if 'ood' in description else {})}


def _opset(model) -> int | None:
  return next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), None)


def _onnx_modules():
  try:
    import jax2onnx
    import onnx
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process
  except ImportError as e:
    raise UserInputError(f'ONNX export needs jax2onnx, onnx and onnxruntime ({e}); install them with '
                         "pip install 'fpclass[export]', or set --config.export.formats='(\"stablehlo\",)'") from None
  _load_primitive_converters()
  return jax2onnx, onnx, onnxruntime, quant_pre_process


def _load_primitive_converters() -> None:
  """jax2onnx imports every plugin on its first conversion, example models included, some of which
  compile at import (about 40 s on a 2-core CPU). A traced jaxpr needs only the converters of JAX's own
  primitives (jax2onnx/plugins/jax, about 3 s), so only those are imported. Another jax2onnx layout
  falls back to its own full import."""
  try:
    from jax2onnx.plugins import plugin_system
    if not plugin_system._already_imported_plugins:
      root = pathlib.Path(plugin_system.__file__).parent
      # Its plugins log a traceback for each optional dependency they miss; those are not ours to fix.
      with _quiet('jax2onnx'):
        plugin_system._import_tree(root / 'jax', 'jax2onnx.plugins.jax')
      plugin_system._already_imported_plugins = True
  except (ImportError, AttributeError):
    pass


@contextlib.contextmanager
def _quiet(logger_name: str):
  logger = logging.getLogger(logger_name)
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _first_sentence(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text.split(". ")[0][:200]}' if text else type(error).__name__


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  return f'{type(error).__name__}: {text[:400]}'
