"""A run is a plan of members: variants of a config, each trained over its splits x seeds.

`--mode train` is the plan of one member (`solo_plan`: the config's own split and seed, recorded epoch by epoch
in the workdir itself); `--mode sweep` the plan of `config.sweep.variants` x folds x seeds
(`fpclass.train.sweep_plan`: each variant in `<workdir>/<variant>/`, its finished members kept, its best seed
per split an ordinary workdir). A search trial or a refit is a plan too. `fpclass.train.loop.run_plan`
runs any of them.

A variant is `'name: key=value; key=value'` applied to the given config; with none, the config itself is the
one variant. Every key a variant changes must exist; changing model.name starts the model section from the new
model's keys (`fpclass.models.model_keys`), as the command line does.
"""
import dataclasses

import ml_collections

from fpclass.config.model import ModelSettings
from fpclass.config.run import RunSettings
from fpclass.config.settings import ConfigError
from fpclass.config.variants import describe_changes
from fpclass.errors import UserInputError
from fpclass.models import model_keys

SOLO, EXPERIMENTS = 'solo', 'experiments'
EXPERIMENT_FILE = 'experiment.json'   # an EXPERIMENTS variant's record, written when all its members have finished


@dataclasses.dataclass
class Variant:
  """A named set of changes to a config: the changed config (stored in sidecars) and its typed sections, parsed
  once here, when the plan is made, and read by everything below the plan."""
  name: str
  changes: dict
  config: ml_collections.ConfigDict
  settings: RunSettings = None

  def __post_init__(self):
    if self.settings is None:
      try:
        self.settings = RunSettings.from_config(self.config)
      except ConfigError as e:
        raise UserInputError(f'{self.name}: {e}') from None

  def describe(self) -> str:
    return describe_changes(self.changes)

  def member(self, split: int, seed: int, where: str) -> 'Variant':
    """The variant as one member: validated on `split` (-1: the holdout) with `seed`."""
    config = apply_changes(self.config, {'data.fold': split, 'seed': seed}, where)
    return Variant(self.name, self.changes, config, self.settings.with_split(split, seed))


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to train and how it is recorded.

  `layout` SOLO: one variant and one member (split config.data.fold, seed config.seed) whose epochs are
  checkpointed in the workdir itself, so a killed run resumes inside its epoch. EXPERIMENTS: each variant's
  members (its splits x `seeds`) in `<workdir>/<variant>/`, kept as they finish, so a killed plan keeps its
  finished members, and with `keep_epochs` (a search's rounds) its running members' latest epochs too, so it
  loses at most their current epoch.
  `folds` () means every fold (or the source's own validation split). `teacher`: a distillation teacher its
  members' steps take their targets from, and whose `training_data` may add unlabelled images (--mode distill)."""
  variants: tuple
  layout: str = SOLO
  folds: tuple = ()
  seeds: tuple = (0,)
  teacher: object = None
  keep_epochs: bool = False   # EXPERIMENTS: each running member's latest epoch kept too (a search's rounds)

  @property
  def solo(self) -> bool:
    return self.layout == SOLO


def solo_plan(config) -> Plan:
  """`--mode train`: the config as one member, on its own split and seed."""
  variant = Variant('base', {}, config)
  return Plan((variant,), SOLO, (variant.settings.data.split.fold,), (variant.settings.seed,))


def apply_changes(config, changes: dict, where: str) -> ml_collections.ConfigDict:
  """`config` with `changes` ({dotted key: value}) applied; every key must exist. Changing model.name starts
  the model section from the new model's keys, as the command line does."""
  try:
    out = model_keys.completed(config, changes.get('model.name'))
  except UserInputError as e:
    raise UserInputError(f'{where}: {e}') from None
  for key, value in changes.items():
    *parents, leaf = key.split('.')
    node = out
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(leaf)
      if isinstance(value, (list, tuple)) and isinstance(node[leaf], (list, tuple)):
        value = type(node[leaf])(value)   # a ConfigDict field keeps its sequence type
      with node.unlocked():
        node[leaf] = value
    except (KeyError, AttributeError):
      if parents == ['model']:
        raise UserInputError(f'{where}: {model_keys.unknown_key(ModelSettings.from_config(out.model).name, leaf)}') from None
      raise UserInputError(f'{where}: {key!r} is not a config key') from None
    except TypeError as e:
      raise UserInputError(f'{where}: {key}={value!r}: {e}') from None
  return out
