"""Sweep variants: named config changes as one string each, and a whole recipe as the changes from a base."""
import ast
import re

import ml_collections

from fpclass.config.schema import base_config
from fpclass.config.settings import ConfigError

VARIANT_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


def parse_variant(spec: str) -> tuple[str, dict]:
  """'exp4: model.dropout=0.5; train.early_stopping_patience=7' -> ('exp4', {...}); values are Python
  literals, anything else is taken as a string."""
  name, sep, body = spec.partition(':')
  name = name.strip()
  if not sep or not VARIANT_NAME.match(name):
    raise ConfigError(f'config.sweep.variants: {spec!r} is not "name: key=value; key=value" with a name of '
                      'letters, digits, ".", "_" or "-"')
  changes = {}
  for item in filter(None, (part.strip() for part in body.split(';'))):
    key, eq, text = item.partition('=')
    if not eq or not key.strip():
      raise ConfigError(f'config.sweep.variants: {item!r} in variant {name!r} is not key=value')
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = text.strip()
    changes[key.strip()] = value
  return name, changes


MISSING = object()   # what `value_at` gives for a key the config does not have


def value_at(config, key: str):
  """The value of dotted `key` in `config`, or MISSING."""
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return MISSING
    node = node[part]
  return node


def variant_spec(name: str, changes: dict) -> str:
  """The inverse of parse_variant, for config files that build `sweep.variants` from a table."""
  return f'{name}: ' + '; '.join(f'{k}={v!r}' for k, v in changes.items())


def describe_changes(changes: dict) -> str:
  """A variant's changes as one line for tables and reports: `key=value, ...`, or '(as configured)'."""
  return ', '.join(f'{k}={v!r}' for k, v in changes.items()) or '(as configured)'


def config_changes(base: ml_collections.ConfigDict, other: ml_collections.ConfigDict,
                   skip=('name', 'sweep.')) -> dict:
  """{dotted key: other's value} where `other` differs from `base`: a whole recipe (another model with its
  own training schedule) as one sweep variant of `base` (`variant_spec`). Keys under `skip` are left out.
  Another model starts from the schema's model section, as a variant that changes model.name does
  (`fpclass.train.plan.apply_changes`), so only what its recipe sets is listed."""
  def flat(node, prefix=''):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from flat(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}', value
  reference = dict(flat(base))
  if other.model.name != base.model.name:
    reference = {k: v for k, v in reference.items() if not k.startswith('model.')}
    reference.update(flat(base_config().model, 'model.'))
  return {k: v for k, v in flat(other) if reference.get(k) != v and not k.startswith(tuple(skip))}
