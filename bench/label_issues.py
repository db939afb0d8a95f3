"""How well `--mode label_issues` finds planted label flips, and what excluding them does to clean test accuracy.

    python -m bench.label_issues [--out runs/bench-label-issues] [--data digits footprint] [--noise 0.1 0.2]
                                 [--epochs 20] [--seeds 0 1 2] [--footprint-size 60 40]

For each data set and noise rate, all through launch.py:
1. the data as a Kaggle layout under --out: a clean test set (digits: a stratified 20% of scikit-learn's 1,797;
   footprint: the embedded synthetic set's own test images and hidden labels, solution.csv), and a train.csv in
   which a --noise fraction of the labels is moved to another class drawn at random (seeded; planted.csv);
2. before: `--mode sweep` of the config's CNN (configs/digits.py, configs/footprint.py's exp4) over 5 folds x
   --seeds, then `--mode label_issues` on it: precision and recall of label_issues.csv against the planted set;
3. after: the same sweep with `--config.data.exclude_csv=<before>/label_issues.csv`;
4. clean test accuracy of each sweep's fold ensemble (`--mode submit --config.submit.average_folds=True`, argmax,
   uncalibrated) against the clean test labels.
The footprints train at --footprint-size (height, width) instead of 120x80 to fit a CPU budget. Results go to
--out/label_issues.json and .md; docs/label_issues.md records them with the command and the date.
"""
import argparse
import datetime
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass import fileio  # noqa: E402
from fpclass.data import footprints  # noqa: E402


def _launch(args: list, log: pathlib.Path) -> float:
  """Runs launch.py with `args`, its output in `log`; returns the wall seconds."""
  start = time.perf_counter()
  with log.open('w') as out:
    done = subprocess.run([sys.executable, str(REPO / 'launch.py'), *map(str, args)], cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT)
  if done.returncode:
    raise SystemExit(f'launch.py {" ".join(map(str, args))} failed ({done.returncode}); see {log}')
  return time.perf_counter() - start


