"""Stochastic depth, `config.model.drop_path_rate`, in ResNet, ConvNeXt, EfficientNet(V2), ViT and DINOv2.

Oracles: torchvision (ConvNeXt, EfficientNet: its `stochastic_depth_prob`) and timm (ResNet, ViT, DINOv2: its
`drop_path_rate`), built on the meta device, whose modules hold each block's rate. Every block's rate is the
reference's, for a set rate and for the default; in training each block drops whole branches of examples at
that rate over 4096 draws (fixed keys), survivors scaled by 1 / (1 - rate), independently of the block
before; the branch dropped is the reference's (train mode equals timm's ResNet and ViT, and torchvision's
ConvNeXt, given the same masks; EfficientNet's is test_pretrained_torchvision's train-mode test); evaluation,
and training at rate 0, leave every branch as it is. Measured at `transfer.drop_path`, which every family calls.
"""
import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import timm
import torch
import torchvision
from flax import traverse_util
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.efficientnet import MBConvConfig

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.models import transfer
from fpclass.models.architectures import torchvision_convnext as convnext
from fpclass.models.architectures import torchvision_efficientnet as effnet
from fpclass.models.architectures import torchvision_resnet as resnet
from fpclass.models.architectures import vision_transformer as vit
from tests import parity

SIGMAS = 4.5      # a binomial frequency's allowed distance from its expectation
DRAWS = 4096      # examples per block in the survival test
TIMM_VIT = {'vit_b16': 'vit_base_patch16_224', 'dinov2_vits14': 'vit_small_patch14_dinov2',
            'dinov2_vitb14': 'vit_base_patch14_dinov2'}
IMAGE = {'vit_b16': (32, 32, 3), 'dinov2_vits14': (28, 28, 3), 'dinov2_vitb14': (28, 28, 3)}


def torchvision_rates(module):
  """The rate of every torchvision block that applies its StochasticDepth (every ConvNeXt block, the
  EfficientNet blocks with a residual connection), in network order."""
  return [m.stochastic_depth.p for m in module.modules()
          if hasattr(m, 'stochastic_depth') and getattr(m, 'use_res_connect', True)]


def timm_resnet_rates(module):
  return [getattr(block.drop_path, 'drop_prob', 0.0)   # timm leaves out (None) a rate-0 DropPath
          for layer in (module.layer1, module.layer2, module.layer3, module.layer4) for block in layer]


def timm_vit_rates(module):
  return [getattr(getattr(block, slot), 'drop_prob', 0.0)   # nn.Identity at rate 0
          for block in module.blocks for slot in ('drop_path1', 'drop_path2')]


def reference_rates(name, rate):
  """Each drop-path slot's rate in the reference of registered model `name`, built with `rate` (None: the
  reference's default)."""
  with torch.device('meta'):
    if name.startswith('resnet'):
      return timm_resnet_rates(timm.create_model(name, **({} if rate is None else {'drop_path_rate': rate})))
    if name in TIMM_VIT:
      return timm_vit_rates(timm.create_model(TIMM_VIT[name], **({} if rate is None else {'drop_path_rate': rate})))
    build = getattr(torchvision.models, name)
    return torchvision_rates(build(**({} if rate is None else {'stochastic_depth_prob': rate})))


class Record(nn.Module):
  """Sows a drop path's (input, output) at the calling block, and notes its path in RECORDED."""

  @nn.compact
  def __call__(self, branch_in, branch_out):
    RECORDED.append('/'.join(self.path))
    self.sow('intermediates', 'branch', (branch_in, branch_out))


RECORDED = []


@contextlib.contextmanager
def recorded_drop_paths(sow: bool):
  """Wraps `transfer.drop_path`, as every family calls it: yields the list of its calls' (name, rate, whether
  it returned its input unchanged), and with `sow`, records each call's branch in and out (`Record`)."""
  calls, real = [], transfer.drop_path

  def recording(x, rate, train, name):
    out = real(x, rate, train, name)
    calls.append((name, rate, out is x))
    if sow:
      Record(name=f'{name}_record')(x, out)
    return out
  transfer.drop_path = recording
  RECORDED.clear()
  try:
    yield calls
  finally:
    transfer.drop_path = real


