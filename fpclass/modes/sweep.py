"""`--mode sweep`: config variants, each trained over k folds x seeds along the model axis, summarised with
means, spreads and confidence intervals, compared pairwise with a baseline, and calibrated. Writes
sweep_results.md/.csv/.png, sweep_differences.csv, sweep_models.csv, and per variant its fold workdirs,
experiment.json, oof_predictions.csv and calibration (the table: docs/sweeps.md).

The plan (`fpclass.train.sweep_plan`) runs through the one training loop (`fpclass.train.loop.run_plan`);
a relaunch keeps finished variants and members. Each newly trained variant is then calibrated on its kept
models' out-of-fold predictions (`fpclass.infer.calibrate_models`).
"""
import json
import pathlib
import time

import pandas as pd

from fpclass import fileio
from fpclass.analysis import sweep_report
from fpclass.infer.calibrate_models import calibrate
from fpclass.runtime import report
from fpclass.train.loop import VariantRun, run_plan
from fpclass.train.sweep_plan import sweep_plan

CALIBRATION_FILE = 'calibration.json'


def run_sweep(config, workdir) -> pd.DataFrame:
  workdir = pathlib.Path(workdir)
  plan = sweep_plan(config)
  start = time.perf_counter()
  experiments = [with_calibration(run) for run in run_plan(plan, workdir)]
  baseline = config.sweep.baseline or plan.variants[0].name
  models = pd.DataFrame([row for e in experiments for row in e['rows']])
  summary = sweep_report.summarise(experiments)
  differences = sweep_report.paired_differences(models, experiments, baseline)
  fileio.write_csv(workdir / 'sweep_models.csv', models)
  fileio.write_csv(workdir / 'sweep_results.csv', summary)
  fileio.write_csv(workdir / 'sweep_differences.csv', differences)
  fileio.save_figure(workdir / 'sweep_results.png',
                     sweep_report.plot_results(summary, models, sweep_report.metrics_of(experiments)))
  wall = time.perf_counter() - start
  section = sweep_report.sweep_section(config, experiments, summary, differences, baseline, wall)
  fileio.write_text(workdir / 'sweep_results.md', section + '\n')
  report.write_section(workdir, '50-sweep', section)
  print(sweep_report.results_table(summary, sweep_report.metrics_of(experiments)))
  print(f'{workdir}: {len(models)} models in {len(experiments)} variants, {wall:.0f}s')
  return summary


def with_calibration(run: VariantRun) -> dict:
  """The variant's experiment record with its calibration: fitted now on the kept models' out-of-fold logits
  when it was trained in this launch (or when an earlier launch stopped before calibrating), else stored."""
  stored = run.folder / CALIBRATION_FILE
  if run.data is None and stored.is_file():
    calibration = json.loads(stored.read_text())
  else:
    decoded = run.data.decoded if run.data is not None else None
    calibration = calibrate(run.variant.config, run.folder, decoded, run.kept_logits or None)
  return dict(run.experiment, calibration=calibration)
