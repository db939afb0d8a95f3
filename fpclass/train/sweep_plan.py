"""The plan of `config.sweep`: its variants x folds x seeds, each variant's config checked as a launch checks one.

A variant is `'name: key=value; key=value'` applied to the given config (`fpclass.train.plan.apply_changes`);
with none, the config itself is the one variant.
"""
from fpclass.analysis import calibration
from fpclass.config.inputs import SplitSettings
from fpclass.config.settings import ConfigError
from fpclass.config.training import SweepSettings
from fpclass.config.variants import parse_variant
from fpclass.errors import UserInputError
from fpclass.train import axis
from fpclass.train.plan import EXPERIMENTS, Plan, Variant, apply_changes
from fpclass.train.validation import validate


def sweep_plan(config) -> Plan:
  """`--mode sweep`: every variant of config.sweep over config.sweep.folds x config.sweep.seeds, checked."""
  variants = build_variants(config)
  sweep = check_sweep_config(config, variants)
  return Plan(tuple(variants), EXPERIMENTS, sweep.folds, sweep.seeds)


def build_variants(config) -> list[Variant]:
  specs = list(_sweep_settings(config).variants) or ['base:']
  variants, seen = [], set()
  for spec in specs:
    try:
      name, changes = parse_variant(spec)
    except ConfigError as e:
      raise UserInputError(str(e)) from None
    if name in seen:
      raise UserInputError(f'config.sweep.variants: the name {name!r} is used twice')
    seen.add(name)
    variant_config = apply_changes(config, changes, f'config.sweep.variants ({name})')
    try:
      settings = validate(variant_config)
    except UserInputError as e:
      raise UserInputError(f'config.sweep.variants ({name}): {e}') from None
    variants.append(Variant(name, changes, variant_config, settings))
  return variants


def _sweep_settings(config) -> SweepSettings:
  try:
    return SweepSettings.from_config(config.sweep)
  except ConfigError as e:
    raise UserInputError(str(e)) from None


def check_sweep_config(config, variants: list[Variant]) -> SweepSettings:
  """The sweep section, checked (its own checks, and the folds against data.num_folds, one task, the baseline)."""
  sweep, num_folds = _sweep_settings(config), SplitSettings.from_config(config.data).num_folds
  if not all(-1 <= f < num_folds for f in sweep.folds):
    raise UserInputError(f'config.sweep.folds={sweep.folds}: give distinct fold numbers in [0, '
                         f'data.num_folds={num_folds}), or -1 for the holdout; () means all folds')
  axis.resolve_form(sweep.model_axis)
  if sweep.threshold_metric not in calibration.THRESHOLD_METRICS:
    raise UserInputError(f'config.sweep.threshold_metric={sweep.threshold_metric!r}: choose one of '
                         f'{calibration.THRESHOLD_METRICS}')
  tasks = {v.name: v.settings.data.labels.task for v in variants}
  if len(set(tasks.values())) > 1:
    raise UserInputError(f'config.sweep.variants: single-label and multi-label variants cannot be compared '
                         f'(data.task {tasks}); sweep them separately')
  if sweep.baseline and sweep.baseline not in [v.name for v in variants]:
    raise UserInputError(f'config.sweep.baseline={sweep.baseline!r}: not one of the variants '
                         f'{[v.name for v in variants]}')
  return sweep
