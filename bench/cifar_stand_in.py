"""Seed 001's recipe on stand-in CIFAR-10, and its confusion table by original CIFAR class.

    python -m bench.cifar_stand_in [--train 5000 --test 1000 --epochs 5] [--out runs/bench-cifar]
    python -m bench.cifar_stand_in --mock [--train 2000]

Default: a stand-in cifar10 prepared as real ArrayRecord files (tests/tfds_stand_in.py): 32x32 colour noise
around one colour per class, with airplane and bird given the same sky blue (a planted version of the
seed's bird/plane confusion), trained through launch.py. With --mock the examples come from
tfds.testing.mock_data instead (random pixels and labels; its train and test splits are the same
examples), trained in-process, since mock_data patches this process only. Neither says anything about
real CIFAR-10.
"""
import argparse
import pathlib
import subprocess
import sys

import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--train', type=int, default=5000)
  parser.add_argument('--test', type=int, default=1000)
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--mock', action='store_true', help='examples from tfds.testing.mock_data')
  parser.add_argument('--out', default='runs/bench-cifar')
  args = parser.parse_args()
  sys.path.insert(0, str(REPO))
  from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in
  out = pathlib.Path(args.out).absolute()
  workdir = out / ('mock-run' if args.mock else 'run')
  if workdir.exists():
    sys.exit(f'{workdir} exists; choose another --out')
  tfds_dir = out / 'tfds'
  if not (tfds_dir / 'cifar10').exists():
    prepare_stand_in('cifar10', tfds_dir, {'train': args.train, 'test': args.test}, cifar_like_image, CIFAR10_NAMES)
  overrides = {'data.tfds.data_dir': str(tfds_dir), 'train.epochs': args.epochs}
  if args.mock:
    import tensorflow_datasets as tfds

    from fpclass.modes.runner import run
    from tests.conftest import load_config
    # USE_FILES: CIFAR-10's class names from the prepared metadata; the examples are mock_data's.
    with tfds.testing.mock_data(num_examples=args.train, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(tfds_dir)):
      run('train', load_config('configs/cifar_vehicles.py', **overrides), workdir)
  else:
    subprocess.run([sys.executable, str(REPO / 'launch.py'), '--config', str(REPO / 'configs/cifar_vehicles.py'),
                    f'--workdir={workdir}', *[f'--config.{k}={v}' for k, v in overrides.items()]], check=True)
  table = pd.read_csv(workdir / 'confusion_by_fine_label.csv')
  with pd.option_context('display.width', 200):
    print(table[table['split'] == 'test'].drop(columns='split').round(3).to_string(index=False))


if __name__ == '__main__':
  main()
