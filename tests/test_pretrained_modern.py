"""Parity of the modern ports (ConvNeXt-Tiny, EfficientNetV2-S, ViT-B/16, DINOv2 ViT-S/14) with their sources,
on weights the source wrote with torch.save, as tests/test_pretrained_torchvision.py does for the others.

References: torchvision's own models; for DINOv2, `tests.dinov2_twin` (the dinov2 package cannot be installed
here), whose state_dict keys are those of the published checkpoints. Weights are random but informative
(`parity.randomise_torch_weights` and `randomise_torch_transformer_parts`: no parameter left at an initial
value that would hide a mapping mistake; EfficientNetV2's BatchNorm statistics from torch's own train-mode
pass), inputs small and neither square nor 224: the ViTs see 48x64 (a 3x4 patch grid) and 42x56, so their
position embeddings are interpolated. torchvision's ViT only runs at the size it was built for, so its
reference at 48x64 (`TorchvisionViTAt`) is its own layers with the position embeddings interpolated as
torchvision's `interpolate_embeddings` does, to a rectangular grid; `test_vit_interpolation_is_torchvisions`
checks that function against torchvision's own at a square size.
`python -m pytest -p no:xdist -o addopts='' -q tests/test_pretrained_modern.py -s` prints the table
(`FPCLASS_SLOW_PARITY=1` adds the grayscale checks of the three larger ports).
"""
import dataclasses
import os
import re
import types
from typing import Callable

import jax
import ml_collections
import numpy as np
import pytest
import torch
from flax import traverse_util

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.explain import cam
from fpclass.models import weights
from fpclass.models.architectures import vision_transformer as vit
from fpclass.train import optim
from tests import dinov2_twin, parity

IMAGES = 4


def tokens_to_grid(tokens, grid):
  """(N, 1 + h * w, D) torch tokens -> the patch tokens as an (N, h, w, D) array."""
  return tokens[:, 1:].reshape(len(tokens), *grid, tokens.shape[-1])


def convnext_tiny(x, seed):
  module = parity.torchvision_uninitialised('convnext_tiny')
  return parity.randomise_torch_transformer_parts(parity.randomise_torch_weights(module, seed), seed).eval()


def efficientnet_v2_s(x, seed):
  module = parity.torchvision_uninitialised('efficientnet_v2_s')
  module = parity.randomise_torch_bn(parity.randomise_torch_weights(module, seed), seed)
  return parity.informative_torch_bn(module, x, seed)


def vit_b_16(x, seed):
  module = parity.torchvision_uninitialised('vit_b_16')
  return parity.randomise_torch_transformer_parts(parity.randomise_torch_weights(module, seed), seed).eval()


DINOV2_DEPTH = 3   # of ViT-S/14's 12 blocks: the block is vit_b16's, tested at all 12


def dinov2_vits14(x, seed):
  torch.manual_seed(seed)
  module = dinov2_twin.DinoV2Twin(dim=384, depth=DINOV2_DEPTH, num_heads=6)
  return parity.randomise_torch_transformer_parts(parity.randomise_torch_weights(module, seed), seed).eval()


class TorchvisionViTAt(torch.nn.Module):
  """torchvision's VisionTransformer on a (h, w) patch grid it was not built for: its own conv_proj, class
  token, encoder layers and heads, with the position embeddings resized as torchvision's
  `interpolate_embeddings` resizes them (bicubic, align_corners=True), here to a rectangular grid, in the
  dtype the model computes in."""

  def __init__(self, module, grid):
    super().__init__()
    self.module, self.grid = module, grid

  def forward(self, x):
    module = self.module
    pos = module.encoder.pos_embedding
    source = int(round((pos.shape[1] - 1) ** 0.5))
    patches = pos[:, 1:].reshape(1, source, source, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=self.grid, mode='bicubic', align_corners=True)
    pos = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
    tokens = module.conv_proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([module.class_token.expand(len(x), -1, -1), tokens], dim=1)
    # torchvision's Encoder.forward, with the resized embeddings in place of its own
    tokens = module.encoder.ln(module.encoder.layers(module.encoder.dropout(tokens + pos)))
    return module.heads(tokens[:, 0])


@dataclasses.dataclass(frozen=True)
class Case:
  size: tuple                 # (height, width)
  build: Callable             # (images, seed) -> a random torch model in eval mode; its state_dict is the file
  features: dict              # {fpclass feature: torch submodule whose output it equals}
  patch: int = 0              # a ViT's patch size: its features are token sequences, compared on the grid
  output: str = 'logits'      # what the reference returns: the logits, or DINOv2's class token ('pre_logits')
  wrap: Callable | None = None   # (module, grid) -> the module run at the case's size
  fields: dict = dataclasses.field(default_factory=dict)   # config.model fields of the port