def traced_drop_paths(model, image_shape, train: bool):
  """[(name, rate, whether it returned its input unchanged)] for each drop path, in call order, from tracing
  `model` (nothing runs). In evaluation, its `init` alone: init runs the model in evaluation mode, calling it as
  `apply` does. In training, `apply` after it, with no rngs at all, so that a pass that drew from 'dropout' fails
  (init would hand it the 'params' rng instead)."""
  x = jnp.zeros((2, *image_shape))
  with recorded_drop_paths(sow=False) as calls:
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    if train:
      calls.clear()
      jax.eval_shape(lambda v: model.apply(v, x, train=train, mutable=['batch_stats']), variables)
  return calls


def drop_path_models():
  return sorted(name for name, spec in models.REGISTRY.items()
                if 'drop_path_rate' in {f.name for f in dataclasses.fields(models.module_class(spec.module))})


REFERENCED = ['resnet18', 'resnet50', 'convnext_tiny', 'efficientnet_b0', 'efficientnet_v2_s', 'vit_b16',
              'dinov2_vits14', 'dinov2_vitb14']


def test_every_model_with_a_drop_path_rate_has_a_reference():
  """Every model with a drop_path_rate is built by a module class whose drop paths a reference test checks: the
  ports above, and the Hub's timm architectures (`timm_*`), which are fields of the same modules."""
  models.get_spec('resnet18')   # registers every family
  referenced = {models.module_class(models.get_spec(name).module) for name in REFERENCED}
  found = drop_path_models()
  assert set(REFERENCED) <= set(found)
  unreferenced = [name for name in found if models.module_class(models.REGISTRY[name].module) not in referenced]
  assert not unreferenced, unreferenced
  assert [name for name in found if name not in REFERENCED and not name.startswith('timm_')] == []


@pytest.mark.parametrize('name, rate', [
    *((name, 0.3) for name in ('resnet18', 'resnet50', 'convnext_tiny', 'efficientnet_b0', 'efficientnet_v2_s',
                               'vit_b16', 'dinov2_vits14', 'dinov2_vitb14')),
    *((name, None) for name in ('convnext_tiny', 'efficientnet_b0', 'efficientnet_v2_s'))])
def test_each_blocks_rate_is_the_references(name, rate):
  """The rate each drop-path module of the built model holds, in network order, is the reference's for the
  same setting; for the torchvision families the default is torchvision's (0.1, 0.2; the others' default
  0, timm's, is `test_at_rate_0_training_draws_nothing`'s). In evaluation every one returns its input."""
  fields = {} if rate is None else {'drop_path_rate': rate}
  model = models.create_model(ml_collections.ConfigDict(dict(name=name, **fields)), 3)
  traced = traced_drop_paths(model, IMAGE.get(name, (32, 32, 3)), train=False)
  expected = reference_rates(name, rate)
  assert len(traced) == len(expected) and (rate is None or max(expected) > 0)
  assert [r for _, r, _ in traced] == pytest.approx(expected, rel=1e-6, abs=1e-9)
  assert all(unchanged for *_, unchanged in traced)


@pytest.mark.parametrize('name', ['resnet18', 'dinov2_vits14'])
def test_at_rate_0_training_draws_nothing(name):
  """ResNet and the ViTs default to rate 0, as timm does: their training pass then needs no 'dropout' rng
  (so a frozen backbone's features can still be cached) and every drop-path module returns its input."""
  assert not any(reference_rates(name, None))
  model = models.create_model(ml_collections.ConfigDict(dict(name=name)), 3)
  traced = traced_drop_paths(model, IMAGE.get(name, (32, 32, 3)), train=True)
  assert traced and all(rate == 0 and unchanged for _, rate, unchanged in traced)


@pytest.mark.parametrize('rate', [-0.1, 1.0])
def test_a_rate_outside_0_1_is_refused_naming_the_key(rate):
  model = models.create_model(ml_collections.ConfigDict(dict(name='resnet18', drop_path_rate=rate)), 3)
  with pytest.raises(UserInputError, match=r'config\.model\.drop_path_rate'):
    traced_drop_paths(model, (32, 32, 3), train=False)
  with pytest.raises(UserInputError, match='drop_path_rate'):   # torchvision's name is not a field
    models.create_model(ml_collections.ConfigDict(dict(name='convnext_tiny', stochastic_depth_prob=0.1)), 3)


