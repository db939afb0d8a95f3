"""Parity of the torchvision ports with torchvision itself, on weights torch wrote to a state_dict file.

Each port's reference is a random torchvision model whose BatchNorm statistics come from torch's own
train-mode pass over the test images (`parity.informative_torch_bn`), so its logits depend on the image;
`parity.check` asserts that they do, and compares logits and stage features relative to their scale, within
a small multiple of torch's own float32 noise measured on the same images (`parity.jittered`).
`python -m pytest -p no:xdist -o addopts='' -q tests/test_pretrained_torchvision.py -s` prints the table.
"""
import dataclasses
import re
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import torchvision
from flax import traverse_util

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.models import weights
from fpclass.train import optim
from tests import parity

# name -> (input size, {feature: torch submodule}), the first feature being the first stage. Sizes are not
# 224: alexnet at the footprints' 120x80 ends in a 2x1 map that AdaptiveAvgPool2d repeats into 6x6, vgg16's
# 2x1 map is spread over 7x7 by uneven bins, efficientnet_b0's odd sizes exercise its symmetric padding.
CASES = {
    'resnet18': ((96, 80), {'stem': 'maxpool', 'layer1': 'layer1', 'layer2': 'layer2', 'layer3': 'layer3',
                            'layer4': 'layer4'}),
    'resnet50': ((64, 64), {'stem': 'maxpool', 'layer1': 'layer1', 'layer4': 'layer4'}),
    'alexnet': ((120, 80), {'conv1': 'features.2', 'conv2': 'features.5', 'conv3': 'features.7',
                            'conv4': 'features.9', 'conv5': 'features.12'}),
    'vgg16': ((64, 32), {'block1': 'features.4', 'block2': 'features.9', 'block3': 'features.16',
                         'block4': 'features.23', 'block5': 'features.30'}),
    'efficientnet_b0': ((72, 56), {'stem': 'features.0', **{f'stage{i}': f'features.{i}' for i in range(1, 8)},
                                   'last_conv': 'features.8'}),
}
IMAGES = 4
# The folded offset goes to a BN mean (resnet18) or a conv bias (vgg16); tests/test_gray_stem.py checks more.
GRAY_CASES = ('resnet18', 'vgg16')


def case_images(name, seed=0):
  (height, width), _ = CASES[name]
  return parity.varied_images((IMAGES, height, width, 3), seed)


def torch_file(name, folder, seed=0):
  """A random torchvision `name` (informative BN statistics on its case's images) and its state_dict file."""
  module = parity.torchvision_uninitialised(name)
  module = parity.randomise_torch_bn(parity.randomise_torch_weights(module, seed), seed)
  parity.informative_torch_bn(module, case_images(name, seed), seed)
  path = folder / f'{name}.pth'
  torch.save(module.state_dict(), path)
  return module, path


class Reference:
  """One torchvision model per case for the whole module: its file, the batch, torch's logits and stage
  features on it and on the jittered batch; the port loaded from the file, built and jitted once."""

  def __init__(self, name, folder):
    self.name = name
    self.module, self.path = torch_file(name, folder)
    self.x = case_images(name)
    feature_modules = CASES[name][1]
    self.logits, self.features = parity.torch_forward(self.module, self.x, feature_modules)
    self.jittered_logits, self.jittered_features = parity.torch_forward(self.module, parity.jittered(self.x),
                                                                        feature_modules)
    self._flax = self._gray = None

  def flax(self):
    if self._flax is None:
      model, variables = parity.build(self.name, self.path, image_shape=self.x.shape[1:])
      self._flax = model, variables, jax.jit(model.apply)
    return self._flax

  def agreement(self, logits, features, label=None):
    return parity.agreement(label or self.name, logits, self.logits, self.jittered_logits, features,
                            self.features, self.jittered_features)

  def gray(self):
    """The one-channel port (in_channels=1) on gray images g, and torch on their RGB copy [g, g, g], both
    normalised as the weights expect: torch per channel, the port with the channel averages."""
    if self._gray is None:
      norm = models.get_spec(self.name).preprocessing
      g = parity.gray_images((IMAGES, *self.x.shape[1:3], 1))
      rgb = np.asarray(norm(np.repeat(g, 3, axis=-1)))
      gray = np.asarray(norm.to_grayscale()(g))
      feature_modules = CASES[self.name][1]
      ref = parity.torch_forward(self.module, rgb, feature_modules)
      ref_jittered = parity.torch_forward(self.module, parity.jittered(rgb), feature_modules)
      model, variables = parity.build(self.name, self.path, image_shape=gray.shape[1:], in_channels=1)
      self._gray = types.SimpleNamespace(model=model, variables=variables, apply=jax.jit(model.apply), x=gray,
                                         ref=ref, ref_jittered=ref_jittered)
    return self._gray

  def gray_agreement(self, variables=None):
    gray = self.gray()
    logits, features = gray.apply(gray.variables if variables is None else variables, gray.x)
    return parity.agreement(f'{self.name} gray', logits, gray.ref[0], gray.ref_jittered[0], features, gray.ref[1],
                            gray.ref_jittered[1])


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """reference(name): that case's Reference, built on first use (vgg16's file is 553 MB)."""
  cache = {}
  print('\n' + parity.TABLE_HEADER)

  def get(name):
    if name not in cache:
      cache[name] = Reference(name, tmp_path_factory.mktemp(name))
    return cache[name]
  yield get
  cache.clear()


