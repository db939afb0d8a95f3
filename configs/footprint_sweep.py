"""Seed 000's eleven footprint configs (baseline + ten experiments) over 5 folds x 3 seeds, for --mode sweep.

    python launch.py --config configs/footprint_sweep.py --workdir runs/fp-sweep --mode sweep
    --config configs/footprint_sweep.py:exp0,exp4       only those variants
    --config configs/footprint_sweep.py:quick           tiny data, 2 epochs (tests, smoke checks)

The variants come from the EXPERIMENTS table in configs/footprint.py (the single source): the sweep config
is the baseline, exp0, and each variant applies one experiment's changes to it. Command-line overrides
(e.g. --config.train.epochs=10) change the baseline and so every variant, except keys a variant sets itself.
"""
import importlib.util
import pathlib

from fpclass.sweep import variant_spec


def _footprint_module():
  path = pathlib.Path(__file__).with_name('footprint.py')
  spec = importlib.util.spec_from_file_location('configs_footprint', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = ''):
  footprint = _footprint_module()
  args = [a.strip() for a in (arg or '').split(',') if a.strip()]
  chosen = [a for a in args if a in footprint.EXPERIMENTS] or list(footprint.EXPERIMENTS)
  unknown = [a for a in args if a not in footprint.EXPERIMENTS and a != 'quick']
  if unknown:
    raise ValueError(f'configs/footprint_sweep.py: unknown argument(s) {unknown}; use experiment names from '
                     f'{list(footprint.EXPERIMENTS)} and optionally quick')
  c = footprint.get_config('exp0,quick' if 'quick' in args else 'exp0')
  c.name = 'footprint-sweep'
  c.sweep.variants = tuple(variant_spec(name, footprint.EXPERIMENTS[name]) for name in chosen)
  c.sweep.baseline = chosen[0]
  c.sweep.folds = ()          # all 5 folds (data.num_folds)
  c.sweep.seeds = (0, 1, 2)
  if 'quick' in args:
    c.sweep.seeds = (0, 1)
  return c
