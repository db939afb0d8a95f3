"""int8 ONNX: onnxruntime's static quantisation (QDQ) of an exported model.onnx, calibrated on training images,
kept only when its accuracy on held-out images stays within config.export.int8_max_drop of the float model's.

- The graph is prepared as onnxruntime's `quant_pre_process` does, a Gemm's scalar zero bias (jax2onnx writes
  one beside every dense layer's own Add) is dropped, which onnxruntime's bias quantiser cannot take, and each
  convolution's and dense layer's bias Add, and each ReLU Max, are folded into the Conv or Gemm and a Relu
  (`fpclass.deploy.onnx_graph`). A convolution over the image's own channels stays float
  (`fpclass.deploy.int8_graph`).
- Convolutions, matrix products, ReLUs and max pools are quantised (int8 weights per output channel, uint8
  activations with `reduce_range`: 7 bits, which AVX2 without VNNI needs to avoid overflowing its 16-bit pairwise
  sums); the OOD score's own nodes stay float, so the `unknown` threshold keeps its meaning.
- Both models predict the held-out images; the int8 model's accuracy, the float model's and their paired
  difference with its 95% interval, the agreement of their predictions (and unknown flags), and each model's
  images per second on this CPU go to model.int8.json beside it. A drop past the limit writes neither file and
  says what dropped and by how much: a wrong calibration collapses a model (docs/deploy.md).
"""
import json
import math
import pathlib
import tempfile
import time

import numpy as np

from fpclass import fileio
from fpclass.analysis.stats import paired_difference
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.deploy import int8_graph, onnx_graph
from fpclass.deploy.artifact import INPUT_NAME
from fpclass.errors import UserInputError

INT8_FILE, INT8_DESCRIPTION = 'model.int8.onnx', 'model.int8.json'

# Relu and MaxPool too, though they compute nothing in int8 that float would not: quantised, the ReLU folds into its
# convolution's output range and the pool shares its input's scale, so onnxruntime runs conv -> pool in uint8;
# left float, each convolution ended in a DequantizeLinear -> QuantizeLinear pair of two scales before its pool (a
# quarter of the footprint CNN's int8 time; 1.13x -> 1.52x the float model at 120x80, docs/deploy.md).
QUANTISED_OPS = ('Conv', 'Gemm', 'MatMul', 'Relu', 'MaxPool')


# The share of held-out images whose "none of my classes" flag may change: the flag's own target false-rejection
# rate (config.ood.false_rejection, 5%); measured changes were 0 to 2.4% (bench/results/2026-11-27/deploy_int8*).
MAX_UNKNOWN_CHANGE = 0.05

def _modules():
  try:
    import onnx
    import onnxruntime
    from onnxruntime import quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process
  except ImportError as e:
    raise UserInputError(f'--config.export.int8=True needs onnx and onnxruntime ({e}); install them with '
                         "pip install 'fpclass[export]'") from None
  return onnx, onnxruntime, quantization, quant_pre_process


class CalibrationImages:
  """onnxruntime's CalibrationDataReader over uint8 images, `batch` at a time."""

  def __init__(self, images: np.ndarray, batch: int = 32):
    self._batches = iter([{INPUT_NAME: np.ascontiguousarray(images[i:i + batch])}
                          for i in range(0, len(images), batch)])

  def get_next(self):
    return next(self._batches, None)


