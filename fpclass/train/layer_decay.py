"""Layer-wise learning-rate decay (config.train.layer_decay): each parameter's depth id and multiplier.

Fine-tuning a pretrained backbone, layers near the input (generic features) should move less than those near
the head. Each parameter gets a depth id: the stem 0, each block its index in network order, the head (all
after the model's last stage: the source classifier or a new top) the last id; its learning rate is
multiplied by layer_decay ** (last - id). Ids come from '/'-joined parameter paths and the ModelSpec's
stages alone. For the families timm has (ResNet, ConvNeXt, ViT and DINOv2, EfficientNet) the blocks are
timm's (`param_groups_layer_decay`), so a timm recipe's layer_decay carries over; `BLOCKS` says how each
splits its stages. Any other model with stages has one block per stage. Models without stages (the seed
CNNs, trained from scratch) have no depth to decay over: layer_decay < 1 is an error for them.

Design notes: docs/finetuning.md.
"""
import dataclasses
import re

import jax
import optax


@dataclasses.dataclass(frozen=True)
class Blocks:
  """How a model's stages split into blocks; the default is one block per stage."""
  numbered: str = ''          # regex on a path; its groups number the block within its stage (digits or a letter)
  unnumbered: str = 'first'   # a stage's other parameters join its 'first' block (ConvNeXt's downsampling
                              # layer) or its 'last' (ResNet50V2's post_bn)
  join_previous: tuple = ()   # stages that share the id of the deepest block before them (final norms, timm's)


_RESNET = Blocks(r'^layer\d+_(\d+)/')
_TORCHVISION_EFFICIENTNET = Blocks(r'^features_\d+_(\d+)/', join_previous=('last_conv',))
_VIT = Blocks(join_previous=('norm',))
_KERAS_EFFICIENTNET = Blocks(r'^block\d+([a-z])/', join_previous=('top_conv',))
BLOCKS = {
    'resnet18': _RESNET,
    'resnet50': _RESNET,
    'convnext_tiny': Blocks(r'^features_\d+_(\d+)/'),
    'vit_b16': _VIT,
    'dinov2_vits14': _VIT,
    'dinov2_vitb14': _VIT,
    'efficientnet_b0': _TORCHVISION_EFFICIENTNET,
    'efficientnet_v2_s': _TORCHVISION_EFFICIENTNET,
    'vgg16': Blocks(r'^features_(\d+)/'),   # a block per conv, as timm's VGG (AlexNet's stages are its convs)
    'keras_resnet50': Blocks(r'^conv\d_block(\d+)/'),
    'keras_resnet50v2': Blocks(r'^conv\d_block(\d+)/', unnumbered='last'),
    'keras_efficientnetb0': _KERAS_EFFICIENTNET,
    'keras_efficientnetb2': _KERAS_EFFICIENTNET,
}


def depth_ids(spec, paths) -> tuple[dict, int]:
  """({path: depth id}, the head's id) for '/'-joined parameter paths (as `fpclass.train.optim.param_groups`
  sees them, without 'params/') of model `spec`. Only the blocks present count, so a `cut` model has fewer."""
  rule = BLOCKS.get(spec.name, Blocks())
  stages = [(name, re.compile(regex)) for name, regex in spec.stages]
  numbered = re.compile(rule.numbered) if rule.numbered else None
  keys, unnumbered, joining = {}, {}, {}
  for path in paths:
    stage = next((i for i, (_, regex) in enumerate(stages) if regex.search(path)), None)
    if stage is None:
      continue   # the head
    match = numbered.search(path) if numbered else None
    if stages[stage][0] in rule.join_previous:
      joining[path] = stage
    elif match:
      keys[path] = (stage, *(int(g) if g.isdigit() else g for g in match.groups()))
    else:
      unnumbered[path] = stage
  blocks = {}   # stage -> its numbered block keys
  for key in keys.values():
    blocks.setdefault(key[0], set()).add(key)
  pick = min if rule.unnumbered == 'first' else max
  for path, stage in unnumbered.items():
    keys[path] = pick(blocks[stage]) if stage in blocks else (stage,)
  for path, stage in joining.items():
    earlier = [key for key in keys.values() if key[0] < stage]
    keys[path] = max(earlier) if earlier else (stage,)
  order = {key: i for i, key in enumerate(sorted(set(keys.values())))}
  return {path: order[key] for path, key in keys.items()}, len(order)


def multipliers(spec, decay: float, paths) -> dict:
  """{path: learning-rate multiplier}: decay ** (head id - depth id), 1 for the head."""
  ids, head = depth_ids(spec, paths)
  return {path: decay ** (head - ids[path]) if path in ids else 1.0 for path in paths}


def scale_by_depth(spec, decay: float) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its multiplier. Every optimizer of `fpclass.train.optim` ends by scaling
  with the learning rate, so placed after one this is a per-parameter learning rate, as timm's lr_scale is:
  AdamW's decoupled weight decay and the coupled decay of the others are scaled with the rest."""

  def scale(updates, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    paths = ['/'.join(str(getattr(k, 'key', k)) for k in keypath) for keypath, _ in leaves]
    factors = multipliers(spec, decay, paths)
    return jax.tree_util.tree_unflatten(treedef, [
        update if factors[path] == 1.0 else update * factors[path] for path, (_, update) in zip(paths, leaves)])
  return optax.stateless(scale)