def test_cases_are_the_registry():
  """Every torchvision and DINOv2 port has a parity case, here or in test_pretrained_modern.py (dinov2_vitb14
  is dinov2_vits14's module at other sizes: that file pins its parameter count)."""
  import importlib
  modern = importlib.import_module('tests.test_pretrained_modern').CASES
  models.get_spec('resnet18')  # registers every family
  ported = {name for name, spec in models.REGISTRY.items() if spec.family in ('torchvision', 'dinov2')}
  assert not set(CASES) & set(modern)
  assert set(CASES) | set(modern) | {'dinov2_vitb14'} == ported


@pytest.mark.parametrize('name', list(CASES))
def test_logits_and_features_match_torchvision(name, reference):
  ref = reference(name)
  _, variables, apply = ref.flax()
  logits, features = apply(variables, ref.x)
  assert optim.count_params(variables['params']) == sum(p.numel() for p in ref.module.parameters())
  result = ref.agreement(logits, features)
  print(result.row())
  parity.check(result)


def test_float64_logits_match_torchvision_to_rounding(reference):
  """Both sides in float64 agree to FLOAT64_TOL of the logit scale, so the float32 differences above are
  rounding, not a difference in what is computed."""
  ref = reference('resnet18')
  ref64 = parity.torch_logits_float64(ref.module, ref.x)
  got64 = parity.port_logits_float64('resnet18', ref.path, ref.x)
  parity.check_float64('resnet18', got64, ref64)


# Ports broken on purpose (EfficientNet-B0): each must fail the parity check, on its logits alone too.
MUTATIONS = {
    'a depthwise kernel transposed (stage 4)': lambda variables: parity.replaced(variables, {
        'params/features_4_0/block_1/conv/kernel': lambda k: k.transpose(1, 0, 2, 3)}),
    'BatchNorm epsilon 1e-3 for 1e-5': lambda variables: parity.replaced(
        variables, parity.bn_variances(variables, lambda var: var + (1e-3 - 1e-5))),
    'batch order reversed after stage 4': parity.reversed_batch_after('features_4_0'),
}


@pytest.mark.parametrize('mutation', list(MUTATIONS))
def test_the_parity_check_fails_on_a_broken_port(mutation, reference):
  ref = reference('efficientnet_b0')
  model, variables, apply = ref.flax()
  logits, features = parity.broken_port_outputs(model, variables, apply, ref.x, mutation, MUTATIONS[mutation])
  result = ref.agreement(logits, features, label=f'efficientnet_b0, {mutation}')
  print(result.row())
  parity.assert_check_fails(result)


def test_the_spread_guard_rejects_an_uninformative_reference():
  """EfficientNet-B0 as the parity tests drew it before: random BatchNorm statistics and gammas in
  U(0.3, 0.7), which shrink the image's signal layer by layer until every image gets about the same logits.
  A comparison on it would pass whatever a port did with the image; `parity.check` refuses it."""
  module = parity.torchvision_uninitialised('efficientnet_b0')
  module = parity.randomise_torch_bn(parity.randomise_torch_weights(module, 0), 0)
  x = case_images('efficientnet_b0')
  logits, _ = parity.torch_forward(module, x, {})
  jittered, _ = parity.torch_forward(module, parity.jittered(x), {})
  result = parity.agreement('efficientnet_b0, random BN statistics', logits, logits, jittered)
  print(result.row())
  with pytest.raises(AssertionError, match='hardly vary between images'):
    parity.check(result)


@pytest.mark.parametrize('name', GRAY_CASES)
def test_grayscale_port_matches_torchvision_on_the_rgb_copy(name, reference):
  """in_channels=1 on g against torchvision on [g, g, g] under its per-channel ImageNet normalisation: logits
  and every stage, the zero-padded border included."""
  result = reference(name).gray_agreement()
  print(result.row())
  parity.check(result)


def test_grayscale_check_fails_when_the_folded_offset_has_the_wrong_sign(reference, monkeypatch):
  """`transfer.fold_stem` adding the folded offset to resnet18's bn1 mean instead of subtracting it."""
  ref = reference('resnet18')
  fold = weights.fold_rgb_stem
  monkeypatch.setattr(weights, 'fold_rgb_stem', lambda kernel, norm: (fold(kernel, norm)[0], -fold(kernel, norm)[1]))
  _, mutated = parity.build('resnet18', ref.path, image_shape=ref.gray().x.shape[1:], in_channels=1)
  assert not np.array_equal(mutated['batch_stats']['bn1']['mean'], ref.gray().variables['batch_stats']['bn1']['mean'])
  result = ref.gray_agreement(mutated)
  print(result.row())
  with pytest.raises(AssertionError, match='max .d logit.'):
    parity.check(dataclasses.replace(result, features={}))


