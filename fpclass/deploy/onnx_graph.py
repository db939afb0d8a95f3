"""Rewrites of an exported ONNX graph into the ops onnxruntime runs fastest, each keeping the outputs
(`fpclass.deploy.onnx_export` checks the rewritten model against JAX's outputs before it writes the file).

- `pools_as_maxpool`: fpclass's 2x2 max pool (`fpclass.models.layers.pooling`, a reshape to 6-d and a max over two
  axes: the form whose gradient XLA computes cheaply) reaches ONNX as Reshape -> ReduceMax(axes 2 and 4), which
  took a third of the footprint CNN's int8 time in onnxruntime; an NCHW MaxPool between two Transposes computes
  the same maxima, the Transposes cancel against the convolutions' own, and the quantiser keeps MaxPool in int8.
- `prepare` (the exported float model, and the int8 quantiser's input): onnxruntime's own pre-processing, then
  jax2onnx's Gemm -> Add(bias) with the bias inside the Gemm and each Max(., 0) a Relu
  (`fold_dense_biases_and_relu`), and a convolution's per-channel tail, Conv -> Transpose -> Add(bias) and a batch
  norm's Sub -> Mul -> Add, folded into its weights and bias (`fold_channel_affine`), and the input's
  normalisation folded into the first convolutions' weights (`fold_input_affine`). onnxruntime fuses a Conv with
  a Relu, not with Max(., 0), and runs each left-over op as a pass over every feature map (in int8, in float
  between a dequantise and a quantise node).
The int8 model's own rewrites are `fpclass.deploy.int8_graph`'s.
"""
import contextlib
import io
import pathlib
import tempfile

import numpy as np


