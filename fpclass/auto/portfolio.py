"""Auto's portfolio: the configurations tried right after the config as given, learned offline on real sets.

A **move** is a change a user makes to a working from-scratch recipe (batch norm on, the learning rate x3,
rotation + shift, ...), written so that it applies to any config: a value, or `('x', k)` for k times the config's
own (the learning rate). `MOVES` are the candidates `bench/rung_ranks.py` trains on every set of its bench at
every fidelity; `PORTFOLIO` is the greedy choice over that table, each move added because it most lowers the
**worst** shortfall over the sets against each set's best move (AutoGluon builds its zero-shot presets the same
way, by a greedy portfolio over data sets). The table, the command that rebuilds it, and the sets it was judged
on (none of which chose it): docs/auto.md. `fpclass.auto.first_trials` puts the portfolio's moves into the first
batch after the config as given, before the one-knob neighbours.
"""
import math

from fpclass.config.variants import MISSING, value_at

RELATIVE = 'x'   # ('x', k): k times the config's own value

MOVES = {
    'lr x3': {'train.learning_rate': (RELATIVE, 3.0)},
    'lr /3': {'train.learning_rate': (RELATIVE, 1 / 3)},
    'batch norm': {'model.batch_norm': True},
    'no dropout': {'model.dropout': 0.0},
    'dropout 0.5': {'model.dropout': 0.5},
    'rotation 15': {'augment.rotation': 15.0},
    'no rotation': {'augment.rotation': 0.0},
    'translate 0.1': {'augment.translate': 0.1},
    'label smoothing 0.1': {'train.label_smoothing': 0.1},
    'ema': {'train.ema_decay': 0.999},
    'trivialaugment': {'augment.policy': 'trivialaugment'},
    'mixup 0.2': {'augment.mixup_alpha': 0.2},
    'erasing 0.25': {'augment.erasing': 0.25},
    'batch norm + lr x3': {'model.batch_norm': True, 'train.learning_rate': (RELATIVE, 3.0)},
    'batch norm + rotation + shift': {'model.batch_norm': True, 'augment.rotation': 10.0, 'augment.translate': 0.1},
    'rotation + shift + smoothing + ema': {'augment.rotation': 10.0, 'augment.translate': 0.1,
                                           'train.label_smoothing': 0.1, 'train.ema_decay': 0.999},
    'trivialaugment + smoothing + ema': {'augment.policy': 'trivialaugment', 'train.label_smoothing': 0.1,
                                         'train.ema_decay': 0.999},
}

# Learned by `python -m bench.rung_ranks` (docs/auto.md has the table and the date); the first trials after the
# config as given, in this order (2026-11-28, on the digits, faces, footprints and MNIST). Four moves: the size whose
# portfolio, built without a set, fell least short on that set (worst 0.009 against 0.010 for three).
PORTFOLIO = ('batch norm', 'lr x3', 'label smoothing 0.1', 'no dropout')


def changes_for(move: str, config) -> dict:
  """The move's config changes on `config` (an ml_collections config): relative values resolved, and the keys
  whose value it already has, or that it does not have (a pretrained model's config has no batch-norm switch),
  left out (an empty dict: the move is the config as given)."""
  out = {}
  for key, value in MOVES[move].items():
    own = value_at(config, key)
    if own is MISSING:
      continue
    if isinstance(value, tuple) and value[0] == RELATIVE:
      value = float(f'{own * value[1]:.4g}')
    if value != own or isinstance(value, bool) != isinstance(own, bool):
      out[key] = value
  return out


def params_for(move: str, dims: list, baseline: dict) -> dict | None:
  """The move as a trial's parameters: `baseline` (the config as given's, Optuna's names) with each key the move
  sets moved along its dimension (a `fpclass.auto.space.Dimension`; a factor's relative value times the
  baseline's, a range's value clipped into it, a choice's value when it is one of the choices). None when no key
  of the move is a dimension of the trial, or nothing changes: then the move is not a trial of its own."""
  params, moved = dict(baseline), False
  for key, value in MOVES[move].items():
    for dim in dims:
      if dim.key != key or dim.param not in baseline:
        continue
      own = baseline[dim.param]
      if isinstance(value, tuple) and value[0] == RELATIVE:
        if dim.kind not in ('factor', 'log'):
          continue
        new = min(max(own * value[1], float(dim.args[0])), float(dim.args[1]))
      elif dim.kind == 'choice':
        new = repr(value)
        if new not in (repr(v) for v in dim.args):
          continue
      elif dim.kind in ('float', 'int') and not isinstance(value, (bool, str)):
        new = min(max(value, dim.args[0]), dim.args[1])
        new = round(new) if dim.kind == 'int' else float(new)
      else:
        continue
      if not (new == own or (isinstance(new, float) and isinstance(own, float) and math.isclose(new, own))):
        params[dim.param], moved = new, True
  return params if moved else None
