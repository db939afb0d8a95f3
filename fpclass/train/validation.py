"""`validate(config)`: every enumerated or ranged value checked before any work starts, so a typo in an
override fails in a second instead of after decoding the data. The mode runner (`fpclass.modes.run`)
calls it once per launch; a sweep calls it once per variant, whose config differs.

The checks of a settings section are the section's own (`fpclass.config.Settings.check`); the others are
the consuming module's own check functions, called here, so each rule is written once.
"""
from fpclass import models
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.config.schema import SETTINGS
from fpclass.config.settings import ConfigError
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.models import probe_backbones
from fpclass.train import feature_cache, optim, precision, steps, task


def validate(config) -> RunSettings:
  """Checks every section of `config` and the rules across them; returns the run's typed settings."""
  try:
    for settings in SETTINGS:
      settings.from_config(config[settings.SECTION])
    run = RunSettings.from_config(config)
  except ConfigError as e:
    raise UserInputError(str(e)) from None
  data, model, train = run.data, run.model, run.train
  if data.files.source not in pipeline.SOURCES:
    raise UserInputError(f'config.data.source={data.files.source!r}: unknown source; choose one of '
                         f'{sorted(pipeline.SOURCES)}')
  models.create_model(model, 2 if model.head == 'sigmoid' else 3)
  task.check_label_task(run)
  optim.make_optimizer(train, steps_per_epoch=1, groups=optim.param_groups(model))
  precision.check_precision(train.precision)
  steps.check_loop(train.loop)
  feature_cache.check_setting(train, run.augment)
  probe_backbones.parse_backbones(ProbeSettings.from_config(config.probe), model)
  task.model_input(model, data)
  if train.finetune_epochs > 0 and not models.get_spec(model.name).stages:
    raise UserInputError(f'config.train.finetune_epochs={train.finetune_epochs}: fine-tuning phases need '
                         f'a pretrained model with stages; {model.name!r} has none')
  return run
