"""SYNTHETIC plantar footprints: the default dataset when the Kaggle footprint data is absent.

The real competition images (predict SEX 0/1 from a grayscale footprint) cannot be downloaded, so this
module draws stand-ins: dark ink on a light scan, toes at the top, heel at the bottom. Each class has its own
mean foot shape (length, ball width, heel-to-ball ratio, arch contact, toe spread); the distributions
overlap, so a small CNN reaches roughly 0.75-0.87 validation accuracy rather than 1.0. Pose, pressure
texture, noise, left/right and partial prints vary independently of the class.

Every image comes from its own generator, `np.random.default_rng([seed, split_code, index])`, so any one
can be rebuilt alone, in any order or thread.
"""
import concurrent.futures
import csv
import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image

from fpclass import fileio

GENERATOR_VERSION = 1  # Bump when rendering changes: it names the cache folder.

_TRAIN, _TEST, _LABELS = 0, 1, 2  # split codes for the per-image generators
_MARKER = 'COMPLETE'

# Class-conditional shape parameters: (class 0 mean, class 1 mean, within-class sd). Lengths are fractions of
# the frame height, widths fractions of the foot length. The overlap is deliberate (see the module docstring).
_SHAPE = {
    'length': (0.765, 0.815, 0.035),       # foot length / frame height
    'ball_ratio': (0.366, 0.394, 0.022),   # ball width / foot length
    'heel_ratio': (0.690, 0.640, 0.050),   # heel width / ball width
    'arch': (0.315, 0.385, 0.150),         # midfoot contact width / ball width: ~0 high arch, ~0.8 flat
    'toe_spread': (0.980, 1.080, 0.080),   # spacing of the lesser toes, relative to a typical foot
}
_LIMITS = {'length': (0.62, 0.92), 'ball_ratio': (0.31, 0.45), 'heel_ratio': (0.50, 0.85),
           'arch': (0.0, 0.80), 'toe_spread': (0.80, 1.30)}
SHAPE_NAMES = tuple(_SHAPE)


@dataclasses.dataclass(frozen=True)
class FootprintSpec:
  """What to generate: seed, class counts of the labelled set, test size and image size (pixels)."""
  seed: int = 0
  n_class0: int = 845
  n_class1: int = 728
  n_test: int = 1055
  height: int = 240
  width: int = 160

  def __post_init__(self):
    if min(self.n_class0, self.n_class1, self.n_test) < 0 or self.n_class0 + self.n_class1 == 0:
      raise ValueError(f'bad class counts in {self}')
    if min(self.height, self.width) < 16:
      raise ValueError(f'image size {self.width}x{self.height} is too small to draw a footprint')

  @property
  def folder_name(self) -> str:
    return (f'v{GENERATOR_VERSION}-seed{self.seed}-{self.n_class0}-{self.n_class1}-{self.n_test}'
            f'-{self.width}x{self.height}')


def sample_shape(rng: np.random.Generator, label: int) -> dict:
  """Draws the class-conditional shape parameters (see `_SHAPE`) for one foot."""
  if label not in (0, 1):
    raise ValueError(f'label must be 0 or 1, got {label!r}')
  return {k: float(np.clip(rng.normal(m[label], m[2]), *_LIMITS[k])) for k, m in _SHAPE.items()}


def render_footprint(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
  """One synthetic footprint of class `label` as an (height, width) uint8 array: dark ink, light paper."""
  return _render(rng, sample_shape(rng, label), height, width)


def _pad(u, v, cu, cv, a, b, foot_px, angle=0.0):
  """Ink of an elliptic pressure pad (foot units): soft edge about a pixel wide, darker centre."""
  c, s = np.cos(angle), np.sin(angle)
  du, dv = u - cu, v - cv
  r = np.sqrt(((du * c + dv * s) / a) ** 2 + ((dv * c - du * s) / b) ** 2)
  # (r - 1) * sqrt(ab) * foot_px approximates the distance to the edge in pixels.
  edge = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * np.sqrt(a * b) * foot_px, -30, 30)))
  return edge * (0.7 + 0.3 * np.clip(1.0 - r * r, 0.0, 1.0))


def _smooth_field(rng, y, x, n_waves, max_freq):
  """A smooth random field in about [-1, 1] on the grid y (H,) by x (W,): a sum of random plane waves."""
  fy, fx = rng.uniform(-max_freq, max_freq, (2, n_waves, 1))
  a = 2 * np.pi * fy * y + rng.uniform(0, 2 * np.pi, (n_waves, 1))
  b = 2 * np.pi * fx * x
  # cos(a + b) = cos a cos b - sin a sin b turns the sum of waves into two small matrix products.
  return (np.cos(a).T @ np.cos(b) - np.sin(a).T @ np.sin(b)) / np.sqrt(n_waves / 2)


