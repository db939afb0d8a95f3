"""The search's first trials: the config as given, the portfolio, its one-knob neighbours, then the winners combined.

A competent user's first sweep moves one knob at a time around a recipe that already works (the learning rate
3x and a third, rotation on, dropout off), then combines what helped. TPE's start is random draws that move a
dozen knobs at once, and on the cheap rungs they lose to the recipe (docs/auto.md's bench: every first batch
lost to the config as given). So the first bracket's batch is the config as given, the moves of the
**portfolio** learned offline on real sets (`fpclass.auto.portfolio`), then its **neighbours**, each one dimension
moved to its usual other value (`neighbour_values`), in `PRIORITY` order, as many as the batch holds
(`first_batch`); the next bracket starts with the **combination** of the trials that beat the config on the same
rung (`combination`). TPE learns from all of them and samples every other trial.
"""
import math

from fpclass.auto import portfolio

# The order neighbours enter a batch too small for all of them: the learning rate first (what most often wins a
# hand sweep, 3x on the footprints and digits), then the backbones the screen kept, then recomputed batch-norm
# statistics (where they matter they decide: docs/finetuning.md), then the unlabelled images left out (whether
# they help at all) and their pseudo-labels' other bar, then geometry and the other regularisers users reach for
# first; a dimension not named here (a user's own entry) follows in entry order.
PRIORITY = ('train.learning_rate', 'model.name', 'train.bn_statistics', 'semi.method', 'semi.thresholds',
            'augment.rotation', 'train.label_smoothing',
            'train.ema_decay', 'model.dropout', 'augment.policy', 'augment.zoom', 'augment.translate', 'augment.mixup_alpha',
            'augment.erasing', 'augment.hflip', 'model.batch_norm', 'model.dense_dropout', 'model.fc_sizes',
            'model.drop_path_rate', 'train.layer_decay', 'model.freeze_till', 'model.top_dropout')
STEP = 3.0        # a learning rate's (or any log range's) neighbours: the value times and divided by this
ON_SHARE = 2 / 3  # a range whose value sits in its lower half: the neighbour at this share of the way up
BASELINE = 'baseline'           # a trial's user attribute: the config as given
NEIGHBOUR = 'neighbour'         # a trial's user attribute: the dimension it moved, e.g. 'train.learning_rate x3'
COMBINED = 'combined'           # the study's user attribute once the combination was enqueued


def neighbour_values(dim, value) -> list[tuple[str, object]]:
  """(label, value) of each neighbour of `value` (a parameter as Optuna holds it) along `dim`, a
  `fpclass.auto.space.Dimension` (not imported: the search's import chain stays short)."""
  if dim.kind == 'factor' or dim.kind == 'log':
    low, high = float(dim.args[0]), float(dim.args[1])
    out = []
    for label, moved in ((f'x{STEP:g}', value * STEP), (f'/{STEP:g}', value / STEP)):
      moved = min(max(moved, low), high)
      if not math.isclose(moved, value, rel_tol=1e-9):
        out.append((label, moved))
    return out
  if dim.kind in ('float', 'int'):
    low, high = dim.args
    moved = low + ON_SHARE * (high - low) if value < low + (high - low) / 2 else low
    moved = round(moved) if dim.kind == 'int' else float(moved)
    return [] if moved == value else [(f'{moved:g}', moved)]
  if dim.kind == 'choice':   # parameters are the values' reprs (space.Dimension.draw)
    other = next((v for v in dim.args if repr(v) != value), None)
    return [] if other is None else [(repr(other), repr(other))]
  return []


def _rank(dim) -> int:
  return PRIORITY.index(dim.key) if dim.key in PRIORITY else len(PRIORITY)


def neighbours(dims: list, baseline: dict, candidates: dict) -> list[tuple[str, dict]]:
  """(label, parameters) of the config's one-knob neighbours, in `PRIORITY` order: each dimension (a
  `fpclass.auto.space.Dimension`) the first trial's parameters (`baseline`) hold a value of, moved alone;
  along a `backbones` dimension, each other candidate with its own first-trial parameters (`candidates`: name ->
  parameters), its learning rate at its centre."""
  ordered = sorted(enumerate(dims), key=lambda pair: (_rank(pair[1]), pair[0]))
  out = []
  for _, dim in ordered:
    if dim.kind == 'backbones':
      for name, params in candidates.items():
        if name != baseline.get(dim.param):
          centred = {d.param: 1.0 for d in dims if d.kind == 'factor' and d.args[0] <= 1.0 <= d.args[1]}
          out.append((f'model.name={name}', {**params, **centred}))
      continue
    if dim.param not in baseline:
      continue
    for label, value in neighbour_values(dim, baseline[dim.param]):
      out.append((f'{dim.key} {label}', {**baseline, dim.param: value}))
  return out


def first_batch(dims: list, baseline: dict, candidates: dict, size: int) -> list[tuple[str, dict]]:
  """(label, parameters) of the first batch's trials after the config as given, at most `size`: the portfolio's
  moves that apply to the trial's dimensions (`portfolio.params_for`), then the one-knob `neighbours`, each
  parameter set once."""
  out, seen = [], [baseline]
  moves = [(f'portfolio: {m}', portfolio.params_for(m, dims, baseline)) for m in portfolio.PORTFOLIO]
  for label, params in [*moves, *neighbours(dims, baseline, candidates)]:
    if params is not None and params not in seen and len(out) < size:
      out.append((label, params))
      seen.append(params)
  return out


def combination(trials: dict, values: dict, higher: bool) -> dict | None:
  """The parameters of the config as given (the trial marked `BASELINE`) with every neighbour (or portfolio move)
  that beat it at the same rung (`values`: trial number -> value there; `trials`: number -> FrozenTrial), the
  better of two along one dimension; None when fewer than two won (one alone is a trial already)."""
  baseline = next((n for n in values if trials[n].user_attrs.get(BASELINE)), None)
  if baseline is None:
    return None
  base, sign = dict(trials[baseline].params), 1.0 if higher else -1.0
  winners = sorted((n for n, v in values.items() if NEIGHBOUR in trials[n].user_attrs and math.isfinite(v)
                    and sign * v > sign * values[baseline]), key=lambda n: sign * values[n], reverse=True)
  params, moved, used = dict(base), set(), 0
  for n in winners:
    changed = {k: v for k, v in trials[n].params.items() if k not in base or base[k] != v}
    if not changed or moved & set(changed):
      continue   # the better neighbour along this dimension is in already
    params.update(changed)
    moved |= set(changed)
    used += 1
  return params if used >= 2 else None
