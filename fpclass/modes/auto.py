"""`--mode auto`: the best defensible model for the data within a time budget (`fpclass.auto.search`): a screen
of the backbones, a population search with successive halving, the finalists confirmed on fresh folds and seeds
with paired intervals, and the choice's fold models as one ensemble in `<workdir>/final`. Writes auto_report.md, trials.csv, the figures,
confirm_members.csv, confirm_differences.csv, chosen_config.py and auto.json (docs/auto.md).

    python launch.py --config configs/footprint.py --workdir runs/auto --mode auto --config.auto.time_budget=20m
"""
import importlib.util
import pathlib

from fpclass.errors import UserInputError

if importlib.util.find_spec('optuna') is None:   # the search's sampler: an extra, named before any work
  raise UserInputError("--mode auto needs Optuna: pip install 'fpclass[auto]'")

from fpclass.auto.report import REPORT, write_report  # noqa: E402 -- after the extra's check
from fpclass.auto.search import run_auto  # noqa: E402


def auto(config, workdir) -> dict | None:
  workdir = pathlib.Path(workdir)
  run = run_auto(config, workdir)
  if run is None:   # another launch sharing the study confirms, refits and reports, or one did earlier
    return None
  write_report(run, workdir)
  print(f'{workdir / REPORT}: chose {run.chosen["name"]} ({run.chosen.get("candidate")}); final model in '
        f'{run.final} ({run.final_note}); {run.budget.describe()}')
  return run.chosen
