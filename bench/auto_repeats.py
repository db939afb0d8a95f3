"""`--mode auto` launched again and again against one bench run's hand models: the spread of auto's verdict.

    python -m bench.auto_repeats --run /tmp/b/out/mnist --out /tmp/rep/mnist [--repeats 4] [--budget S]

One `python -m bench.auto` run scores one auto run against the hand sweep. Between two runs of the same commit
the cost model's reading of the machine moves the bracket (how many trials, at how many epochs), and with it the
choice and the verdict, so a single run says little about auto's worst case. This bench keeps the run's hand arms
(their models and test predictions are read, not trained again) and launches `--mode auto` `--repeats` more times
with the run's own command and budget (`--budget` to change it), each in `--out/auto-<k>`, one after the other.
Each final model predicts the run's test images (and its shifted ones, where the run has them) through `--mode
predict`, and is paired with the hand refit and the hand sweep + `--mode ensemble` as `bench/auto.py` pairs them.
Per repeat: its budget and the seconds used, the choice, whether a rung promoted a tie (the best beside the config
as given), whether the final stage kept the mix, and the differences. The summary gives, per comparison, each
repeat's mean difference, the worst of them, and how many repeats won at least as many images as they lost and
how many had their interval above 0. Written to --out/auto_repeats.json; --out must not hold a run.
"""
import argparse
import json
import pathlib
import shlex
import sys
import time

import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import auto as bench_auto  # noqa: E402
from fpclass import fileio  # noqa: E402

HAND = {'hand': 'hand-refit', 'hand+ensemble': 'hand/ensemble'}


def auto_arguments(run: dict, workdir: pathlib.Path, budget: int) -> list[str]:
  """The run's own `--mode auto` launch (bench_auto.json's commands), with another workdir and budget."""
  (command,) = [c['command'] for c in run['commands'] if c['step'] == 'auto']
  args = shlex.split(command)[2:]   # after 'python launch.py'
  kept = [a for a in args if not a.startswith(('--workdir=', '--config.auto.time_budget='))]
  if len(kept) != len(args) - 2:
    raise SystemExit(f'the run\'s auto command has no --workdir= and --config.auto.time_budget= to replace: {command}')
  return [*kept, f'--workdir={workdir}', f'--config.auto.time_budget={budget}s']


def test_sets(folder: pathlib.Path, run: dict) -> dict:
  """{set name: (its rows: file and label, its listing for --mode predict)} of the run's test images."""
  sets = {'test': (pd.read_csv(folder / 'test_split.csv', dtype=str, keep_default_na=False), 'test_images.csv')}
  if 'shifted' in run:
    sets['shifted'] = (bench_auto.shifted_rows(folder, run['shifted']['kind']), 'shifted_images.csv')
  return sets


def brackets_of(workdir: pathlib.Path) -> list:
  """Each bracket's rungs and the trials each rung promoted (auto_state.json): a rung that planned one
  configuration above and promoted two is the tie rule's (`fpclass.auto.one_se.promoted`)."""
  state = json.loads((workdir / 'auto_state.json').read_text())
  return [dict(bracket=b['index'], promoted=b.get('promoted', []), rungs=b['rungs']) for b in state['brackets']]


def repeat(k: int, args, run: dict, sets: dict, hand: dict, launch: bench_auto.Launcher) -> dict:
  workdir = args.out / f'auto-{k}'
  seconds = launch(f'auto-{k}', auto_arguments(run, workdir, args.budget))
  final = workdir / 'final'
  summary = json.loads((workdir / 'auto.json').read_text())
  row = dict(repeat=k, budget_seconds=args.budget, wall_seconds=seconds, auto=bench_auto.auto_accounts(workdir),
             kept=summary['chosen'].get('final_kept'), brackets=brackets_of(workdir), sets={})
  for name, (rows, listing) in sets.items():
    right = bench_auto.correct_on_test(launch, f'predict-{name}-{k}', final, args.run, rows, listing)
    pairs = {f'auto_minus_{arm}': bench_auto.paired(right, hand[name][arm], args.seed) for arm in HAND}
    row['sets'][name] = dict(accuracy=float(right.mean()), **pairs)
  return row


def summary(rows: list[dict]) -> dict:
  out = {}
  for name in rows[0]['sets']:
    for arm in HAND:
      key = f'auto_minus_{arm}'
      differences = [r['sets'][name][key] for r in rows]
      out[f'{name}: {key}'] = dict(
          means=[d['mean'] for d in differences], worst=min(d['mean'] for d in differences),
          at_least_even_by_wins=sum(d['wins'] >= d['losses'] for d in differences),
          interval_above_0=sum(d['ci_low'] > 0 for d in differences), repeats=len(rows))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--run', type=pathlib.Path, required=True, help="a bench/auto.py data set's folder (--out/<data>)")
  p.add_argument('--out', type=pathlib.Path, required=True)
  p.add_argument('--repeats', type=int, default=4)
  p.add_argument('--budget', type=int, default=0, help="auto's budget in seconds (0: the run's own)")
  p.add_argument('--seed', type=int, default=0, help='the bootstrap')
  args = p.parse_args()
  args.run, args.out = args.run.resolve(), args.out.resolve()
  if args.out.exists() and any(args.out.iterdir()):
    raise SystemExit(f'{args.out} already holds a run: choose another --out (nothing is deleted)')
  run = json.loads((args.run / 'bench_auto.json').read_text())
  args.budget = args.budget or int(run['auto_budget_seconds'])
  (args.out / 'logs').mkdir(parents=True, exist_ok=True)
  launch = bench_auto.Launcher(args.out / 'logs')
  sets = test_sets(args.run, run)
  hand = {name: {arm: bench_auto.correct_from(args.run / folder, bench_auto.prediction_file(listing), rows)
                 for arm, folder in HAND.items()}
          for name, (rows, listing) in sets.items()}
  rows = []
  for k in range(1, args.repeats + 1):
    rows.append(repeat(k, args, run, sets, hand, launch))
    result = dict(date=time.strftime('%Y-%m-%d'), run=str(args.run), budget_seconds=args.budget,
                  hand_accuracy={name: {arm: float(r.mean()) for arm, r in arms.items()}
                                 for name, arms in hand.items()},
                  repeats=rows, summary=summary(rows), commands=launch.commands)
    fileio.write_json(args.out / 'auto_repeats.json', result)   # after every repeat: a stopped bench keeps them
    print(json.dumps(result['summary'], indent=1), flush=True)


if __name__ == '__main__':
  main()
