"""How well auto's cheap rungs rank what ends best, and the portfolio learned from the same table (issue 77).

    python -m bench.rung_ranks [--out runs/bench-rungs] [--data digits faces footprint mnist shapes] [--folds 3]

Per data set, every move of `fpclass.auto.portfolio.MOVES` and the config as given is trained by `--mode sweep`
(one process per fidelity, the moves as its variants, 1 seed) at each fidelity a rung of auto's search can have,
the epochs shortened as auto shortens them (`fpclass.auto.population.fidelity`: the schedule compressed into the
rung's epochs, the patience scaled):
- `1 fold, E/9`: the bottom rung of a 3-rung bracket (eta 3);
- `1 fold, E/3`: the middle rung, or the bottom of a 2-rung bracket;
- `all folds, E/9`: as many member-epochs as the middle rung, spent on more folds at fewer epochs;
- `all folds, E`: the top rung, the value each rung should predict.
For each lower fidelity: Spearman's and Kendall's rank correlation of the moves' values with their top values,
and the regret of its pick (the best top value minus the top value of the move it ranks first), with the
fidelity's member-epochs per move and its wall seconds (the first fidelity's include compiling every variant).
A move that is the config as given, or another move, on a set (batch norm where it is on) takes that one's
values. Then the portfolio: greedily, the move that most lowers the worst shortfall over the sets (each set's
best top value minus the best top value among the chosen moves and the config as given), ties broken by the mean
shortfall, then by the move's mean rank over the sets. Its size is chosen out of sample: for each size, each
set's shortfall under the portfolio built on the other sets (leave one set out), and the smallest size up to
`--most` (4: at the bench's budgets the first batch holds the config and four trials, and a longer portfolio
crowds out the neighbours) with the least worst held-out shortfall, then the least mean, is kept (`--portfolio N`
fixes it). `--table
rung_ranks.json` rebuilds the portfolio from an earlier run's table without training. Written to --out:
<data>/rung_ranks.json per set (with every command), rung_ranks.json (all, and the portfolio) and rung_ranks.md
(the tables).
"""
import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from scipy import stats

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass import fileio  # noqa: E402
from fpclass.auto.population import fidelity  # noqa: E402
from fpclass.auto.portfolio import MOVES, changes_for  # noqa: E402
from fpclass.config.training import TrainSettings  # noqa: E402
from fpclass.config.variants import variant_spec  # noqa: E402
from fpclass.modes.command_line import config_from_argv  # noqa: E402

# data set -> (config, overrides that fit it to this bench's CPU budget)
DATA = {'digits': ('configs/digits.py', ['train.epochs=27']),
        'faces': ('configs/faces.py', ['train.epochs=27']),
        'footprint': ('configs/footprint.py:exp0', ['data.image_size=(60,40)', 'train.epochs=18']),
        'mnist': ('configs/mnist.py', ['train.epochs=9']),
        'shapes': ('configs/multilabel.py', ['train.epochs=18'])}
AS_GIVEN = 'as-given'


def slug(move: str) -> str:
  """A move's name as a sweep variant's (letters, digits, '.', '_', '-')."""
  return move.replace(' + ', '-and-').replace('/', 'div').replace(' ', '_')


def fidelities(folds: int, epochs: int) -> dict:
  """{label: (sweep.folds, epochs)} of the rungs measured, the top last."""
  return {'1 fold, E/9': ((0,), max(1, round(epochs / 9))),
          '1 fold, E/3': ((0,), max(1, round(epochs / 3))),
          f'{folds} folds, E/9': ((), max(1, round(epochs / 9))),
          f'{folds} folds, E': ((), epochs)}


