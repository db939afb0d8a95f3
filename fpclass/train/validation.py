"""`validate(config)`: every enumerated or ranged value checked before any work starts, so a typo in an
override fails in a second instead of after decoding the data. The mode runner (`fpclass.modes.run`)
calls it once per launch; a sweep calls it once per variant, whose config differs.

The checks of a settings section are the section's own (`fpclass.config.Settings.check`); the others are
the consuming module's own check functions, called here, so each rule is written once.
"""
from fpclass import models
from fpclass.config.schema import SETTINGS
from fpclass.config.settings import ConfigError
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.models import probe_backbones
from fpclass.train import feature_cache, optim, precision, steps, task


def validate(config) -> None:
  try:
    for settings in SETTINGS:
      settings.from_config(config[settings.SECTION])
  except ConfigError as e:
    raise UserInputError(str(e)) from None
  if config.data.source not in pipeline.SOURCES:
    raise UserInputError(f'config.data.source={config.data.source!r}: unknown source; choose one of '
                         f'{sorted(pipeline.SOURCES)}')
  models.create_model(config.model, 2 if config.model.get('head') == 'sigmoid' else 3)
  task.check_label_task(config)
  optim.make_optimizer(config.train, steps_per_epoch=1, groups=optim.param_groups(config.model))
  precision.check_precision(config.train.precision)
  steps.check_loop(config.train.loop)
  task.averaging_and_accumulation(config.train)
  feature_cache.check_setting(config)
  probe_backbones.parse_backbones(config)
  task.model_input(config)
  if int(config.train.finetune_epochs) > 0 and not models.get_spec(config.model.name).stages:
    raise UserInputError(f'config.train.finetune_epochs={config.train.finetune_epochs}: fine-tuning phases need '
                         f'a pretrained model with stages; {config.model.name!r} has none')
  if config.data.bad_test_images not in ('error', 'prior'):
    raise UserInputError(f'config.data.bad_test_images={config.data.bad_test_images!r}: use error or prior')
