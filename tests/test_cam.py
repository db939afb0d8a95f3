"""fpclass.explain.cam: parity with pytorch-grad-cam, a hand-computed case, batching, jit, sanity, every model."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, GuidedBackpropReLUModel, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.explain import cam
from fpclass.models.architectures.cnn import FootprintCNN
from tests import parity, torch_twins

REFERENCE = {'gradcam': GradCAM, 'gradcam++': GradCAMPlusPlus, 'hirescam': HiResCAM}


def random_images(shape, n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def random_variables(model, shape, seed=0, stats_seed=None):
  """He-normal kernels, small biases, unit BN scales drawn with numpy into the model's variable shapes.
  On this CPU, compiling `model.init` takes longer (10+ s for cifar_cnn) than the tests that use it."""
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    collection, name = path[0].key, path[-1].key
    if collection == 'batch_stats':  # running statistics: non-trivial, so batch dependence would show
      stats = np.random.default_rng(stats_seed).uniform(0.5, 1.5, leaf.shape) if stats_seed is not None else 1.0
      return np.asarray(stats * np.ones(leaf.shape) - (name == 'mean') * 0.5, np.float32)
    if name == 'kernel':
      return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(np.float32)
    if name == 'scale':
      return np.ones(leaf.shape, np.float32)
    return (0.01 * rng.normal(size=leaf.shape)).astype(np.float32)

  variables = {k: v for k, v in abstract.items() if k in ('params', 'batch_stats')}
  return jax.tree_util.tree_map_with_path(draw, variables)


def reference_maps(twin, layer, images_nhwc, targets, method):
  """pytorch-grad-cam's maps for the torch half of `twin`, one call for the whole batch."""
  torch_layer = dict(twin.torch_model.named_modules())[twin.layers[layer]]
  with REFERENCE[method](twin.torch_model, [torch_layer]) as explainer:
    return explainer(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2)),
                     [ClassifierOutputTarget(int(t)) for t in targets])


def reference_guided_backprop(twin, images_nhwc, targets):
  """pytorch-grad-cam's guided backprop explains the first image of a batch, so it runs per image."""
  guided = GuidedBackpropReLUModel(twin.torch_model, device='cpu')
  return np.stack([guided(torch.from_numpy(images_nhwc[i:i + 1].transpose(0, 3, 1, 2)), int(t))
                   for i, t in enumerate(targets)])


def check_parity(twin, layer, images_nhwc, targets, atol=1e-4) -> dict:
  """Asserts every CAM method and guided backprop agree with pytorch-grad-cam; returns the max differences.
  Guided backpropagation swaps ReLUs, so it is compared on models that have them (not EfficientNet's SiLU)."""
  differences = {}
  for method in cam.METHODS:
    expected = reference_maps(twin, layer, images_nhwc, targets, method)
    got = np.asarray(cam.cam(twin.flax_model.apply, twin.variables, images_nhwc, targets, layer, method))
    assert got.shape == expected.shape
    # Guard against comparing blank maps: most maps must have a real peak region.
    assert np.mean([(m > 0.5).mean() > 0.005 for m in expected]) >= 0.5, method
    differences[method] = float(np.abs(got - expected).max())
  if cam.RELU_FIELD in {f.name for f in dataclasses.fields(twin.flax_model)}:
    expected = reference_guided_backprop(twin, images_nhwc, targets)
    got = np.asarray(cam.guided_backprop(cam.guided_model(twin.flax_model).apply, twin.variables, images_nhwc,
                                         targets))
    # A ReLU network's input gradient is constant between ReLU switches, so it compares exactly or not at
    # all: an image with a pre-activation within rounding of zero flips a guided mask in either framework.
    # Compared are the images whose torch result no input jitter (parity.JITTER) changes.
    relative = lambda a: np.abs(a - expected).max(axis=(1, 2, 3)) / np.abs(expected).max(axis=(1, 2, 3))
    unstable = np.max([relative(reference_guided_backprop(twin, parity.jittered(images_nhwc, seed), targets))
                       for seed in (1, 2, 3)], axis=0)
    stable = unstable <= atol
    assert stable.mean() >= 0.5, unstable
    differences[f'guided_backprop (relative, {stable.sum()} of {len(stable)} well-conditioned images)'] = float(
        relative(got)[stable].max())
  print(f'\nparity with pytorch-grad-cam, max |difference|: {differences}')
  assert all(d < atol for d in differences.values()), differences
  return differences