CASES = {
    'convnext_tiny': Case((64, 48), convnext_tiny, {'stem': 'features.0', 'stage1': 'features.1',
                                                    'stage2': 'features.3', 'stage3': 'features.5',
                                                    'stage4': 'features.7'}),
    'efficientnet_v2_s': Case((64, 48), efficientnet_v2_s, {'stem': 'features.0', 'stage1': 'features.1',
                                                            'stage3': 'features.3', 'stage6': 'features.6',
                                                            'last_conv': 'features.7'}),
    'vit_b16': Case((48, 64), vit_b_16, {'embed': 'module.encoder.dropout',
                                         'block0': 'module.encoder.layers.encoder_layer_0',
                                         'block11': 'module.encoder.layers.encoder_layer_11',
                                         vit.CAM_FEATURE: 'module.encoder.layers.encoder_layer_11.ln_1',
                                         'norm': 'module.encoder.ln'}, patch=16, wrap=TorchvisionViTAt),
    'dinov2_vits14': Case((42, 56), dinov2_vits14, {'block0': 'blocks.0', 'block2': 'blocks.2',
                                                    vit.CAM_FEATURE: 'blocks.2.norm1', 'norm': 'norm'},
                          patch=14, output='pre_logits', fields={'depth': DINOV2_DEPTH}),
}


def case_images(name, seed=0):
  return parity.varied_images((IMAGES, *CASES[name].size, 3), seed)


def torch_outputs(module, nhwc, case: Case):
  """(output, {feature: NHWC array}) of a torch model, features captured by forward hooks."""
  grid = tuple(n // case.patch for n in case.size) if case.patch else None
  captured, hooks = {}, []
  for name, path in case.features.items():
    hooks.append(module.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
  try:
    with torch.no_grad():
      out = module(torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))).numpy()
  finally:
    for hook in hooks:
      hook.remove()
  features = {k: tokens_to_grid(v.numpy(), grid) if grid else v.numpy().transpose(0, 2, 3, 1)
              for k, v in captured.items()}
  return out, features


