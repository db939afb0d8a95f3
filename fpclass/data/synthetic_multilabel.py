"""SYNTHETIC multi-label shapes: small RGB images holding any of five shapes, in Planet's Kaggle layout.

Each image shows every shape it is tagged with (circle, cross, ring, square, triangle) at a random position,
size, angle and colour, overlapping freely, on a noisy background of random colour and gradient. Two shapes
are rare (about 5% of images) and some images hold no shape, so per-label folds, thresholds and metrics
meet the cases they must handle, on data that needs no download.

Each label has an exact number of positives (its prevalence times the image count, at least one), placed
by the seed; each image is drawn by its own generator, `np.random.default_rng([seed, split_code, index])`,
so the set is the same from a seed whatever the order. It is written into a private folder renamed into
place at the end, with manifest.json (spec, classes, counts) last, as the mark of a complete set.
"""
import csv
import dataclasses
import json
import os
import pathlib

import numpy as np
from PIL import Image

from fpclass import fileio

GENERATOR_VERSION = 1  # Bump when rendering changes: it names the cache folder.
SHAPES = ('circle', 'cross', 'ring', 'square', 'triangle')  # sorted: the class order a loader infers
MANIFEST = 'manifest.json'
_TRAIN, _TEST, _LABELS = 0, 1, 2  # split codes for the generators
MIN_VISIBLE = 0.5  # share of a shape that the shapes drawn over it must leave visible
MAX_TRIES = 20     # places tried for a shape before one that hides too much is accepted


@dataclasses.dataclass(frozen=True)
class MultilabelSpec:
  """What to generate: seed, image counts, image side (pixels) and each shape's share of images."""
  seed: int = 0
  n_train: int = 2000
  n_test: int = 500
  size: int = 64
  prevalence: tuple = (('circle', 0.45), ('cross', 0.05), ('ring', 0.06), ('square', 0.40), ('triangle', 0.35))

  def __post_init__(self):
    if self.n_train < 1 or self.n_test < 0:
      raise ValueError(f'bad image counts in {self}')
    if self.size < 24:
      raise ValueError(f'size {self.size} is too small to draw the shapes')
    if tuple(name for name, _ in self.prevalence) != SHAPES or not all(0 < p < 1 for _, p in self.prevalence):
      raise ValueError(f'prevalence must give each of {SHAPES}, in order, a share in (0, 1)')

  @property
  def folder_name(self) -> str:
    shares = '-'.join(f'{p:g}' for _, p in self.prevalence)
    return f'v{GENERATOR_VERSION}-seed{self.seed}-{self.n_train}-{self.n_test}-{self.size}px-{shares}'


def labels_for(spec: MultilabelSpec) -> tuple[np.ndarray, np.ndarray]:
  """(train, hidden test) (N, 5) uint8 indicators: each label on exactly max(1, round(share x N)) images."""
  rng = np.random.default_rng([spec.seed, _LABELS])
  out = []
  for n in (spec.n_train, spec.n_test):
    indicator = np.zeros((n, len(SHAPES)), np.uint8)
    for k, (_, share) in enumerate(spec.prevalence):
      positives = min(n, max(1, int(round(share * n)))) if n else 0
      indicator[rng.permutation(n)[:positives], k] = 1
    out.append(indicator)
  return out[0], out[1]


def image_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
  """The generator of one image (split_code 0: train, 1: test)."""
  return np.random.default_rng([seed, split_code, index])


def render(rng: np.random.Generator, tags: np.ndarray, size: int) -> np.ndarray:
  """One (size, size, 3) uint8 image showing the shapes where `tags` (5,) is 1, in a random order."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  background = rng.uniform(40, 215, 3)
  slope = rng.uniform(-30, 30, (2, 3))  # a colour gradient across the frame, per channel
  img = background + (y[..., None] / size - 0.5) * slope[0] + (x[..., None] / size - 0.5) * slope[1]
  for _, alpha in place_shapes(rng, tags, size):
    img = img * (1 - alpha[..., None]) + _colour(rng, background) * alpha[..., None]
  img = img + rng.normal(0.0, rng.uniform(3.0, 12.0), img.shape)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def place_shapes(rng: np.random.Generator, tags: np.ndarray, size: int) -> list:
  """[(shape index, (size, size) coverage in [0, 1])] in drawing order, each later one over the earlier."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  placed, seen = [], []  # seen: the part of each placed shape that the later ones leave visible
  for k in rng.permutation(np.flatnonzero(tags)):
    for _ in range(MAX_TRIES):
      alpha = _alpha(rng, SHAPES[k], y, x, size)
      # a shape drawn over another must leave at least half of it visible, or the tag would name nothing seen
      if all(np.sum(v * (1 - alpha)) >= MIN_VISIBLE * np.sum(a) for (_, a), v in zip(placed, seen)):
        break
    seen = [v * (1 - alpha) for v in seen] + [alpha]
    placed.append((int(k), alpha))
  return placed


