"""`--mode lr_find`: fastai's learning-rate finder on the configured run, before training it.

    python launch.py --config configs/digits.py --workdir runs/digits --mode lr_find

Sweeps the learning rate exponentially (config.lr_find) from the run's initial state through its own train
step (`fpclass.train.lr_finder`), and writes in the workdir, leaving any training state there untouched:
- `lr_find.json`: per step the learning rate, the loss and the smoothed loss; why it stopped; the
  suggestions (valley, minimum, steep) and which one config.lr_find.suggestion picks;
- `lr_find.png`: the smoothed loss against the learning rate, the suggestions marked;
- its report.md section. The suggestions are printed too.
"""
import dataclasses
import math
import pathlib

import numpy as np
from matplotlib.figure import Figure

from fpclass import fileio
from fpclass.config.outputs import LrFindSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline, stream
from fpclass.runtime import report, timings
from fpclass.train import lr_finder
from fpclass.train.cohort import solo_start

JSON, FIGURE = 'lr_find.json', 'lr_find.png'


def lr_find(config, workdir) -> dict:
  """Runs the sweep; returns what lr_find.json holds."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  settings, run = LrFindSettings.from_config(config.lr_find), RunSettings.from_config(config)
  with timings.phase('data'):
    dataset = stream.place(pipeline.load_dataset(run.data, mapped=True), run.data.storage)
  with timings.phase('sweep'):
    record = lr_finder.find(dataset, settings, *solo_start(run, dataset))
  suggestions = lr_finder.suggest(record, settings.num_it)
  order = sorted(suggestions, key=lambda name: name != settings.suggestion)
  result = dict(lrs=record.lrs, losses=_finite(record.losses), smoothed_losses=_finite(record.smoothed),
                stopped=record.stopped, steps=len(record.lrs), settings=dataclasses.asdict(settings),
                suggestion=settings.suggestion, suggestions=suggestions)
  fileio.write_json(workdir / JSON, result)
  fileio.save_figure(workdir / FIGURE, plot(record, suggestions, settings.suggestion))
  report.write_section(workdir, '06-lr-find', _section(result))
  stop = {'num_it': f'after {len(record.lrs)} steps', 'diverged': f'diverged at step {len(record.lrs)}',
          'nan': f'the loss became NaN at step {len(record.lrs)}'}[record.stopped]
  if suggestions:
    print(f'lr_find ({stop}): ' + ', '.join(f'{name} {suggestions[name]["lr"]:.3g}' for name in order)
          + f'; wrote {workdir / JSON} and {workdir / FIGURE}')
  else:
    print(f'lr_find ({stop}): too few steps before it stopped for a suggestion; lower config.lr_find.start_lr '
          f'or raise config.lr_find.num_it; wrote {workdir / JSON} and {workdir / FIGURE}')
  return result


def _finite(values: list) -> list:
  """JSON has no NaN or infinity: those become null."""
  return [v if math.isfinite(v) else None for v in values]


def _section(result: dict) -> str:
  lines = ['## Learning-rate finder', '',
           f'{result["steps"]} steps from learning rate {result["settings"]["start_lr"]:g} towards '
           f'{result["settings"]["end_lr"]:g} (stopped: {result["stopped"]}), from the run\'s initial state through '
           f'its own train step; the smoothed loss is plotted in [{FIGURE}]({FIGURE}), the record is '
           f'[{JSON}]({JSON}).', '']
  if result['suggestions']:
    chosen = sorted(result['suggestions'], key=lambda name: name != result['suggestion'])
    lines.append('Suggestions: ' + ', '.join(f'{name} {result["suggestions"][name]["lr"]:.3g}' for name in chosen)
                 + ' (set it with `--config.train.learning_rate=...`).')
  else:
    lines.append('No suggestion: too few steps before the sweep stopped.')
  lines += ['', f'![learning-rate finder]({FIGURE})']
  return '\n'.join(lines)


def plot(record: lr_finder.Record, suggestions: dict, first: str) -> Figure:
  """The smoothed loss against the learning rate (log scale), the last lr_finder.SKIP_END points left out as in
  fastai's plot, with each suggestion marked (`first` first in the legend)."""
  fig = Figure(figsize=(6.0, 4.0), layout='constrained')
  ax = fig.subplots()
  shown = slice(0, max(1, len(record.lrs) - lr_finder.SKIP_END))
  ax.plot(record.lrs[shown], record.smoothed[shown], color='C0', label='smoothed loss')
  ax.plot(record.lrs[shown], record.losses[shown], '.', color='C0', alpha=0.25, ms=3, label='loss')
  for i, name in enumerate(sorted(suggestions, key=lambda n: n != first)):
    lr, loss = suggestions[name]['point']
    ax.plot(lr, loss, 'o', color=f'C{i + 1}', label=f'{name}: {suggestions[name]["lr"]:.2e}')
  finite = np.asarray(record.smoothed[shown], np.float64)
  finite = finite[np.isfinite(finite)]
  if len(finite):   # the raw losses of a diverging sweep would squash the curve
    low, high = finite.min(), finite.max()
    ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.05 * (high - low + 1e-12))
  ax.set_xscale('log')
  ax.set_xlabel('learning rate')
  ax.set_ylabel('loss')
  ax.set_title(f'learning-rate finder: {len(record.lrs)} steps, stopped: {record.stopped}', fontsize=10)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  return fig