class Reference:
  """One case's torch model and file, torch's outputs on the batch and on the jittered batch, and the port
  loaded from the file, built and jitted once."""

  def __init__(self, name, folder):
    self.name, self.case = name, CASES[name]
    self.x = case_images(name)
    module = self.case.build(self.x, 0)
    self.path = folder / f'{name}.pth'
    torch.save(module.state_dict(), self.path)
    grid = tuple(n // self.case.patch for n in self.case.size) if self.case.patch else None
    self.module = self.case.wrap(module, grid) if self.case.wrap else module
    self.out, self.features = torch_outputs(self.module, self.x, self.case)
    self.jittered_out, self.jittered_features = torch_outputs(self.module, parity.jittered(self.x), self.case)
    self._flax = self._gray = None

  def flax(self):
    if self._flax is None:
      model, variables = parity.build(self.name, self.path, image_shape=self.x.shape[1:],
                                      keep_pretrained_head=self.case.output == 'logits', **self.case.fields)
      self._flax = model, variables, parity.compiled_once(model.apply, variables, self.x)
    return self._flax

  def gray(self):
    """The one-channel port (in_channels=1) on gray images g, and the source on their RGB copy [g, g, g], both
    normalised as the weights expect: the source per channel, the port with the channel averages."""
    if self._gray is None:
      norm = models.get_spec(self.name).preprocessing
      g = parity.gray_images((IMAGES, *self.case.size, 1))
      rgb = np.asarray(norm(np.repeat(g, 3, axis=-1)))
      x = np.asarray(norm.to_grayscale()(g))
      model, variables = parity.build(self.name, self.path, image_shape=x.shape[1:], in_channels=1,
                                      keep_pretrained_head=self.case.output == 'logits', **self.case.fields)
      self._gray = types.SimpleNamespace(
          variables=variables, x=x, apply=parity.compiled_once(model.apply, variables, x),
          ref=torch_outputs(self.module, rgb, self.case), jittered=torch_outputs(self.module, parity.jittered(rgb),
                                                                                 self.case))
    return self._gray

  def gray_agreement(self, variables=None, label=None):
    gray = self.gray()
    logits, features = gray.apply(gray.variables if variables is None else variables, gray.x)
    got = features['pre_logits'] if self.case.output == 'pre_logits' else logits
    return parity.agreement(label or f'{self.name} gray', got, gray.ref[0], gray.jittered[0],
                            {k: features[k] for k in gray.ref[1]}, gray.ref[1], gray.jittered[1])

  def agreement(self, logits, features, label=None):
    got = features['pre_logits'] if self.case.output == 'pre_logits' else logits
    return parity.agreement(label or self.name, got, self.out, self.jittered_out,
                            {k: features[k] for k in self.features}, self.features, self.jittered_features)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  cache = {}
  print('\n' + parity.TABLE_HEADER)

  def get(name):
    if name not in cache:
      cache[name] = Reference(name, tmp_path_factory.mktemp(name))
    return cache[name]
  yield get
  cache.clear()


@pytest.mark.parametrize('name', list(CASES))
def test_outputs_and_features_match_the_source(name, reference):
  ref = reference(name)
  _, variables, apply = ref.flax()
  logits, features = apply(variables, ref.x)
  head = 0 if ref.case.output == 'logits' else optim.count_params(variables['params']['head'])
  source = sum(p.numel() for k, p in ref.module.named_parameters() if not k.endswith('mask_token'))
  assert optim.count_params(variables['params']) - head == source
  result = ref.agreement(logits, features)
  print(result.row())
  parity.check(result)


# The ViTs' and ConvNeXt's stems fold into a conv bias without padding, the same path (`transfer.StemConv`,
# 'valid'): the suite checks it on the cheapest model. EfficientNetV2-S's stem is B0's (a padded 3x3/2 ConvBN,
# offset to the BN mean), which tests/test_gray_stem.py checks. Each of the others costs another compilation
# of a large model, so they run on request: FPCLASS_SLOW_PARITY=1. (EfficientNetV2-S's BN statistics, drawn on
# colour images, make it chaotic on gray ones: its own float32 noise there is above parity.MAX_FLOOR.)
SLOW = [pytest.mark.slow, pytest.mark.skipif(os.environ.get('FPCLASS_SLOW_PARITY') != '1',
                                             reason='FPCLASS_SLOW_PARITY=1 runs it')]
GRAY_CASES = ['dinov2_vits14', *(pytest.param(name, marks=SLOW) for name in ('convnext_tiny', 'vit_b16'))]


@pytest.mark.parametrize('name', GRAY_CASES)
def test_grayscale_port_matches_the_source_on_the_rgb_copy(name, reference):
  result = reference(name).gray_agreement()
  print(result.row())
  parity.check(result)


def test_grayscale_check_fails_without_the_folded_offset(reference):
  """The patch embedding's bias as the file holds it, without the offset the fold adds."""
  ref = reference('dinov2_vits14')
  unfolded = weights.read_state_dict(ref.path)['patch_embed.proj.bias']
  variables = parity.replaced(ref.gray().variables, {'params/patch_embed/bias': lambda _: unfolded})
  result = ref.gray_agreement(variables, label='dinov2_vits14 gray, folded offset dropped')
  print(result.row())
  parity.assert_check_fails(result)


def test_float64_vit_matches_torchvision_to_rounding(reference):
  """Both sides in float64 (the position-embedding interpolation included) agree to FLOAT64_TOL of the
  logit scale, so the float32 differences above are rounding."""
  ref = reference('vit_b16')
  parity.check_float64('vit_b16', parity.port_logits_float64('vit_b16', ref.path, ref.x),
                       parity.torch_logits_float64(ref.module, ref.x))


# One port broken on purpose per family: each must fail the parity check, on its logits alone too.
MUTATIONS = {
    'convnext_tiny': ('a depthwise kernel transposed (stage 3)', lambda model, variables: (model, parity.replaced(
        variables, {'params/features_5_0/dwconv/kernel': lambda k: k.transpose(1, 0, 2, 3)}))),
    'efficientnet_v2_s': ('BatchNorm epsilon 1e-5 for 1e-3', lambda model, variables: (model, parity.replaced(
        variables, parity.bn_variances(variables, lambda var: var + (1e-5 - 1e-3))))),
    'vit_b16': ("position embeddings resized DINOv2's way (no align_corners)", lambda model, variables: (
        model.clone(position_interpolation='dinov2'), variables)),
    'dinov2_vits14': ('the two layer scales of block 1 swapped', lambda model, variables: (model, parity.replaced(
        variables, {'params/block1/layer_scale1': lambda _: variables['params']['block1']['layer_scale2'],
                    'params/block1/layer_scale2': lambda _: variables['params']['block1']['layer_scale1']}))),
}


@pytest.mark.parametrize('name', list(MUTATIONS))
def test_the_parity_check_fails_on_a_broken_port(name, reference):
  ref = reference(name)
  model, variables, apply = ref.flax()
  label, mutate = MUTATIONS[name]
  broken_model, broken_variables = mutate(model, variables)
  run = apply if broken_model is model else parity.compiled_once(broken_model.apply, broken_variables, ref.x)
  logits, features = run(broken_variables, ref.x)
  result = ref.agreement(logits, features, label=f'{name}, {label}')
  print(result.row())
  parity.assert_check_fails(result)


def test_dinov2_without_the_interpolation_offset_fails(reference, monkeypatch):
  """DINOv2's scale factor (grid + 0.1) / 37 rather than grid / 37 moves its position embeddings by enough
  for the check to see."""
  ref = reference('dinov2_vits14')
  model, variables, _ = ref.flax()
  monkeypatch.setattr(vit, 'DINOV2_OFFSET', 0.0)
  logits, features = parity.compiled_once(lambda v, x: model.apply(v, x), variables, ref.x)(variables, ref.x)
  result = ref.agreement(logits, features, label='dinov2_vits14, interpolation offset 0')
  print(result.row())
  parity.assert_check_fails(result)


def test_stochastic_depth_rates_are_torchvisions(reference):
  """Each block's rate (row-mode stochastic depth, drawn in training only) is torchvision's: p * index /
  (blocks - 1) in ConvNeXt, p * index / blocks in EfficientNetV2."""
  from fpclass.models.architectures import torchvision_convnext, torchvision_efficientnet
  convnext = reference('convnext_tiny').module
  expected = [block.stochastic_depth.p for stage in convnext.features[1::2] for block in stage]
  got = torchvision_convnext.drop_path_rates([blocks for _, blocks in torchvision_convnext.TINY], 0.1)
  assert [r for stage in got for r in stage] == pytest.approx(expected)
  effnet = reference('efficientnet_v2_s').module
  expected = [block.stochastic_depth.p for stage in effnet.features[1:-1] for block in stage]
  got = torchvision_efficientnet.drop_path_rates(torchvision_efficientnet.V2_S_STAGES, 0.2)
  assert [r for stage in got for r in stage] == pytest.approx(expected) and len(expected) == 40


def test_vit_interpolation_is_torchvisions():
  """At a square size torchvision's own `interpolate_embeddings` resizes the state_dict; the port's
  matrices give the same embeddings."""
  from torchvision.models.vision_transformer import interpolate_embeddings
  pos = torch.from_numpy(parity.images((1, 1 + 14 * 14, 8), seed=3))
  for image_size in (48, 80, 320):
    expected = interpolate_embeddings(image_size, 16, {'encoder.pos_embedding': pos})['encoder.pos_embedding']
    grid = (image_size // 16,) * 2
    got = vit.interpolated_positions(pos.numpy(), 14, grid, 'torchvision')
    assert parity.max_abs_diff(got, expected.numpy()) < 1e-5, image_size


def test_vit_grad_cam_reads_the_last_blocks_attention_input(reference):
  """The patch tokens the last block outputs do not reach the logits (zero gradient: the class token alone
  does, through per-token LayerNorm), which is why the registered cam_layer is the last block's norm1
  output. There every image has a nonzero gradient, and Grad-CAM maps (fpclass.explain.cam) come out whole.
  On DINOv2's 3-block case (the module is vit_b16's) with a random head (parity.build leaves a new one at
  zero, which no gradient would pass); one jax.grad gives the gradients at both features, and only there (the
  other recorded features stay zero perturbations: the backward pass stops at the last block)."""
  ref = reference('dinov2_vits14')
  model, variables, apply = ref.flax()
  variables = parity.replaced(variables, {'params/head/kernel': lambda k: parity.images(k.shape, seed=5)})
  layer = models.get_spec('dinov2_vits14').cam_layer
  perturbations = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: model.apply(variables, ref.x, mutable='perturbations')[1]['perturbations']))
  targets = np.arange(IMAGES)
  last = f'block{DINOV2_DEPTH - 1}'

  def score(at_layer, at_block_output):
    p = {**perturbations, last: {**perturbations[last], f'feature_{layer}': at_layer},
         f'feature_{last}': at_block_output}
    return model.apply({**variables, 'perturbations': p}, ref.x)[0][np.arange(IMAGES), targets].sum()
  at_layer, at_block_output = jax.jit(jax.grad(score, argnums=(0, 1)))(perturbations[last][f'feature_{layer}'],
                                                                       perturbations[f'feature_{last}'])
  assert np.all(np.asarray(at_layer).any(axis=(1, 2, 3)))
  assert np.all(np.asarray(at_block_output) == 0)
  activations = apply(variables, ref.x)[1][layer]
  maps = np.asarray(cam.maps_from_gradients(activations, at_layer, 'gradcam', size=ref.x.shape[1:3]))
  assert maps.shape == ref.x.shape[:3] and maps.max() > 0.99


