"""Each candidate's centre learning rate, measured where that is cheaper than guessing.

The config's own model keeps the config's rate; a screened backbone starts from `space_defaults.guessed_centre`
and moves to a short lr_find's suggestion (`fpclass.train.lr_finder`) while the sweeps fit the time auto gives
them. Kept apart from the space's text so that building a space never imports the training loop.
"""
import dataclasses
import time

from fpclass.auto.space_defaults import candidate_variants, guessed_centre
from fpclass.config.outputs import LrFindSettings
from fpclass.data import pipeline, stream
from fpclass.train import lr_finder
from fpclass.train.cohort import solo_start
from fpclass.train.plan import Variant

LR_FIND_SHARE = 0.05        # the share of auto's budget the centre sweeps may take
LR_FIND_TRUST = 10.0        # an lr_find suggestion is clipped to within this factor of the guess

@dataclasses.dataclass(frozen=True)
class Centres:
  """Each candidate's centre learning rate, how it was found, and the seconds the sweeps took."""
  rates: dict
  how: dict
  seconds: float


def centre_learning_rates(base: Variant, candidates: list, settings: LrFindSettings, max_seconds: float) -> Centres:
  """The centre of each candidate's learning-rate range. The config's own model keeps the config's rate (the
  user's recipe, the first trial). A screened backbone, whose rate is otherwise a guess (`guessed_centre`), gets
  config.lr_find's suggestion from a sweep on the data, clipped to within LR_FIND_TRUST of the guess, while the
  sweeps fit `max_seconds` (auto gives them LR_FIND_SHARE of its budget); a sweep that would overrun stops at
  its next step and its candidate keeps the guess. `seconds` counts data loading and every sweep."""
  start, dataset = time.perf_counter(), None
  rates, how = {}, {}
  variants = candidate_variants(base, candidates)
  for candidate in candidates:
    run = variants[candidate.name].settings
    if not candidate.changes:
      rates[candidate.name] = base.settings.train.learning_rate
      how[candidate.name] = "the config's rate"
      continue
    guess, why = guessed_centre(base.settings, run)
    rates[candidate.name], how[candidate.name] = guess, why
    deadline = start + max_seconds
    if time.perf_counter() >= deadline:
      how[candidate.name] += ' (no time left for lr_find)'
      continue
    if dataset is None:
      dataset = stream.place(pipeline.load_dataset(run.data, progress=False, mapped=True), run.data.storage)
    try:
      record = lr_finder.find(dataset, settings, *solo_start(run, dataset), deadline=deadline)
    except Exception as e:   # a sweep that fails (out of memory, ...) leaves the guess; the trials will tell
      how[candidate.name] += f' (lr_find failed: {type(e).__name__}: {" ".join(str(e).split())[:200]})'
      continue
    found = lr_finder.suggest(record, settings.num_it).get(settings.suggestion)
    if record.stopped == 'deadline' or found is None:
      how[candidate.name] += (' (lr_find stopped: out of time)' if record.stopped == 'deadline'
                              else f' (lr_find gave no suggestion: {record.stopped} after {len(record.lrs)} steps)')
      continue
    rate = min(max(found['lr'], guess / LR_FIND_TRUST), guess * LR_FIND_TRUST)
    rates[candidate.name] = rate
    how[candidate.name] = (f"lr_find's {settings.suggestion} {found['lr']:.3g} over {len(record.lrs)} steps"
                           + (f', clipped to {rate:.3g} (within {LR_FIND_TRUST:g}x of {why})' if rate != found['lr']
                              else ''))
  return Centres(rates, how, time.perf_counter() - start)
