"""`--mode auto`: the best defensible model for the data within a time budget (`fpclass.search.auto`): a screen
of the backbones, an Optuna search of k-fold trials, the best trials confirmed on fresh seeds with paired
intervals, and the choice refitted into `<workdir>/final`. Writes auto_report.md, trials.csv, the figures,
confirm_members.csv, confirm_differences.csv, chosen_config.py and auto.json (docs/auto.md).

    python launch.py --config configs/footprint.py --workdir runs/auto --mode auto --config.auto.time_budget=20m
"""
import pathlib

from fpclass.search.auto import run_auto
from fpclass.search.auto_report import REPORT, write_report


def auto(config, workdir) -> dict | None:
  workdir = pathlib.Path(workdir)
  run = run_auto(config, workdir)
  if run is None:   # another launch sharing the study confirms, refits and reports
    return None
  write_report(run, workdir)
  print(f'{workdir / REPORT}: chose {run.chosen["name"]} ({run.chosen.get("candidate")}); final model in '
        f'{run.final} ({run.final_note}); {run.budget.describe()}')
  return run.chosen
