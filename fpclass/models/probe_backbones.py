"""`config.probe.backbones`: the registered pretrained models a probe screens, each with its weights, checked
once per launch (`fpclass.train.validation`) and read by `--mode probe` (`fpclass.probe.pooled_features`)."""
import dataclasses
import pathlib

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.errors import UserInputError
from fpclass.models import hub


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One entry of config.probe.backbones."""
  name: str        # the registered model
  weights: str     # '' (random init), a named weights set of the model, or a file
  label: str       # how tables name it: the model's name, or 'name=weights' when the model is listed twice
  flag: str = 'config.probe.backbones'   # the entry, as errors about its weights name it ('...backbones[1]')


def valid_backbones() -> list[str]:
  models.get_spec('footprint_cnn')   # imports every family, so the registry is complete
  return sorted(name for name, spec in models.REGISTRY.items() if spec.pretrained)


def parse_backbones(probe: ProbeSettings, model: ModelSettings) -> list[Backbone]:
  """config.probe.backbones, checked (`parse_entries`)."""
  return parse_entries(probe.backbones, model, 'config.probe.backbones')


def parse_entries(entries, model: ModelSettings, key: str) -> list[Backbone]:
  """Backbone entries ('name' or 'name=weights') of the flag `key`, checked: registered pretrained models, no
  entry twice. One model may be listed with different weights (random init against ImageNet, say); a plain name
  takes config.model.pretrained; a Hub checkpoint alone ('hf-hub:timm/<arch>.<tag>') is its architecture's model
  with those weights."""
  default = str(model.get('pretrained', '') or '')
  valid = valid_backbones()
  parsed = []
  flags = []
  for index, entry in enumerate(entries):
    flags.append(f'{key}[{index}]')
    name, _, weights = str(entry).partition('=')
    name, weights = name.strip(), weights.strip() or default
    implied = hub.implied_model(name, flags[-1])
    if implied:   # a Hub checkpoint alone ('hf-hub:timm/resnet50.a1_in1k') names its model
      name, weights = implied, name
    if name not in valid:
      raise UserInputError(f'{key}: {name!r} is not a registered backbone with pretrained '
                           f'weights; choose from {valid}')
    if (name, weights) in parsed:
      raise UserInputError(f'{key}: {name}={weights or "(random init)"} is listed twice')
    parsed.append((name, weights))
  names = [name for name, _ in parsed]
  return [Backbone(name, weights, name if names.count(name) == 1 else
                   f'{name}={pathlib.Path(weights).name if weights else "random"}', flag)
          for (name, weights), flag in zip(parsed, flags)]
