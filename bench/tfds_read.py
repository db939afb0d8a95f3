"""How long reading a full-size CIFAR-10 through `tfds.data_source` takes, first and from the decode cache.

    python -m bench.tfds_read [--train 50000 --test 10000] [--out runs/bench-tfds-read]

The dataset is a stand-in prepared as real ArrayRecord files (tests/tfds_stand_in.py); records are 32x32
PNGs, as in the real prepared cifar10.
"""
import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--train', type=int, default=50000)
  parser.add_argument('--test', type=int, default=10000)
  parser.add_argument('--out', default='runs/bench-tfds-read')
  args = parser.parse_args()
  sys.path.insert(0, str(REPO))
  from fpclass.config.inputs import DataSettings
  from fpclass.data import pipeline
  from tests.conftest import load_config
  from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in
  out = pathlib.Path(args.out).absolute()
  if (out / 'cache').exists():
    sys.exit(f'{out / "cache"} exists; choose another --out')
  if not (out / 'tfds' / 'cifar10').exists():
    start = time.perf_counter()
    prepare_stand_in('cifar10', out / 'tfds', {'train': args.train, 'test': args.test}, cifar_like_image,
                     CIFAR10_NAMES)
    print(f'prepared {args.train} + {args.test} records in {time.perf_counter() - start:.1f} s')
  config = load_config('configs/cifar_vehicles.py', **{'data.tfds.data_dir': str(out / 'tfds'),
                                                       'data.cache_dir': str(out / 'cache')})
  for attempt in ('first read', 'from the decode cache'):
    wall, cpu = time.perf_counter(), time.process_time()
    decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
    print(f'{attempt}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU '
          f'({len(decoded.pool)} train + {len(decoded.test)} test images)')


if __name__ == '__main__':
  main()