@pytest.mark.parametrize('name', sorted(torch_twins.CASES))
def test_parity_with_pytorch_grad_cam(name):
  """Every model with a torch twin (tests/torch_twins.py CASES) matches pytorch-grad-cam within 1e-4. The
  pretrained ports' twins have BatchNorm statistics set on their own images, which they are explained on."""
  build, shape, layer = torch_twins.CASES[name]
  twin = build(shape)
  images = random_images(shape, 6) if twin.images is None else twin.images
  check_parity(twin, layer, images, targets=np.array([0, 1, 0, 1, 1, 0]))


class GapNet(nn.Module):
  """The input itself is the feature map 'maps'; logits = global average pool @ kernel, no bias."""
  kernel: tuple

  @nn.compact
  def __call__(self, x, train=False):
    features = {}
    x = models.feature(self, features, 'maps', x)
    return jnp.mean(x, axis=(1, 2)) @ jnp.asarray(self.kernel, jnp.float32), features


def test_hand_computed_tiny_model():
  # Channel 0 [[1, 2], [3, 4]], channel 1 [[4, 0], [0, 0]]; a second image whose class-0 map is all negative.
  a = np.stack([[[1, 2], [3, 4]], [[4, 0], [0, 0]]], axis=-1).astype(np.float32)
  b = np.stack([np.zeros((2, 2)), np.ones((2, 2))], axis=-1).astype(np.float32)
  images = np.stack([a, a, b])
  model = GapNet(kernel=((4.0, -4.0), (-4.0, 4.0)))
  # d logit_k / dA_c = kernel[c, k] / 4 = +-1 everywhere: class 0 weighs the channels (1, -1).
  maps = lambda method: np.asarray(cam.cam(model.apply, {}, images, np.array([0, 1, 0]), 'maps', method))
  # Grad-CAM, image a, class 0: A0 - A1 = [[-3, 2], [3, 4]] -> ReLU -> / 4; class 1: A1 - A0 -> [[3, 0], [0, 0]] / 3.
  np.testing.assert_allclose(maps('gradcam')[0], [[0, 0.5], [0.75, 1]], atol=1e-6)
  np.testing.assert_allclose(maps('gradcam')[1], [[1, 0], [0, 0]], atol=1e-6)
  # HiResCAM sums g * A; with a constant gradient per channel it is Grad-CAM.
  np.testing.assert_allclose(maps('hirescam')[:2], maps('gradcam')[:2], atol=1e-6)
  # Grad-CAM++, class 0: alpha_0 = 1 / (2 + 10) (sum of A0 is 10), channel 1 has g < 0 so ReLU(g) = 0:
  # weights (4 / 12, 0) -> map A0 / 3 -> min-max [[0, 1/3], [2/3, 1]].
  np.testing.assert_allclose(maps('gradcam++')[0], [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)
  # Image b, class 0: A0 - A1 = -1 everywhere, an all-zero map after the ReLU stays zero, not NaN.
  for method in cam.METHODS:
    assert np.array_equal(maps(method)[2], np.zeros((2, 2))), method


def test_one_logit_sigmoid_head_targets():
  """Target 1 explains the logit, target 0 its negation, as pytorch-grad-cam's BinaryClassifierOutputTarget."""
  a = np.stack([[[1, 2], [3, 4]], [[4, 0], [0, 0]]], axis=-1).astype(np.float32)[None]
  one_logit = GapNet(kernel=((4.0,), (-4.0,)))
  two_logits = GapNet(kernel=((4.0, -4.0), (-4.0, 4.0)))
  for target in (0, 1):
    np.testing.assert_allclose(cam.cam(one_logit.apply, {}, a, [target], 'maps'),
                               cam.cam(two_logits.apply, {}, a, [1 - target], 'maps'), atol=1e-6)
  with pytest.raises(UserInputError, match=r'targets \[2\] are out of range: the model has 2 classes'):
    cam.cam(one_logit.apply, {}, a, [2], 'maps')


def small_footprint(batch_norm=False, shape=(24, 16, 1), seed=0):
  model = FootprintCNN(conv_channels=(8, 16), fc_sizes=(16,), batch_norm=batch_norm, num_outputs=3)
  return model, random_variables(model, shape, seed, stats_seed=3)


def test_batched_equals_one_at_a_time():
  model, variables = small_footprint(batch_norm=True)
  images, targets = random_images((24, 16, 1), 5), np.array([0, 2, 1, 1, 0])
  guided_apply = cam.guided_model(model).apply
  for method in cam.METHODS:
    batched = cam.cam(model.apply, variables, images, targets, 'conv2', method)
    single = np.concatenate([cam.cam(model.apply, variables, images[i:i + 1], targets[i:i + 1], 'conv2', method)
                             for i in range(5)])
    np.testing.assert_allclose(batched, single, atol=1e-5, err_msg=method)
  batched = cam.guided_backprop(guided_apply, variables, images, targets)
  single = np.concatenate([cam.guided_backprop(guided_apply, variables, images[i:i + 1], targets[i:i + 1])
                           for i in range(5)])
  np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-7)


