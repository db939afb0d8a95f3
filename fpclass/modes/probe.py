"""`--mode probe`: which backbone for my data? Each backbone of `config.probe.backbones` is screened by a linear
probe on its frozen, pooled features over folds x seeds (`fpclass.probe.screen`), and the backbones are compared
with confidence intervals. Writes probe_results.md/.csv/.png, probe_differences.csv, probe_folds.csv and
probe_predictions.csv. Design notes: docs/modules.md (`fpclass/probe/screen.py`).
"""
import pathlib
import time

import pandas as pd

from fpclass import fileio
from fpclass.config.inputs import SplitSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.models import probe_backbones
from fpclass.probe.report import TITLES, plot_results, probe_section, results_table
from fpclass.probe.screen import ProbeRun, run_probe
from fpclass.runtime import report


def probe(config, workdir) -> pd.DataFrame:
  workdir = pathlib.Path(workdir)
  run, settings = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  backbones = probe_backbones.parse_backbones(settings, run.model)
  if not backbones:
    raise UserInputError('config.probe.backbones is empty: list the backbones to screen, e.g. '
                         "--config.probe.backbones=\"('resnet50', 'vit_b16')\"; registered: "
                         f'{probe_backbones.valid_backbones()}')
  start = time.perf_counter()
  workdir.mkdir(parents=True, exist_ok=True)
  found = run_probe(run, settings, backbones)
  pipeline.write_quarantine_report(workdir / 'quarantine.csv', found.decoded.quarantine)
  write_probe(run.data.split, settings, workdir, found, time.perf_counter() - start)
  print(results_table(found.summary, found.names))
  print(f'{workdir}: {len(backbones)} backbones x {len(found.folds) // max(1, len(backbones))} folds, best '
        f'{found.best} by {TITLES[found.rank_by]}, {time.perf_counter() - start:.0f}s')
  return found.summary


def write_probe(split: SplitSettings, settings: ProbeSettings, workdir: pathlib.Path, found: ProbeRun,
                wall: float) -> str:
  """The probe's files and report section in `workdir`; returns the section."""
  fileio.write_csv(workdir / 'probe_folds.csv', found.folds)
  fileio.write_csv(workdir / 'probe_predictions.csv', found.predictions)
  fileio.write_csv(workdir / 'probe_results.csv', found.summary)
  fileio.write_csv(workdir / 'probe_differences.csv', found.differences)
  fileio.save_figure(workdir / 'probe_results.png', plot_results(found.summary, found.folds, found.best, found.names))
  section = probe_section(split, settings, found.summary, found.differences,
                          found.best, found.note, found.count, found.ratio,
                          dict(wall=wall, decode=found.decode_seconds), found.names, found.rank_by)
  fileio.write_text(workdir / 'probe_results.md', section + '\n')
  report.write_section(workdir, '50-probe', section)
  return section