def session(path, threads: int = 0):
  """An onnxruntime CPU session of `path` (`threads` 0: onnxruntime's default)."""
  _, ort, _, _ = _modules()
  options = ort.SessionOptions()
  options.log_severity_level = 3
  if threads:
    options.intra_op_num_threads = threads
  return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def run(model, images: np.ndarray, batch: int = 64) -> list:
  """Every output of an onnxruntime session over `images`, in batches."""
  parts = [model.run(None, {INPUT_NAME: np.ascontiguousarray(images[i:i + batch])})
           for i in range(0, len(images), batch)]
  return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _prepared(onnx, quant_pre_process, source: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
  """The float graph as the quantiser takes it (`fpclass.deploy.onnx_graph.prepare`; an exported model.onnx is
  already so, and stays as it is)."""
  prepared = folder / 'prepared.onnx'
  onnx_graph.prepare(onnx, quant_pre_process, source, prepared)
  return prepared


def _only_for(graph, output: str, others: list) -> list[str]:
  """The nodes `output` depends on that no other output does (the OOD score's own nodes)."""
  producer = {name: node for node in graph.node for name in node.output}

  def ancestors(name):
    seen, stack = set(), [name]
    while stack:
      node = producer.get(stack.pop())
      if node is not None and node.name not in seen:
        seen.add(node.name)
        stack.extend(node.input)
    return seen
  shared = set().union(*(ancestors(o) for o in others)) if others else set()
  return sorted(ancestors(output) - shared)


def quantise(source: pathlib.Path, calibration: np.ndarray, folder: pathlib.Path, float_only=(),
             reduce_range: bool = True) -> bytes:
  """The int8 model's bytes: `source` statically quantised (QDQ), calibrated on `calibration` (uint8 images),
  with the nodes that feed only the outputs `float_only` left in float (`reduce_range` False: 8-bit activations,
  which overflow AVX2's 16-bit sums without VNNI; the bench measures it)."""
  onnx, _, quantization, quant_pre_process = _modules()
  prepared = _prepared(onnx, quant_pre_process, source, folder)
  model = onnx.load(str(prepared))
  kept_float = int8_graph.float_image_convolutions(onnx, model)
  onnx.save(model, str(prepared))
  graph = model.graph
  names = [o.name for o in graph.output]
  excluded = kept_float + [n for o in float_only if o in names
                           for n in _only_for(graph, o, [x for x in names if x not in float_only])]
  target = folder / 'int8.onnx'
  quantization.quantize_static(
      str(prepared), str(target), CalibrationImages(calibration), quant_format=quantization.QuantFormat.QDQ,
      per_channel=True, reduce_range=reduce_range, activation_type=quantization.QuantType.QUInt8,
      weight_type=quantization.QuantType.QInt8, op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=excluded,
      calibrate_method=quantization.CalibrationMethod.MinMax)
  return target.read_bytes()


def throughput(model, images: np.ndarray, repeats: int = 5) -> float:
  """Images per second of `model` on one batch of `images`: the best of `repeats` timed runs after a warm-up."""
  model.run(None, {INPUT_NAME: images})
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    model.run(None, {INPUT_NAME: images})
    best = min(best, time.perf_counter() - start)
  return len(images) / best


def decisions(outputs: np.ndarray, head: str, probabilities: bool, thresholds=None) -> np.ndarray:
  """The model's decisions from its graph output: logits (a run's), or probabilities (an ensemble's); class
  indices, or a multi-label 0/1 matrix at `thresholds`."""
  outputs = np.asarray(outputs, np.float64)
  if head == 'multilabel':
    probs = outputs if probabilities else 1.0 / (1.0 + np.exp(-outputs))
    return (probs >= np.asarray(thresholds)).astype(int)
  if head == 'sigmoid' and not probabilities:
    return (outputs[:, 0] > 0).astype(int)
  return outputs.argmax(1)


def correct(decided: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per image: 1 when the decision is right (multi-label: the share of its labels decided right)."""
  right = decided == np.asarray(labels)
  return right.mean(axis=1) if right.ndim == 2 else right.astype(np.float64)


def export_int8(float_path: pathlib.Path, calibration: np.ndarray, held_out: np.ndarray, labels: np.ndarray,
                head: str, max_drop: float, held_out_note: str, probabilities: bool = False, thresholds=None,
                ood_threshold=None, ood_output: str | None = None) -> dict:
  """Writes model.int8.onnx and model.int8.json beside `float_path` when the int8 model's accuracy on `held_out`
  (uint8 images with `labels`) is within `max_drop` of the float model's; returns the description written. A
  larger drop raises a UserInputError saying what dropped and by how much, and writes nothing. `probabilities`:
  the graph outputs probabilities (an ensemble's), not logits; `thresholds`: a multi-label model's."""
  folder = pathlib.Path(float_path).parent
  with tempfile.TemporaryDirectory(prefix='fpclass-int8-') as scratch:
    data = quantise(pathlib.Path(float_path), calibration, pathlib.Path(scratch),
                    float_only=(ood_output,) if ood_output else ())
    (pathlib.Path(scratch) / INT8_FILE).write_bytes(data)
    int8 = session(pathlib.Path(scratch) / INT8_FILE)
    float_model = session(float_path)
    float_out, int8_out = run(float_model, held_out), run(int8, held_out)
    float_decided = decisions(float_out[0], head, probabilities, thresholds)
    int8_decided = decisions(int8_out[0], head, probabilities, thresholds)
    float_right, int8_right = correct(float_decided, labels), correct(int8_decided, labels)
    batch = held_out[:min(32, len(held_out))]
    speed = {'float': throughput(float_model, batch), 'int8': throughput(int8, batch)}
  metric = 'label accuracy' if head == 'multilabel' else 'accuracy'
  difference = paired_difference(int8_right, float_right)
  description = {
      'file': INT8_FILE, 'float_file': pathlib.Path(float_path).name,
      'quantisation': 'onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations '
                      f'(reduce_range), MinMax calibration on {len(calibration)} training images; ops '
                      f'{list(QUANTISED_OPS)}' + (f'; the {ood_output} output computed in float' if ood_output else ''),
      'held_out': {'images': len(held_out), 'what': held_out_note, 'metric': metric,
                   'float': float(float_right.mean()), 'int8': float(int8_right.mean()),
                   'int8_minus_float': difference, 'max_drop': max_drop,
                   'agreement': float(np.mean(float_decided == int8_decided))},
      'images_per_second': {**{k: round(v, 1) for k, v in speed.items()},
                            'int8_over_float': round(speed['int8'] / speed['float'], 3),
                            'batch': len(batch), 'note': 'onnxruntime CPUExecutionProvider on this machine, best '
                                                         'of 5 runs of one batch'}}
  if ood_output and len(float_out) > 1 and ood_threshold is not None:
    description['held_out']['unknown_agreement'] = float(np.mean((float_out[1] > ood_threshold)
                                                                 == (int8_out[1] > ood_threshold)))
  if head == 'multilabel':
    description['held_out'].update(macro_f1_float=macro_f1(labels, float_decided),
                                   macro_f1_int8=macro_f1(labels, int8_decided))
  failed = gate(description['held_out'], max_drop)
  if failed:
    raise UserInputError(f'config.export.int8: the int8 model on {len(held_out)} images of {held_out_note}: '
                         + '; '.join(failed) + f'; {INT8_FILE} was not written')
  with fileio.atomic_path(folder / INT8_FILE) as tmp:
    tmp.write_bytes(data)
  fileio.write_json(folder / INT8_DESCRIPTION, description)
  return description


def macro_f1(labels: np.ndarray, decided: np.ndarray) -> float:
  """Multi-label macro F1 of 0/1 decisions: a collapse to all-negative scores 0, where label accuracy (dominated by
  the negatives) would hardly move."""
  from sklearn.metrics import f1_score  # lazy: only a multi-label export reads it
  return float(f1_score(np.asarray(labels), np.asarray(decided), average='macro', zero_division=0))


def gate(held_out: dict, max_drop: float) -> list[str]:
  """What the int8 model failed on its held-out images, each more than `max_drop` (a share) from the float model:
  the decisions' metric (accuracy; label accuracy for multi-label) and multi-label macro F1; and the "none of my
  classes" flag, whose images flagged differently may be at most MAX_UNKNOWN_CHANGE. [] when it passes."""
  failed, limit = [], f'more than config.export.int8_max_drop={max_drop} ({100 * max_drop:.2f} points)'
  drop = held_out['float'] - held_out['int8']
  if not drop <= max_drop:
    failed.append(f'{held_out["metric"]} dropped from {held_out["float"]:.4f} (float) to {held_out["int8"]:.4f}, '
                  f'{100 * drop:.2f} points, {limit}')
  if 'macro_f1_float' in held_out:
    f1_drop = held_out['macro_f1_float'] - held_out['macro_f1_int8']
    if not f1_drop <= max_drop:
      failed.append(f'macro F1 dropped from {held_out["macro_f1_float"]:.4f} to {held_out["macro_f1_int8"]:.4f}, '
                    f'{100 * f1_drop:.2f} points, {limit}')
  if 'unknown_agreement' in held_out and not 1.0 - held_out['unknown_agreement'] <= MAX_UNKNOWN_CHANGE:
    failed.append(f'the "none of my classes" flag differs from the float model\'s on '
                  f'{100 * (1.0 - held_out["unknown_agreement"]):.2f}% of the images, more than '
                  f'{100 * MAX_UNKNOWN_CHANGE:.0f}%')
  return failed


def summary(description: dict) -> str:
  """One line of what model.int8.json says."""
  held = description['held_out']
  interval = held['int8_minus_float']
  speed = description['images_per_second']
  return (f'{description["file"]}: {held["metric"]} {held["int8"]:.4f} vs float {held["float"]:.4f} on '
          f'{held["images"]} images of {held["what"]} (int8 - float {100 * interval["mean"]:+.2f} points, 95% '
          f'[{100 * interval["low"]:+.2f}, {100 * interval["high"]:+.2f}]), {speed["int8_over_float"]:.2f}x the '
          f'float model\'s images per second on this CPU; details in {INT8_DESCRIPTION}')


def export_workdir_int8(float_path: pathlib.Path, data: DataSettings, description: dict, max_drop: float,
                        calibration_images: int, ood_threshold: float | None = None) -> dict:
  """`export_int8` of an exported workdir model (`description`: its model.json), calibrated on a fixed random
  subset of its training split and checked on its labelled test split when the source has one, else on its
  validation split (`data`: the data section it trained on; for an ensemble, whose models trained on folds of
  that data, the ensemble's own split). model.json gains the int8 artifact."""
  dataset = pipeline.load_dataset(data, progress=False)
  rows = np.random.default_rng(0).permutation(len(dataset.train))[:calibration_images]
  calibration = np.asarray(dataset.train.images[np.sort(rows)])
  held_out, note = dataset.val, 'the validation split'
  if dataset.test is not None and dataset.test.labels is not None:
    decoded = dataset.test.extras.get('decoded', np.ones(len(dataset.test), bool))
    held_out, note = dataset.test.take(np.flatnonzero(decoded)), 'the labelled test split'
  if 'ensemble' in description and held_out is dataset.val:
    note += ' (the ensemble\'s models trained on folds of the labelled data, some of them on these images)'
  head = description['output']['head']
  names = description['class_names']
  thresholds = ([description['calibration']['thresholds'][c] for c in names] if head == 'multilabel' else None)
  ood = description.get('ood')
  written = export_int8(float_path, calibration, np.asarray(held_out.images), np.asarray(held_out.labels), head,
                        max_drop, note, probabilities=description['output']['name'] == 'probabilities',
                        thresholds=thresholds, ood_threshold=ood_threshold, ood_output=ood['output'] if ood else None)
  model_json = pathlib.Path(float_path).parent / 'model.json'
  described = json.loads(model_json.read_text())
  described['artifacts']['int8'] = {'file': INT8_FILE, 'description': INT8_DESCRIPTION,
                                    'held_out': written['held_out'], 'images_per_second': written['images_per_second']}
  fileio.write_json(model_json, described)
  return written
