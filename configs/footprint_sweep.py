"""Seed 000's eleven footprint configs (baseline + ten experiments) over 5 folds x 3 seeds, for --mode sweep.

    python launch.py --config configs/footprint_sweep.py --workdir runs/fp-sweep --mode sweep
    --config configs/footprint_sweep.py:exp0,exp4       only those variants
    --config configs/footprint_sweep.py:quick           tiny data, 2 epochs (tests, smoke checks)
    --config configs/footprint_sweep.py:transfer        the seed's transfer comparison: the baseline CNN (exp0)
                                                        against ResNet-18, AlexNet and EfficientNet-B0 on grayscale
                                                        (configs/footprint.py's TRANSFER recipes), with intervals

The variants come from the EXPERIMENTS table in configs/footprint.py (the single source): the sweep config
is the baseline, exp0, and each variant applies one experiment's changes to it. Command-line overrides
(e.g. --config.train.epochs=10) change the baseline and so every variant, except keys a variant sets itself.
"""
# `configs` is a package: launch.py's folder (the repository root) is on sys.path when it runs, and
# pyproject.toml puts it there for pytest.
from configs.footprint import EXPERIMENTS, TRANSFER
from configs.footprint import get_config as footprint_config
from fpclass.config.schema import parse_args
from fpclass.config.variants import config_changes, variant_spec

CHOICES = {**{name: f'include variant {name}' for name in EXPERIMENTS},
           'transfer': 'the baseline CNN (exp0) against the pretrained backbones, each with its recipe',
           'quick': 'tiny data, 2 epochs, 2 seeds (tests, smoke checks)'}


def get_config(arg: str = ''):
  args = parse_args('configs/footprint_sweep.py', arg, CHOICES)
  quick = ',quick' if 'quick' in args else ''
  c = footprint_config('exp0' + quick)
  if 'transfer' in args:
    # Each variant is the whole recipe of configs/footprint.py:<backbone> (model, two phases, early stopping).
    c.name = 'footprint-transfer-sweep'
    c.sweep.variants = ('cnn: ', *(variant_spec(name, config_changes(c, footprint_config(name + quick)))
                                   for name in TRANSFER))
    c.sweep.baseline = 'cnn'
    c.sweep.folds = ()
    c.sweep.seeds = (0, 1) if quick else (0, 1, 2)
    return c
  chosen = [a for a in args if a in EXPERIMENTS] or list(EXPERIMENTS)
  c.name = 'footprint-sweep'
  c.sweep.variants = tuple(variant_spec(name, EXPERIMENTS[name]) for name in chosen)
  c.sweep.baseline = chosen[0]
  c.sweep.folds = ()          # all 5 folds (data.num_folds)
  c.sweep.seeds = (0, 1, 2)
  if 'quick' in args:
    c.sweep.seeds = (0, 1)
  return c