def run_sweep(folder: pathlib.Path, common: list, variants: tuple, sweep_folds: tuple, changes: dict,
              commands: list) -> pd.DataFrame:
  args = [*common, '--mode=sweep', f'--workdir={folder}', f'--config.sweep.variants={variants!r}',
          '--config.sweep.seeds=(0,)', f'--config.sweep.folds={sweep_folds!r}',
          *(f'--config.{k}={v!r}' for k, v in changes.items())]
  command = shlex.join(['python', 'launch.py', *args])
  print(command, flush=True)
  start = time.perf_counter()
  with (folder.parent / f'{folder.name}.log').open('w') as log:
    done = subprocess.run([sys.executable, 'launch.py', *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - start
  commands.append(dict(command=command, wall_seconds=seconds))
  if done.returncode:
    raise SystemExit(f'{folder}: launch.py failed ({done.returncode}); see {folder.parent / f"{folder.name}.log"}')
  return pd.read_csv(folder / 'sweep_results.csv'), seconds


def correlations(values: dict, top: dict, higher: bool) -> dict:
  names = sorted(top)
  low, high = np.array([values[n] for n in names]), np.array([top[n] for n in names])
  pick = max(names, key=lambda n: values[n] if higher else -values[n])
  best = max(high) if higher else min(high)
  return dict(spearman=float(stats.spearmanr(low, high).statistic),
              kendall=float(stats.kendalltau(low, high).statistic), pick=pick, regret=float(abs(best - top[pick])))


def run_one(name: str, args) -> dict:
  config_file, overrides = DATA[name]
  folder = args.out / name
  if folder.exists() and any(folder.iterdir()):
    raise SystemExit(f'{folder} already holds a run: choose another --out (nothing is deleted)')
  folder.mkdir(parents=True, exist_ok=True)
  common = [f'--config={config_file}', '--config.explain.after_training=False', '--config.train.tensorboard=False',
            f'--config.data.num_folds={args.folds}', *(f'--config.{o}' for o in overrides)]
  config = config_from_argv(['launch.py', *common])
  moves, aliases = {AS_GIVEN: {}}, {}   # aliases: a move that is another on this config (or the config itself)
  for move in MOVES:
    changes = changes_for(move, config)
    same = next((m for m, c in moves.items() if c == changes), None)
    if same is None:
      moves[move] = changes
    else:
      aliases[move] = same
  variants = tuple(variant_spec(slug(move), changes) for move, changes in moves.items())
  names = {slug(move): move for move in moves}
  train = TrainSettings.from_config(config.train)
  metric = 'map' if config.data.task == 'multilabel' else 'accuracy'
  commands, values, seconds, member_epochs = [], {}, {}, {}
  for label, (sweep_folds, epochs) in fidelities(args.folds, train.epochs).items():
    results, seconds[label] = run_sweep(folder / label.replace(' ', '').replace(',', '_').replace('/', 'd'),
                                        common, variants, sweep_folds, fidelity(train, epochs), commands)
    column = next(c for c in (f'{metric}_mean', 'accuracy_mean') if c in results)
    values[label] = {names[e]: float(v) for e, v in zip(results['experiment'].astype(str), results[column])}
    values[label].update({move: values[label][same] for move, same in aliases.items()})
    member_epochs[label] = (len(sweep_folds) or args.folds) * epochs
  top_label = list(values)[-1]
  row = dict(data=name, config=config_file, overrides=overrides, folds=args.folds, epochs=train.epochs, top=top_label,
             metric=column.removesuffix('_mean'), moves=moves, aliases=aliases, values=values, seconds=seconds,
             member_epochs=member_epochs,
             rungs={label: correlations(values[label], values[top_label], True) for label in list(values)[:-1]},
             date=time.strftime('%Y-%m-%d'), commands=commands)
  fileio.write_json(folder / 'rung_ranks.json', row)
  return row


def greedy_portfolio(rows: list[dict], size: int) -> list[dict]:
  """[{move, worst, mean}] in the order chosen: each step adds the move that most lowers the worst shortfall
  over the sets (then the mean), the config as given always in."""
  tops = [r['values'][r['top']] for r in rows]
  chosen, out = [AS_GIVEN], []

  def shortfalls(members):
    return [max(top.values()) - max(top.get(m, -np.inf) for m in members) for top in tops]

  candidates = sorted({m for top in tops for m in top} - {AS_GIVEN})
  # the third key, once the shortfalls are equal: the move's mean rank over the sets (1 = best there)
  rank = {m: float(np.mean([1 + sum(v > top.get(m, -np.inf) for v in top.values()) for top in tops]))
          for m in candidates}
  for _ in range(size):
    if not candidates:
      break
    scored = [(max(shortfalls(chosen + [m])), float(np.mean(shortfalls(chosen + [m]))), rank[m], m)
              for m in candidates]
    worst, mean, _, move = min(scored)
    chosen.append(move)
    candidates.remove(move)
    out.append(dict(move=move, worst=worst, mean=mean))
  base = shortfalls([AS_GIVEN])
  return [dict(move=AS_GIVEN, worst=max(base), mean=float(np.mean(base))), *out]


def held_out(rows: list[dict], size: int) -> list[float]:
  """Each set's shortfall (its best top value minus the best among the portfolio's moves) under the `size`-move
  portfolio built on the other sets: the portfolio judged on a set that did not choose it."""
  out = []
  for i, row in enumerate(rows):
    chosen = [p['move'] for p in greedy_portfolio(rows[:i] + rows[i + 1:], size)]
    top = row['values'][row['top']]
    out.append(max(top.values()) - max(top.get(m, -np.inf) for m in chosen))
  return out


def portfolio_size(rows: list[dict], most: int) -> tuple[int, dict]:
  """The smallest size up to `most` whose held-out shortfalls (`held_out`) have the least worst, then the least
  mean, and {size: (worst, mean)} for every size tried."""
  moves = {m for r in rows for m in r['values'][r['top']]} - {AS_GIVEN}
  scores = {k: (max(s), float(np.mean(s))) for k in range(min(most, len(moves)) + 1) for s in [held_out(rows, k)]}
  best = min(scores, key=lambda k: (round(scores[k][0], 6), round(scores[k][1], 6), k))
  return best, scores


def table(rows: list[dict], portfolio: list[dict], sizes: dict | None = None) -> str:
  lines = ['| data | rung | member-epochs per move | s | Spearman | Kendall | its pick | regret |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    for label, c in r['rungs'].items():
      lines.append(f'| {r["data"]} | {label} | {r["member_epochs"][label]} | {r["seconds"][label]:.0f} | '
                   f'{c["spearman"]:.2f} | '
                   f'{c["kendall"]:.2f} | {c["pick"]} | {c["regret"]:.3f} |')
  names = [r['data'] for r in rows]
  lines += ['', '| move | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  moves = sorted({m for r in rows for m in r['values'][r['top']]})
  for move in moves:
    cells = [f'{r["values"][r["top"]].get(move, float("nan")):.3f}' for r in rows]
    lines.append(f'| {move} | ' + ' | '.join(cells) + ' |')
  lines += ['', '| portfolio (in order) | worst shortfall | mean shortfall |', '|---|---|---|']
  lines += [f'| {p["move"]} | {p["worst"]:.3f} | {p["mean"]:.3f} |' for p in portfolio]
  if sizes:
    names = ', '.join(r['data'] for r in rows)
    lines += ['', f'| moves | held-out worst shortfall ({names}, each left out) | held-out mean |', '|---|---|---|']
    lines += [f'| {k} | {w:.4f} | {m:.4f} |' for k, (w, m) in sizes.items()]
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('runs/bench-rungs'))
  parser.add_argument('--data', nargs='+', default=list(DATA), choices=list(DATA))
  parser.add_argument('--folds', type=int, default=3)
  parser.add_argument('--portfolio', type=int, default=None,
                      help='moves in the portfolio (default: the size chosen leaving one set out)')
  parser.add_argument('--most', type=int, default=4, help='the most moves the chosen size may have')
  parser.add_argument('--table', type=pathlib.Path, default=None,
                      help="an earlier run's rung_ranks.json: rebuild the portfolio from its sets, training nothing")
  args = parser.parse_args()
  args.out = args.out.resolve()
  if args.table:
    rows = [r for r in json.loads(args.table.read_text())['sets'] if r['data'] in args.data]
  else:
    rows = [run_one(name, args) for name in args.data]
  size, sizes = portfolio_size(rows, args.most)
  portfolio = greedy_portfolio(rows, size if args.portfolio is None else args.portfolio)
  fileio.write_json(args.out / 'rung_ranks.json', dict(argv=sys.argv, sets=rows, portfolio=portfolio,
                                                       held_out={str(k): v for k, v in sizes.items()}))
  text = table(rows, portfolio, sizes)
  fileio.write_text(args.out / 'rung_ranks.md', text)
  print(text)


if __name__ == '__main__':
  main()
