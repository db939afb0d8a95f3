"""Parity of the torchvision ports with torchvision itself, on weights torch wrote to a state_dict file."""
import numpy as np
import pytest

from fpclass.errors import UserInputError
from tests import parity

torch = pytest.importorskip('torch', reason='parity needs torch (the test extra installs it)')
torchvision = pytest.importorskip('torchvision')

# name -> (input size, {feature: torch submodule}). Sizes are not 224, to cover other input sizes.
CASES = {
    'resnet18': ((96, 80), {'stem': 'maxpool', 'layer1': 'layer1', 'layer2': 'layer2', 'layer3': 'layer3',
                            'layer4': 'layer4'}),
    'resnet50': ((64, 64), {'stem': 'maxpool', 'layer1': 'layer1', 'layer4': 'layer4'}),
}
LOGIT_TOL, FEATURE_TOL = 1e-4, 1e-3


def torch_file(name, tmp_path, seed=0):
  torch.manual_seed(seed)
  module = parity.randomise_torch_bn(getattr(torchvision.models, name)(weights=None).eval(), seed)
  path = tmp_path / f'{name}.pth'
  torch.save(module.state_dict(), path)
  return module, path


@pytest.mark.parametrize('name', sorted(CASES))
def test_logits_and_features_match_torchvision(name, tmp_path):
  (height, width), feature_modules = CASES[name]
  module, path = torch_file(name, tmp_path)
  x = parity.images((2, height, width, 3))
  model, variables = parity.build(name, path, image_shape=(height, width, 3))
  logits, features = parity.apply(model, variables, x)
  ref_logits, ref_features = parity.torch_forward(module, x, feature_modules)
  assert parity.max_abs_diff(logits, ref_logits) <= LOGIT_TOL
  assert np.array_equal(np.argmax(logits, -1), np.argmax(ref_logits, -1))
  for stage, ref in ref_features.items():
    assert parity.max_abs_diff(features[stage], ref) <= FEATURE_TOL, stage


def test_grayscale_fold_equals_rgb_on_repeated_channels(tmp_path):
  """in_channels=1 on g equals the RGB model on [g, g, g]: exactly when every channel shares one
  normalisation, and in the interior (away from zero padding) under torch's per-channel one."""
  _, path = torch_file('resnet18', tmp_path)
  rgb_model, rgb_vars = parity.build('resnet18', path, image_shape=(64, 64, 3))
  gray_model, gray_vars = parity.build('resnet18', path, image_shape=(64, 64, 1), in_channels=1)
  from fpclass.models import get_spec
  norm = get_spec('resnet18').preprocessing
  g = np.random.default_rng(1).uniform(size=(2, 64, 64, 1)).astype(np.float32)
  rgb_in = np.asarray(norm(np.repeat(g, 3, axis=-1)))
  gray_in = np.asarray(norm.to_grayscale()(g))
  (_, rgb_f), (_, gray_f) = parity.apply(rgb_model, rgb_vars, rgb_in), parity.apply(gray_model, gray_vars, gray_in)
  # The stem conv has 3 pixels of zero padding and a 3x3/2 max pool after a stride-2 conv: 2 cells each side.
  assert parity.max_abs_diff(rgb_f['stem'][:, 2:-2, 2:-2], gray_f['stem'][:, 2:-2, 2:-2]) < 1e-4


def test_grayscale_fold_is_exact_with_shared_normalisation(tmp_path, monkeypatch):
  import dataclasses
  from fpclass import models, preprocessing
  _, path = torch_file('resnet18', tmp_path)
  spec = models.get_spec('resnet18')
  monkeypatch.setitem(models.REGISTRY, 'resnet18', dataclasses.replace(spec, preprocessing=preprocessing.KERAS_TF))
  rgb_model, rgb_vars = parity.build('resnet18', path, image_shape=(48, 48, 3))
  gray_model, gray_vars = parity.build('resnet18', path, image_shape=(48, 48, 1), in_channels=1)
  g = np.random.default_rng(2).uniform(size=(2, 48, 48, 1)).astype(np.float32)
  norm = preprocessing.KERAS_TF
  rgb_logits, _ = parity.apply(rgb_model, rgb_vars, np.asarray(norm(np.repeat(g, 3, axis=-1))))
  gray_logits, _ = parity.apply(gray_model, gray_vars, np.asarray(norm.to_grayscale()(g)))
  assert parity.max_abs_diff(rgb_logits, gray_logits) < 1e-4


def test_new_class_count_drops_the_head_by_its_named_rule(tmp_path):
  module, path = torch_file('resnet18', tmp_path)
  model, variables = parity.build('resnet18', path, num_classes=3, keep_pretrained_head=False,
                                  image_shape=(64, 64, 3))
  assert variables['params']['fc']['kernel'].shape == (512, 3)
  ref = module.state_dict()['layer4.1.conv2.weight'].numpy().transpose(2, 3, 1, 0)
  assert np.array_equal(variables['params']['layer4_1']['conv2']['kernel'], ref)


def test_wrong_class_count_with_the_head_kept_is_an_error(tmp_path):
  _, path = torch_file('resnet18', tmp_path)
  with pytest.raises(UserInputError, match=r"classifier .*'params/fc/kernel': \(512, 1000\).*'params/fc/kernel': \(512, 3\).*keep_pretrained_head=True"):
    parity.build('resnet18', path, num_classes=3, keep_pretrained_head=True)


def test_wrong_architecture_is_an_error_listing_names(tmp_path):
  _, path = torch_file('resnet18', tmp_path)
  with pytest.raises(UserInputError, match=r'does not fit this model: \[165 missing: params/layer1_0/bn3/bias.*shape mismatch'):
    parity.build('resnet50', path)


def test_truncated_file_is_an_error(tmp_path):
  _, path = torch_file('resnet18', tmp_path)
  path.write_bytes(path.read_bytes()[:100_000])
  with pytest.raises(UserInputError, match='cannot read it as a weights file'):
    parity.build('resnet18', path)


def test_safetensors_files_load(tmp_path):
  from safetensors.torch import save_file
  module, _ = torch_file('resnet18', tmp_path)
  path = tmp_path / 'r18.safetensors'
  save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
  x = parity.images((1, 64, 64, 3))
  model, variables = parity.build('resnet18', path)
  ref, _ = parity.torch_forward(module, x, {})
  assert parity.max_abs_diff(parity.apply(model, variables, x)[0], ref) <= LOGIT_TOL
