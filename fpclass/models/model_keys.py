"""`config.model`'s keys, from the registry: the chosen model's own fields and the loading keys, each with its
default, so every one of them can be overridden (`--config.model.dropout=0.3`) whatever the config file set.

A config file names a model and sets what it changes; `complete` fills in the rest. A changed `model.name`
brings its own fields: the section starts again from the new model's defaults, keeping only what belongs to
the task and the data rather than to a model (`head`, and `in_channels` where the new model has it). A Hub
checkpoint as `model.pretrained` ('hf-hub:timm/resnet50.a1_in1k') implies its model ('timm_resnet50'). Fields that no command line can set (the compute dtype, which
`config.train.precision` owns, and module-valued fields such as a ResNet's block class) are left out.
"""
import copy
import dataclasses
import difflib

import ml_collections

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.models import hub

# Keys every model has, and the ones a model with pretrained weights adds.
COMMON_KEYS = {'name': 'footprint_cnn', 'head': 'softmax', 'pretrained': ''}
PRETRAINED_KEYS = {'keep_pretrained_head': False}
SETTABLE = (bool, int, float, str, tuple)
# What a changed model.name keeps: the task's output and the data's channels, not the old model's settings.
CARRIED = ('head', 'in_channels')


def model_keys(name: str) -> dict:
  """{key: default} of model `name`: the common keys, the pretrained ones where it has weights, its fields."""
  spec = models.get_spec(name)
  keys = dict(COMMON_KEYS, name=name, **(PRETRAINED_KEYS if spec.pretrained else {}))
  preset = getattr(spec.module, 'keywords', {})   # a registered functools.partial's arguments
  for field in dataclasses.fields(models.module_class(spec.module)):
    if field.name in models.NOT_CONFIG_FIELDS or field.name == 'dtype':
      continue
    default = preset.get(field.name, field.default)
    default = tuple(default) if isinstance(default, list) else default
    if isinstance(default, SETTABLE):
      keys[field.name] = default
  return keys


def complete(section, name: str | None = None) -> ml_collections.ConfigDict:
  """`section` (a model section, or None) with every key of its model, or of model `name` when that differs
  (then only the CARRIED keys are kept). A key the model does not have is an error naming the close ones."""
  values = dict(section.to_dict() if hasattr(section, 'to_dict') else (section or {}))
  current = values.get('name', COMMON_KEYS['name'])
  # A Hub checkpoint as model.pretrained decides the architecture: model.name becomes 'timm_<its architecture>'
  # unless a new name is asked for (then the checkpoint goes with the old model's settings).
  implied = hub.implied_model(values.get('pretrained', ''))
  name = name or implied or current
  keys = model_keys(name)
  if name != current:
    kept = CARRIED + (('pretrained',) if name == implied else ())
    values = {k: v for k, v in values.items() if k in kept and k in keys}
  unknown = sorted(set(values) - set(keys))
  if unknown:
    raise unknown_key(name, unknown[0])
  completed = {k: _as_default_type(values[k], default) if k in values else default for k, default in keys.items()}
  return ml_collections.ConfigDict(completed)


def unknown_key(name: str, key: str) -> UserInputError:
  """The error for `config.model.<key>` on model `name`, naming the close keys and all of them."""
  keys = model_keys(name)
  close = difflib.get_close_matches(key, keys, n=3)
  hint = f' (did you mean {" or ".join(close)}?)' if close else ''
  return UserInputError(f'config.model.{key} is not a key of model {name!r}{hint}; its keys are {sorted(keys)}')


def completed(config: ml_collections.ConfigDict, model_name: str | None = None) -> ml_collections.ConfigDict:
  """A copy of the whole `config` with every key of its model, or of `model_name`."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model = complete(config.model, model_name)
  return config


def _as_default_type(value, default):
  """Lists as tuples (a ConfigDict field keeps the type it was created with); ints where a float belongs."""
  if isinstance(value, list):
    return tuple(value)
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value
