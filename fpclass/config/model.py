"""`config.model` typed: the chosen architecture's name and head, and its own keys.

Unlike the other sections, the model section's keys depend on the chosen model: the registry says which
(`fpclass.models.model_keys` completes the section when a config loads). So the typed view keeps the name and
head as fields and every other key in a read-only mapping, read with `get(key, default)` or as an attribute.
"""
import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  name: str = 'footprint_cnn'
  head: str = 'softmax'
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # read-only by convention; replace() copies

  @classmethod
  def from_config(cls, section) -> 'ModelSettings':
    """From a ConfigDict model section, a mapping, or a ModelSettings (returned as it is)."""
    if isinstance(section, ModelSettings):
      return section
    values = dict(section.to_dict() if hasattr(section, 'to_dict') else section)
    name, head = str(values.pop('name', cls.name)), str(values.pop('head', cls.head))
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(name, head, options)

  def get(self, key: str, default=None):
    if key in ('name', 'head'):
      return getattr(self, key)
    return self.options.get(key, default)

  def __getattr__(self, key: str):
    # Only called for names that are not fields: a model's own keys (config.model.dropout) read as attributes.
    options = self.__dict__.get('options', {})
    if key in options:
      return options[key]
    raise AttributeError(f'config.model.{key}: model {self.__dict__.get("name")!r} has no such key')

  def items(self):
    return self.to_dict().items()

  def to_dict(self) -> dict:
    return {'name': self.name, 'head': self.head, **self.options}

  def replace(self, **changes) -> 'ModelSettings':
    """A copy with `changes` applied (name and head included)."""
    values = {**self.to_dict(), **changes}
    return ModelSettings.from_config(values)
