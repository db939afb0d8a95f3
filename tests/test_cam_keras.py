"""fpclass.cam against Grad-CAM computed in Keras itself (seed 004), on keras_vgg16 loaded from the weights
file Keras wrote.

The reference is the Keras team's Grad-CAM example (keras.io/examples/vision/grad_cam) on the real Keras 3
model, JAX backend: a model mapping the input to (last conv activations, predictions), the gradient of the
class score with respect to the conv output, channel weights = the spatial mean of the gradients, the
weighted sum of the activations. Keras 3 on JAX has no GradientTape, so the gradient at the conv output is
`jax.grad` through the Keras layers that follow it (the same layer objects, so the same weights). Only that
Grad-CAM formula is written here. The maps are then normalised and resized with pytorch-grad-cam's
`scale_cam_image`, as its GradCAM does and as fpclass.cam documents, since the Keras example's
ReLU-then-divide-by-max and PIL resize are display steps, not part of the method.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytorch_grad_cam.utils.image import scale_cam_image

from fpclass import cam, models
from tests import parity

keras = pytest.importorskip('keras', reason='Keras parity needs keras 3 (JAX backend)')
pytest.importorskip('h5py')
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

SHAPE = (64, 80, 3)   # small and non-square: block5_conv3 is 4x5
LAYER = 'block5_conv3'


def keras_gradcam(model, layer_name, images, targets):
  """The Keras example's make_gradcam_heatmap, image by image (its batch of one), up to its display scaling:
  returns (raw heatmaps, conv activations, gradients), each stacked over the images."""
  conv_layer = model.get_layer(layer_name)
  grad_model = keras.Model(model.inputs, [conv_layer.output, model.output])
  # The layers after the conv layer, as a model from the conv output: jax.grad differentiates it there.
  after = keras.Input(conv_layer.output.shape[1:])
  x = after
  for layer in model.layers[model.layers.index(conv_layer) + 1:]:
    x = layer(x)
  head = keras.Model(after, x)

  heatmaps, activations, gradients = [], [], []
  for image, target in zip(images, targets):
    conv_output, predictions = grad_model([image[None]])
    np.testing.assert_allclose(head(conv_output), predictions, rtol=1e-5, atol=1e-5)  # the split is the model
    grads = jax.grad(lambda a, target=target: head(a)[0, target])(conv_output)
    pooled_grads = jnp.mean(grads, axis=(0, 1, 2))
    heatmap = jnp.squeeze(conv_output[0] @ pooled_grads[..., None])
    heatmaps.append(heatmap), activations.append(conv_output[0]), gradients.append(grads[0])
  return tuple(np.stack(values) for values in (heatmaps, activations, gradients))


def test_gradcam_matches_keras_on_vgg16(tmp_path):
  keras_model = parity.keras_application('VGG16', SHAPE)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, *SHAPE)).astype(np.float32)
  keras_input = keras.applications.vgg16.preprocess_input(pixels.copy())
  spec = models.get_spec('keras_vgg16')
  fpclass_input = np.asarray(spec.preprocessing(pixels / 255))
  assert parity.max_abs_diff(keras_input, fpclass_input) <= 1e-4   # the same caffe normalisation
  parity.keras_reference(keras_model, keras_input, {})   # rescales the logits to unit std (an O(1) score)
  path = tmp_path / 'vgg16.weights.h5'
  keras_model.save_weights(str(path))
  model, variables = parity.build('keras_vgg16', path, image_shape=SHAPE)
  assert spec.cam_layer == LAYER   # the registered default layer is the one compared

  logits = np.asarray(keras_model.predict(keras_input, verbose=0))
  targets = np.array([logits[0].argmax(), logits[1].argmax(), 281, 999])  # predicted and fixed classes

  heatmaps, activations, gradients = keras_gradcam(keras_model, LAYER, keras_input, targets.tolist())
  # pytorch-grad-cam's GradCAM steps: ReLU, scale_cam_image (min-max, cv2 resize to (W, H)) for the layer,
  # then its one-layer aggregation (ReLU, min-max).
  expected = scale_cam_image(np.maximum(scale_cam_image(np.maximum(heatmaps, 0), SHAPE[1::-1]), 0))
  assert np.mean([(m > 0.5).mean() > 0.005 for m in expected]) >= 0.5  # not comparing blank maps

  got_activations, got_gradients, _ = cam.layer_gradients(model.apply, variables, fpclass_input, targets, LAYER)
  got = np.asarray(cam.cam(model.apply, variables, fpclass_input, targets, spec.cam_layer))
  differences = {
      'activations (relative)': parity.max_abs_diff(got_activations, activations) / np.abs(activations).max(),
      'gradients (relative)': parity.max_abs_diff(got_gradients, gradients) / np.abs(gradients).max(),
      'Grad-CAM maps': parity.max_abs_diff(got, expected)}
  print(f'\nGrad-CAM parity with Keras {keras.__version__} (VGG16, {LAYER}, 4 images {SHAPE[0]}x{SHAPE[1]}), '
        f'max |difference|: ' + ', '.join(f'{k} {v:.1e}' for k, v in differences.items()))
  assert got.shape == expected.shape == (4, *SHAPE[:2])
  assert all(d <= 1e-4 for d in differences.values()), differences