def train_branches(model, variables, x, key):
  """(logits, features, [(block path, branch in, branch out)]) of every drop path, in call order, from one
  train-mode pass drawing from the 'dropout' rng `key`, as the train step does (fpclass.train.task)."""
  def run(variables, x, key):
    (logits, features), state = model.apply(variables, x, train=True, rngs={'dropout': key},
                                            mutable=['batch_stats', 'intermediates'])
    return logits, features, state['intermediates']
  with recorded_drop_paths(sow=True):
    logits, features, intermediates = parity.run_once(run, variables, x, key)
    order = list(RECORDED)
  flat = traverse_util.flatten_dict(intermediates, sep='/')
  return logits, features, [(path, *(np.asarray(a, np.float64) for a in flat[path + '/branch'][0])) for path in order]


def random_variables(model, x):
  """`model`'s variables drawn at random, N(0, 0.2), without compiling its init."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def kept_examples(path, branch_in, branch_out, rate):
  """Per example: whether its branch was kept (scaled by 1 / (1 - rate)) rather than dropped (zero);
  asserts that it is exactly one of the two, for the whole branch."""
  n = branch_in.shape[0]
  branch_in, branch_out = branch_in.reshape(n, -1), branch_out.reshape(n, -1)
  assert np.all(np.any(branch_in != 0, axis=1)), path
  dropped = np.all(branch_out == 0, axis=1)
  kept = np.all(np.abs(branch_out - branch_in / (1 - rate)) <= 1e-6 * np.abs(branch_in) / (1 - rate), axis=1)
  assert np.all(kept ^ dropped), f'{path}: {np.sum(~(kept ^ dropped))} examples neither whole-kept (scaled by ' \
      f'1 / (1 - {rate:.4f})) nor whole-dropped'
  return kept


def assert_frequency(label, observed, p, n):
  assert abs(observed - p) <= SIGMAS * np.sqrt(p * (1 - p) / n) + 1e-12, f'{label}: {observed:.4f} for p={p:.4f}'


def meta_rates(rates_of, build):
  """rates_of(build()), the reference module built on the meta device (its rates without its weights)."""
  with torch.device('meta'):
    return rates_of(build())


# The models here are shallower than their registered ones (resnet18's 8 blocks, convnext_tiny's 18, B0's 16,
# DINOv2's 12 twice over), each reference built in the same layout: the reference's rule spreads the rate over
# the blocks there are, as the port's must (`test_each_blocks_rate_is_the_references` checks the registered
# depths). Fewer blocks to trace and compile; with fewer blocks, a denominator off by one moves each rate more.
RESNET_LAYERS, CONVNEXT_BLOCKS, VIT_DEPTH = (1, 1, 1, 1), (1, 1, 2, 1), 4
# B0's first four stages: 8 blocks, 4 of them residual, every block counted in the rule. The port 1/8 wide; the
# reference at B0's widths (torchvision rounds a width to a multiple of 8), which connect the same blocks.
B0_FIRST = effnet.B0_STAGES[:4]
NARROW_B0 = tuple((e, k, s, c // 8, n) for e, k, s, c, n in B0_FIRST)
SMALL = {   # family -> (the Flax module at drop_path_rate, image shape, the reference's rates at that rate)
    'resnet_basic': (lambda r: resnet.ResNet(block=resnet.BasicBlock, layers=RESNET_LAYERS, num_outputs=3,
                                             drop_path_rate=r), (8, 8, 3),
                     lambda r: meta_rates(timm_resnet_rates, lambda: timm.models.resnet.ResNet(
                         block=timm.models.resnet.BasicBlock, layers=list(RESNET_LAYERS), drop_path_rate=r))),
    'convnext': (lambda r: convnext.ConvNeXt(block_setting=tuple((8, n) for n in CONVNEXT_BLOCKS), num_outputs=3,
                                             drop_path_rate=r), (32, 32, 3),
                 lambda r: meta_rates(torchvision_rates, lambda: torchvision.models.convnext.ConvNeXt(
                     [CNBlockConfig(8, 8 if i + 1 < len(CONVNEXT_BLOCKS) else None, n)
                      for i, n in enumerate(CONVNEXT_BLOCKS)], stochastic_depth_prob=r))),
    # 8x8: SAME padding leaves every stage at least 1x1, and a branch is kept or dropped per example whatever
    # its size (32x32 spent 3 CPU-s more running the 4096 examples, for the same draws).
    'efficientnet': (lambda r: effnet.EfficientNet(mbconv_stages=NARROW_B0, stem_channels=4, num_outputs=3,
                                                   drop_path_rate=r), (8, 8, 3),
                     lambda r: meta_rates(torchvision_rates, lambda: torchvision.models.efficientnet.EfficientNet(
                         [MBConvConfig(e, k, s, c_in, c, n)
                          for (e, k, s, c, n), c_in in zip(B0_FIRST, (32, *(stage[3] for stage in B0_FIRST)))],
                         dropout=0.2, stochastic_depth_prob=r))),
    'vit_layer_scale': (lambda r: vit.VisionTransformer(patch_size=4, hidden_dim=8, depth=VIT_DEPTH, num_heads=2,
                                                        mlp_dim=16, source_grid=2, layer_scale=True, num_outputs=3,
                                                        drop_path_rate=r), (8, 8, 3),
                        lambda r: meta_rates(timm_vit_rates, lambda: timm.models.vision_transformer.VisionTransformer(
                            img_size=8, patch_size=4, embed_dim=8, depth=VIT_DEPTH, num_heads=2, init_values=1.0,
                            drop_path_rate=r))),
}


@pytest.mark.parametrize('family', list(SMALL))
def test_in_training_each_block_drops_whole_branches_at_the_references_rate(family):
  """A narrow model of each family at rate 0.5, 4096 examples in one training pass: every example's branch
  is either zero or its input / (1 - p) with p the reference's rate for that block; the dropped fraction
  is p per block, summed over the blocks (where a denominator off by one would show), and p_i * p_j for
  consecutive blocks both dropped (independent draws)."""
  build, shape, reference = SMALL[family]
  model, expected = build(0.5), reference(0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (DRAWS, *shape))
  _, _, branches = train_branches(model, random_variables(model, x[:1]), x, jax.random.PRNGKey(7))
  assert len(branches) == len(expected)
  dropped = np.stack([~kept_examples(path, a, b, p) for (path, a, b), p in zip(branches, expected)])
  for (path, *_), drops, p in zip(branches, dropped, expected):
    assert_frequency(path, drops.mean(), p, DRAWS)
  expected = np.asarray(expected)
  total = dropped.mean(axis=1).sum()
  assert abs(total - expected.sum()) <= SIGMAS * np.sqrt(np.sum(expected * (1 - expected)) / DRAWS), \
      f'{total:.3f} branches dropped per example, the rule gives {expected.sum():.3f}'
  for i in range(len(expected) - 1):
    assert_frequency(f'{branches[i][0]} and the next', np.mean(dropped[i] & dropped[i + 1]),
                     expected[i] * expected[i + 1], DRAWS)


class FixedMask(torch.nn.Module):
  """A reference drop-path slot applying a given per-example keep mask, scaled by the reference's rate."""

  def __init__(self, keep, rate):
    super().__init__()
    self.keep, self.rate = torch.from_numpy(keep.astype(np.float32)), rate

  def forward(self, x):
    return x * self.keep.reshape(-1, *(1,) * (x.ndim - 1)) / (1 - self.rate)


