"""The int8 preparation's graph rewrites (fpclass.deploy.onnx_graph) on hand-made ONNX graphs: each keeps the graph's
outputs, as onnxruntime computes them, and removes the float ops it folds."""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from fpclass.deploy import onnx_graph

RNG = np.random.default_rng(0)
CHANNELS = 4


def _constant(name, value):
  return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _run(model, x):
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  return session.run(None, {'x': x})[0]


def _batch_norm_model(nhwc: bool):
  """x (NCHW) -> Conv(bias-free) [-> Transpose to NHWC] -> Sub(mean) -> Mul(scale) -> Add(offset) -> Relu: a batch
  norm in inference as jax2onnx writes it, in the layout after the Conv or after its Transpose."""
  shape = (1, 1, 1, CHANNELS) if nhwc else (1, CHANNELS, 1, 1)
  nodes = [helper.make_node('Conv', ['x', 'w'], ['conv'], pads=[1, 1, 1, 1])]
  head = 'conv'
  if nhwc:
    nodes.append(helper.make_node('Transpose', ['conv'], ['nhwc'], perm=[0, 2, 3, 1]))
    head = 'nhwc'
  nodes += [helper.make_node('Sub', [head, 'mean'], ['centred']), helper.make_node('Mul', ['centred', 'scale'], ['scaled']),
            helper.make_node('Add', ['scaled', 'offset'], ['normed']), helper.make_node('Relu', ['normed'], ['y'])]
  initialisers = [_constant('w', RNG.normal(size=(CHANNELS, 2, 3, 3))),
                  _constant('mean', RNG.normal(size=shape)), _constant('scale', RNG.uniform(0.5, 2.0, size=shape)),
                  _constant('offset', RNG.normal(size=shape))]
  graph = helper.make_graph(nodes, 'bn', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 2, 6, 5])],
                            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)], initialisers)
  return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])


@pytest.mark.parametrize('nhwc', [False, True], ids=['after the conv', 'after its transpose'])
def test_a_batch_norm_after_a_convolution_folds_into_its_weights_and_bias(nhwc):
  model = _batch_norm_model(nhwc)
  x = RNG.normal(size=(2, 2, 6, 5)).astype(np.float32)
  expected = _run(model, x)
  assert onnx_graph.fold_channel_affine(onnx, model) == 1
  assert [n.op_type for n in model.graph.node] == ['Conv', *(['Transpose'] if nhwc else []), 'Relu']
  assert len(model.graph.node[0].input) == 3   # the folded bias
  np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_the_fold_stops_where_another_reader_or_the_operand_order_needs_the_value():
  """A constant as the first operand of a Sub (mean - conv) is not folded; a link whose output the graph also
  returns ends the chain there, so every output keeps its value."""
  x = RNG.normal(size=(2, 2, 6, 5)).astype(np.float32)
  model = _batch_norm_model(False)
  sub = next(n for n in model.graph.node if n.op_type == 'Sub')
  sub.input[:] = [sub.input[1], sub.input[0]]
  assert onnx_graph.fold_channel_affine(onnx, model) == 0
  model = _batch_norm_model(False)
  model.graph.output.append(helper.make_tensor_value_info('centred', TensorProto.FLOAT, None))
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  expected = session.run(None, {'x': x})
  assert onnx_graph.fold_channel_affine(onnx, model) == 1
  assert [n.op_type for n in model.graph.node] == ['Conv', 'Mul', 'Add', 'Relu']
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  for got, want in zip(session.run(None, {'x': x}), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_dense_layer_s_bias_add_becomes_the_gemm_s_bias():
  """jax2onnx's dense layer: Gemm (beta 0, its zero C dropped by the int8 preparation) -> Add(bias), whose output
  may be the graph's own (the logits)."""
  nodes = [helper.make_node('Gemm', ['x', 'w'], ['dot'], beta=0.0), helper.make_node('Add', ['dot', 'b'], ['y'])]
  graph = helper.make_graph(nodes, 'dense', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [3, 5])],
                            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)],
                            [_constant('w', RNG.normal(size=(5, 4))), _constant('b', RNG.normal(size=(1, 4)))])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  x = RNG.normal(size=(3, 5)).astype(np.float32)
  expected = _run(model, x)
  onnx_graph.fold_dense_biases_and_relu(onnx, model)
  assert [n.op_type for n in model.graph.node] == ['Gemm'] and len(model.graph.node[0].input) == 3
  np.testing.assert_allclose(_run(model, x), expected, rtol=1e-6, atol=1e-6)



def _normalised_input_model(mean, std, channels=3):
  """images (uint8 NHWC) -> Cast -> Div(255) -> Sub(mean) -> Div(std) -> Transpose -> Conv (zero padding): an
  exported model's input normalisation, per channel or one for all."""
  nodes = [helper.make_node('Cast', ['images'], ['pixels'], to=TensorProto.FLOAT),
           helper.make_node('Div', ['pixels', 'c255'], ['unit']), helper.make_node('Sub', ['unit', 'mean'], ['centred']),
           helper.make_node('Div', ['centred', 'std'], ['normed']),
           helper.make_node('Transpose', ['normed'], ['nchw'], perm=[0, 3, 1, 2]),
           helper.make_node('Conv', ['nchw', 'w', 'b'], ['y'], pads=[1, 1, 1, 1])]
  initialisers = [_constant('c255', 255.0), _constant('mean', np.reshape(mean, (1, 1, 1, -1))),
                  _constant('std', np.reshape(std, (1, 1, 1, -1))), _constant('w', RNG.normal(size=(CHANNELS, channels, 3, 3))),
                  _constant('b', RNG.normal(size=CHANNELS))]
  graph = helper.make_graph(nodes, 'normalised', [helper.make_tensor_value_info('images', TensorProto.UINT8, [None, 6, 5, channels])],
                            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)], initialisers)
  return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])


def _run_images(model, images):
  session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  return session.run(None, {'images': images})[0]


@pytest.mark.parametrize('mean, std', [([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), (0.5, 0.5)],
                         ids=["ImageNet's, per channel", 'one for all'])
def test_the_input_normalisation_folds_into_the_first_convolution(mean, std):
  """One Sub of each channel's centre, the scale inside the weights: the same outputs, borders (zero padding)
  included."""
  images = RNG.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
  model = _normalised_input_model(mean, std)
  expected = _run_images(model, images)
  assert onnx_graph.fold_input_affine(onnx, model)
  assert [n.op_type for n in model.graph.node] == ['Cast', 'Sub', 'Transpose', 'Conv']
  np.testing.assert_allclose(_run_images(model, images), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_the_normalisation_stays_where_something_else_reads_it():
  model = _normalised_input_model(0.5, 0.5)
  model.graph.output.append(helper.make_tensor_value_info('normed', TensorProto.FLOAT, None))
  assert not onnx_graph.fold_input_affine(onnx, model)
  assert [n.op_type for n in model.graph.node] == ['Cast', 'Div', 'Sub', 'Div', 'Transpose', 'Conv']
