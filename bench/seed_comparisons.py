"""Seed 001's mean +- std over repeated runs and seed 003's 150 vs 300 image-size comparison, through
`launch.py --mode sweep` on stand-in TFDS data (tests/tfds_stand_in.py: real ArrayRecord files).

    python -m bench.seed_comparisons [--out runs/bench-seeds] [--epochs 5] [--runs 5]

- seed 001: configs/cifar_vehicles.py (the 3-block CNN), `--runs` seeds on the fixed holdout, on a stand-in
  cifar10 of `--cifar-train` / `--cifar-test` images (colour noise around one colour per class);
- seed 003: configs/horses_humans.py (the 3-conv CNN) at 150x150 and 300x300, `--size-seeds` seeds each, on a
  stand-in horses_or_humans of `--hh-train` / `--hh-val` 300x300 images (two brightness classes).

Each prints its sweep_results.md (parameters, seconds per model-epoch, mean +- std [95% CI]). The stand-in
data is small and synthetic, so only the mechanism, the parameter counts and the relative times carry over
to the real datasets, not the accuracies.
"""
import argparse
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def sweep(config: str, workdir: pathlib.Path, overrides: dict) -> None:
  if workdir.exists():
    sys.exit(f'{workdir} exists; choose another --out')
  subprocess.run([sys.executable, str(REPO / 'launch.py'), '--config', str(REPO / config), '--mode=sweep',
                  f'--workdir={workdir}', *[f'--config.{k}={v}' for k, v in overrides.items()]], check=True)
  print(f'\n== {config}: {workdir / "sweep_results.md"}\n{(workdir / "sweep_results.md").read_text()}')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='runs/bench-seeds')
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--runs', type=int, default=5, help='seed 001: repeated runs (seeds)')
  parser.add_argument('--cifar-train', type=int, default=2000)
  parser.add_argument('--cifar-test', type=int, default=400)
  parser.add_argument('--size-seeds', type=int, default=3, help='seed 003: seeds per image size')
  parser.add_argument('--hh-train', type=int, default=256)
  parser.add_argument('--hh-val', type=int, default=64)
  parser.add_argument('--only', choices=('001', '003'), default=None)
  args = parser.parse_args()
  sys.path.insert(0, str(REPO))
  from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in, two_class_image
  out = pathlib.Path(args.out).absolute()
  tfds_dir = out / 'tfds'

  if args.only in (None, '001'):
    if not (tfds_dir / 'cifar10').exists():
      prepare_stand_in('cifar10', tfds_dir, {'train': args.cifar_train, 'test': args.cifar_test}, cifar_like_image,
                       CIFAR10_NAMES)
    sweep('configs/cifar_vehicles.py', out / 'seed001-runs',
          {'data.tfds.data_dir': tfds_dir, 'train.epochs': args.epochs, 'sweep.folds': '(-1,)',
           'sweep.seeds': str(tuple(range(args.runs)))})

  if args.only in (None, '003'):
    if not (tfds_dir / 'horses_or_humans').exists():
      prepare_stand_in('horses_or_humans', tfds_dir, {'train': args.hh_train, 'test': args.hh_val},
                       two_class_image((300, 300)))
    variants = "('size150: data.image_size=(150,150)', 'size300: data.image_size=(300,300)')"
    sweep('configs/horses_humans.py', out / 'seed003-sizes',
          {'data.tfds.data_dir': tfds_dir, 'train.epochs': args.epochs, 'sweep.folds': '(-1,)',
           'sweep.seeds': str(tuple(range(args.size_seeds))), 'sweep.variants': variants})


if __name__ == '__main__':
  main()
