"""Batch-norm statistics on a small data set: the running averages against `config.train.bn_statistics='precise'`.

    python -m bench.precise_bn [--out runs/bench-precise-bn] [--epochs 19] [--images 250] [--seeds 0 1 2]

The data: random crops (60 to 200 px a side, JPEG) of the two photos scikit-learn ships (`load_sample_images`:
china, flower), `--images` per class, as an ImageFolder; nothing downloaded. Seed 004's cats-vs-dogs CNN
(configs/cats_dogs.py: three conv blocks with Keras' batch norm, momentum 0.99) trains on it at 64x64 through
launch.py, once with each setting per seed, on the config's own holdout. Reported per seed: each epoch's validation
accuracy under both settings, and whether training was the same (train loss and accuracy equal, as they must be).
Results go to --out/precise_bn.json; docs/finetuning.md records them with the command and the date.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]


def crops(root: pathlib.Path, per_class: int) -> None:
  from PIL import Image
  from sklearn.datasets import load_sample_images
  rng = np.random.default_rng(0)
  for name, image in zip(('china', 'flower'), load_sample_images().images):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    height, width, _ = image.shape
    for i in range(per_class):
      h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
      y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
      Image.fromarray(image[y:y + h, x:x + w]).save(folder / f'{name}_{i:03d}.jpg', quality=85)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-precise-bn')
  p.add_argument('--epochs', type=int, default=19)
  p.add_argument('--images', type=int, default=250)
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  args = p.parse_args()
  root = args.out / 'crops'
  if not root.exists():
    crops(root, args.images)
  results = {}
  for seed in args.seeds:
    frames = {}
    for mode in ('running', 'precise'):
      workdir = args.out / f'seed{seed}-{mode}'
      subprocess.run([sys.executable, 'launch.py', '--config=configs/cats_dogs.py', f'--config.data.root={root}',
                      '--config.data.image_size=(64,64)', f'--config.train.epochs={args.epochs}', f'--config.seed={seed}',
                      '--config.explain.after_training=False', '--config.train.tensorboard=False',
                      f'--config.train.bn_statistics={mode}', f'--workdir={workdir}'], cwd=REPO, check=True,
                     capture_output=True)
      frames[mode] = pd.read_csv(workdir / 'metrics.csv')
    same = frames['running'][['train_loss', 'train_accuracy']].equals(frames['precise'][['train_loss', 'train_accuracy']])
    results[seed] = dict(training_equal=bool(same), **{f'{mode}_val_accuracy': frame['val_accuracy'].round(3).tolist()
                                                       for mode, frame in frames.items()})
    print(f'seed {seed}: training equal {same}; last val accuracy running {frames["running"]["val_accuracy"].iloc[-1]:.3f}, '
          f'precise {frames["precise"]["val_accuracy"].iloc[-1]:.3f}', flush=True)
  (args.out / 'precise_bn.json').write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
  main()
