"""What every pretrained family shares: the fields of its module, a new classification top, stage
freezing, and loading a weights file into freshly initialised variables.

Design notes: docs/modules.md (`fpclass/models/transfer.py`).
"""
import dataclasses
import logging
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.errors import UserInputError
from fpclass.models import preprocessing, weights_ref
from fpclass.models import weights as weights_lib
from fpclass.models.layers.conv import NHWC, Conv, explicit_pads

TOP_PARAMS = r'^params/top/'
PAD_OFFSET = 'pad_offset'   # StemConv's batch_stats entry
log = logging.getLogger(__name__)


class Backbone(nn.Module):
  """The fields every pretrained-weight port shares (documented above); the ports subclass it."""
  num_outputs: int = 1000
  in_channels: int = 3
  cut: str = ''
  top: str = 'source'
  top_hidden: Sequence[int] = ()
  top_dropout: float = 0.0
  freeze_till: int = 0
  dtype: Any = jnp.float32

  def stage_frozen(self, stage_index: int) -> bool:
    """Whether stage `stage_index` (0-based, network order) is frozen under this module's `freeze_till`."""
    return models.frozen(stage_index, self.freeze_till)


class StemConv(Conv):
  """A pretrained port's first convolution; with `gray` (config.model.in_channels=1) it is exact on one channel.

  The grayscale fold (`weights.fold_rgb_stem`) turns the RGB kernel into a one-channel kernel plus a
  constant, which the port's bias or BN mean absorbs. The source framework pads with zeros after its
  per-channel normalisation, so a padded tap contributes nothing there, while the constant counts its share
  (`weights.rgb_stem_tap_offsets`, stored here as batch_stats 'pad_offset', zeros until weights are loaded).
  This module takes those shares off again: the convolution of the padding's indicator (1 on padded cells,
  0 in the image) with 'pad_offset', zero wherever the kernel lies inside the image. The folded model then
  computes, border included, what the source computes on [g, g, g].

  Why this rather than normalising per channel inside the model before a 3-channel conv: the stem keeps its
  one-channel kernel, so the parameter tree, the stem's cost (a third of the RGB stem's), and fine-tuning
  behave as before. Training a 3-channel kernel on three copies of one image would move the effective
  one-channel kernel about 3x faster (each copy's gradient adds to it). The correction is one
  convolution of a constant one-image mask per call; it is not trained (batch_stats: no optimizer step or
  weight decay reaches it), like the constant it corrects.
  """
  gray: bool = False

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    if not self.gray:
      return y
    kernel_size = tuple(self.kernel_size)
    offsets = self.variable('batch_stats', PAD_OFFSET, lambda: jnp.zeros((*kernel_size, 1, self.features),
                                                                        jnp.float32)).value
    padding = nn.linear.canonicalize_padding(self.padding, 2)
    if isinstance(padding, str) and padding not in ('SAME', 'VALID'):
      raise ValueError(f'StemConv: padding {padding!r} is not zero padding; the grayscale fold assumes zeros')
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides or (1, 1))
    pads = explicit_pads(inputs.shape[1:3], kernel_size, strides, padding)
    if not any(p for pair in pads for p in pair):
      return y   # 'valid': no tap ever reaches the padding
    image = jnp.ones((1, *inputs.shape[1:3], 1), offsets.dtype)
    padded = lax.pad(image, jnp.zeros((), offsets.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))
    correction = lax.conv_general_dilated(1.0 - padded, offsets, strides, 'VALID', dimension_numbers=NHWC)
    return (y - correction).astype(y.dtype)


class Top(nn.Module):
  """A new classification top: pooling, hidden dense layers with ReLU and dropout, then the logits."""
  num_outputs: int
  pool: str = 'avg'
  hidden: Sequence[int] = ()
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, features: dict, train: bool = False):
    if self.pool == 'avg':
      x = jnp.mean(x, axis=(1, 2))
    elif self.pool == 'max':
      x = jnp.max(x, axis=(1, 2))
    elif self.pool == 'flatten':
      x = x.reshape(x.shape[0], -1)
    else:
      raise UserInputError(f"config.model.top={self.pool!r}: use 'source', 'avg', 'max' or 'flatten'")
    for i, size in enumerate(self.hidden, start=1):
      x = nn.relu(nn.Dense(size, kernel_init=nn.initializers.glorot_uniform(), dtype=self.dtype,
                           name=f'dense{i}')(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    features['pre_logits'] = x
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.glorot_uniform(), dtype=self.dtype,
                    name='logits')(x).astype(jnp.float32)


def new_top(module: nn.Module, x, features: dict, train: bool):
  """The configured new top (`Top`, named 'top') on backbone output `x`, called from inside a pretrained
  module's compact `__call__`; every port reads the same fields (num_outputs, top, top_hidden,
  top_dropout, dtype), so the top computes in the model's compute dtype like the backbone."""
  return Top(module.num_outputs, module.top, module.top_hidden, module.top_dropout, module.dtype,
             name='top')(x, features, train)


def drop_path(x, rate: float, train: bool, name: str):
  """Stochastic depth on the residual branch `x` (batch first), called from inside a compact method: in
  training each example's whole branch is zeroed with probability `rate` and every kept one scaled by
  1 / (1 - rate) (timm's DropPath with scale_by_keep, torchvision's 'row' StochasticDepth); the identity at
  evaluation. A Dropout whose mask is shared by every axis but the batch, so it draws from the 'dropout' rng
  like the other dropouts, and at rate 0 it draws nothing (no rng needed)."""
  return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=not train, name=name)(x)