def pools_as_maxpool(onnx, model):
  """`model` with every Reshape(NHWC -> N, H/a, a, W/b, b, C) -> ReduceMax(axes (2, 4), keepdims 0) whose
  window divides the image replaced by Transpose -> MaxPool(a x b, stride a x b) -> Transpose; returns how many."""
  graph = model.graph
  inferred = onnx.shape_inference.infer_shapes(model)
  shapes = {v.name: [d.dim_value if d.HasField('dim_value') else None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
  initialisers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
  producer = {name: node for node in graph.node for name in node.output}
  consumers = readers_of(graph)
  replaced = {}
  for node in graph.node:
    window = _pool_window(onnx, node, producer, consumers, initialisers, shapes)
    if window is None:
      continue
    reshape = producer[node.input[0]]
    source, out = reshape.input[0], node.output[0]
    nchw, pooled = f'{out}_nchw', f'{out}_pooled_nchw'
    replaced[id(reshape)] = []
    replaced[id(node)] = [
        onnx.helper.make_node('Transpose', [source], [nchw], perm=[0, 3, 1, 2], name=f'{out}_to_nchw'),
        onnx.helper.make_node('MaxPool', [nchw], [pooled], kernel_shape=list(window), strides=list(window),
                              name=f'{out}_maxpool'),
        onnx.helper.make_node('Transpose', [pooled], [out], perm=[0, 2, 3, 1], name=f'{out}_to_nhwc')]
  replace_nodes(graph, replaced)
  return len(replaced) // 2


def prepare(onnx, quant_pre_process, source, target) -> None:
  """Writes `source` (an ONNX file) to `target` as onnxruntime's quantisation pre-processing leaves it (its
  portable optimisations: constants folded, and ONNX's shape inference; its own symbolic inference cannot
  follow jax2onnx's stamped shapes), with Gemm's scalar zero biases dropped (onnxruntime's bias quantiser cannot
  take them), then the biases, ReLUs and batch norms folded. Idempotent."""
  with contextlib.redirect_stdout(io.StringIO()):
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
  model = onnx.load(str(target))
  initialisers = {i.name: i for i in model.graph.initializer}
  for node in model.graph.node:
    if node.op_type == 'Gemm' and len(node.input) == 3 and node.input[2] in initialisers \
       and not initialisers[node.input[2]].dims and not np.any(onnx.numpy_helper.to_array(initialisers[node.input[2]])):
      del node.input[2]
  fold_dense_biases_and_relu(onnx, model)
  fold_channel_affine(onnx, model)
  fold_input_affine(onnx, model)
  onnx.save(model, str(target))


def prepared_model(onnx, quant_pre_process, model):
  """`prepare` of an in-memory ModelProto (the export's), through a temporary folder."""
  with tempfile.TemporaryDirectory() as folder:
    source, target = pathlib.Path(folder) / 'converted.onnx', pathlib.Path(folder) / 'prepared.onnx'
    onnx.save_model(model, str(source))
    prepare(onnx, quant_pre_process, source, target)
    return onnx.load(str(target))


def fold_dense_biases_and_relu(onnx, model) -> None:
  """`model` with each bias-free Gemm -> Add(constant bias) given the bias as its third input (the Add gone), and
  each Max with a constant 0 a Relu. A convolution's bias Add is `fold_channel_affine`'s."""
  graph = model.graph
  initialisers = {i.name: i for i in graph.initializer}
  consumers, outputs = readers_of(graph), {o.name for o in graph.output}

  def only_consumer(name):
    found = consumers.get(name, [])
    return found[0] if len(found) == 1 and name not in outputs else None

  def constant(name):
    return onnx.numpy_helper.to_array(initialisers[name]) if name in initialisers else None

  removed = {}
  for gemm in graph.node:
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if gemm.op_type != 'Gemm' or len(gemm.input) != 2 or gemm.input[1] not in initialisers:
      continue
    add = only_consumer(gemm.output[0])
    if add is None or add.op_type != 'Add':
      continue
    units = initialisers[gemm.input[1]].dims[0 if attributes.get('transB', 0) else 1]
    bias = constant(next((n for n in add.input if n != gemm.output[0]), ''))
    if bias is None or bias.size != units or bias.shape[-1] != units:
      continue
    name = f'{gemm.name or gemm.output[0]}_bias'
    graph.initializer.append(onnx.numpy_helper.from_array(bias.reshape(units).astype(np.float32), name))
    gemm.input.append(name)
    for attribute in gemm.attribute:   # jax2onnx writes beta 0 beside its zero C; C now counts once
      if attribute.name == 'beta':
        attribute.f = 1.0
    gemm.output[0] = add.output[0]   # the Add was its one reader; its output may be the graph's (the logits)
    removed[id(add)] = []
  for node in graph.node:
    if node.op_type == 'Max' and len(node.input) == 2:
      zero = constant(node.input[1])
      if zero is not None and zero.size == 1 and float(zero.reshape(())) == 0.0:
        node.op_type = 'Relu'
        del node.input[1]
  replace_nodes(graph, removed)


def fold_channel_affine(onnx, model) -> int:
  """`model` with each Conv's per-channel affine tail folded into its weights and bias: its bias Add, and a batch
  norm in inference, which reaches ONNX as Sub(mean) -> Mul(scale) -> Add(offset), after the Conv or after
  jax2onnx's Transpose to NHWC, a value per channel (`_per_channel`). Left alone, they cost the float model a pass
  over every feature map each, and the int8 model more: float ops between a dequantise and a quantise node. Each link must be the previous one's only reader, with the constant as its
  second operand where order matters; returns how many convolutions took one."""
  graph = model.graph
  initialisers = {i.name: i for i in graph.initializer}
  consumers, outputs = readers_of(graph), {o.name for o in graph.output}
  removed, folds = {}, 0
  for conv in graph.node:
    if conv.op_type != 'Conv' or any(name not in initialisers for name in conv.input[1:]):
      continue
    weight = onnx.numpy_helper.to_array(initialisers[conv.input[1]]).astype(np.float64)
    channels = weight.shape[0]
    scale = np.ones(channels)
    shift = (onnx.numpy_helper.to_array(initialisers[conv.input[2]]).astype(np.float64) if len(conv.input) == 3
             else np.zeros(channels))
    tail, chain = conv.output[0], []
    readers = consumers.get(tail, [])
    transpose = readers[0] if len(readers) == 1 and tail not in outputs and readers[0].op_type == 'Transpose' and \
        list(onnx.helper.get_attribute_value(readers[0].attribute[0])) == [0, 2, 3, 1] else None
    if transpose is not None:   # jax2onnx's NHWC form: the constants are (C,), (1, 1, 1, C), ...
      tail = transpose.output[0]
    while True:
      readers = consumers.get(tail, [])
      node = readers[0] if len(readers) == 1 and tail not in outputs else None
      if node is None or node.op_type not in ('Add', 'Sub', 'Mul', 'Div') or list(node.input).count(tail) != 1:
        break
      other = node.input[1] if node.input[0] == tail else node.input[0]
      if other not in initialisers or (node.op_type in ('Sub', 'Div') and node.input[1] != other):
        break
      value = onnx.numpy_helper.to_array(initialisers[other])
      if not _per_channel(value, channels, transpose is not None):
        break
      scale, shift = _affine_step(node.op_type, scale, shift, value.reshape(channels).astype(np.float64))
      chain.append(node)
      tail = node.output[0]
    if not chain:
      continue
    name = conv.name or conv.output[0]
    folded = weight * scale.reshape((channels,) + (1,) * (weight.ndim - 1))
    graph.initializer.extend([onnx.numpy_helper.from_array(folded.astype(np.float32), f'{name}_folded_weight'),
                              onnx.numpy_helper.from_array(shift.astype(np.float32), f'{name}_folded_bias')])
    conv.input[1:] = [f'{name}_folded_weight', f'{name}_folded_bias']
    (conv if transpose is None else transpose).output[0] = tail   # each link was the previous one's only reader
    removed.update({id(node): [] for node in chain})
    folds += 1
  replace_nodes(graph, removed)
  return folds


def fold_input_affine(onnx, model) -> bool:
  """`model` with its uint8 input's normalisation, Cast -> a chain of Add, Sub, Mul and Div constants that is
  a_k * x + b_k for each channel k (a_k != 0), folded into the convolutions that read it (after a Transpose to
  NCHW): each one's weights for channel k times a_k, its input x - c_k, c_k = -b_k / a_k. Exact, zero padding
  included, since a_k * x + b_k = a_k * (x - c_k): one float pass over the image (Sub) instead of three (the
  Divs and Sub were a tenth of the footprint CNN's float time and a sixth of its int8 time). Every reader of the
  normalised image must be such a convolution; returns whether it applied."""
  graph = model.graph
  initialisers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
  readers, outputs = readers_of(graph), {o.name for o in graph.output}
  uint8 = [i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
  cast = readers.get(uint8[0], []) if len(uint8) == 1 else []
  if len(cast) != 1 or cast[0].op_type != 'Cast':
    return False
  scale, shift, chain, tail = np.ones(1), np.zeros(1), [], cast[0].output[0]
  while len(found := readers.get(tail, [])) == 1 and tail not in outputs and found[0].op_type in ('Add', 'Sub', 'Mul', 'Div'):
    node = found[0]
    other = node.input[1] if node.input[0] == tail else node.input[0]
    if other not in initialisers or (node.op_type in ('Sub', 'Div') and node.input[1] != other) \
       or initialisers[other].size > 1 and initialisers[other].shape[-1] != initialisers[other].size:
      return False
    scale, shift = _affine_step(node.op_type, scale, shift, initialisers[other].reshape(-1).astype(np.float64))
    chain.append(node)
    tail = node.output[0]
  transposes = readers.get(tail, [])
  if not chain or tail in outputs or not transposes or np.any(scale == 0) or any(
      t.op_type != 'Transpose' or list(onnx.helper.get_attribute_value(t.attribute[0])) != [0, 3, 1, 2] for t in transposes):
    return False
  convs = [c for t in transposes for c in readers.get(t.output[0], [])]
  if any(c.op_type != 'Conv' or c.input[0] not in {t.output[0] for t in transposes} or c.input[1] not in initialisers
         or initialisers[c.input[1]].ndim != 4 or scale.size not in (initialisers[c.input[1]].shape[1], 1)
         for c in convs) or any(t.output[0] in outputs for t in transposes):
    return False
  for conv in convs:
    weight = initialisers[conv.input[1]].astype(np.float64)
    name = f'{conv.name or conv.output[0]}_input_scaled_weight'
    graph.initializer.append(onnx.numpy_helper.from_array(
        (weight * np.broadcast_to(scale, (weight.shape[1],)).reshape(1, -1, 1, 1)).astype(np.float32), name))
    conv.input[1] = name
  centre = f'{uint8[0]}_centre'
  graph.initializer.append(onnx.numpy_helper.from_array((-shift / scale).reshape(1, 1, 1, -1).astype(np.float32), centre))
  chain[0].op_type, chain[0].input[:], chain[0].output[0] = 'Sub', [cast[0].output[0], centre], tail
  del chain[0].attribute[:]
  replace_nodes(graph, {id(node): [] for node in chain[1:]})
  return True


def _affine_step(op_type: str, scale, shift, value):
  """(scale, shift) of `op_type`(scale * x + shift, value), the constant second: Add, Sub, Mul or Div."""
  if op_type == 'Add':
    return scale, shift + value
  if op_type == 'Sub':
    return scale, shift - value
  if op_type == 'Mul':
    return scale * value, shift * value
  return scale / value, shift / value


def _per_channel(value, channels: int, nhwc: bool) -> bool:
  """Whether a constant holds one value per channel where it meets a convolution's output: along the last axis
  after jax2onnx's Transpose to NHWC, as (1, C, 1, 1) or (C, 1, 1) right after the Conv."""
  if nhwc:
    return value.size == channels and value.shape[-1] == channels
  return value.shape in ((1, channels, 1, 1), (channels, 1, 1))


def readers_of(graph) -> dict:
  """Tensor name -> the nodes that read it."""
  consumers: dict = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  return consumers


def replace_nodes(graph, replaced: dict) -> None:
  """Puts `replaced[id(node)]` (new nodes, or none) in each listed node's place, then prunes what is left unused."""
  if replaced:
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    _prune(graph)


def _prune(graph) -> None:
  """Drops the nodes no output depends on any more (the reshapes' shape computations) and unused initialisers."""
  while True:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [node for node in graph.node if not any(name in used for name in node.output)]
    if not dead:
      break
    for node in dead:
      graph.node.remove(node)
  used = {name for node in graph.node for name in node.input}
  for initialiser in [i for i in graph.initializer if i.name not in used]:
    graph.initializer.remove(initialiser)


def _pool_window(onnx, node, producer, consumers, initialisers, shapes):
  """(a, b) where `node` is the ReduceMax of a 2-d block max pool over an NHWC tensor that a and b divide."""
  if node.op_type != 'ReduceMax' or len(node.input) != 2 or node.input[1] not in initialisers:
    return None
  keepdims = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == 'keepdims'), 1)
  if keepdims != 0 or sorted(np.asarray(initialisers[node.input[1]]).ravel().tolist()) != [2, 4]:
    return None
  reshape = producer.get(node.input[0])
  if reshape is None or reshape.op_type != 'Reshape' or len(consumers.get(reshape.output[0], [])) != 1:
    return None
  source, blocks = shapes.get(reshape.input[0]), shapes.get(reshape.output[0])
  if not source or not blocks or len(source) != 4 or len(blocks) != 6 or None in source[1:] or None in blocks[1:]:
    return None
  (_, h, w, c), (_, rows, a, cols, b, channels) = source, blocks
  if rows * a != h or cols * b != w or channels != c:
    return None
  return a, b