def _plant(labels: np.ndarray, classes: list, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
  """(noisy labels, planted indices): a `noise` fraction moved to another class, drawn uniformly."""
  planted = np.sort(rng.choice(len(labels), int(round(noise * len(labels))), replace=False))
  noisy = labels.copy()
  for i in planted:
    noisy[i] = rng.choice([c for c in classes if c != labels[i]])
  return noisy, planted


def digits_data(root: pathlib.Path, noise: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
  """scikit-learn's digits as PNGs: a stratified clean 20% test set, the rest with planted flips."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  names = np.array([f'digit_{i:04d}.png' for i in range(len(images))])
  labels = digits.target.astype(str)
  train, test = train_test_split(np.arange(len(images)), test_size=0.2, stratify=labels, random_state=seed)
  for folder, index in (('train', train), ('test', test)):
    (root / folder).mkdir(parents=True)
    for i in index:
      Image.fromarray(images[i]).save(root / folder / names[i])
  noisy, planted = _plant(labels[train], sorted(set(labels)), noise, np.random.default_rng(seed))
  frame = pd.DataFrame({'filename': names[train], 'label': noisy, 'clean': labels[train]})
  return frame, pd.DataFrame({'filename': names[test], 'label': labels[test]})


def footprint_data(root: pathlib.Path, noise: float, seed: int, cache: pathlib.Path):
  """The embedded synthetic footprints (generated once into `cache`): its train images with planted flips in a
  new train.csv, its test images and their hidden labels (solution.csv) as the clean test set."""
  source = footprints.ensure_synthetic_footprints(cache, footprints.FootprintSpec())
  clean = pd.read_csv(source / 'train.csv', dtype=str)
  root.mkdir(parents=True)
  for folder in ('train', 'test'):   # links: the generated files stay where they are, unchanged
    (root / folder).symlink_to(source / folder, target_is_directory=True)
  shutil.copy(source / 'sample_submission.csv', root / 'sample_submission.csv')
  labels = clean['SEX'].to_numpy()
  noisy, planted = _plant(labels, sorted(set(labels)), noise, np.random.default_rng(seed))
  frame = pd.DataFrame({'filename': clean['filename'], 'label': noisy, 'clean': labels})
  solution = pd.read_csv(source / 'solution.csv', dtype=str).rename(columns={'SEX': 'label'})
  return frame, solution


def config_flags(data: str, root: pathlib.Path, args) -> list:
  flags = [f'--config.data.root={root}', '--config.data.source=kaggle_csv', '--config.data.id_column=filename',
           '--config.data.label_column=label', f'--config.train.epochs={args.epochs}',
           '--config.train.tensorboard=False', f'--config.sweep.seeds={tuple(args.seeds)}']
  if data == 'digits':
    return ['--config=configs/digits.py', *flags]
  height, width = args.footprint_size
  return ['--config=configs/footprint.py:exp4', *flags, f'--config.data.image_size=({height},{width})',
          '--config.explain.after_training=False']


def test_accuracy(flags: list, sweep: pathlib.Path, clean_test: pd.DataFrame, log: pathlib.Path) -> float:
  """The fold ensemble's argmax accuracy on the clean test labels."""
  _launch([*flags, f'--workdir={sweep / "base"}', '--mode=submit', '--config.submit.average_folds=True',
           '--config.submit.calibrated=False'], log)
  submission = pd.read_csv(sweep / 'base' / 'submission.csv', dtype=str).set_index('filename')['label']
  truth = clean_test.set_index('filename')['label']
  return float((submission.loc[truth.index] == truth).mean())


def run_case(data: str, noise: float, args) -> dict:
  case = args.out / f'{data}-noise{round(noise * 100)}'
  if case.exists():
    shutil.rmtree(case)
  root = case / 'data'
  if data == 'digits':
    train, clean_test = digits_data(root, noise, args.seed)
  else:
    train, clean_test = footprint_data(root, noise, args.seed, args.out / 'cache')
  fileio.write_csv(root / 'train.csv', train[['filename', 'label']])
  fileio.write_csv(case / 'planted.csv', train[train['label'] != train['clean']])
  fileio.write_csv(case / 'clean_test.csv', clean_test)
  flags = config_flags(data, root, args)
  before, after = case / 'before', case / 'after'
  seconds = _launch([*flags, f'--workdir={before}', '--mode=sweep'], case / 'sweep_before.log')
  _launch([*flags, f'--workdir={before}', '--mode=label_issues'], case / 'label_issues.log')
  found = set(pd.read_csv(before / 'label_issues.csv', dtype=str)['file'])
  planted = set(train.loc[train['label'] != train['clean'], 'filename'])
  hits = len(found & planted)
  exclude = f'--config.data.exclude_csv={before / "label_issues.csv"}'
  _launch([*flags, exclude, f'--workdir={after}', '--mode=sweep'], case / 'sweep_after.log')
  oof = pd.read_csv(before / 'label_quality.csv', dtype=str)
  return dict(data=data, noise=noise, train=len(train), planted=len(planted), flagged=len(found), hits=hits,
              precision=hits / max(1, len(found)), recall=hits / max(1, len(planted)),
              suggested_right=int(sum(train.set_index('filename').loc[list(found & planted), 'clean'] ==
                                      oof.set_index('file').loc[list(found & planted), 'suggested_label'])),
              test=len(clean_test),
              test_accuracy_before=test_accuracy(flags, before, clean_test, case / 'submit_before.log'),
              test_accuracy_after=test_accuracy([*flags, exclude], after, clean_test, case / 'submit_after.log'),
              sweep_seconds=round(seconds))


def markdown(rows: list, args) -> str:
  lines = ['| data | noise | train | planted | flagged | precision | recall | suggested = true | clean test acc. '
           'before | after exclusion |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["data"]} | {r["noise"]:.0%} | {r["train"]} | {r["planted"]} | {r["flagged"]} | '
                 f'{r["precision"]:.3f} | {r["recall"]:.3f} | {r["suggested_right"]} of {r["hits"]} | '
                 f'{r["test_accuracy_before"]:.4f} | {r["test_accuracy_after"]:.4f} |')
  return '\n'.join(lines) + f'\n\n{len(args.seeds)} seeds x 5 folds, {args.epochs} epochs at most; ' \
      f'{datetime.date.today().isoformat()}\n'


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-label-issues')
  p.add_argument('--data', nargs='+', choices=('digits', 'footprint'), default=['digits', 'footprint'])
  p.add_argument('--noise', nargs='+', type=float, default=[0.1, 0.2])
  p.add_argument('--epochs', type=int, default=20)
  p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
  p.add_argument('--seed', type=int, default=0, help='seeds the test split and the planting')
  p.add_argument('--footprint-size', nargs=2, type=int, default=[60, 40], metavar=('HEIGHT', 'WIDTH'))
  args = p.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  rows = []
  for data in args.data:
    for noise in args.noise:
      rows.append(run_case(data, noise, args))
      print(json.dumps(rows[-1]), flush=True)
      fileio.write_json(args.out / 'label_issues.json', dict(command=' '.join(sys.argv), rows=rows))
  fileio.write_text(args.out / 'label_issues.md', markdown(rows, args))
  print(markdown(rows, args))


if __name__ == '__main__':
  main()
