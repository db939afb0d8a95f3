"""Each pretrained port's input normalisation (`ModelSpec.preprocessing`) against its source framework's own:
torchvision's `weights.transforms()` of the very weights the registry names, and Keras'
`keras.applications.<family>.preprocess_input`. Channel order included: the test pixels' channels differ
(red bright, blue dark), so mean and std in BGR order, or a missing BGR flip, are off by far more than the
tolerance. No download: the transforms and preprocess_input are code."""
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import dataclasses  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from fpclass import models
from fpclass.models import preprocessing  # noqa: E402

TOL = 1e-4   # relative to the largest normalised value

# The keras.applications module whose preprocess_input each Keras port's weights expect.
KERAS_MODULES = {
    'keras_resnet50': keras.applications.resnet50, 'keras_resnet50v2': keras.applications.resnet_v2,
    'keras_vgg16': keras.applications.vgg16, 'keras_inceptionv3': keras.applications.inception_v3,
    'keras_mobilenetv3large': keras.applications.mobilenet_v3,
    'keras_efficientnetb0': keras.applications.efficientnet, 'keras_efficientnetb2': keras.applications.efficientnet,
}


def ports(family):
  models.get_spec('resnet18')  # registers every family
  return sorted(name for name, spec in models.REGISTRY.items() if spec.family == family)


def pixels(height, width, seed=0):
  """uint8 RGB pixels whose channels have different ranges, so that a channel mix-up shows."""
  rng = np.random.default_rng(seed)
  low, high = np.array([150, 60, 0]), np.array([256, 180, 90])
  return rng.integers(low, high, (height, width, 3)).astype(np.uint8)


def relative_difference(got, expected) -> float:
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


TORCHVISION_NAMES = {'vit_b16': 'vit_b_16'}   # registry names that are not torchvision's own


def torchvision_weights(name):
  """The torchvision weights enum entry whose file the registry downloads for `name`."""
  url = models.get_spec(name).weights['imagenet'].url
  entries = [w for w in torchvision.models.get_model_weights(TORCHVISION_NAMES.get(name, name)) if w.url == url]
  assert len(entries) == 1, (name, url)
  return entries[0]


def torchvision_difference(name) -> float:
  """fpclass' normalisation of a centre crop against torchvision's own transform of the whole image. At the
  transform's resize size (256 for most, 236 for ConvNeXt, 384 for EfficientNetV2) its resize (shorter side)
  is the identity, so it crops the centre and normalises."""
  transform = torchvision_weights(name).transforms()
  (resize,), (crop,) = transform.resize_size, transform.crop_size
  image = pixels(resize, resize)
  expected = transform(torch.from_numpy(image.transpose(2, 0, 1).copy())).numpy().transpose(1, 2, 0)
  start = (resize - crop) // 2
  got = models.get_spec(name).preprocessing(image[start:start + crop, start:start + crop] / 255.0)
  return relative_difference(got, expected)


def keras_difference(name) -> float:
  image = pixels(9, 7).astype(np.float32)
  expected = np.asarray(KERAS_MODULES[name].preprocess_input(image.copy()[None]))[0]
  got = models.get_spec(name).preprocessing(image / 255.0)
  return relative_difference(got, expected)


def test_every_port_is_covered():
  assert set(KERAS_MODULES) == set(ports('keras'))
  assert ports('torchvision')


@pytest.mark.parametrize('name', ports('torchvision'))
def test_torchvision_ports_normalise_as_their_weights_transforms(name):
  assert torchvision_difference(name) <= TOL


@pytest.mark.parametrize('name', sorted(KERAS_MODULES))
def test_keras_ports_normalise_as_keras_preprocess_input(name):
  assert keras_difference(name) <= TOL


def test_torchvision_constants_in_bgr_order_are_caught(monkeypatch):
  """The planted mutation: torchvision's ImageNet mean and std written in BGR order."""
  spec = models.get_spec('resnet18')
  bgr = preprocessing.Normalisation(spec.preprocessing.mean[::-1], spec.preprocessing.std[::-1])
  monkeypatch.setitem(models.REGISTRY, 'resnet18', dataclasses.replace(spec, preprocessing=bgr))
  assert torchvision_difference('resnet18') > 100 * TOL


@pytest.mark.parametrize('name', ['keras_resnet50', 'keras_resnet50v2'])
def test_a_wrong_keras_channel_order_is_caught(name, monkeypatch):
  """Caffe models without their BGR flip, and [-1, 1] models given one."""
  spec = models.get_spec(name)
  flipped = dataclasses.replace(spec.preprocessing, bgr=not spec.preprocessing.bgr)
  monkeypatch.setitem(models.REGISTRY, name, dataclasses.replace(spec, preprocessing=flipped))
  assert keras_difference(name) > 100 * TOL
