"""Parity of the torchvision ports with torchvision itself, on weights torch wrote to a state_dict file."""
import re

import flax.linen as nn
import numpy as np
import pytest
from flax import traverse_util

from fpclass import optim
from fpclass.errors import UserInputError
from tests import parity

torch = pytest.importorskip('torch', reason='parity needs torch (the test extra installs it)')
torchvision = pytest.importorskip('torchvision')

# name -> (input size, {feature: torch submodule}), the first feature being the first stage. Sizes are not
# 224: alexnet at the footprints' 120x80 ends in a 2x1 map that AdaptiveAvgPool2d repeats into 6x6, vgg16's
# 2x1 map is spread over 7x7 by uneven bins, efficientnet_b0's odd sizes exercise its symmetric padding.
CASES = {
    'resnet18': ((96, 80), {'stem': 'maxpool', 'layer1': 'layer1', 'layer2': 'layer2', 'layer3': 'layer3',
                            'layer4': 'layer4'}),
    'resnet50': ((64, 64), {'stem': 'maxpool', 'layer1': 'layer1', 'layer4': 'layer4'}),
    'alexnet': ((120, 80), {'conv1': 'features.2', 'conv2': 'features.5', 'conv3': 'features.7',
                            'conv4': 'features.9', 'conv5': 'features.12'}),
    'vgg16': ((80, 48), {'block1': 'features.4', 'block2': 'features.9', 'block3': 'features.16',
                         'block4': 'features.23', 'block5': 'features.30'}),
    'efficientnet_b0': ((72, 56), {'stem': 'features.0', **{f'stage{i}': f'features.{i}' for i in range(1, 8)},
                                   'last_conv': 'features.8'}),
}
LOGIT_TOL, FEATURE_TOL = 1e-4, 1e-3


def torch_file(name, tmp_path, seed=0):
  torch.manual_seed(seed)
  module = getattr(torchvision.models, name)(weights=None).eval()
  module = parity.randomise_torch_bn(parity.randomise_torch_weights(module, seed), seed)
  path = tmp_path / f'{name}.pth'
  torch.save(module.state_dict(), path)
  return module, path


@pytest.fixture(scope='module')
def torch_files(tmp_path_factory):
  """name -> (torch module, its state_dict file), each written once per module (vgg16's is 553 MB)."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = torch_file(name, tmp_path_factory.mktemp(name))
    return cache[name]
  yield get
  cache.clear()


@pytest.mark.parametrize('name', list(CASES))
def test_logits_and_features_match_torchvision(name, torch_files):
  (height, width), feature_modules = CASES[name]
  module, path = torch_files(name)
  x = parity.images((2, height, width, 3))
  model, variables = parity.build(name, path, image_shape=(height, width, 3))
  logits, features = parity.apply(model, variables, x)
  ref_logits, ref_features = parity.torch_forward(module, x, feature_modules)
  assert optim.count_params(variables['params']) == sum(p.numel() for p in module.parameters())
  assert np.std(ref_logits) > 0.1  # an absolute tolerance on near-zero logits would prove nothing
  logit_diff = parity.max_abs_diff(logits, ref_logits)
  feature_diffs = {stage: parity.max_abs_diff(features[stage], ref) for stage, ref in ref_features.items()}
  worst = max(feature_diffs, key=feature_diffs.get)
  print(f'parity {name} {height}x{width}: params {optim.count_params(variables["params"])}, max |d logit| '
        f'{logit_diff:.2e}, max |d feature| {feature_diffs[worst]:.2e} ({worst})')
  assert logit_diff <= LOGIT_TOL
  assert np.array_equal(np.argmax(logits, -1), np.argmax(ref_logits, -1))
  for stage, diff in feature_diffs.items():
    assert diff <= FEATURE_TOL, stage


@pytest.mark.parametrize('name', ['alexnet', 'vgg16', 'efficientnet_b0'])
def test_train_mode_matches_torchvision_given_the_same_dropout_masks(name, torch_files):
  """Training mode (dropout, stochastic depth, batch-statistics BN) equals torchvision's when each torch
  Dropout/StochasticDepth applies the mask the same-named Flax Dropout drew, scaled by torch's own rate: so
  dropout positions, stochastic depth's row mode and its per-block rates all match."""
  import copy
  import jax
  (height, width), _ = CASES[name]
  module, path = torch_files(name)
  module = copy.deepcopy(module).train()
  x = parity.images((4, height, width, 3), seed=3)
  model, variables = parity.build(name, path, image_shape=(height, width, 3))
  (logits, _), state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, rngs={'dropout': jax.random.PRNGKey(5)}, mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda m, _: isinstance(m, nn.Dropout)))(variables, x)
  # Dropout outputs sit under '<path>/__call__'; the models' own sown feature maps ('feature_*') do not.
  masks = {path.removesuffix('/__call__'): np.asarray(out[0]) != 0
           for path, out in traverse_util.flatten_dict(state['intermediates'], sep='/').items()
           if path.endswith('/__call__')}
  assert masks and any(not m.all() for m in masks.values())  # something was dropped
  used = set()
  for torch_path, original in list(module.named_modules()):
    if isinstance(original, (torch.nn.Dropout, torchvision.ops.StochasticDepth)):
      flax_path = re.sub(r'\.(?=\d)', '_', torch_path).replace('.', '/')
      used.add(flax_path)
      # A torch dropout the Flax model lacks raises if torch ever calls it.
      module.set_submodule(torch_path, FixedMask(masks[flax_path], 1.0 - original.p) if flax_path in masks
                           else Unmatched(torch_path))
  assert set(masks) <= used, set(masks) - used
  with torch.no_grad():
    ref_logits = module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  print(f'train-mode parity {name}: {len(masks)} dropout layers, max |d logit| '
        f'{parity.max_abs_diff(logits, ref_logits):.2e}')
  assert parity.max_abs_diff(logits, ref_logits) <= LOGIT_TOL


