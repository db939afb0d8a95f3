"""The fold models of a few folders of a `bench/auto.py` run, each folder's models averaged, on its test images.

    python -m bench.fold_models --run /tmp/bshm/out/mnist --folders hand/lr-x3 hand/as-given
    python -m bench.fold_models --run /tmp/bshm2/out/mnist --folders auto/trials/trial-0002+auto/more/trial-0002-seed0

A folder (under --run, or absolute) is a sweep experiment or an auto trial (its fold*/ run workdirs); `a+b` joins
folders into one group, as the final stage joins a configuration's pieces. Each fold model predicts the run's
test_images.csv, and its shifted_images.csv where the run has one (`--shifted-test`), through `--mode predict`'s
own code; a group's probabilities are the mean over its models. Prints and writes (--out, JSON) each group's
accuracy on each set: what `bench/auto.py` scores for the final models, for the pieces they are made of.
"""
import argparse
import json
import pathlib
import shlex
import sys

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.auto import shifted_rows  # noqa: E402
from fpclass import fileio  # noqa: E402
from fpclass.modes import predict as predict_mode  # noqa: E402
from fpclass.train import sidecar  # noqa: E402

SETS = {'test': 'test_images.csv', 'shifted': 'shifted_images.csv'}   # the lists bench/auto.py wrote


def truth(run: pathlib.Path, name: str) -> dict | None:
  """{file: label} of a test set of the run, None where the run has none."""
  if name == 'test':
    rows = pd.read_csv(run / 'test_split.csv', dtype=str)
    return dict(zip(rows['file'], rows['label']))
  if not (run / SETS[name]).is_file():
    return None
  rows = shifted_rows(run, json.loads((run / 'bench_auto.json').read_text())['shifted']['kind'])
  return dict(zip(rows['file'], rows['label']))


def group_accuracy(run: pathlib.Path, folders: list[pathlib.Path], name: str, labels: dict) -> float:
  probs = []
  for model in sorted(m.parent for f in folders for m in f.glob('fold*/metadata.json')):
    config = sidecar.stored_config(model)
    config.predict.inputs = str(run / SETS[name])
    config.predict.output = f'bench_fold_models_{name}.csv'
    frame = pd.read_csv(predict_mode.predict(config, model), dtype={'path': str})
    columns = [c for c in frame.columns if c.startswith('p_')]
    probs.append(frame[columns].to_numpy())
  if not probs:
    raise SystemExit(f'{[str(f) for f in folders]}: no fold*/ model')
  predicted = np.asarray([c[2:] for c in columns])[np.mean(probs, 0).argmax(1)]
  return float(np.mean([p == labels[f] for p, f in zip(predicted, frame['path'])]))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--run', type=pathlib.Path, required=True, help="a bench/auto.py data set's folder (--out/<data>)")
  p.add_argument('--folders', nargs='+', required=True, help='folders under --run; a+b joins them')
  p.add_argument('--out', type=pathlib.Path, help='a JSON file for the table')
  args = p.parse_args()
  run = args.run.resolve()
  sets = {name: labels for name in SETS if (labels := truth(run, name)) is not None}
  rows = {}
  for group in args.folders:
    folders = [run / part for part in group.split('+')]
    rows[group] = {name: group_accuracy(run, folders, name, labels) for name, labels in sets.items()}
    print(group, json.dumps(rows[group]), flush=True)
  if args.out:
    fileio.write_json(args.out, dict(run=str(run), command=shlex.join(['python', '-m', 'bench.fold_models', *sys.argv[1:]]),
                                     accuracy=rows))


if __name__ == '__main__':
  main()
