"""The int8 model's own graph rewrite (`fpclass.deploy.int8`), before onnxruntime's static quantisation; the float
graph's preparation, which both models share, is `fpclass.deploy.onnx_graph`'s.

- `float_image_convolutions` (before quantising): a convolution over the image's own channels (three or fewer) is
  4 to 5x slower in onnxruntime's int8 than in float (docs/deploy.md), so it stays float with its ReLU and max
  pool. The ReLU moves after the pool (they commute exactly): onnxruntime's QDQ propagation would otherwise move
  the quantise node up through the pool and run it as a uint8 MaxPool in NCHW, 2.5x slower than the whole float
  model, where a ReLU before the quantise node stops it and is then fused into it.
The input's normalisation is folded into those convolutions by the float preparation
(`onnx_graph.fold_input_affine`).
"""
from fpclass.deploy import onnx_graph

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
