"""A config section as a frozen, checked dataclass (`Settings`), and the ConfigDict section built from it.

A section's field defaults are its defaults and its `check` the one place its value checks are written; a
consumer gets a checked instance with `<Settings>.from_config(section)`. Errors name `config.<section>.<key>`.
"""
import dataclasses
import functools
import numbers
import typing
from typing import Any, ClassVar

import ml_collections


class ConfigError(ValueError):
  """A config value that fails its section's check; the message names the key (`fpclass.train.validation`
  reports it as a UserInputError)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """A config section as a frozen dataclass: field defaults are the section's defaults; `check` raises
  ConfigError naming `config.<SECTION>.<key>`. Subclasses set SECTION and override `check`."""
  SECTION: ClassVar[str] = ''
  # Whether the ConfigDict section may hold keys of other owners (config.data holds decode and source keys).
  SHARED_SECTION: ClassVar[bool] = False

  def __post_init__(self):
    self.check()

  def check(self) -> None:
    pass

  @classmethod
  def defaults(cls) -> dict:
    """The section's keys and defaults; a nested section (data.tfds) as a dict of its own."""
    return {f.name: f.default.defaults() if isinstance(f.default, Settings) else f.default
            for f in dataclasses.fields(cls)}

  @classmethod
  def from_config(cls, section: Any):
    """A checked instance from a ConfigDict section or a mapping (missing keys keep their defaults), or the
    instance itself."""
    if isinstance(section, cls):
      return section
    values = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown and not cls.SHARED_SECTION:
      raise ConfigError(f'config.{cls.SECTION}.{unknown[0]}: unknown key; known keys are {names}')
    kwargs = {name: _coerce(f'config.{cls.SECTION}.{name}', hints[name], values[name])
              for name in names if name in values}
    return cls(**kwargs)

  def require(self, name: str, ok: bool, expected: str) -> None:
    if not ok:  # NaN fails every comparison, so it lands here too
      raise ConfigError(f'config.{self.SECTION}.{name}={getattr(self, name)!r}: must be {expected}')


@functools.cache
def _hints(cls) -> dict:
  return typing.get_type_hints(cls)


def _coerce(key: str, hint, value):
  """`value` as the field's annotated type; a string where a number belongs is a typo, not a number."""
  if isinstance(hint, type) and issubclass(hint, Settings):   # a nested section: data.synthetic.shapes
    if isinstance(value, hint):
      return value
    if not hasattr(value, 'keys'):
      raise ConfigError(f'{key}={value!r}: must be a section of keys {list(hint.defaults())}')
    return hint.from_config(value)
  origin = typing.get_origin(hint)
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
      raise ConfigError(f'{key}={value!r}: must be a tuple')
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(key, args[0], v) for v in value)
    if len(value) != len(args):
      raise ConfigError(f'{key}={value!r}: must be a tuple of {len(args)} values')
    return tuple(_coerce(key, a, v) for a, v in zip(args, value))
  if hint is bool:
    if not isinstance(value, (bool, numbers.Integral)):
      raise ConfigError(f'{key}={value!r}: must be True or False')
    return bool(value)
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) != int(value):
      raise ConfigError(f'{key}={value!r}: must be a whole number')
    return int(value)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ConfigError(f'{key}={value!r}: must be a number')
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f'{key}={value!r}: must be a string')
    return value
  return value


def section(settings, **extra) -> ml_collections.ConfigDict:
  """The ConfigDict section of `settings` (anything with `defaults()`), plus `extra` keys that other owners read
  from it; nested sections become nested ConfigDicts."""
  return ml_collections.ConfigDict(_nested({**extra, **settings.defaults()}))


def _nested(values: dict) -> dict:
  return {k: ml_collections.ConfigDict(_nested(v)) if isinstance(v, dict) else v for k, v in values.items()}