def linear_drop_path_rates(rate: float, blocks: int, denominator: int) -> list[float]:
  """`rate * i / denominator` for blocks i = 0 .. blocks - 1 in network order: the linear rule of every
  family's source, which differ in the denominator only (blocks - 1 or blocks); all 0 when it is 0."""
  if not 0.0 <= rate < 1.0:
    raise UserInputError(f'config.model.drop_path_rate={rate!r}: use a rate in [0, 1) (0 turns stochastic '
                         'depth off)')
  return [rate * i / denominator if denominator > 0 else 0.0 for i in range(blocks)]


def check_cut(cut: str, stages: Sequence[str], top: str) -> int:
  """The index of the last stage to compute, validating `cut` against the stage names."""
  if not cut:
    return len(stages) - 1
  if cut not in stages:
    raise UserInputError(f'config.model.cut={cut!r}: not a stage of this model; stages are {list(stages)}')
  if top == 'source':
    raise UserInputError(f"config.model.cut={cut!r} needs a new top (config.model.top='avg', 'max' or "
                         "'flatten'): the source classifier expects the whole network")
  return list(stages).index(cut)


def load_pretrained(spec, model: ModelSettings, variables: dict, cache_dir,
                    weights: weights_ref.WeightsRef | None = None) -> dict:
  """`variables` with the configured pretrained weights loaded, strictly; unchanged if none are set.

  `weights` is config.model.pretrained as `weights_ref.resolve` gives it (resolved here, against `cache_dir`, when
  not given): none, registered weights (downloaded once to <cache>/weights with its checksum verified), a file
  the source framework wrote, or a Hub checkpoint (whose config.json's normalisation the grayscale fold uses).
  """
  if weights is None:
    weights = weights_ref.resolve(model.get('pretrained', ''), spec, cache_dir)
  if weights.model != spec.name:
    raise ValueError(f'load_pretrained: weights resolved for {weights.model}, loaded into {spec.name}')
  if weights.kind is weights_ref.Kind.NONE:
    return variables
  path = weights.local_file()
  spec = dataclasses.replace(spec, preprocessing=weights.normalisation)
  mapped, unmatched = spec.convert(path)
  top = model.get('top', 'source')
  keep = []
  if top != 'source':  # a new top: the file's whole classifier is unused, the new top starts fresh
    mapped = _without(mapped, spec.source_top)
    keep.append(TOP_PARAMS)
  elif not _without(mapped, spec.source_head).keys() < mapped.keys():   # a file without the classifier
    # A backbone-only file (DINOv2's) cannot keep a classifier it lacks. Where the source's top holds more
    # than its last layer (MobileNetV3's conv_2), a Keras include_top=False file lacks that too, and the
    # load below fails naming everything missing.
    if model.get('keep_pretrained_head', False) and spec.source_top == spec.source_head:
      raise UserInputError(f'{path} holds no classifier ({spec.source_head.lstrip("^")}) to keep; set '
                           'config.model.keep_pretrained_head=False to train a new one')
    keep.append(spec.source_head)
  elif not model.get('keep_pretrained_head', False):  # the named 'head' rule: a fresh last layer
    # Logged because it is the default: a user who wanted the source's classes would otherwise not know.
    log.warning('%s: the source classifier (%s, %s outputs in %s) is replaced by a new last layer of %s '
                'outputs, trained from scratch; config.model.keep_pretrained_head=True keeps it', spec.name,
                spec.source_head.lstrip('^'), _outputs(mapped, spec.source_head), path.name,
                _outputs(variables, spec.source_head))
    mapped = _without(mapped, spec.source_head)
    keep.append(spec.source_head)
  cut = model.get('cut', '')
  if cut:  # stages after the cut are not in the model; their weights are not needed
    names = spec.stage_names
    for _, regex in spec.stages[names.index(cut) + 1:]:
      mapped = _without(mapped, r'^(params|batch_stats)/' + regex.lstrip('^'))
  if int(model.get('in_channels', 3)) == 1:
    mapped = fold_stem(spec, mapped)
  try:
    return weights_lib.assign(variables, mapped, source=str(path), keep='|'.join(keep), unmatched=unmatched)
  except UserInputError:
    if top == 'source' and model.get('keep_pretrained_head', False) and \
        _fits_without(variables, mapped, spec.source_head, unmatched):
      raise UserInputError(
          f'{path}: its classifier {_shapes(mapped, spec.source_head)} has another class count than this '
          f'model {_shapes(variables, spec.source_head)}; config.model.keep_pretrained_head=True keeps the '
          "file's classifier: set it False to train a new last layer") from None
    raise