def masked_reference(module, branches, rates, slots):
  """`module` with each drop-path slot (`slots`, in network order) replaced by the Flax pass's masks."""
  assert len(slots) == len(branches) == len(rates)
  for slot, (path, a, b), rate in zip(slots, branches, rates):
    parent, leaf = slot.rsplit('.', 1)   # setattr: timm's rate-0 slots can be None, not a module
    setattr(module.get_submodule(parent), leaf, FixedMask(kept_examples(path, a, b, rate), rate))
  return module


@pytest.mark.parametrize('name, block, layers', [('resnet18', 'BasicBlock', (2, 2, 2, 2)),
                                                ('resnet50', 'Bottleneck', (1, 1, 1, 1))], ids=['basic', 'bottleneck'])
def test_resnet_drops_the_branch_timm_drops(name, block, layers, tmp_path):
  """A ResNet of each block kind in training at rate 0.5 equals timm's (same weights, written by torch.save;
  timm's layer names are torchvision's) when each timm DropPath applies the mask the Flax block drew: the
  branch is dropped after its last BN, before the shortcut is added and the ReLU."""
  ref = timm.models.resnet.ResNet(block=getattr(timm.models.resnet, block), layers=list(layers), drop_path_rate=0.5)
  ref = parity.randomise_torch_bn(parity.randomise_torch_weights(ref))
  torch.save(ref.state_dict(), tmp_path / 'resnet.pth')
  x = parity.varied_images((6, 40, 56, 3), seed=3)
  model, variables = parity.build(name, tmp_path / 'resnet.pth', image_shape=x.shape[1:], layers=layers,
                                  drop_path_rate=0.5)
  logits, _, branches = train_branches(model, variables, x, jax.random.PRNGKey(5))
  slots = [f'layer{i}.{j}.drop_path' for i, blocks in enumerate(layers, start=1) for j in range(blocks)]
  ref = masked_reference(ref.train(), branches, timm_resnet_rates(ref), slots)
  assert any(isinstance(m, FixedMask) and not m.keep.all() for m in ref.modules())
  result = parity.agreement(f'{name} layout {layers} train mode, drop path 0.5', logits,
                            parity.torch_forward(ref, x, {})[0], parity.torch_forward(ref, parity.jittered(x), {})[0])
  print(result.row())
  parity.check(result)


