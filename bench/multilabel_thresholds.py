"""Do per-label thresholds beat 0.5? On a split no threshold saw: the synthetic shapes set's hidden test tags.

Trains configs/multilabel.py (or its `quick` variant) through launch.py, fits per-label thresholds with
`--mode calibrate` on the validation split, then scores the 500 test images (their tags are in the set's
solution.csv, which training never reads) at 0.5 and at the fitted thresholds, with a paired bootstrap
interval on the macro-F1 difference.

    python bench/multilabel_thresholds.py [--out runs/ml-thresholds] [--quick]

Prints a table and writes it, with the command and the machine, to <out>/bench.json.
"""
import argparse
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from fpclass.analysis import multilabel_metrics as mlm
from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.infer.inference import load_trained

REPO = pathlib.Path(__file__).resolve().parents[1]
BOOTSTRAP = 2000


def load_config(arg: str):
  sys.path.insert(0, str(REPO))
  from configs import multilabel  # a config file, imported as launch.py loads it
  return multilabel.get_config(arg)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='runs/ml-thresholds')
  parser.add_argument('--quick', action='store_true', help='the quick config (240 images, 2 epochs)')
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  workdir = out / 'run'
  arg = 'quick' if args.quick else ''
  flags = [f'--config={REPO / "configs/multilabel.py"}' + (f':{arg}' if arg else ''), f'--workdir={workdir}']
  started = time.time()
  for mode in ('train', 'calibrate'):
    subprocess.run([sys.executable, str(REPO / 'launch.py'), *flags, f'--mode={mode}'], check=True, cwd=REPO)
  config = load_config(arg)
  trained = load_trained(config, workdir)
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  root = decoded.root
  solution = pd.read_csv(root / 'solution.csv', dtype=str, keep_default_na=False).set_index('image_name')
  names = list(trained.class_names)
  test = decoded.test
  truth = np.array([[name in solution.loc[i, 'tags'].split() for name in names] for i in test.ids], np.uint8)
  probs = trained.probabilities(test.images, int(config.eval.batch_size))
  thresholds = Decision.for_model(trained, calibrated=True).label_thresholds(len(names))
  at_half, tuned = mlm.predict(probs, 0.5), mlm.predict(probs, thresholds)
  rng = np.random.default_rng(0)
  diffs = []
  for _ in range(BOOTSTRAP):
    rows = rng.integers(0, len(truth), len(truth))
    diffs.append(mlm.f1(truth[rows], tuned[rows], 'macro') - mlm.f1(truth[rows], at_half[rows], 'macro'))
  per_label = {name: dict(threshold=float(thresholds[k]), positives=int(truth[:, k].sum()),
                          f1_at_half=float(mlm.f1(truth[:, [k]], at_half[:, [k]], 'macro')),
                          f1_tuned=float(mlm.f1(truth[:, [k]], tuned[:, [k]], 'macro')))
               for k, name in enumerate(names)}
  result = dict(
      command=' '.join(shlex.quote(a) for a in ['python', *sys.argv]), machine=platform.processor() or platform.machine(),
      cpus=os.cpu_count(), seconds=round(time.time() - started, 1), test_images=int(len(truth)),
      map=mlm.mean_average_precision(truth, probs),
      macro_f1_at_half=mlm.f1(truth, at_half, 'macro'), macro_f1_tuned=mlm.f1(truth, tuned, 'macro'),
      macro_f1_difference_interval_95=[float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
      planet_f2_at_half=mlm.planet_f2(truth, at_half), planet_f2_tuned=mlm.planet_f2(truth, tuned),
      per_label=per_label)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'bench.json').write_text(json.dumps(result, indent=2) + '\n')
  print(f'test images {result["test_images"]}, mAP {result["map"]:.4f}')
  print(f'macro F1: 0.5 {result["macro_f1_at_half"]:.4f} -> thresholds {result["macro_f1_tuned"]:.4f} '
        f'(paired bootstrap 95% interval of the difference {result["macro_f1_difference_interval_95"]})')
  print('| label | positives | threshold | F1 at 0.5 | F1 tuned |\n|---|---|---|---|---|')
  for name, row in per_label.items():
    print(f'| {name} | {row["positives"]} | {row["threshold"]:.3f} | {row["f1_at_half"]:.4f} | {row["f1_tuned"]:.4f} |')


if __name__ == '__main__':
  main()
