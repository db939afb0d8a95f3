"""Layer-wise learning-rate decay (config.train.layer_decay): every parameter's multiplier equals timm's
`param_groups_layer_decay` on the same network, and one optimizer step applies it (fpclass.train.layer_decay)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import timm
from flax import traverse_util
from timm.optim import param_groups_layer_decay

from fpclass import models
from fpclass.config.run import RunSettings
from fpclass.errors import UserInputError
from fpclass.train import layer_decay, optim, validation
from tests.conftest import load_config

DECAY = 0.75   # timm's default layer_decay


def param_paths(name: str, side: int) -> list[str]:
  """The '/'-joined parameter paths of registered model `name` (shapes only: nothing is computed)."""
  module = models.get_spec(name).module(num_outputs=5)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, side, side, 3),
                                                                                               jnp.float32))
  return list(traverse_util.flatten_dict(shapes['params'], sep='/'))


def _leaf(module: str, leaf: str, paths) -> str:
  """torch's `weight` is a Flax kernel for convs and linears, a scale for norms."""
  if leaf == 'weight':
    leaf = 'kernel' if f'{module}/kernel' in paths else 'scale'
  return f'{module}/{leaf}'


# timm's parameter names -> fpclass's paths. Written from the two models' modules, not from fpclass's
# conversion tables, so a wrong grouping cannot hide behind a shared mistake.
def _resnet_twin(name, reference, paths):
  module, leaf = name.rsplit('.', 1)
  module = re.sub(r'^layer(\d)\.(\d+)\.', r'layer\1_\2/', module)
  return _leaf(module.replace('downsample.0', 'downsample_conv').replace('downsample.1', 'downsample_bn'), leaf, paths)


CONVNEXT_BLOCK = {'conv_dw': 'dwconv', 'norm': 'norm', 'mlp.fc1': 'pwconv1', 'mlp.fc2': 'pwconv2'}
CONVNEXT_OUTER = {'stem.0': 'features_0_conv', 'stem.1': 'features_0_norm', 'head.norm': 'classifier_0',
                  'head.fc': 'classifier_2'}


def _convnext_twin(name, reference, paths):
  if m := re.fullmatch(r'stages\.(\d)\.blocks\.(\d+)\.gamma', name):
    return f'features_{2 * int(m[1]) + 1}_{m[2]}/layer_scale'
  module, leaf = name.rsplit('.', 1)
  if m := re.fullmatch(r'stages\.(\d)\.blocks\.(\d+)\.(.+)', module):
    return _leaf(f'features_{2 * int(m[1]) + 1}_{m[2]}/{CONVNEXT_BLOCK[m[3]]}', leaf, paths)
  if m := re.fullmatch(r'stages\.(\d)\.downsample\.([01])', module):   # LayerNorm, then the 2x2 conv
    return _leaf(f'features_{2 * int(m[1])}_{("norm", "conv")[int(m[2])]}', leaf, paths)
  return _leaf(CONVNEXT_OUTER[module], leaf, paths)


VIT_BLOCK = {'norm1': 'norm1', 'norm2': 'norm2', 'attn.qkv': 'attention/qkv', 'attn.proj': 'attention/out',
             'mlp.fc1': 'mlp_fc1', 'mlp.fc2': 'mlp_fc2'}
VIT_OUTER = {'cls_token': 'class_token', 'pos_embed': 'pos_embedding'}


def _vit_twin(name, reference, paths):
  if name in VIT_OUTER:
    return VIT_OUTER[name]
  if m := re.fullmatch(r'blocks\.(\d+)\.ls(\d)\.gamma', name):   # DINOv2's layer scales
    return f'block{m[1]}/layer_scale{m[2]}'
  module, leaf = name.rsplit('.', 1)
  if m := re.fullmatch(r'blocks\.(\d+)\.(.+)', module):
    return _leaf(f'block{m[1]}/{VIT_BLOCK[m[2]]}', leaf, paths)
  return _leaf({'patch_embed.proj': 'patch_embed'}.get(module, module), leaf, paths)


# timm's block kinds -> torchvision's `block` Sequential, module by module.
SE = {'se.conv_reduce': 'fc1', 'se.conv_expand': 'fc2'}
EFFICIENTNET_BLOCK = {
    'DepthwiseSeparableConv': {'conv_dw': 'block_0/conv', 'bn1': 'block_0/bn', **{k: f'block_1/{v}' for k, v in
                               SE.items()}, 'conv_pw': 'block_2/conv', 'bn2': 'block_2/bn'},
    'InvertedResidual': {'conv_pw': 'block_0/conv', 'bn1': 'block_0/bn', 'conv_dw': 'block_1/conv',
                         'bn2': 'block_1/bn', **{k: f'block_2/{v}' for k, v in SE.items()}, 'conv_pwl': 'block_3/conv',
                         'bn3': 'block_3/bn'},
    'EdgeResidual': {'conv_exp': 'block_0/conv', 'bn1': 'block_0/bn', 'conv_pwl': 'block_1/conv', 'bn2': 'block_1/bn'},
    'ConvBnAct': {'conv': 'block_0/conv', 'bn1': 'block_0/bn'},
}