def test_jit_equals_no_jit():
  model, variables = small_footprint()
  images, targets = random_images((24, 16, 1), 3, seed=1), np.array([2, 0, 1])
  jitted = {m: np.asarray(cam.cam(model.apply, variables, images, targets, 'conv1', m)) for m in cam.METHODS}
  with jax.disable_jit():  # cam is these two stages; run eagerly, the model pass is the slow part, so once
    activations, gradients, _ = cam.layer_gradients(model.apply, variables, images, targets, 'conv1')
    for method in cam.METHODS:
      eager = np.asarray(cam.maps_from_gradients(activations, gradients, method, size=(24, 16)))
      np.testing.assert_allclose(jitted[method], eager, atol=1e-5, err_msg=method)


def test_default_target_is_the_predicted_class():
  model, variables = small_footprint()
  images = random_images((24, 16, 1), 4, seed=2)
  predicted = np.asarray(model.apply(variables, images)[0]).argmax(1)
  np.testing.assert_allclose(cam.cam(model.apply, variables, images, None, 'conv2'),
                             cam.cam(model.apply, variables, images, predicted, 'conv2'), atol=1e-6)


def test_bad_targets_layers_and_models_are_named():
  model, variables = small_footprint()
  images = random_images((24, 16, 1), 4)
  with pytest.raises(UserInputError, match=r'targets has shape \(3,\) but there are 4 images'):
    cam.cam(model.apply, variables, images, [0, 1, 2], 'conv2')
  with pytest.raises(UserInputError, match=r'targets \[3, 7\] are out of range: the model has 3 classes'):
    cam.cam(model.apply, variables, images, [0, 3, 7, 1], 'conv2')
  with pytest.raises(UserInputError, match='integer class indices'):
    cam.cam(model.apply, variables, images, [0.0, 1.0, 1.0, 0.0], 'conv2')
  with pytest.raises(UserInputError, match=r"'conv9' is not a recorded feature map; this model records "
                                           r"\['conv1', 'conv2'\]"):
    cam.cam(model.apply, variables, images, None, 'conv9')
  with pytest.raises(UserInputError, match='CAM method'):
    cam.cam(model.apply, variables, images, None, 'conv2', method='scorecam++')
  with pytest.raises(UserInputError, match="GapNet has no 'relu' field"):
    cam.guided_model(GapNet(kernel=((1.0,),)))


class TwoBackbones(nn.Module):
  """A wrapper holding two registered CNNs, as a transfer-learning model holds its backbone."""

  @nn.compact
  def __call__(self, x, train=False):
    left, _ = FootprintCNN(conv_channels=(8, 16), fc_sizes=(), num_outputs=3, name='left')(x)
    right, _ = FootprintCNN(conv_channels=(4,), fc_sizes=(), num_outputs=3, name='right')(x)
    return left + right, {}


def test_nested_feature_maps_are_found_by_path():
  model = TwoBackbones()
  images = random_images((24, 16, 1), 2)
  variables = random_variables(model, (24, 16, 1))
  assert cam.feature_layers(model.apply, variables, (24, 16, 1)) == ['left/conv1', 'left/conv2', 'right/conv1']
  # 'conv2' exists only in 'left'; the right branch's logits do not depend on it, so its map is the one
  # the left model gives on its own.
  inner = FootprintCNN(conv_channels=(8, 16), fc_sizes=(), num_outputs=3)
  expected = cam.cam(inner.apply, {'params': variables['params']['left']}, images, [0, 2], 'conv2')
  np.testing.assert_allclose(cam.cam(model.apply, variables, images, [0, 2], 'conv2'), expected, atol=1e-6)
  with pytest.raises(UserInputError, match="'conv1' is ambiguous"):
    cam.cam(model.apply, variables, images, [0, 2], 'conv1')
  right = cam.cam(model.apply, variables, images, [0, 2], 'right/conv1')
  assert right.shape == (2, 24, 16)


REGISTRY_SHAPES = {'cnn': (32, 32, 3)}


# The seed CNNs, registered by importing their module: parametrizing over whatever REGISTRY held at
# collection made the set depend on which test files were collected first. The pretrained ports' default
# layers are checked beside their parity tests (test_cam_keras.py, test_pretrained_keras_mobile.py, and
# the ResNet-18 parity above).
SEED_CNNS = sorted(name for name, spec in models.REGISTRY.items() if spec.family == 'cnn')
assert {'footprint_cnn', 'cifar_cnn', 'small_cnn'} <= set(SEED_CNNS), SEED_CNNS


