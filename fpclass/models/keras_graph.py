"""The layer order of a Keras functional model, which Keras weight files depend on.

A Keras 3 `.weights.h5` file names each layer by class and index in `model.layers` (`conv2d_7`), and Keras
loads a legacy `.h5` file by the same order. For a functional model that order is not creation order: Keras
sorts layers by depth (the longest path to the output, deepest first) and breaks ties by the order a
depth-first walk from the output first reaches them (keras/src/ops/function.py, `map_graph`). In a branching
model (ResNet shortcuts, Inception blocks) the two orders differ, so a family describes its graph with
`KerasGraph` (every layer, weighted or not, since weightless ones count in the depth) and reads its
weights table from `weighted_layers()`.
"""
import dataclasses

from fpclass.models import weights as weights_lib

KINDS = {'Conv2D': 'conv', 'Dense': 'dense', 'BatchNormalization': 'bn', 'DepthwiseConv2D': 'depthwise',
         'Normalization': 'normalization'}


@dataclasses.dataclass
class KerasGraph:
  """A Keras functional graph, built in Keras' creation order: node id -> its input node ids."""
  inputs: dict = dataclasses.field(default_factory=dict)
  layers: dict = dataclasses.field(default_factory=dict)    # node id -> KerasLayer, weighted layers only
  _created: dict = dataclasses.field(default_factory=dict)  # class -> layers of it created so far

  def op(self, *inputs: int) -> int:
    """A weightless layer (activation, padding, pooling, add, concatenate) or, without inputs, the input."""
    node = len(self.inputs)
    self.inputs[node] = inputs
    return node

  def layer(self, x: int, cls: str, flax: str, name: str = '') -> int:
    """A weighted layer of class `cls` whose variables go to Flax module `flax`. Without a `name`, the
    layer gets the name Keras 2.0 gave unnamed layers (`conv2d_1`, 1-based per class in creation order),
    which is what the official legacy files of such models (InceptionV3) carry."""
    count = self._created[cls] = self._created.get(cls, 0) + 1
    node = self.op(x)
    self.layers[node] = weights_lib.KerasLayer(name or f'{weights_lib.KERAS_CLASS_KEYS[cls]}_{count}', cls, flax)
    return node

  def weighted_layers(self, output: int | None = None) -> list:
    """The KerasLayers in `model.layers` order (Keras' map_graph: depth first, then first visit)."""
    output = len(self.inputs) - 1 if output is None else output
    visit_index, finished = {}, []
    stack = [(output, False)]
    while stack:  # depth-first from the output, inputs in order; iterative: graphs are hundreds deep
      node, done = stack.pop()
      if done:
        finished.append(node)
        continue
      if node in visit_index:
        continue
      visit_index[node] = len(visit_index)
      stack.append((node, True))
      stack.extend((parent, False) for parent in reversed(self.inputs[node]) if parent not in visit_index)
    depth = {}
    for node in reversed(finished):  # consumers before their inputs: depth = longest path to the output
      d = depth.setdefault(node, 0)
      for parent in self.inputs[node]:
        depth[parent] = max(depth.get(parent, 0), d + 1)
    order = sorted(visit_index, key=lambda n: (-depth[n], visit_index[n]))
    return [self.layers[n] for n in order if n in self.layers]


def converter(layers, optional=(), adjust=None):
  """A `ModelSpec.convert` for Keras files: path -> ({(collection, *flax path): array}, []).

  `layers` come from `KerasGraph.weighted_layers`; `optional` names the Flax modules a file may lack
  (the source classifier, absent from include_top=False files); `adjust(mapped)` is a family's own last
  step (EfficientNet's ImageNet normalisation fix)."""
  layers = tuple(layers)
  kinds = {layer.flax: KINDS[layer.cls] for layer in layers}

  def convert(path):
    mapped = weights_lib.keras_mapped(weights_lib.read_keras_weights(path, layers, optional=optional), kinds)
    return (adjust(mapped) if adjust else mapped), []
  return convert
