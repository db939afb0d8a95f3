"""A round of `--mode auto`: a batch of trials at one rung's fidelity, trained as one sweep plan.

`round_plan` makes the round a `fpclass.train.plan.Plan` of the batch's configurations (one variant each) x the
rung's folds, in the sweep layout; the one training loop runs it (`fpclass.train.loop.run_plan(...,
isolate=True)`) with one `SharedWork`: the decoded data, the compiled programs and a frozen backbone's features
are made once for the round, a variant's folds train together as one cohort, and a relaunch reuses every
variant the round finished (its experiment.json) and every running member's latest epoch (`keep_epochs`). A variant that raises (out of memory, say) is that trial's
failure, not the round's; `outcomes` reads what each variant left.
"""
import dataclasses
import math

import numpy as np
from tqdm.auto import tqdm

from fpclass.auto.context import Entry
from fpclass.config.training import TrainSettings
from fpclass.errors import UserInputError
from fpclass.train.plan import EXPERIMENTS, Plan, Variant, apply_changes
from fpclass.train.validation import validate


@dataclasses.dataclass
class Outcome:
  """What a variant of the round left: the mean of the metric over its members, the seconds it took (and of them,
  compiling its programs), its members and member-epochs (for the cost model; 0 when an earlier launch trained
  it), the epoch each member kept, or why it failed."""
  value: float = math.nan
  seconds: float = 0.0
  compile_seconds: float = 0.0
  members: int = 0
  member_epochs: int = 0
  kept_epochs: tuple = ()
  error: str = ''
  cut_members: tuple = ()   # the members the deadline cut, where the variant was scored on those that had ended


def fidelity(train: TrainSettings, epochs: int) -> dict:
  """The changes that train a config (its `train` section) for `epochs` instead of its own: the epochs (and a
  second phase, a warm-up, early stopping's patience) scaled alike, so a cheap rung runs the same recipe, shorter.
  Patience is rounded up: it waits at least the share of the schedule the config's patience waits (footprint's 7 of
  50 epochs at 9 is 1.26: rounded to 1, one noisy epoch stopped the search's only model at 7 of 9, 2026-11-29)."""
  if epochs >= train.epochs:
    return {}
  scale = epochs / train.epochs
  changes = {'train.epochs': int(epochs)}
  if train.finetune_epochs > 0:
    changes['train.finetune_epochs'] = max(1, round(train.finetune_epochs * scale))
  if train.early_stopping_patience > 0:
    changes['train.early_stopping_patience'] = max(1, -(-train.early_stopping_patience * int(epochs) // train.epochs))
  if train.warmup_epochs > 0:
    changes['train.warmup_epochs'] = min(int(epochs) - 1, max(0, round(train.warmup_epochs * scale)))
  return changes


def round_plan(base, entries: list[Entry], folds: tuple, seeds: tuple, epochs: int) -> tuple[Plan, dict]:
  """The round's plan (each entry at `epochs`, on `folds` x `seeds`, in the sweep layout) and {name: Outcome} of
  the entries no trial can train (put through the launch's checks, `validate`), left out of the plan."""
  variants, failed = [], {}
  for entry in entries:
    try:
      own = Variant(entry.name, dict(entry.changes), apply_changes(base, entry.changes, f'trial {entry.name}'))
      config = apply_changes(own.config, fidelity(own.settings.train, epochs), f'trial {entry.name} at {epochs} epochs')
      run = validate(config)   # every check, on what the rung trains
    except Exception as e:  # noqa: BLE001 -- any check that refuses a trial costs that trial, not the search
      failed[entry.name] = Outcome(error=str(e) if isinstance(e, UserInputError) else f'{type(e).__name__}: {e}')
      tqdm.write(f'auto: {entry.name} cannot train: {failed[entry.name].error}')
      continue
    variants.append(Variant(entry.name, dict(entry.changes), config, run))
  return Plan(tuple(variants), EXPERIMENTS, tuple(folds), tuple(seeds), keep_epochs=True), failed


def outcomes(runs: list, metric: str) -> dict:
  """{name: Outcome} of a round's runs (`run_plan(..., isolate=True)`): the metric's mean over each variant's
  members, its wall time and size when this launch trained it, or its error."""
  out = {}
  for run in runs:
    if run.error:
      out[run.variant.name] = Outcome(error=run.error)
      continue
    rows = run.experiment['rows']
    values = [float(r[metric]) for r in rows if r.get(metric) is not None and np.isfinite(r[metric])]
    outcome = Outcome(float(np.mean(values)) if values else math.nan, kept_epochs=tuple(int(r['epoch']) for r in rows),
                      cut_members=tuple(run.experiment.get('cut_members', ())))
    if run.data is not None:   # trained in this launch: a cost measurement
      outcome.seconds = float(run.experiment['timing']['wall_seconds'])
      outcome.compile_seconds = float(run.experiment['timing'].get('compile_seconds', 0.0))
      outcome.members, outcome.member_epochs = len(rows), sum(int(r['epochs_trained']) for r in rows)
    out[run.variant.name] = outcome
  return out
