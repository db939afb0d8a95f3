"""`RunSettings`: the typed sections one run trains with, parsed and checked once per variant.

A plan (`fpclass.train.plan`) builds one for each of its variants when it is made, and everything below the plan
(the epoch loop, the task, the optimizer, the feature cache, the records) reads these typed sections instead of
parsing the ConfigDict again. The ConfigDict itself stays with the variant, for the sidecar that stores it.
"""
import dataclasses

from fpclass.config.inputs import AugmentSettings, DataSettings
from fpclass.config.model import ModelSettings
from fpclass.config.training import EvalSettings, SemiSettings, SweepSettings, TrainSettings


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """What a run trains: its name and seed, and its data, augment, model, train, eval, sweep and semi sections."""
  name: str
  seed: int
  data: DataSettings
  augment: AugmentSettings
  model: ModelSettings
  train: TrainSettings
  eval: EvalSettings
  sweep: SweepSettings
  semi: SemiSettings = SemiSettings()

  @classmethod
  def from_config(cls, config) -> 'RunSettings':
    """Parses and checks the sections of `config` (a ConfigDict); a RunSettings is returned as it is. Raises
    `fpclass.config.settings.ConfigError` naming the key (`fpclass.train.validation` reports it in one line)."""
    if isinstance(config, RunSettings):
      return config
    return cls(name=str(config.name), seed=int(config.seed), data=DataSettings.from_config(config.data),
               augment=AugmentSettings.from_config(config.augment), model=ModelSettings.from_config(config.model),
               train=TrainSettings.from_config(config.train), eval=EvalSettings.from_config(config.eval),
               sweep=SweepSettings.from_config(config.sweep), semi=SemiSettings.from_config(config.get('semi', {})))

  def phase(self, phase: int) -> 'RunSettings':
    """The settings of training phase `phase`. Phase 1, when train.finetune_epochs > 0, fine-tunes:
    model.freeze_till becomes train.finetune_freeze_till, the learning rate is scaled by
    train.finetune_lr_factor, and the schedule spans the fine-tuning epochs without warmup."""
    if phase == 0:
      return self
    train = self.train
    return dataclasses.replace(
        self, model=self.model.replace(freeze_till=train.finetune_freeze_till),
        train=dataclasses.replace(train, learning_rate=train.learning_rate * train.finetune_lr_factor,
                                  epochs=train.finetune_epochs, warmup_epochs=0))

  def with_split(self, fold: int, seed: int) -> 'RunSettings':
    """The settings of one member of the run: validated on fold `fold` (-1: the holdout) with seed `seed`."""
    split = dataclasses.replace(self.data.split, fold=int(fold))
    return dataclasses.replace(self, seed=int(seed), data=dataclasses.replace(self.data, split=split))