def _fits_without(variables, mapped, regex, unmatched) -> bool:
  """Whether everything but the variables matching `regex` loads."""
  try:
    weights_lib.assign(variables, _without(mapped, regex), source='', keep=regex, unmatched=unmatched)
  except UserInputError:
    return False
  return True


def _outputs(tree, regex):
  """The output count of the layer matching `regex` (its kernel's last axis), or '?' if it has none."""
  sizes = {shape[-1] for path, shape in _shapes(tree, regex).items() if path.endswith('/kernel')}
  return sizes.pop() if len(sizes) == 1 else '?'


def _shapes(tree, regex) -> dict:
  from flax import traverse_util
  flat = tree if isinstance(next(iter(tree)), tuple) else traverse_util.flatten_dict(tree)
  return {'/'.join(k): tuple(v.shape) for k, v in flat.items() if re.search(regex, '/'.join(k))}


def fold_stem(spec, mapped: dict) -> dict:
  """Folds the RGB stem of `mapped` for one input channel (see weights.fold_rgb_stem and StemConv)."""
  kernel_path, offset_path = spec.stem.split('|')
  kernel_key = ('params', *kernel_path.split('/'), 'kernel')
  if kernel_key not in mapped or mapped[kernel_key].shape[2] != 3:
    raise UserInputError(f'{spec.name}: cannot fold the stem for config.model.in_channels=1: the file has no '
                         f'3-channel {kernel_path} kernel')
  norm = spec.preprocessing
  if spec.stem_norm:
    norm, mapped = _one_channel_stem_norm(spec, mapped)
  folded, offset = weights_lib.fold_rgb_stem(mapped[kernel_key], norm)
  mapped = dict(mapped)
  # The stem's StemConv (gray=True) takes the padded taps' shares of the offset off again: exact borders.
  mapped[('batch_stats', *kernel_path.split('/'), PAD_OFFSET)] = weights_lib.rgb_stem_tap_offsets(
      mapped[kernel_key], norm)
  mapped[kernel_key] = folded
  offset_key = tuple(offset_path.split('/'))
  if offset_key not in mapped:   # CLIP's patch embedding has no bias to take the fold's constant
    raise UserInputError(f'{spec.name}: config.model.in_channels=1 needs a stem bias or BN to fold into; this '
                         f'model has no {offset_path}: use in_channels=3 (the gray channel repeated)')
  sign = 1.0 if offset_key[0] == 'params' else -1.0  # a conv bias gains the offset; a BN mean loses it
  mapped[offset_key] = (mapped[offset_key] + sign * offset).astype(np.float32)
  return mapped


def _one_channel_stem_norm(spec, mapped: dict):
  """(the normalisation to fold, `mapped` with a one-channel `spec.stem_norm`) for a model that normalises
  per channel inside (EfficientNet's Normalization layer, statistics from the file): the stem folds those
  constants, and the layer keeps their channel averages (mean, std), as `Normalisation.to_grayscale` does."""
  outer = spec.preprocessing
  if len(set(outer.mean)) > 1 or len(set(outer.std)) > 1:
    raise ValueError(f'{spec.name}: folding an in-model normalisation needs preprocessing shared by all channels')
  path = ('batch_stats', *spec.stem_norm.split('/'))
  norm = preprocessing.Normalisation(tuple(np.asarray(mapped[(*path, 'mean')], np.float64)),
                                     tuple(np.sqrt(np.asarray(mapped[(*path, 'variance')], np.float64))))
  gray = norm.to_grayscale()
  return norm, {**mapped, (*path, 'mean'): np.asarray(gray.mean, np.float32),
                (*path, 'variance'): np.square(np.asarray(gray.std, np.float64)).astype(np.float32)}


def _without(mapped: dict, regex: str) -> dict:
  if not regex:
    return mapped
  pattern = re.compile(regex)
  return {k: v for k, v in mapped.items() if not pattern.search('/'.join(k))}
