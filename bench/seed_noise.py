"""How far a seed moves a rung's difference, against what `fpclass.auto.one_se.training_se` estimates from one seed.

    python -m bench.seed_noise --sweeps /tmp/seednoise /tmp/seednoise_mnist /tmp/seednoise_fashion \
        --out bench/results/2026-11-29/seed_noise.json

Each --sweeps folder is a `--mode sweep` workdir of two variants (the config as given first, a challenger second)
on one fold and several seeds, as a bottom rung trains them (docs/auto.md gives the commands). Per seed s, both
variants' seed-s models make one rung's pair: their accuracy difference, and the redrawn-decisions estimate of its
training noise. Over the seeds: the spread of the paired difference (the training's noise measured), and its ratio
to the estimate's root-mean-square. `one_se.SEED_SHARE` is the largest ratio over the sets measured.
"""
import argparse
import pathlib
import sys

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass import fileio  # noqa: E402
from fpclass.auto import one_se  # noqa: E402
from fpclass.train import oof  # noqa: E402


def measured(sweep: pathlib.Path) -> dict:
  """The sweep's paired differences over seeds and the one-seed estimates of their training noise."""
  variants = list(pd.read_csv(sweep / 'sweep_results.csv')['experiment'])   # the sweep's order
  given, challenger = (oof.read(sweep / name) for name in variants[:2])
  seeds = sorted(set(given['seed']) & set(challenger['seed']))
  if len(seeds) < 3:
    sys.exit(f'{sweep}: {len(seeds)} seeds shared by {variants[:2]}; a spread needs at least 3')
  pairs = [(challenger[challenger['seed'] == s], given[given['seed'] == s]) for s in seeds]
  differences = [oof.scores(a)['accuracy'] - oof.scores(b)['accuracy'] for a, b in pairs]
  estimates = [one_se.training_se(a, b, 'accuracy') for a, b in pairs]
  spread = float(np.std(differences, ddof=1))
  estimate = float(np.sqrt(np.mean(np.square(estimates))))
  return dict(sweep=str(sweep), variants=variants[:2], seeds=seeds, images=int(pairs[0][0]['id'].nunique()),
              differences=differences, seed_spread=spread, estimates=estimates, estimate_rms=estimate,
              ratio=spread / estimate,
              images_se=[one_se.difference_se(a, b, 'accuracy') for a, b in pairs])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sweeps', nargs='+', type=pathlib.Path, required=True)
  parser.add_argument('--out', type=pathlib.Path)
  args = parser.parse_args(argv)
  rows = [measured(s) for s in args.sweeps]
  for r in rows:
    print(f'{r["sweep"]}: {r["variants"][1]} - {r["variants"][0]} over seeds {r["seeds"]} on {r["images"]} images: '
          f'spread {r["seed_spread"]:.4f}, estimate {r["estimate_rms"]:.4f}, ratio {r["ratio"]:.2f}')
  summary = dict(largest_ratio=max(r['ratio'] for r in rows), seed_share=one_se.SEED_SHARE)
  print(f'largest ratio {summary["largest_ratio"]:.2f} (one_se.SEED_SHARE {one_se.SEED_SHARE})')
  if args.out:
    fileio.write_json(args.out, dict(argv=sys.argv, sets=rows, summary=summary))


if __name__ == '__main__':
  main()
