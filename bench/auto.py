"""`--mode auto` against the best arm of a hand-written sweep, in the same run (issue 40's bench).

    python -m bench.auto [--out runs/bench-auto] [--data footprint digits] [--epochs 8] [--fraction 0.5]
                         [--set data.image_size=60,40 ...]

For each data set:
1. hand: the sweep a user would write by hand, run with `--mode sweep` and timed (W seconds):
   - footprint (the embedded synthetic footprints): configs/footprint_sweep.py, the seed's baseline and ten
     experiments, 5 folds x 1 seed;
   - digits (scikit-learn's 8x8 digits, a set this project makes no claims on): an AutoGluon-style hand grid over
     configs/digits.py, learning rate x dropout x augmentation, 5 folds x 1 seed.
   Its best arm is the variant with the best mean accuracy.
2. auto: `--mode auto` on the same base config with `auto.time_budget` = fraction x W (one half by default).
3. paired: both choices trained again on fresh seeds (100, 101, 102) x the same 5 folds with `--mode sweep`,
   the hand arm as the baseline: auto's mean difference with its corrected 95% interval (Nadeau-Bengio). This
   step's time counts against neither arm.
Every arm trains `--epochs` epochs at most (the search may choose fewer); `--set key=value` overrides apply to
every launch of every arm (a smaller image size, say, to fit a CPU). The JSON and a Markdown table go to
--out; docs/auto.md records them with the command and the date.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import time

import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass.config.variants import config_changes, variant_spec  # noqa: E402
from fpclass.modes.command_line import config_from_argv  # noqa: E402
from fpclass.train.sidecar import config_from_json  # noqa: E402

FRESH_SEEDS = (100, 101, 102)
DIGITS_GRID = {'train.learning_rate': (3e-4, 1e-3, 3e-3), 'model.dropout': (0.0, 0.3),
               'augment.rotation': (0.0, 8.0)}


def _launch(args: list[str], log: pathlib.Path) -> float:
  """Runs launch.py with `args`, its output in `log`; returns the wall seconds."""
  start = time.perf_counter()
  with log.open('w') as out:
    done = subprocess.run([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT)
  if done.returncode:
    raise SystemExit(f'launch.py {" ".join(args)} failed ({done.returncode}); see {log}')
  return time.perf_counter() - start


def _digits_variants() -> tuple[str, ...]:
  specs = []
  for lr in DIGITS_GRID['train.learning_rate']:
    for dropout in DIGITS_GRID['model.dropout']:
      for rotation in DIGITS_GRID['augment.rotation']:
        changes = {'train.learning_rate': lr, 'model.dropout': dropout, 'augment.rotation': rotation}
        specs.append(variant_spec(f'lr{lr:g}-drop{dropout:g}-rot{rotation:g}', changes))
  return tuple(specs)


def data_sets(epochs: int, overrides=()) -> dict:
  """name -> (base config for auto, the hand sweep's config and flags)."""
  common = [f'--config.train.epochs={epochs}', '--config.explain.after_training=False',
            '--config.train.tensorboard=False', *(f'--config.{o}' for o in overrides)]
  return {
      'footprint': dict(base=['--config=configs/footprint.py:exp0', *common],
                        hand=['--config=configs/footprint_sweep.py', '--config.sweep.seeds=(0,)', *common]),
      'digits': dict(base=['--config=configs/digits.py', *common],
                     hand=['--config=configs/digits.py', f'--config.sweep.variants={_digits_variants()!r}',
                           '--config.sweep.seeds=(0,)', '--config.sweep.baseline=lr0.001-drop0.3-rot8', *common])}


def _variant_changes(sweep_workdir: pathlib.Path, name: str) -> dict:
  """The changes of a hand sweep's variant, from its experiment record."""
  for path in sweep_workdir.glob('*/experiment.json'):
    record = json.loads(path.read_text())
    if record['name'] == name:
      return record['changes']
  raise SystemExit(f'{sweep_workdir}: no experiment.json for variant {name!r}')


def run_one(name: str, spec: dict, out: pathlib.Path, fraction: float) -> dict:
  folder = out / name
  folder.mkdir(parents=True, exist_ok=True)
  hand_wall = _launch([*spec['hand'], '--mode=sweep', f'--workdir={folder / "hand"}'], folder / 'hand.log')
  results = pd.read_csv(folder / 'hand' / 'sweep_results.csv')
  best = results.sort_values('accuracy_mean', ascending=False, kind='stable').iloc[0]
  hand_changes = _variant_changes(folder / 'hand', str(best['experiment']))
  budget = max(30, int(fraction * hand_wall))
  auto_wall = _launch([*spec['base'], '--mode=auto', f'--workdir={folder / "auto"}',
                       f'--config.auto.time_budget={budget}s'], folder / 'auto.log')
  auto = json.loads((folder / 'auto' / 'auto.json').read_text())
  # The choice as changes to the base config (what a sweep variant names), from the configuration auto refitted.
  base = config_from_argv(['launch.py', *spec['base']])
  auto_changes = config_changes(base, config_from_json(auto['chosen']['config']), skip=('name', 'sweep.', 'auto.'))
  variants = (variant_spec('hand', hand_changes), variant_spec('auto', auto_changes))
  _launch([*spec['base'], '--mode=sweep', f'--workdir={folder / "paired"}', f'--config.sweep.variants={variants!r}',
           '--config.sweep.baseline=hand', f'--config.sweep.seeds={FRESH_SEEDS!r}'], folder / 'paired.log')
  summary = pd.read_csv(folder / 'paired' / 'sweep_results.csv').set_index('experiment')
  diff = pd.read_csv(folder / 'paired' / 'sweep_differences.csv')
  diff = diff[diff['metric'] == 'accuracy'].iloc[0]
  state = json.loads((folder / 'auto' / 'auto_state.json').read_text())

  def arm(key):
    row = summary.loc[key]
    return dict(mean=float(row['accuracy_mean']), ci_low=float(row['accuracy_ci_low']),
                ci_high=float(row['accuracy_ci_high']), models=int(row['models']))

  return dict(data=name, overrides=spec['base'][1:], hand_variants=len(results), hand_best=str(best['experiment']), hand_changes=hand_changes,
              hand_sweep_accuracy=float(best['accuracy_mean']), hand_wall_seconds=hand_wall,
              auto_budget_seconds=budget, auto_wall_seconds=auto_wall, auto_used_seconds=state['used_seconds'],
              auto_stages=state['stages'], auto_chosen=auto['chosen']['name'], auto_changes={k: repr(v) for k, v in auto_changes.items()},
              auto_trials=int(sum(1 for _ in (folder / 'auto' / 'trials').iterdir())),
              paired_hand=arm('hand'), paired_auto=arm('auto'),
              difference=dict(mean=float(diff['mean_difference']), ci_low=float(diff['ci_low']),
                              ci_high=float(diff['ci_high']), pairs=int(diff['pairs']), wins=int(diff['wins']),
                              losses=int(diff['losses'])),
              time_ratio=auto_wall / hand_wall)


def table(rows: list[dict]) -> str:
  lines = ['| data | hand arms | hand wall s | best hand arm | auto budget s | auto wall s | auto / hand time | '
           'hand acc (fresh seeds) | auto acc (fresh seeds) | auto - hand [95% CI] | wins/losses |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    h, a, d = r['paired_hand'], r['paired_auto'], r['difference']
    lines.append(f'| {r["data"]} | {r["hand_variants"]} | {r["hand_wall_seconds"]:.0f} | {r["hand_best"]} | '
                 f'{r["auto_budget_seconds"]} | {r["auto_wall_seconds"]:.0f} | {r["time_ratio"]:.2f} | '
                 f'{h["mean"]:.3f} [{h["ci_low"]:.3f}, {h["ci_high"]:.3f}] | '
                 f'{a["mean"]:.3f} [{a["ci_low"]:.3f}, {a["ci_high"]:.3f}] | '
                 f'{d["mean"]:+.3f} [{d["ci_low"]:+.3f}, {d["ci_high"]:+.3f}] | {d["wins"]}/{d["losses"]} |')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-auto')
  p.add_argument('--data', nargs='+', default=['footprint', 'digits'], choices=['footprint', 'digits'])
  p.add_argument('--epochs', type=int, default=8)
  p.add_argument('--fraction', type=float, default=0.5, help="auto's budget as a share of the hand sweep's wall")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override for every launch, e.g. data.image_size=60,40 (repeatable)')
  args = p.parse_args()
  specs = data_sets(args.epochs, args.set)
  rows = [run_one(name, specs[name], args.out, args.fraction) for name in args.data]
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / 'bench_auto.json').write_text(json.dumps(rows, indent=1))
  (args.out / 'bench_auto.md').write_text(table(rows) + '\n')
  print(table(rows))


if __name__ == '__main__':
  main()