def _render(rng: np.random.Generator, shape: dict, height: int, width: int) -> np.ndarray:
  """Draws the nuisance variables from `rng` and renders `shape` (a `sample_shape` dict)."""
  # Pose, all independent of the class: a little scale, rotation, shift, and left or right foot.
  foot_px = shape['length'] * height * rng.uniform(0.96, 1.04)
  angle = np.deg2rad(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
  cy = height * (0.5 + rng.uniform(-0.03, 0.03))
  cx = width * (0.5 + rng.uniform(-0.04, 0.04))
  mirror = rng.random() < 0.5

  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  c, s = np.cos(angle), np.sin(angle)
  dx, dy = x - cx, y - cy
  u = (dx * c + dy * s) / foot_px               # across the foot, in foot lengths
  v = 0.5 - (dy * c - dx * s) / foot_px          # 0 at the back of the heel, 1 at the hallux tip
  if mirror:
    u = -u

  # Plantar anatomy in foot units. Medial side (hallux, arch) is u < 0.
  bw = shape['ball_ratio']
  hw = shape['heel_ratio'] * bw
  heel_cu = 0.012
  heel = _pad(u, v, heel_cu, 0.135, hw / 2, 0.135, foot_px)
  # Metatarsal line slants down laterally, hence the tilted ball.
  ball = _pad(u, v, 0.0, 0.665, bw / 2, 0.105, foot_px, angle=np.deg2rad(-9))

  # Midfoot band from heel centre to ball centre along the lateral edge: full width at both ends, narrowest
  # mid-arch, where its width is the arch index (below ~0.05 the print splits into heel and forefoot).
  t = (v - 0.135) / 0.53
  lateral = (1 - t) * (heel_cu + hw / 2) + t * (bw / 2) + 0.012 * np.sin(np.pi * np.clip(t, 0, 1))
  full = (1 - t) * hw + t * bw
  narrow = (shape['arch'] - 0.05) * bw
  band_w = narrow + (full - narrow) * np.abs(2 * t - 1) ** 1.6
  band_edge = np.minimum(np.minimum(lateral - u, u - (lateral - band_w)), np.minimum(t, 1 - t) * 0.53)
  band = 0.85 / (1.0 + np.exp(np.clip(-band_edge * foot_px, -30, 30)))

  # Toes: hallux largest and highest; lesser toes fan out laterally with `toe_spread`.
  spread = shape['toe_spread']
  toes = np.zeros_like(u)
  toe_a = (0.058, 0.033, 0.030, 0.028, 0.025)
  toe_b = (0.070, 0.042, 0.038, 0.034, 0.030)
  toe_tip = (1.0, 0.975, 0.950, 0.918, 0.880)
  for k in range(5):
    cu = -bw / 2 + 0.062 if k == 0 else -bw / 2 + 0.062 + 0.095 + (k - 1) * bw * 0.175 * spread
    tilt = np.deg2rad(-6.0 * (k - 1) * spread) if k else 0.0
    toes = np.maximum(toes, _pad(u, v, cu, toe_tip[k] - toe_b[k], toe_a[k], toe_b[k], foot_px, tilt))

  # Partial prints: faint toes or heel (light steps), independent of the class.
  if rng.random() < 0.15:
    toes = toes * rng.uniform(0.0, 0.4)
  ink = np.maximum.reduce([heel, ball, band, toes])
  if rng.random() < 0.10:
    faint = rng.uniform(0.25, 0.6)
    ink = ink * (faint + (1 - faint) / (1.0 + np.exp(np.clip((0.3 - v) / 0.03, -30, 30))))

  # Pressure: smooth random field modulating density, plus curved ridge lines of random contrast.
  pressure = np.clip(0.8 + 0.25 * _smooth_field(rng, y[:, 0] / height, x[0] / width, 6, 2.5), 0.35, 1.0)
  warp = 6.0 * _smooth_field(rng, y[:, 0] / height, x[0] / width, 4, 1.5)
  ry, rx = cy + rng.uniform(-0.3, 0.3) * foot_px, cx + rng.uniform(-0.15, 0.15) * foot_px  # whorl centre
  period = rng.uniform(3.0, 4.5) * height / 240
  ridges = 0.5 + 0.5 * np.sin(2 * np.pi * (np.hypot(y - ry, 0.7 * (x - rx)) + warp) / period)
  ink = ink * pressure * (1.0 - rng.uniform(0.0, 0.35) * ridges)

  # Cropped prints: the scan misses one edge of the print, independent of the class.
  if rng.random() < 0.08:
    side, depth = int(rng.integers(4)), rng.uniform(0.04, 0.12)
    view = ink if side < 2 else ink.T                      # rows for top/bottom, columns for left/right
    n = int(depth * view.shape[0])
    view[slice(0, n) if side % 2 == 0 else slice(view.shape[0] - n, None)] = 0.0

  # Paper and ink levels, a gentle scanner gradient, pixel noise.
  paper = (rng.uniform(212, 250) + rng.uniform(-8, 8) * (y / height - 0.5)
           + rng.uniform(-6, 6) * (x / width - 0.5))
  dark = rng.uniform(15, 80)
  img = paper - (paper - dark) * ink + rng.normal(0.0, rng.uniform(2.0, 10.0), ink.shape)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def labels_for(spec: FootprintSpec) -> tuple[np.ndarray, np.ndarray]:
  """(train labels, hidden test labels): exact class counts, shuffled by the seed alone."""
  rng = np.random.default_rng([spec.seed, _LABELS])
  train = np.repeat(np.array([0, 1], np.int64), [spec.n_class0, spec.n_class1])
  n_total = spec.n_class0 + spec.n_class1
  n_test1 = int(round(spec.n_test * spec.n_class1 / n_total))
  test = np.repeat(np.array([0, 1], np.int64), [spec.n_test - n_test1, n_test1])
  return rng.permutation(train), rng.permutation(test)


def image_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
  """The generator of one image (split_code 0: train, 1: test)."""
  return np.random.default_rng([seed, split_code, index])


def write_kaggle_dataset(root: str | os.PathLike, spec: FootprintSpec = FootprintSpec(),
                         progress: bool = True) -> pathlib.Path:
  """Writes a Kaggle-layout SYNTHETIC dataset at `root`, atomically; never overwrites a non-empty `root`.

  Layout: train.csv (filename,SEX), train/, test/, sample_submission.csv, solution.csv (hidden test
  labels), README.txt, and the marker file COMPLETE, written last.
  """
  return fileio.write_folder(root, lambda folder: _generate_into(folder, spec, progress))


def ensure_synthetic_footprints(cache_dir: str | os.PathLike, spec: FootprintSpec = FootprintSpec(),
                                progress: bool = True) -> pathlib.Path:
  """The cached dataset folder for `spec` under `cache_dir`, generated on first use."""
  root = pathlib.Path(cache_dir) / 'synthetic_footprints' / spec.folder_name
  return fileio.cached_folder(root, _MARKER, lambda folder: write_kaggle_dataset(folder, spec, progress),
                              'synthetic dataset')


def _generate_into(folder: pathlib.Path, spec: FootprintSpec, progress: bool) -> None:
  train_labels, test_labels = labels_for(spec)
  jobs = [('train', _TRAIN, i, int(y)) for i, y in enumerate(train_labels)]
  jobs += [('test', _TEST, i, int(y)) for i, y in enumerate(test_labels)]
  for split in ('train', 'test'):
    (folder / split).mkdir(parents=True)

  def work(job):
    split, code, i, label = job
    img = render_footprint(image_rng(spec.seed, code, i), label, spec.height, spec.width)
    Image.fromarray(img, mode='L').save(folder / split / _filename(split, i))

  from tqdm import tqdm
  workers = min(8, (os.cpu_count() or 1) + 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool, \
      tqdm(total=len(jobs), desc='synthetic footprints', unit='img', disable=None if progress else True) as bar:
    for future in concurrent.futures.as_completed(pool.submit(work, j) for j in jobs):
      future.result()  # re-raise a worker's error here
      bar.update()

  train_names = [_filename('train', i) for i in range(len(train_labels))]
  test_names = [_filename('test', i) for i in range(len(test_labels))]
  _write_csv(folder / 'train.csv', train_names, train_labels)
  _write_csv(folder / 'sample_submission.csv', test_names, np.zeros(len(test_names), np.int64))
  _write_csv(folder / 'solution.csv', test_names, test_labels)
  (folder / 'README.txt').write_text(_readme(spec), encoding='utf-8')
  (folder / _MARKER).write_text(f'fpclass synthetic footprints v{GENERATOR_VERSION}\n', encoding='utf-8')


def _filename(split: str, i: int) -> str:
  return f'{split}_{i + 1:05d}.png'


def _write_csv(path: pathlib.Path, names, labels) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    out = csv.writer(f)
    out.writerow(['filename', 'SEX'])
    out.writerows(zip(names, (int(y) for y in labels)))


def _readme(spec: FootprintSpec) -> str:
  _, test_labels = labels_for(spec)
  return f"""SYNTHETIC DATA - NOT THE KAGGLE FOOTPRINT COMPETITION DATA.

Generated by fpclass.data.footprints (generator version {GENERATOR_VERSION}, seed {spec.seed}).
These are computer-drawn plantar footprints whose shape (length, widths, arch, toe spread) depends on the
SEX label through overlapping class-conditional distributions. They stand in for the real images so the
pipeline runs end to end; accuracies measured on them say nothing about real footprints.

train/  {spec.n_class0 + spec.n_class1} images: {spec.n_class0} of class 0, {spec.n_class1} of class 1 \
(labels in train.csv)
test/   {spec.n_test} images: {int((test_labels == 0).sum())} of class 0, \
{int((test_labels == 1).sum())} of class 1 (hidden labels in solution.csv)
Size:   {spec.width} wide x {spec.height} high, 8-bit grayscale PNG.
sample_submission.csv lists every test file with SEX=0.
"""
