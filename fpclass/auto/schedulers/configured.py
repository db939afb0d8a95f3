"""The schedulers config.auto.scheduler may name. A new scheduler is one module beside these and one entry in
SCHEDULERS (CONTRIBUTING.md, "Adding a scheduler")."""
from fpclass.auto.schedulers.scheduler import Scheduler
from fpclass.auto.schedulers.successive_halving import SuccessiveHalving
from fpclass.config.search import AutoSettings
from fpclass.errors import UserInputError

SCHEDULERS: dict[str, type[Scheduler]] = {SuccessiveHalving.name: SuccessiveHalving}


def scheduler_for(settings: AutoSettings) -> Scheduler:
  """The scheduler config.auto.scheduler names, built with the run's auto settings."""
  if settings.scheduler not in SCHEDULERS:
    raise UserInputError(f'config.auto.scheduler={settings.scheduler!r}: unknown; the schedulers are '
                         f'{", ".join(sorted(SCHEDULERS))}')
  return SCHEDULERS[settings.scheduler](settings)
