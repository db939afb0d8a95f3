"""The int8 model's own graph rewrites (`fpclass.infer.int8`), around onnxruntime's static quantisation; the float
graph's preparation, which both models share, is `fpclass.infer.onnx_graph`'s.

- `float_image_convolutions` (before quantising): a convolution over the image's own channels (three or fewer) is
  4 to 5x slower in onnxruntime's int8 than in float (docs/deploy.md), so it stays float with its ReLU and max
  pool. The ReLU moves after the pool (they commute exactly): onnxruntime's QDQ propagation would otherwise move
  the quantise node up through the pool and run it as a uint8 MaxPool in NCHW, 2.5x slower than the whole float
  model, where a ReLU before the quantise node stops it and is then fused into it.
- `input_as_quantised` (after quantising): uint8 pixels normalised by a * x + b are 8-bit values at scale a and
  zero point -b / a already; where a quantised op reads the normalised image, a dequantise node reads them as
  they come, and the float passes over the image go.
"""
import numpy as np

from fpclass.infer import onnx_graph

IMAGE_CHANNELS = 3   # a convolution with at most this many input channels stays float


def float_image_convolutions(onnx, model) -> list[str]:
  """The names of the nodes the quantiser leaves float (`nodes_to_exclude`): each ungrouped Conv with at most
  `IMAGE_CHANNELS` input channels, and a Relu -> MaxPool after it (each the previous one's only reader), which
  become MaxPool -> Relu. Nodes without a name are given one."""
  graph = model.graph
  initialisers = {i.name: i for i in graph.initializer}
  readers, outputs = onnx_graph.readers_of(graph), {o.name for o in graph.output}
  for i, node in enumerate(graph.node):
    node.name = node.name or f'{node.op_type}_{i}_fpclass'

  def only_reader(name, op_type):
    found = readers.get(name, [])
    return found[0] if len(found) == 1 and name not in outputs and found[0].op_type == op_type else None

  kept, moved = [], {}
  for conv in graph.node:
    weight = initialisers.get(conv.input[1]) if conv.op_type == 'Conv' and len(conv.input) > 1 else None
    group = next((onnx.helper.get_attribute_value(a) for a in conv.attribute if a.name == 'group'), 1)
    if weight is None or len(weight.dims) != 4 or weight.dims[1] > IMAGE_CHANNELS or group != 1:
      continue   # (a depthwise convolution's weights have one input channel each: it reads many)
    kept.append(conv.name)
    relu = only_reader(conv.output[0], 'Relu')
    pool = relu and only_reader(relu.output[0], 'MaxPool')
    if relu is not None and pool is not None:   # Conv -> Relu -> MaxPool  =>  Conv -> MaxPool -> Relu
      pooled, out = f'{pool.output[0]}_before_relu', pool.output[0]
      pool.input[0], pool.output[0] = conv.output[0], pooled
      relu.input[0], relu.output[0] = pooled, out
      moved.update({id(relu): [], id(pool): [pool, relu]})
      kept += [pool.name, relu.name]
    elif relu is not None:
      kept.append(relu.name)
  onnx_graph.replace_nodes(graph, moved)   # once: it copies the nodes into the graph anew
  return kept


