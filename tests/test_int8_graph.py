"""The int8 model's own rewrite (fpclass.deploy.int8_graph) through `int8.quantise` on hand-made ONNX graphs, and
the graph onnxruntime then runs: a convolution over the image's channels stays float without its pool falling
into onnxruntime's slow uint8 NCHW MaxPool."""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from fpclass.deploy import int8, int8_graph

RNG = np.random.default_rng(0)


def _constant(name, value):
  return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _image_model(path, channels, mean, std):
  """images (uint8 NHWC) -> Cast -> Div(255) -> Sub(mean) -> Div(std) -> Transpose -> Conv -> Relu -> MaxPool ->
  Conv -> Relu: an exported CNN's start, written to `path`."""
  nodes = [helper.make_node('Cast', ['images'], ['pixels'], to=TensorProto.FLOAT),
           helper.make_node('Div', ['pixels', 'c255'], ['unit']), helper.make_node('Sub', ['unit', 'mean'], ['centred']),
           helper.make_node('Div', ['centred', 'std'], ['normed']),
           helper.make_node('Transpose', ['normed'], ['nchw'], perm=[0, 3, 1, 2]),
           helper.make_node('Conv', ['nchw', 'w1', 'b1'], ['conv1'], pads=[1, 1, 1, 1]),
           helper.make_node('Relu', ['conv1'], ['relu1']),
           helper.make_node('MaxPool', ['relu1'], ['pool1'], kernel_shape=[2, 2], strides=[2, 2]),
           helper.make_node('Conv', ['pool1', 'w2', 'b2'], ['conv2'], pads=[1, 1, 1, 1]), helper.make_node('Relu', ['conv2'], ['y'])]
  initialisers = [_constant('c255', 255.0), _constant('mean', np.reshape(mean, (1, 1, 1, -1))),
                  _constant('std', np.reshape(std, (1, 1, 1, -1))), _constant('w1', RNG.normal(size=(8, channels, 3, 3))),
                  _constant('b1', RNG.normal(size=8)), _constant('w2', 0.3 * RNG.normal(size=(8, 8, 3, 3))),
                  _constant('b2', RNG.normal(size=8))]
  graph = helper.make_graph(nodes, 'image', [helper.make_tensor_value_info('images', TensorProto.UINT8, [None, 8, 6, channels])],
                            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)], initialisers)
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]), str(path))


def _optimised(model, tmp_path):
  """onnxruntime's optimised graph of `model` (as a session builds it)."""
  options = onnxruntime.SessionOptions()
  options.optimized_model_filepath = str(tmp_path / 'optimised.onnx')
  onnxruntime.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
  return onnx.load(str(tmp_path / 'optimised.onnx')).graph


def _close_to_float(model, tmp_path, images):
  want = onnxruntime.InferenceSession(str(tmp_path / 'float.onnx'), providers=['CPUExecutionProvider']).run(
      None, {'images': images})[0]
  got = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider']).run(
      None, {'images': images})[0]
  assert np.median(np.abs(got - want)) <= 0.01 * np.ptp(want)


def test_a_convolution_over_the_image_s_channels_stays_float_and_its_pool_does_not_turn_uint8(tmp_path):
  """One input channel: the first Conv, its pool and ReLU are left float (the ReLU after the pool), the second
  convolution is a QLinearConv, and no MaxPool reads a quantised tensor (onnxruntime's uint8 NCHW MaxPool, 2.5x the
  whole float model's time when the quantise node moved up through the pool)."""
  _image_model(tmp_path / 'float.onnx', 1, 0.5, 0.5)
  images = RNG.integers(0, 256, size=(64, 8, 6, 1), dtype=np.uint8)
  model = onnx.load_from_string(int8.quantise(tmp_path / 'float.onnx', images, tmp_path))
  ops = [n.op_type for n in model.graph.node if n.op_type not in ('QuantizeLinear', 'DequantizeLinear')]
  assert ops[:6] == ['Cast', 'Sub', 'Transpose', 'Conv', 'MaxPool', 'Relu'] and ops[6] == 'Conv'
  optimised = _optimised(model, tmp_path)
  producer = {name: node.op_type for node in optimised.node for name in node.output}
  kinds = [n.op_type for n in optimised.node]
  assert kinds.count('QLinearConv') == 1 and 'Conv' in kinds
  assert not [n for n in optimised.node if n.op_type == 'MaxPool' and producer.get(n.input[0]) == 'QuantizeLinear']
  _close_to_float(model, tmp_path, images)


@pytest.mark.parametrize('weight, group', [((2, 4, 3, 3), 1), ((4, 1, 3, 3), 4)], ids=['four channels', 'depthwise'])
def test_convolutions_over_more_channels_are_quantised(weight, group):
  """Four input channels, or a depthwise convolution (one input channel per weight, four read): nothing is left
  float."""
  graph = helper.make_graph([helper.make_node('Conv', ['x', 'w'], ['y'], name='conv', group=group)], 'conv',
                            [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4, 5, 5])],
                            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)],
                            [_constant('w', RNG.normal(size=weight))])
  assert int8_graph.float_image_convolutions(onnx, helper.make_model(graph)) == []
