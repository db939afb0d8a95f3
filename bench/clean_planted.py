"""How well `--mode clean` finds planted corrupt files and duplicates.

    python -m bench.clean_planted [--originals 300] [--out runs/bench-clean]

Plants an ImageFolder (train/val/test x 3 classes) of distinct generated scenes, then adds corrupt files
(zero-byte, truncated, garbage, text) and copies of some originals: byte-identical, resized, re-encoded as
JPEG, slightly cropped, resized + re-encoded, some in another split (a leak) or another class (a label
conflict). Runs clean through launch.py and scores its duplicate pairs against the planted ones, per copy
kind and per pHash threshold. With --footprints it also scans distinct synthetic footprints (one layout,
different prints), a hard case for near-duplicate precision. tests/test_clean.py runs a small version.
"""
import argparse
import io
import itertools
import pathlib
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ('heel_hook', 'others', 'toe_hook')
SPLITS = {'train': 0.7, 'val': 0.15, 'test': 0.15}
COPY_KINDS = ('exact', 'resized', 'reencoded', 'cropped', 'resized_reencoded')


def scene(rng: np.random.Generator) -> Image.Image:
  """A distinct generated 'photo': a smooth colour field with random shapes, blurred slightly."""
  w, h = int(rng.integers(160, 360)), int(rng.integers(160, 360))
  field = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  image = Image.fromarray(field, 'RGB').resize((w, h), Image.Resampling.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(4, 9))):
    x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
    x1, y1 = x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
  return image.filter(ImageFilter.GaussianBlur(1.2))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def copy_bytes(original: Image.Image, original_bytes: bytes, kind: str, rng) -> tuple[bytes, str]:
  w, h = original.size
  if kind == 'exact':
    return original_bytes, None
  if kind == 'resized':
    return encode(original.resize((w // 2, h // 2), Image.Resampling.BILINEAR), 'PNG'), '.png'
  if kind == 'reencoded':
    return encode(original, 'JPEG', quality=40), '.jpg'
  if kind == 'cropped':  # about 4% off each side
    dx, dy = max(1, w // 25), max(1, h // 25)
    return encode(original.crop((dx, dy, w - dx, h - dy)), 'PNG'), '.png'
  if kind == 'resized_reencoded':
    return encode(original.resize((int(w * 0.7), int(h * 0.7)), Image.Resampling.BICUBIC), 'JPEG', quality=60), '.jpg'
  raise ValueError(kind)


def plant_folder(root, originals: int = 60, copies_per_kind: int = 4, seed: int = 0):
  """Writes the planted ImageFolder; returns (truth pairs as frozensets of paths, corrupt paths, copies frame)."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  placed = []  # (relative path, split, class, image, bytes)
  for i in range(originals):
    split = rng.choice(list(SPLITS), p=list(SPLITS.values()))
    cls = CLASSES[i % len(CLASSES)]
    image = scene(rng)
    fmt, ext = ('JPEG', '.jpg') if i % 2 else ('PNG', '.png')
    data = encode(image, fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
    rel = f'{split}/{cls}/orig_{i:04d}{ext}'
    write(root / rel, data)
    placed.append((rel, split, cls, image, data))

  truth, rows = set(), []
  chosen = rng.permutation(len(placed))
  for n, (kind, k) in enumerate(itertools.product(COPY_KINDS, range(copies_per_kind))):
    rel, split, cls, image, data = placed[chosen[n % len(placed)]]
    copy, ext = copy_bytes(image, data, kind, rng)
    ext = ext or pathlib.PurePosixPath(rel).suffix
    where, label = split, cls
    if k == 1:    # a copy in another split: a leak
      where = {'train': 'val', 'val': 'test', 'test': 'train'}[split]
    elif k == 2:  # a copy filed under another class: a label conflict
      label = CLASSES[(CLASSES.index(cls) + 1) % len(CLASSES)]
    copy_rel = f'{where}/{label}/copy_{kind}_{k}_{pathlib.PurePosixPath(rel).stem}{ext}'
    write(root / copy_rel, copy)
    truth.add(frozenset((rel, copy_rel)))
    rows.append(dict(original=rel, copy=copy_rel, kind=kind, leak=where != split, conflict=label != cls))
  # Copies of one original are duplicates of each other too.
  frame = pd.DataFrame(rows)
  for _, group in frame.groupby('original'):
    truth.update(frozenset(p) for p in itertools.combinations(group['copy'], 2))

  corrupt = {'train/heel_hook/zero_bytes.jpg': b'',
             'train/others/truncated.jpg': encode(scene(rng), 'JPEG', quality=90)[:1500],
             'val/toe_hook/garbage.png': rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
             'test/others/text.jpg': b'this is not an image\n' * 20}
  for rel, data in corrupt.items():
    write(root / rel, data)
  return truth, set(corrupt), frame


def write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def score(pairs: pd.DataFrame, truth: set, copies: pd.DataFrame, threshold: int | None = None) -> dict:
  """Pair-level precision and recall of clean's duplicate pairs (optionally only those <= threshold)."""
  if threshold is not None:
    pairs = pairs[pairs['distance'] <= threshold]
  found = {frozenset((a, b)) for a, b in zip(pairs['path_a'], pairs['path_b'])}
  hit = found & truth
  out = dict(threshold=threshold, found=len(found), planted=len(truth), true_pairs=len(hit),
             precision=len(hit) / len(found) if found else 1.0, recall=len(hit) / len(truth) if truth else 1.0)
  for kind, group in copies.groupby('kind'):
    direct = {frozenset((o, c)) for o, c in zip(group['original'], group['copy'])}
    out[f'recall_{kind}'] = len(direct & found) / len(direct)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--originals', type=int, default=300)
  parser.add_argument('--copies-per-kind', type=int, default=20)
  parser.add_argument('--out', default='runs/bench-clean')
  parser.add_argument('--max-threshold', type=int, default=16)
  parser.add_argument('--footprints', type=int, default=300, help='distinct synthetic footprints to scan (0: none)')
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  root, workdir = out / 'planted', out / 'clean'
  if root.exists():
    sys.exit(f'{root} exists; choose another --out')
  truth, corrupt, copies = plant_folder(root, args.originals, args.copies_per_kind)
  n_files = sum(1 for p in root.rglob('*') if p.is_file())
  print(f'planted {n_files} files in {root}: {args.originals} originals, {len(copies)} copies '
        f'({args.copies_per_kind} per kind: {", ".join(COPY_KINDS)}), {len(corrupt)} corrupt; {len(truth)} true pairs')
  repo = pathlib.Path(__file__).resolve().parents[1]
  start = time.perf_counter()
  subprocess.run([sys.executable, str(repo / 'launch.py'), '--config', str(repo / 'configs/climbing.py'),
                  f'--workdir={workdir}', '--mode=clean', f'--config.data.root={root}',
                  f'--config.clean.phash_threshold={args.max_threshold}'], check=True)
  print(f'clean: {time.perf_counter() - start:.1f} s (with launch.py start-up)')
  files = pd.read_csv(workdir / 'clean_files.csv', keep_default_na=False)
  pairs = pd.read_csv(workdir / 'clean_duplicates.csv', keep_default_na=False)
  flagged = set(files.loc[files['reason'].str.startswith('corrupt'), 'path'])
  print(f'corrupt files: planted {len(corrupt)}, found {len(flagged & corrupt)}, false alarms {len(flagged - corrupt)}')
  table = pd.DataFrame([score(pairs, truth, copies, t) for t in range(args.max_threshold + 1)])
  with pd.option_context('display.width', 200, 'display.max_columns', 20):
    print(table.round(3).to_string(index=False))
  if args.footprints:
    footprint_false_pairs(out / 'footprints', args.footprints, args.max_threshold, repo)


def footprint_false_pairs(folder: pathlib.Path, n: int, max_threshold: int, repo: pathlib.Path) -> None:
  """Distinct synthetic footprints share one layout: every pair clean reports among them is a false one."""
  sys.path.insert(0, str(repo))
  from fpclass.data import footprints
  for i in range(n):
    label = i % 2
    array = footprints.render_footprint(footprints.image_rng(0, 3, i), label, 120, 80)
    write(folder / 'data' / str(label) / f'fp_{i:04d}.png', encode(Image.fromarray(array), 'PNG'))
  workdir = folder / 'clean'
  subprocess.run([sys.executable, str(repo / 'launch.py'), '--config', str(repo / 'configs/climbing.py'),
                  f'--workdir={workdir}', '--mode=clean', f'--config.data.root={folder / "data"}',
                  f'--config.clean.phash_threshold={max_threshold}'],
                 check=True, capture_output=True)
  pairs = pd.read_csv(workdir / 'clean_duplicates.csv')
  counts = [int((pairs['distance'] <= t).sum()) for t in range(max_threshold + 1)]
  print(f'{n} distinct synthetic footprints ({n * (n - 1) // 2} pairs): false duplicate pairs by threshold '
        + ', '.join(f'{t}: {c}' for t, c in enumerate(counts)))


if __name__ == '__main__':
  main()