def _efficientnet_twin(name, reference, paths):
  module, leaf = name.rsplit('.', 1)
  if m := re.fullmatch(r'blocks\.(\d)\.(\d+)\.(.+)', module):
    kind = type(reference.blocks[int(m[1])][int(m[2])]).__name__
    return _leaf(f'features_{int(m[1]) + 1}_{m[2]}/{EFFICIENTNET_BLOCK[kind][m[3]]}', leaf, paths)
  last = len(reference.blocks) + 1   # torchvision's features index of the final 1x1 conv
  outer = {'conv_stem': 'features_0/conv', 'bn1': 'features_0/bn', 'conv_head': f'features_{last}/conv',
           'bn2': f'features_{last}/bn', 'classifier': 'classifier_1'}
  return _leaf(outer[module], leaf, paths)


# fpclass model: (timm model, its arguments, input side, name mapping, distinct depths)
TIMM_CASES = {
    'convnext_tiny': ('convnext_tiny', {}, 32, _convnext_twin, 20),
    'vit_b16': ('vit_base_patch16_224', {'img_size': 32}, 32, _vit_twin, 14),
    'resnet50': ('resnet50', {}, 32, _resnet_twin, 18),
    'dinov2_vits14': ('vit_small_patch14_dinov2', {'img_size': 28}, 28, _vit_twin, 14),
    'efficientnet_b0': ('efficientnet_b0', {}, 32, _efficientnet_twin, 18),
    'efficientnet_v2_s': ('efficientnetv2_s', {}, 32, _efficientnet_twin, 42),
}


@pytest.mark.parametrize('name', TIMM_CASES)
def test_multipliers_equal_timms_layer_decay_groups(name):
  """timm's own grouping (its `group_matcher`s through `param_groups_layer_decay`) gives each torch tensor an
  lr_scale; its fpclass twin must get the same multiplier. The name mapping must pair every tensor of both
  models exactly once, so the test cannot pass on a subset."""
  timm_name, kwargs, side, twin, depths = TIMM_CASES[name]
  reference = timm.create_model(timm_name, pretrained=False, num_classes=5, **kwargs)
  scales = {id(p): group['lr_scale'] for group in param_groups_layer_decay(reference, layer_decay=DECAY)
            for p in group['params']}
  expected = {n: scales[id(p)] for n, p in reference.named_parameters()}
  assert len(set(expected.values())) == depths
  paths = param_paths(name, side)
  twins = {n: twin(n, reference, paths) for n in expected}
  assert sorted(twins.values()) == sorted(paths)   # a bijection: every tensor on both sides, once
  ours = layer_decay.multipliers(models.get_spec(name), DECAY, paths)
  differ = {n: (twins[n], ours[twins[n]], scale) for n, scale in expected.items() if ours[twins[n]] != scale}
  assert not differ, f'{len(differ)} of {len(expected)} differ, e.g. {sorted(differ.items())[:3]}'


# Models timm does not have (or not under these names): pinned depth counts, and layers sharing one depth as
# timm's rules would put them (a final norm or 1x1 conv with the last block, VGG's hidden Linears in the head):
# (path prefixes, depth below the head).
OTHER_DEPTHS = {'alexnet': 6, 'vgg16': 14, 'keras_vgg16': 14, 'keras_resnet50': 18, 'keras_resnet50v2': 18,
                'keras_efficientnetb0': 18, 'keras_efficientnetb2': 25, 'keras_inceptionv3': 13,
                'keras_mobilenetv3large': 18}
SAME_DEPTH = {'keras_resnet50v2': (('post_bn/', 'conv5_block3/'), 1),
              'keras_efficientnetb0': (('top_conv/', 'top_bn/', 'block7a/'), 1),
              'vgg16': (('classifier_0/', 'classifier_3/', 'classifier_6/'), 0)}


@pytest.mark.parametrize('name', OTHER_DEPTHS)
def test_other_models_have_depths_from_stem_to_head_in_stage_order(name):
  spec = models.get_spec(name)
  paths = param_paths(name, 96 if name == 'keras_inceptionv3' else 32)
  ids, head = layer_decay.depth_ids(spec, paths)
  assert head == OTHER_DEPTHS[name] - 1
  assert sorted(set(ids.values())) == list(range(head))   # every id used: no gaps
  stage = {p: next(i for i, (_, regex) in enumerate(spec.stages) if re.search(regex, p)) for p in ids}
  assert min(ids[p] for p in ids if stage[p] == 0) == 0   # the stem (VGG's first conv)
  assert all(ids[a] <= ids[b] for a in ids for b in ids if stage[a] < stage[b])
  multipliers = layer_decay.multipliers(spec, DECAY, paths)
  assert {multipliers[p] for p in paths if p not in ids} == {1.0}   # the head
  if name in SAME_DEPTH:
    prefixes, below_head = SAME_DEPTH[name]
    assert {p.split('/')[0] + '/' for p in paths if p.startswith(prefixes)} == set(prefixes)
    assert {multipliers[p] for p in paths if p.startswith(prefixes)} == {DECAY ** below_head}