def _alpha(rng, shape, y, x, size):
  """Coverage in [0, 1] of one shape at a random place, size and angle, with a one-pixel soft edge."""
  radius = rng.uniform(0.12, 0.24) * size
  cy, cx = rng.uniform(radius, size - radius, 2)
  return np.clip(0.5 - _distance(shape, y - cy, x - cx, radius, rng.uniform(0, 2 * np.pi)), 0.0, 1.0)


def _colour(rng, background):
  """A random colour at least 100 (Euclidean, 0-255) from the background, so every shape can be seen."""
  for _ in range(100):
    colour = rng.uniform(0, 255, 3)
    if np.linalg.norm(colour - background) >= 100:
      return colour
  return 255.0 - background


def _distance(shape, dy, dx, r, angle):
  """Signed distance in pixels (negative inside) from the shape centred at the origin, `r` its half size."""
  c, s = np.cos(angle), np.sin(angle)
  u, v = dx * c + dy * s, dy * c - dx * s
  if shape == 'circle':
    return np.hypot(u, v) - r
  if shape == 'ring':
    return np.abs(np.hypot(u, v) - 0.75 * r) - 0.25 * r
  if shape == 'square':
    return np.maximum(np.abs(u), np.abs(v)) - 0.8 * r
  if shape == 'cross':
    bar = lambda a, b: np.maximum(np.abs(a) - r, np.abs(b) - 0.28 * r)
    return np.minimum(bar(u, v), bar(v, u))
  if shape == 'triangle':  # equilateral: the largest distance past its three edges
    normals = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
    return np.maximum.reduce([np.cos(a) * u + np.sin(a) * v for a in normals]) - 0.5 * r
  raise ValueError(f'unknown shape {shape!r}')


def tags_text(row: np.ndarray) -> str:
  """A row of an indicator as Planet writes it: the tags, space-separated, in class order."""
  return ' '.join(SHAPES[k] for k in np.flatnonzero(row))


def write_dataset(root: str | os.PathLike, spec: MultilabelSpec = MultilabelSpec()) -> pathlib.Path:
  """Writes the set at `root`, atomically; never overwrites a non-empty `root`.

  Layout: train.csv (image_name,tags; ids without extension, as Planet's), train/<id>.png, test/<id>.png,
  sample_submission.csv (every test id, no tags), solution.csv (hidden test tags), README.txt, and
  manifest.json, written last."""
  return fileio.write_folder(root, lambda folder: _generate_into(folder, spec))


def ensure_synthetic_multilabel(cache_dir: str | os.PathLike,
                                spec: MultilabelSpec = MultilabelSpec()) -> pathlib.Path:
  """The cached set for `spec` under `cache_dir` (fpclass.fileio.cache_root), generated on first use."""
  root = pathlib.Path(cache_dir) / 'synthetic_multilabel' / spec.folder_name
  return fileio.cached_folder(root, MANIFEST, lambda folder: write_dataset(folder, spec), 'synthetic set')


def _generate_into(folder: pathlib.Path, spec: MultilabelSpec) -> None:
  train, test = labels_for(spec)
  names = {}
  for split, code, indicator in (('train', _TRAIN, train), ('test', _TEST, test)):
    (folder / split).mkdir(parents=True)
    names[split] = [f'{split}_{i + 1:05d}' for i in range(len(indicator))]
    for i, (name, tags) in enumerate(zip(names[split], indicator)):
      Image.fromarray(render(image_rng(spec.seed, code, i), tags, spec.size), mode='RGB').save(
          folder / split / f'{name}.png')
  _write_csv(folder / 'train.csv', names['train'], [tags_text(r) for r in train])
  _write_csv(folder / 'sample_submission.csv', names['test'], [''] * len(test))
  _write_csv(folder / 'solution.csv', names['test'], [tags_text(r) for r in test])
  (folder / 'README.txt').write_text(_readme(spec, train, test), encoding='utf-8')
  manifest = dict(generator='fpclass.data.synthetic_multilabel', version=GENERATOR_VERSION,
                  spec=dataclasses.asdict(spec), class_names=list(SHAPES),
                  train=_counts(train), test=_counts(test), id_column='image_name', label_column='tags')
  (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')


def _counts(indicator) -> dict:
  return dict(images=int(len(indicator)), untagged=int(np.sum(~indicator.any(1))),
              positives={name: int(n) for name, n in zip(SHAPES, indicator.sum(0))})


def _write_csv(path: pathlib.Path, names, tags) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    out = csv.writer(f)
    out.writerow(['image_name', 'tags'])
    out.writerows(zip(names, tags))


def _readme(spec: MultilabelSpec, train, test) -> str:
  return f"""SYNTHETIC DATA - computer-drawn shapes, not a real data set.

Generated by fpclass.data.synthetic_multilabel (generator version {GENERATOR_VERSION}, seed {spec.seed}).
Each {spec.size}x{spec.size} RGB image holds any of the shapes {', '.join(SHAPES)}; its tags in
train.csv (image_name,tags, Planet's layout) name the shapes drawn. Scores measured on it say nothing
about real images.

train/  {len(train)} images, {_counts(train)['untagged']} with no shape
test/   {len(test)} images (hidden tags in solution.csv); sample_submission.csv lists them with no tags
Images per shape (train): {_counts(train)['positives']}
"""