def test_convnext_drops_the_branch_torchvision_drops(tmp_path):
  """A narrow ConvNeXt (1 block a stage: every ConvNeXt block adds its input unchanged) in training at rate 0.5
  equals torchvision's when each of its StochasticDepth modules applies the mask the Flax block drew: the branch
  after the layer scale, before the input is added."""
  widths = (16, 24, 32, 40)
  with torch.random.fork_rng():
    torch.manual_seed(0)
    ref = torchvision.models.convnext.ConvNeXt(
        [CNBlockConfig(w, n, 1) for w, n in zip(widths, (*widths[1:], None))], stochastic_depth_prob=0.5)
  ref = parity.randomise_torch_transformer_parts(parity.randomise_torch_weights(ref))
  torch.save(ref.state_dict(), tmp_path / 'convnext.pth')
  x = parity.varied_images((6, 40, 56, 3), seed=3)
  model, variables = parity.build('convnext_tiny', tmp_path / 'convnext.pth', image_shape=x.shape[1:],
                                  block_setting=tuple((w, 1) for w in widths), drop_path_rate=0.5)
  logits, _, branches = train_branches(model, variables, x, jax.random.PRNGKey(5))
  slots = [f'features.{2 * stage + 1}.0.stochastic_depth' for stage in range(4)]
  ref = masked_reference(ref.train(), branches, torchvision_rates(ref), slots)
  assert any(isinstance(m, FixedMask) and not m.keep.all() for m in ref.modules())
  result = parity.agreement('convnext (narrow) train mode, drop path 0.5', logits, parity.torch_forward(ref, x, {})[0],
                            parity.torch_forward(ref, parity.jittered(x), {})[0])
  print(result.row())
  parity.check(result)


def test_vit_drops_the_branches_timm_drops(tmp_path):
  """A DINOv2-layout ViT (layer scale, 4 blocks, 32 wide) in training at rate 0.5 equals timm's
  VisionTransformer with the same weights when each timm drop_path1/drop_path2 applies the Flax mask: each
  block's attention branch and MLP branch are dropped on their own, after the layer scale."""
  with torch.random.fork_rng():
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1.0, num_classes=0,
        drop_path_rate=0.5)
  ref = parity.randomise_torch_transformer_parts(parity.randomise_torch_weights(ref))
  torch.save(ref.state_dict(), tmp_path / 'vit.pth')
  x = parity.varied_images((6, 28, 28, 3), seed=3)
  model, variables = parity.build('dinov2_vits14', tmp_path / 'vit.pth', image_shape=x.shape[1:], hidden_dim=32,
                                  depth=4, num_heads=2, mlp_dim=128, source_grid=2, keep_pretrained_head=False,
                                  drop_path_rate=0.5)
  _, features, branches = train_branches(model, variables, x, jax.random.PRNGKey(5))
  slots = [f'blocks.{i}.drop_path{k}' for i in range(4) for k in (1, 2)]
  ref = masked_reference(ref.train(), branches, timm_vit_rates(ref), slots)
  result = parity.agreement('ViT (DINOv2 layout) train mode, drop path 0.5', features['pre_logits'],
                            parity.torch_forward(ref, x, {})[0], parity.torch_forward(ref, parity.jittered(x), {})[0])
  print(result.row())
  parity.check(result)