def test_a_cut_model_counts_only_the_blocks_it_has():
  paths = ['conv1/kernel', 'bn1/scale', 'layer1_0/conv1/kernel', 'layer1_1/conv1/kernel', 'layer2_0/conv1/kernel',
           'top/logits/kernel']
  assert layer_decay.depth_ids(models.get_spec('resnet18'), paths) == (
      {'conv1/kernel': 0, 'bn1/scale': 0, 'layer1_0/conv1/kernel': 1, 'layer1_1/conv1/kernel': 2,
       'layer2_0/conv1/kernel': 3}, 4)


def _resnet18_depth(path: str) -> int:
  """The depth ids of torchvision's ResNet-18 written out: stem 0, its 8 blocks 1..8, fc 9."""
  if m := re.match(r'layer(\d)_(\d)/', path):
    return 1 + 2 * (int(m[1]) - 1) + int(m[2])
  return 0 if path.startswith(('conv1/', 'bn1/')) else 9


STEP_CASES = {
    'adamw': dict(optimizer='adamw', weight_decay=0.05),
    'sgd_momentum_coupled_decay': dict(optimizer='sgd', weight_decay=1e-3),
    'fine_tuning_phase': dict(optimizer='adamw', weight_decay=0.05),
}


@pytest.mark.parametrize('case', STEP_CASES)
def test_an_optimizer_step_scales_each_update_by_its_multiplier(case):
  """Two steps on ResNet-18's parameters: with layer_decay d and backbone_lr_factor f, each backbone update is
  f * d ** (9 - depth) times the update of the same optimizer without either, the head's is that update, and
  the stages below freeze_till (phase 2: finetune_freeze_till) do not move. Phase 2 rebuilds the optimizer
  from its own config, as the engine does."""
  overrides = {'model.freeze_till': 2, 'train.finetune_freeze_till': 1, 'train.learning_rate': 0.01,
               **{f'train.{k}': v for k, v in STEP_CASES[case].items()}}
  phase = 1 if case == 'fine_tuning_phase' else 0
  decayed = RunSettings.from_config(load_config('configs/footprint.py:resnet18', **overrides, **{
      'train.layer_decay': 0.6, 'train.backbone_lr_factor': 0.5})).phase(phase)
  plain = RunSettings.from_config(load_config('configs/footprint.py:resnet18', **overrides)).phase(phase)
  shapes = jax.eval_shape(lambda x: models.create_model(decayed.model, 3).init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))['params']
  # Random values in the model's parameter tree (weight decay reads them); initialising it would cost more.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), shapes)
  groups = optim.param_groups(decayed.model)
  txs = [optim.make_optimizer(config.train, 10, groups) for config in (decayed, plain)]
  states = [tx.init(params) for tx in txs]
  updates = [jax.jit(tx.update) for tx in txs]
  last_frozen = 2 if phase == 0 else 0   # freeze_till 2: the stem and layer1 (depths 0-2); phase 2's 1: the stem
  flat_params = traverse_util.flatten_dict(params, sep='/')
  for _ in range(2):
    grads = jax.tree_util.tree_map(lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), params)
    (ours, states[0]), (theirs, states[1]) = (update(grads, s, params) for update, s in zip(updates, states))
    ours, theirs = (traverse_util.flatten_dict(u, sep='/') for u in (ours, theirs))
    for path, update in ours.items():
      depth = _resnet18_depth(path)
      if depth <= last_frozen:
        assert not np.any(np.asarray(update)), path
      elif depth == 9:
        np.testing.assert_array_equal(update, theirs[path], err_msg=path)
      else:
        np.testing.assert_allclose(update, 0.5 * 0.6 ** (9 - depth) * theirs[path], rtol=2e-6, err_msg=path)
    moved = optax.apply_updates(params, traverse_util.unflatten_dict(ours, sep='/'))
    moved = traverse_util.flatten_dict(moved, sep='/')
    assert {_resnet18_depth(p) for p in moved if np.array_equal(moved[p], flat_params[p])} == set(
        range(last_frozen + 1))


@pytest.mark.parametrize('value', [0.0, -0.5, 1.5, float('nan')])
def test_layer_decay_outside_0_1_is_refused_naming_the_key(value):
  config = load_config('configs/footprint.py:resnet18', **{'train.layer_decay': value})
  with pytest.raises(UserInputError, match=r'config\.train\.layer_decay='):
    validation.validate(config)


def test_layer_decay_on_a_model_without_stages_is_refused():
  with pytest.raises(UserInputError, match=r'config\.train\.layer_decay=0\.8: .*needs a pretrained model'):
    validation.validate(load_config('configs/footprint.py', **{'train.layer_decay': 0.8}))
  validation.validate(load_config('configs/footprint.py:resnet18', **{'train.layer_decay': 0.8}))
