"""A model's inference function as ONNX: converted from its traced jaxpr by jax2onnx, its max pools and batch norms
rewritten for onnxruntime (`fpclass.deploy.onnx_graph`), its metadata_props carrying the class names and how to
read the output, and checked with onnxruntime against fpclass's own answer before it is kept. A converter that
cannot take a symbolic batch dimension gets a fixed batch of 1, said in one line. Optional: `pip install
'fpclass[export]'`.
"""
import contextlib
import io
import json
import logging
import pathlib
import time

import jax
import numpy as np
from jax.extend.core import jaxpr_as_fun

from fpclass import fileio
from fpclass.deploy import artifact, onnx_graph
from fpclass.errors import UserInputError


def export_onnx(forward, image_shape, batch_size: int, path: pathlib.Path, probe, expected, description) -> tuple:
  jax2onnx, onnx, ort, quant_pre_process = _onnx_modules()
  start = time.perf_counter()
  note = None
  output_name = description['output']['name']
  output_names = [output_name, artifact.OOD_OUTPUT_NAME] if 'ood' in description else [output_name]
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
  images = artifact.check_images(probe, batch_size)
  with fileio.atomic_path(path) as tmp:
    onnx.save_model(model, str(tmp))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # jax2onnx's stamped shapes make onnxruntime warn while it merges them
    session = ort.InferenceSession(str(tmp), options, providers=['CPUExecutionProvider'])
    difference = artifact.check_outputs(path.name, _session_outputs(session, output_names, images),
                                        artifact.expected_at(expected, batch_size))
    if not batch_size:  # the symbolic batch also runs at another size
      artifact.check_outputs(path.name, _session_outputs(session, output_names, images[:1]),
                             artifact.first_rows(expected, 1))
  info = {'file': path.name, 'format': f'ONNX (opset {_opset(model)})', 'batch_size': batch_size or 'any',
          'check_max_abs_difference': difference, 'seconds': round(time.perf_counter() - start, 2),
          'load': f'onnxruntime.InferenceSession(path).run({json.dumps(output_names)}, {{"images": images_uint8}})'}
  if note:
    info['note'] = note
    print(f'note: {path.name} has {note}; set --config.export.batch_size for another fixed size')
  return path, info


def _session_outputs(session, names: list, images: np.ndarray):
  """onnxruntime's outputs `names` of `images`: one array, or a tuple of them."""
  got = session.run(names, {artifact.INPUT_NAME: images})
  return got[0] if len(names) == 1 else tuple(got)


class ConversionError(Exception):
  """jax2onnx failed; `symbolic` says whether the batch dimension was symbolic."""

  def __init__(self, message: str, symbolic: bool):
    super().__init__(message)
    self.symbolic = symbolic


def _convert(jax2onnx, forward, image_shape, batch_size: int, output_names=(artifact.OUTPUT_NAME,)):
  """The ONNX ModelProto of `forward`'s traced jaxpr (one output per name), or a ConversionError naming the op
  that failed."""
  spec = artifact.input_spec(image_shape, batch_size)
  # Traced by JAX itself, before jax2onnx patches anything: the jaxpr is exactly what fpclass runs.
  closed = jax.make_jaxpr(forward)(spec)
  run = jaxpr_as_fun(closed)
  try:
    # Some converters print debugging lines, and onnx_ir warns about every shape it leaves unstamped.
    with contextlib.redirect_stdout(io.StringIO()), _quiet('onnx_ir'):
      return jax2onnx.to_onnx(lambda images: run(images)[0] if len(output_names) == 1 else tuple(run(images)),
                              [spec], model_name='fpclass', input_names=[artifact.INPUT_NAME],
                              output_names=list(output_names))
  except Exception as e:  # noqa: BLE001 - any converter failure is reported with the op it failed on
    op = _failing_op(e.__traceback__)
    where = f'the op {op!r}' if op else 'an op'
    batch = 'a symbolic batch dimension' if not batch_size else f'batch size {batch_size}'
    raise ConversionError(f'jax2onnx cannot convert {where} of this model with {batch} '
                          f'({artifact.first_sentence(e)})', symbolic=not batch_size) from None


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
          'input': f'{artifact.INPUT_NAME}: uint8 NHWC {description["input"]["shape"][1:]}, batch '
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