class Unmatched(torch.nn.Module):
  def __init__(self, path):
    super().__init__()
    self.path = path

  def forward(self, x):
    raise AssertionError(f'torch applies {self.path}; the Flax model has no dropout there')


class FixedMask(torch.nn.Module):
  """Dropout with a given keep mask (NHWC or (N, C)), scaled by 1 / keep like torch's."""
  def __init__(self, mask, keep):
    super().__init__()
    self.mask = torch.from_numpy(mask.transpose(0, 3, 1, 2) if mask.ndim == 4 else mask)
    self.keep = keep

  def forward(self, x):
    return x * self.mask / self.keep


def test_stochastic_depth_rates_are_torchvisions(torch_files):
  from fpclass.models import torchvision_efficientnet as effnet
  module, _ = torch_files('efficientnet_b0')
  ref = [block.stochastic_depth.p for stage in module.features[1:8] for block in stage]
  assert [r for stage in effnet.stochastic_depth_rates(effnet.B0_STAGES, 0.2) for r in stage] == pytest.approx(ref)


def test_adaptive_avg_pool_is_torchs():
  """Maps smaller than, equal to and larger than the output, with uneven bins."""
  import jax
  from fpclass.models.torchvision_alexnet_vgg import adaptive_avg_pool
  pool = jax.jit(adaptive_avg_pool, static_argnums=1)
  for size, out in [((1, 1), (6, 6)), ((2, 1), (7, 7)), ((3, 2), (6, 6)), ((7, 7), (7, 7)), ((13, 9), (6, 6)),
                    ((15, 20), (7, 7)), ((5, 4), (3, 5))]:
    x = parity.images((2, *size, 3), seed=4)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), out).numpy()
    assert parity.max_abs_diff(pool(x, out), ref.transpose(0, 2, 3, 1)) < 1e-6, (size, out)


@pytest.mark.parametrize('name', ['alexnet', 'vgg16', 'efficientnet_b0'])
def test_grayscale_stem_fold_matches_torchvision_on_repeated_channels(name, torch_files, monkeypatch):
  """in_channels=1 on g against torchvision on [g, g, g]: under torch's per-channel normalisation the first
  stage agrees away from the zero padding (one cell each side for these stems); with one normalisation for
  every channel the logits agree exactly."""
  import dataclasses
  from fpclass import models, preprocessing
  (height, width), feature_modules = CASES[name]
  first_stage, torch_stage = next(iter(feature_modules.items()))
  module, path = torch_files(name)
  g = np.random.default_rng(1).uniform(size=(2, height, width, 1)).astype(np.float32)
  for norm in (preprocessing.TORCH_IMAGENET, preprocessing.KERAS_TF):
    monkeypatch.setitem(models.REGISTRY, name, dataclasses.replace(models.get_spec(name), preprocessing=norm))
    # Per-channel normalisation is checked on the first stage only: a model cut there compiles in a moment.
    cut = dict(cut=first_stage, top='avg') if norm is preprocessing.TORCH_IMAGENET else {}
    model, variables = parity.build(name, path, image_shape=(height, width, 1), in_channels=1, **cut)
    logits, features = parity.apply(model, variables, np.asarray(norm.to_grayscale()(g)))
    ref_logits, ref_features = parity.torch_forward(module, np.asarray(norm(np.repeat(g, 3, axis=-1))),
                                                    {first_stage: torch_stage})
    if cut:
      assert parity.max_abs_diff(features[first_stage][:, 1:-1, 1:-1], ref_features[first_stage][:, 1:-1, 1:-1]) \
          < 1e-4
    else:
      assert parity.max_abs_diff(logits, ref_logits) <= LOGIT_TOL
      assert np.array_equal(np.argmax(logits, -1), np.argmax(ref_logits, -1))


@pytest.mark.parametrize('name', list(CASES))
def test_stages_partition_the_backbone_and_each_is_a_cut_point(name):
  """Every backbone parameter is in exactly one stage (else freeze_till would leave it training) and the
  source classifier in none; cutting at a stage keeps that stage's parameters and features and no later ones."""
  import jax
  import ml_collections
  from fpclass import models
  spec = models.get_spec(name)

  def shapes(**fields):
    model = models.create_model(ml_collections.ConfigDict(dict(name=name, **fields)), 3)
    (_, features), variables = jax.eval_shape(lambda: model.init_with_output(
        jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
    return set(features), [k for k in traverse_util.flatten_dict(variables['params'], sep='/')]

  def stages_of(path):
    return [stage for stage, regex in spec.stages if re.search(regex, path)]
  _, paths = shapes()
  for path in paths:
    assert len(stages_of(path)) == (0 if re.search(spec.source_top, 'params/' + path) else 1), path
  for index, stage in enumerate(spec.stage_names):
    features, paths = shapes(cut=stage, top='avg')
    assert set(spec.stage_names[:index + 1]) <= features and not features & set(spec.stage_names[index + 1:])
    assert {s for p in paths for s in stages_of(p)} == set(spec.stage_names[:index + 1])


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