def test_vit_loads_torchvisions_older_mlp_names(reference):
  """Files saved before torchvision 0.14 name the MLP's Linears linear_1 and linear_2 (the official
  vit_b_16 file among them); they map to the same variables."""
  state = weights.read_state_dict(reference('vit_b16').path)
  legacy = {re.sub(r'mlp\.0\.', 'mlp.linear_1.', re.sub(r'mlp\.3\.', 'mlp.linear_2.', k)): v for k, v in state.items()}
  assert legacy.keys() != state.keys()
  mapped, unmatched = weights.apply_rules(legacy, vit.TORCHVISION_RULES)
  expected, _ = weights.apply_rules(state, vit.TORCHVISION_RULES)
  assert not unmatched and mapped.keys() == expected.keys()
  assert all(np.array_equal(mapped[k], expected[k]) for k in expected)


def test_dinov2_files_with_other_tensors_are_refused():
  """A registers checkpoint (`register_tokens`, unsupported) leaves its tensor unmatched, which loading
  reports; `mask_token` alone is skipped."""
  state = {k: np.zeros(1) for k in ('cls_token', 'pos_embed', 'mask_token', 'register_tokens', 'norm.weight')}
  _, unmatched = weights.apply_rules(state, vit.DINOV2_RULES, ignore=vit.DINOV2_UNUSED)
  assert unmatched == ['register_tokens']


