"""The candidates of `--mode auto` (`fpclass.auto.search`): the config's own model first, then the best
`auto.keep` backbones of a linear-probe screen (`fpclass.probe.screen`) over those whose weights are at hand,
each with its transfer settings, as (name, config changes) pairs. Nothing is downloaded to screen. (The pairs
become `fpclass.auto.space.Candidate`s in `fpclass.auto.search`: the space sits deeper in the import chain.)"""
import time

from fpclass import fileio, models
from fpclass.auto.budget import Budget
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.config.search import AutoSettings
from fpclass.models import probe_backbones
from fpclass.probe.screen import run_probe

# The screen's share of the budget: no backbone starts probing past it (the search needs the rest; a backbone's
# features of a small set take seconds, a large one's on a CPU minutes).
SCREEN_SHARE = 0.15


def _at_hand(run: RunSettings, settings: AutoSettings) -> tuple[list, list[str]]:
  """(backbones to screen, notes): auto.backbones, or every registered pretrained model whose named weights are
  already in the cache (nothing is downloaded to screen)."""
  if settings.backbones:
    return probe_backbones.parse_entries(settings.backbones, run.model, 'config.auto.backbones'), []
  cache, found, missing = fileio.cache_root(run.data.storage.cache_dir), [], []
  for name in probe_backbones.valid_backbones():
    spec = models.get_spec(name)
    named = [w for w in spec.weights.values() if (cache / 'weights' / w.filename).is_file()]
    (found if named else missing).append(name)
  entries = tuple(f'{name}={next(iter(models.get_spec(name).weights))}' for name in found)
  notes = [f'{len(missing)} registered backbones have no weights in the cache ({cache / "weights"}) and were not '
           'screened; name them with their files in config.auto.backbones'] if missing else []
  return (probe_backbones.parse_entries(entries, run.model, 'config.auto.backbones') if found else []), notes


def screen_candidates(run: RunSettings, settings: AutoSettings, probe: ProbeSettings, budget: Budget):
  """(probe run or None, [(name, changes)], note): the config's own model first (no changes), then the best
  screened backbones (`run`: the base config's typed sections; `probe`: config.probe, how the screen probes)."""
  own = (run.model.name, {})
  if settings.keep == 0:
    return None, [own], 'no screen (config.auto.keep=0)'
  backbones, notes = _at_hand(run, settings)
  if not backbones:
    return None, [own], ' '.join(notes) or 'no backbone to screen'
  start = time.perf_counter()
  found = run_probe(run, probe, backbones, deadline=time.monotonic() + SCREEN_SHARE * budget.left())
  budget.add_stage('screen', time.perf_counter() - start)
  if found is None:
    return None, [own], ' '.join(notes + [f'the screen\'s share of the budget ({SCREEN_SHARE:.0%}) probed no backbone'])
  if found.left_out:
    notes.append(f'the screen\'s share of the budget ({SCREEN_SHARE:.0%}) ran out before '
                 f'{", ".join(found.left_out)}')
  order = found.summary.sort_values(f'{found.rank_by}_mean', ascending=found.rank_by == 'log_loss', kind='stable')
  kept = []
  for _, row in order.head(settings.keep).iterrows():
    weights = row['weights'] if row['weights'] != 'random init' else ''
    kept.append((str(row['backbone']), {
        'model.name': str(row['model']), 'model.pretrained': weights, 'model.top': 'avg',
        'model.in_channels': run.data.decode.channels, 'model.freeze_till': 0}))
  note = ' '.join(notes + [f'{len(backbones)} backbones screened; kept {", ".join(name for name, _ in kept)}'])
  return found, [own, *kept], note
