"""The digits recipe against the fine-tuning recipe (configs/finetune.py), from scratch, as one sweep with
intervals: scikit-learn's 8x8 digits written as an ImageFolder (one PNG per image, a folder per class), then
`launch.py --mode sweep` over 5 folds x 2 seeds of each recipe. It checks that the recipe's pieces (AdamW,
warmup + cosine, layer decay, EMA, drop path, RandAugment, mixup/cutmix, label smoothing, erasing) train together
through the real file path; it claims nothing about pretrained gains (nothing can be downloaded here).

    python bench/digits_finetune_sweep.py [--out runs/digits-recipes] [--quick]

Prints the sweep's table (sweep_results.md) and writes it, with the command and the machine, to <out>/bench.json.
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
from PIL import Image
from sklearn.datasets import load_digits

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_image_folder(root: pathlib.Path) -> pathlib.Path:
  """The 1,797 digits as <root>/<class>/<index>.png (grey, 8x8, scaled to 0-255); written once."""
  done = root / '.complete'
  if done.exists():
    return root
  digits = load_digits()
  for index, (image, label) in enumerate(zip(digits.images, digits.target)):
    folder = root / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255.0 / 16.0).astype(np.uint8), mode='L').save(folder / f'{index:04d}.png')
  done.write_text('')
  return root


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/digits-recipes')
  parser.add_argument('--quick', action='store_true', help='2 epochs per member (a smoke run)')
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  root = write_image_folder(out / 'digits-folder')
  command = [sys.executable, str(REPO / 'launch.py'),
             f'--config={REPO / "configs/finetune.py"}:digits_sweep' + (',quick' if args.quick else ''),
             '--mode=sweep', f'--workdir={out / "sweep"}', f'--config.data.root={root}']
  started = time.perf_counter()
  subprocess.run(command, check=True, cwd=REPO, env=dict(os.environ))
  seconds = time.perf_counter() - started
  summary = out / 'sweep' / 'sweep_results.md'
  table = summary.read_text()
  print(table)
  record = dict(command=shlex.join(command), seconds=round(seconds, 1), table=table, machine=platform.processor()
                or platform.machine(), cpus=os.cpu_count(), date=time.strftime('%Y-%m-%d'))
  (out / 'bench.json').write_text(json.dumps(record, indent=1))
  print(f'{seconds:.0f} s; {out / "bench.json"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