@pytest.mark.parametrize('name', ['alexnet', 'vgg16', 'efficientnet_b0'])
def test_train_mode_matches_torchvision_given_the_same_dropout_masks(name, reference):
  """Training mode (dropout, stochastic depth, batch-statistics BN) equals torchvision's when each torch
  Dropout/StochasticDepth applies the mask the same-named Flax Dropout drew, scaled by torch's own rate: so
  dropout positions, stochastic depth's row mode and its per-block rates all match."""
  import copy
  ref = reference(name)
  module = copy.deepcopy(ref.module).train()
  x = parity.varied_images(ref.x.shape, seed=3)
  model, variables, _ = ref.flax()
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
  ref_logits, _ = parity.torch_forward(module, x, {})
  ref_jittered, _ = parity.torch_forward(module, parity.jittered(x), {})
  result = parity.agreement(f'{name} train mode ({len(masks)} dropout layers)', logits, ref_logits, ref_jittered)
  print(result.row())
  parity.check(result)


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


def test_stochastic_depth_rates_are_torchvisions(reference):
  from fpclass.models.architectures import torchvision_efficientnet as effnet
  module = reference('efficientnet_b0').module
  ref = [block.stochastic_depth.p for stage in module.features[1:8] for block in stage]
  assert [r for stage in effnet.drop_path_rates(effnet.B0_STAGES, 0.2) for r in stage] == pytest.approx(ref)


def test_adaptive_avg_pool_is_torchs():
  """Maps smaller than, equal to and larger than the output, with uneven bins."""
  import jax

  from fpclass.models.architectures.torchvision_alexnet_vgg import adaptive_avg_pool
  pool = jax.jit(adaptive_avg_pool, static_argnums=1)
  for size, out in [((1, 1), (6, 6)), ((2, 1), (7, 7)), ((3, 2), (6, 6)), ((7, 7), (7, 7)), ((13, 9), (6, 6)),
                    ((15, 20), (7, 7)), ((5, 4), (3, 5))]:
    x = parity.images((2, *size, 3), seed=4)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), out).numpy()
    assert parity.max_abs_diff(pool(x, out), ref.transpose(0, 2, 3, 1)) < 1e-6, (size, out)


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


def test_new_class_count_drops_the_head_by_its_named_rule(reference):
  ref = reference('resnet18')
  model, variables = parity.build('resnet18', ref.path, num_classes=3, keep_pretrained_head=False,
                                  image_shape=(64, 64, 3))
  assert variables['params']['fc']['kernel'].shape == (512, 3)
  expected = ref.module.state_dict()['layer4.1.conv2.weight'].numpy().transpose(2, 3, 1, 0)
  assert np.array_equal(variables['params']['layer4_1']['conv2']['kernel'], expected)


def test_wrong_class_count_with_the_head_kept_is_an_error(reference):
  with pytest.raises(UserInputError, match=r"classifier .*'params/fc/kernel': \(512, 1000\).*'params/fc/kernel': \(512, 3\).*keep_pretrained_head=True"):
    parity.build('resnet18', reference('resnet18').path, num_classes=3, keep_pretrained_head=True)


def test_wrong_architecture_is_an_error_listing_names(reference):
  with pytest.raises(UserInputError, match=r'does not fit this model: \[165 missing: params/layer1_0/bn3/bias.*shape mismatch'):
    parity.build('resnet50', reference('resnet18').path)


def test_truncated_file_is_an_error(reference, tmp_path):
  path = tmp_path / 'truncated.pth'
  ref = reference('resnet18')
  path.write_bytes(ref.path.read_bytes()[:100_000])
  with pytest.raises(UserInputError, match='cannot read it as a weights file'):
    parity.build('resnet18', path, image_shape=ref.x.shape[1:])


def test_safetensors_files_load_the_same_arrays(reference, tmp_path):
  from safetensors.torch import save_file
  ref = reference('resnet18')
  path = tmp_path / 'r18.safetensors'
  save_file({k: v.contiguous() for k, v in ref.module.state_dict().items()}, str(path))
  _, from_safetensors = parity.build('resnet18', path, image_shape=ref.x.shape[1:])   # as the parity test built it
  _, from_pth = parity.build('resnet18', ref.path, image_shape=ref.x.shape[1:])
  flat, expected = traverse_util.flatten_dict(from_safetensors), traverse_util.flatten_dict(from_pth)
  assert flat.keys() == expected.keys() and all(np.array_equal(flat[k], expected[k]) for k in expected)