@pytest.mark.parametrize('name', SEED_CNNS)
def test_every_seed_cnn_explains_its_default_layer(name):
  spec = models.get_spec(name)
  model = spec.module(num_outputs=3)
  shape = REGISTRY_SHAPES[spec.family]
  images = random_images(shape, 2)
  variables = random_variables(model, shape)
  assert spec.cam_layer in cam.feature_layers(model.apply, variables, shape)
  maps = np.asarray(cam.cam(model.apply, variables, images, [0, 2], spec.cam_layer))
  assert maps.shape == (2, *shape[:2])
  # Grad-CAM by its definition on the layer's activations A and gradients g: ReLU(sum_c A_c mean(g_c)), scaled
  # to [0, 1], resized bilinearly, scaled again; random weights still give each image a map with a peak.
  activations, gradients, _ = cam.layer_gradients(model.apply, variables, images, [0, 2], spec.cam_layer)
  raw = np.maximum(np.einsum('nhwc,nc->nhw', activations, np.mean(gradients, axis=(1, 2))), 0)
  def scale(x):   # to [0, 1], guarded against a flat map by cam.EPSILON
    return (x - x.min()) / (x.max() - x.min() + cam.EPSILON)
  for i in range(2):
    expected = scale(np.asarray(jax.image.resize(scale(raw[i]), shape[:2], method='linear')))
    np.testing.assert_allclose(maps[i], expected, atol=1e-5)
    assert raw[i].max() > raw[i].min() and maps[i].min() == 0 and maps[i].max() == pytest.approx(1, abs=1e-4)
  gradients = cam.guided_backprop(cam.guided_model(model).apply, variables, images, [0, 2])
  assert gradients.shape == images.shape and np.isfinite(gradients).all()


def square_images(n, seed, size=24, side=6):
  """Noise with one bright square; the class is the half (left 0, right 1) holding the square."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0, 0.3, (n, size, size, 1)).astype(np.float32)
  labels = rng.integers(0, 2, n)
  masks = np.zeros((n, size, size), bool)
  for i, label in enumerate(labels):
    top = rng.integers(0, size - side)
    left = rng.integers(0, size // 2 - side) + label * size // 2
    masks[i, top:top + side, left:left + side] = True
  images[masks] += 2.0
  return images, labels.astype(np.int32), masks


def test_randomising_the_weights_changes_the_map():
  """Adebayo et al. 2018, cascading model-parameter randomisation: re-drawing the layers above the explained
  feature map (fc1 and the head) must change the trained model's Grad-CAM, so the map shows what the model
  learned rather than echoing the activations (a map of activations alone would keep a rank correlation
  of 1 here). The trained map must also point at the evidence, so the comparison is of a meaningful map."""
  model = FootprintCNN(conv_channels=(8, 16), fc_sizes=(16,), num_outputs=2)
  images, labels, _ = square_images(256, seed=0)
  params = random_variables(model, images.shape[1:], seed=0)['params']
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, x, y):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x)[0], y).mean()
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for i in range(60):
    batch = np.arange(i * 32, i * 32 + 32) % 256
    params, opt_state = step(params, opt_state, images[batch], labels[batch])
  test_images, test_labels, test_masks = square_images(32, seed=1)
  accuracy = np.mean(np.asarray(model.apply({'params': params}, test_images)[0]).argmax(1) == test_labels)
  assert accuracy > 0.9

  trained = np.asarray(cam.cam(model.apply, {'params': params}, test_images, test_labels, 'conv2'))
  inside = np.mean([m[k].mean() for m, k in zip(trained, test_masks)])
  outside = np.mean([m[~k].mean() for m, k in zip(trained, test_masks)])
  assert inside > 3 * outside  # the trained map points at the square

  correlations = []
  for seed in (1, 2, 3):
    drawn = random_variables(model, images.shape[1:], seed=seed)['params']
    randomised = np.asarray(cam.cam(model.apply, {'params': {**params, 'fc1': drawn['fc1'], 'head': drawn['head']}},
                                    test_images, test_labels, 'conv2'))
    # A randomised head may score an image's target negatively everywhere (an all-zero map, no ranks).
    varying = [i for i in range(len(trained)) if np.ptp(trained[i]) > 0 and np.ptp(randomised[i]) > 0]
    assert len(varying) >= len(trained) // 2
    correlations += [scipy.stats.spearmanr(trained[i].ravel(), randomised[i].ravel())[0] for i in varying]
  rho = np.abs(correlations)
  print(f'\nSpearman |rank correlation|, trained vs fc1+head-randomised Grad-CAM ({len(rho)} maps, 3 draws): '
        f'mean {rho.mean():.3f}, max {rho.max():.3f}')
  assert rho.mean() < 0.5
