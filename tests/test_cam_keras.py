"""fpclass.explain.cam against Grad-CAM computed in Keras itself (seed 004), on keras_vgg16 and keras_efficientnetb0
loaded from the weights file Keras wrote.

The reference is the Keras team's Grad-CAM example (keras.io/examples/vision/grad_cam) on the real Keras 3
model, JAX backend: a model mapping the input to (last conv activations, predictions), the gradient of the
class score with respect to the conv output, channel weights = the spatial mean of the gradients, the
weighted sum of the activations. Keras 3 on JAX has no GradientTape, so the gradient at the conv output is
`jax.grad` through the Keras layers that follow it (the same layer objects, so the same weights). Only that
Grad-CAM formula is written here. The maps are then normalised and resized with pytorch-grad-cam's
`scale_cam_image`, as its GradCAM does and as fpclass.explain.cam documents, since the Keras example's
ReLU-then-divide-by-max and PIL resize are display steps, not part of the method.

EfficientNetB0's BatchNorm statistics come from Keras' own train-mode pass over the test images
(`parity.informative_keras_bn`), so its maps depend on the image.
"""
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import h5py  # noqa: E402,F401  (Keras writes the weights file with it)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402

from fpclass import models
from fpclass.explain import cam  # noqa: E402
from tests import parity  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

# port -> (keras.applications name, input (H, W, C): small and non-square, the Keras layer of its cam_layer).
CASES = {
    'keras_vgg16': ('VGG16', (64, 80, 3), 'block5_conv3'),          # block5_conv3 is 4x5
    'keras_efficientnetb0': ('EfficientNetB0', (66, 49, 3), 'top_activation'),   # top_conv is 3x2
}


def keras_gradcam(model, layer_name, images, targets):
  """The Keras example's make_gradcam_heatmap, image by image (its batch of one), up to its display scaling:
  returns (raw heatmaps, conv activations, gradients, targets), each stacked over the images; a target None
  is the image's predicted class. The forward pass runs as one jitted program for the batch (Keras run
  eagerly takes a minute on EfficientNet); the gradient, image by image, as the example takes it, by one
  jitted program for every image (run eagerly, each operation of the layers after the conv layer and of their
  gradient compiles a program of its own)."""
  conv_layer = model.get_layer(layer_name)
  grad_model = keras.Model(model.inputs, [conv_layer.output, model.output])
  # The layers after the conv layer, as a model from the conv output: jax.grad differentiates it there.
  after = keras.Input(conv_layer.output.shape[1:])
  x = after
  for layer in model.layers[model.layers.index(conv_layer) + 1:]:
    x = layer(x)
  head = keras.Model(after, x)

  trainable = [v.value for v in grad_model.trainable_variables]
  state = [v.value for v in grad_model.non_trainable_variables]
  conv_outputs, predictions = jax.jit(lambda t, s, x: grad_model.stateless_call(t, s, x)[0])(trainable, state,
                                                                                              images)
  predictions = np.asarray(predictions)
  targets = [int(p.argmax()) if t is None else t for p, t in zip(predictions, targets)]
  head_variables = [v.value for v in head.trainable_variables], [v.value for v in head.non_trainable_variables]

  @jax.jit
  def gradcam(variables, conv_output, target):   # (the head's logits, the gradient, the heatmap) of one image
    logits = lambda a: head.stateless_call(*variables, a)[0][0]
    grads = jax.grad(lambda a: logits(a)[target])(conv_output)
    pooled_grads = jnp.mean(grads, axis=(0, 1, 2))
    return logits(conv_output), grads, jnp.squeeze(conv_output[0] @ pooled_grads[..., None])

  heatmaps, activations, gradients = [], [], []
  for conv_output, prediction, target in zip(conv_outputs, predictions, targets):
    conv_output = conv_output[None]
    head_prediction, grads, heatmap = gradcam(head_variables, conv_output, target)
    # The split is the model.
    assert parity.max_abs_diff(head_prediction, prediction) <= 1e-5 * float(np.max(np.abs(prediction)))
    heatmaps.append(heatmap), activations.append(conv_output[0]), gradients.append(grads[0])
  return tuple(np.stack(values) for values in (heatmaps, activations, gradients, targets))


@pytest.mark.parametrize('name', sorted(CASES))
def test_gradcam_matches_keras(name, tmp_path):
  application, shape, layer = CASES[name]
  spec = models.get_spec(name)
  assert spec.cam_layer in (layer, 'top_conv')   # the registered default layer is the one compared
  keras_model = parity.keras_application(application, shape)
  pixels = parity.varied_images((4, *shape), pixels=True)
  preprocess = {'keras_vgg16': keras.applications.vgg16.preprocess_input}.get(name, lambda x: x)
  keras_input = np.asarray(preprocess(pixels.copy()))
  fpclass_input = np.asarray(spec.preprocessing(pixels / 255))
  assert parity.max_abs_diff(keras_input, fpclass_input) <= 1e-4   # the same normalisation
  parity.informative_keras_bn(keras_model, keras_input)
  path = tmp_path / f'{name}.weights.h5'
  keras_model.save_weights(str(path))
  model, variables = parity.build(name, path, image_shape=shape)

  # Images 0 and 1 explain their predicted class, 2 and 3 fixed ones.
  heatmaps, activations, gradients, targets = keras_gradcam(keras_model, layer, keras_input, [None, None, 281, 999])
  # pytorch-grad-cam's GradCAM steps: ReLU, scale_cam_image (min-max, cv2 resize to (W, H)) for the layer,
  # then its one-layer aggregation (ReLU, min-max).
  expected = scale_cam_image(np.maximum(scale_cam_image(np.maximum(heatmaps, 0), shape[1::-1]), 0))
  assert np.mean([(m > 0.5).mean() > 0.005 for m in expected]) >= 0.5  # not comparing blank maps

  got_activations, got_gradients, _ = cam.layer_gradients(model.apply, variables, fpclass_input, targets,
                                                          spec.cam_layer)
  got = np.asarray(cam.cam(model.apply, variables, fpclass_input, targets, spec.cam_layer))
  differences = {
      'activations (relative)': parity.max_abs_diff(got_activations, activations) / np.abs(activations).max(),
      'gradients (relative)': parity.max_abs_diff(got_gradients, gradients) / np.abs(gradients).max(),
      'Grad-CAM maps': parity.max_abs_diff(got, expected)}
  print(f'\nGrad-CAM parity with Keras {keras.__version__} ({application}, {layer}, 4 images {shape[0]}x{shape[1]}), '
        f'max |difference|: ' + ', '.join(f'{k} {v:.1e}' for k, v in differences.items()))
  assert got.shape == expected.shape == (4, *shape[:2])
  assert all(d <= 1e-4 for d in differences.values()), differences