def test_dinov2_has_no_source_classifier_to_keep(reference):
  with pytest.raises(UserInputError, match='holds no classifier.*keep_pretrained_head=False'):
    parity.build('dinov2_vits14', reference('dinov2_vits14').path, image_shape=(42, 56, 3),
                 keep_pretrained_head=True)


def test_dinov2_vitb14_parameters_are_the_checkpoints():
  """ViT-B/14 shares the module; its parameter count (without the new head) is the twin's at B/14's sizes."""
  model = models.create_model(ml_collections.ConfigDict(dict(name='dinov2_vitb14')), 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 28, 42, 3), np.float32)))
  count = optim.count_params(variables['params']) - optim.count_params(variables['params']['head'])
  assert count == dinov2_twin.parameter_count(dim=768, depth=12, num_heads=12) == 86_579_712


def test_a_vit_input_must_be_a_multiple_of_the_patch():
  model = models.create_model(ml_collections.ConfigDict(dict(name='vit_b16')), 3)
  with pytest.raises(UserInputError, match=r'config.data.image_size: 50x64 is not a multiple of the patch size 16'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 50, 64, 3), np.float32)))


# Cut points tested (each traces the model once): ConvNeXt's every stage, some of the others'.
CUT_POINTS = {'vit_b16': ('embed', 'block5', 'block11', 'norm'), 'dinov2_vits14': ('embed', 'block0', 'norm'),
              'efficientnet_v2_s': ('stem', 'stage3', 'stage6', 'last_conv')}


@pytest.mark.parametrize('name', list(CASES))
def test_stages_partition_the_backbone_and_each_is_a_cut_point(name):
  """Every backbone parameter is in exactly one stage and the source classifier in none; cutting at a stage
  keeps that stage's parameters and features and no later ones."""
  spec = models.get_spec(name)
  size = (56, 56) if name.startswith('dinov2') else (64, 64)

  def shapes(**fields):
    model = models.create_model(ml_collections.ConfigDict(dict(name=name, **fields)), 3)
    (_, features), variables = jax.eval_shape(lambda: model.init_with_output(
        jax.random.PRNGKey(0), np.zeros((1, *size, 3), np.float32)))
    return set(features), list(traverse_util.flatten_dict(variables['params'], sep='/'))

  def stages_of(path):
    return [stage for stage, regex in spec.stages if re.search(regex, path)]
  _, paths = shapes()
  for path in paths:
    assert len(stages_of(path)) == (0 if re.search(spec.source_top, 'params/' + path) else 1), path
  for stage in CUT_POINTS.get(name, spec.stage_names):
    index = spec.stage_names.index(stage)
    features, paths = shapes(cut=stage, top='avg')
    assert set(spec.stage_names[:index + 1]) <= features and not features & set(spec.stage_names[index + 1:])
    assert {s for p in paths for s in stages_of(p)} == set(spec.stage_names[:index + 1])