def input_as_quantised(onnx, model) -> bool:
  """`model` (QDQ) with its uint8 input's Cast -> normalisation -> QuantizeLinear replaced by one
  DequantizeLinear of the raw pixels where that is one affine map a * x + b for every channel (scalar Add, Sub,
  Mul and Div constants, Transposes in between), a > 0 and the zero point -b / a within [0, 255]: each
  dequantise node that read the quantised normalised image reads the pixels at scale a and zero point
  round(-b / a) instead. The values it gives are the normalised image itself when -b / a is a whole number, and
  within half a pixel step of it otherwise (x / 127.5 - 1: 127.5); the quantised image it replaces was within
  half a calibrated step, at most as fine. Returns whether it applied."""
  graph = model.graph
  initialisers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
  consumers, outputs = onnx_graph.readers_of(graph), {o.name for o in graph.output}
  uint8 = [i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
  if len(uint8) != 1:
    return False

  def only_reader(name):
    found = consumers.get(name, [])
    return found[0] if len(found) == 1 and name not in outputs else None

  cast = only_reader(uint8[0])
  if cast is None or cast.op_type != 'Cast' or \
     onnx.helper.get_attribute_value(cast.attribute[0]) != onnx.TensorProto.FLOAT:
    return False
  a, b, perm, node, tail = 1.0, 0.0, None, None, cast.output[0]
  while (node := only_reader(tail)) is not None and node.op_type in ('Add', 'Sub', 'Mul', 'Div', 'Transpose'):
    if node.op_type == 'Transpose':
      order = list(onnx.helper.get_attribute_value(node.attribute[0]))
      perm = order if perm is None else [perm[i] for i in order]
    else:
      other = node.input[1] if node.input[0] == tail else node.input[0]
      if other not in initialisers or initialisers[other].size != 1 or (node.op_type in ('Sub', 'Div')
                                                                         and node.input[1] != other):
        return False
      a, b = onnx_graph.affine_step(node.op_type, a, b, float(initialisers[other].reshape(())))
    tail = node.output[0]
  if node is None or node.op_type != 'QuantizeLinear' or not a > 0 or not 0.0 <= -b / a <= 255.0:
    return False
  dequantisers = consumers.get(node.output[0], [])
  if not dequantisers or node.output[0] in outputs or any(d.op_type != 'DequantizeLinear' for d in dequantisers):
    return False
  pixels = uint8[0]
  name = f'{pixels}_as_quantised'
  new = []
  if perm is not None:
    new.append(onnx.helper.make_node('Transpose', [pixels], [f'{name}_transposed'], perm=perm, name=f'{name}_transpose'))
    pixels = f'{name}_transposed'
  graph.initializer.extend([onnx.numpy_helper.from_array(np.array(a, np.float32), f'{name}_scale'),
                            onnx.numpy_helper.from_array(np.array(round(-b / a), np.uint8), f'{name}_zero_point')])
  producer = {output: n for n in graph.node for output in n.output}
  for dequantiser in dequantisers:
    old_scale = float(initialisers[dequantiser.input[1]].reshape(()))
    dequantiser.input[:] = [pixels, f'{name}_scale', f'{name}_zero_point']
    for reader in consumers.get(dequantiser.output[0], []):
      _rescale_bias(onnx, graph, initialisers, producer, reader, old_scale / a)
  onnx_graph.replace_nodes(graph, {id(cast): new + [cast]})   # the Transpose first in the graph's order; the chain is pruned
  return True


def _rescale_bias(onnx, graph, initialisers, producer, node, factor: float) -> None:
  """A Conv's or Gemm's int32 bias quantised at (input scale x weight scale), given at an input scale `factor`
  times smaller: onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear into one QLinearConv only when
  the bias' scale is that product (left as it was, the footprint CNN's first convolution ran in float, 3x slower)."""
  dequantiser = producer.get(node.input[2]) if node.op_type in ('Conv', 'Gemm') and len(node.input) == 3 else None
  if dequantiser is None or dequantiser.op_type != 'DequantizeLinear' or dequantiser.input[0] not in initialisers:
    return
  values, scale = initialisers[dequantiser.input[0]], initialisers[dequantiser.input[1]]
  if values.dtype != np.int32:
    return
  name = f'{dequantiser.input[0]}_rescaled'
  graph.initializer.extend([
      onnx.numpy_helper.from_array(np.round(values.astype(np.float64) * factor).astype(np.int32), name),
      onnx.numpy_helper.from_array((scale.astype(np.float64) / factor).astype(np.float32), f'{name}_scale')])
  dequantiser.input[0], dequantiser.input[1] = name, f'{name}_scale'
