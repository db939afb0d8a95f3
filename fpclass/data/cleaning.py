"""Scanning a source's image files for `--mode clean`: corrupt files, exact and pHash near duplicates, and which
copy of each duplicate to keep; moving the left-out files into a quarantine folder, never deleting one.

Every file is fully decoded through `fpclass.data.decode` (the path training uses, so "corrupt" means the same
thing here and there) and hashed with imagehash's pHash. Exact duplicates share their bytes (SHA-256); near
duplicates are pHash Hamming distance <= a threshold apart (resized, re-encoded or slightly cropped copies).
Pairs are searched across all splits, where a duplicate leaks a training image into validation or test.
"""
import concurrent.futures
import hashlib
import os
import pathlib
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from fpclass import fileio
from fpclass.config.inputs import DataSettings, DecodeSettings
from fpclass.data.decode import decode_files
from fpclass.data.file_list import relative_key
from fpclass.data.source import natural_key
from fpclass.errors import UserInputError

HASH_SIZE = 64          # decoded side length fed to pHash (which reduces it to 32x32, then 8x8 DCT terms)
SPLIT_PRIORITY = {'test': 0, 'val': 1, 'train': 2}   # which copy of a duplicate stays: evaluation data first
QUARANTINE = 'quarantine'
FILES_CSV, PAIRS_CSV, MOVED_CSV, REPORT_MD = 'clean_files.csv', 'clean_duplicates.csv', 'clean_moved.csv', 'clean_report.md'


def _label_text(label, class_names) -> str:
  """A class name, or a multi-label 0/1 row as its space-separated tags (so conflicting duplicates compare)."""
  return ' '.join(class_names[k] for k in np.flatnonzero(label)) if np.ndim(label) else class_names[label]


def scan_files(source, data: DataSettings, cache_dir) -> pd.DataFrame:
  """One row per listed file: split, label, header facts, SHA-256, decode result and pHash."""
  import imagehash
  settings = DecodeSettings(image_size=(HASH_SIZE, HASH_SIZE), channels=1, resize='stretch',
                            alpha_background=data.decode.alpha_background,
                            max_image_pixels=data.decode.max_image_pixels)
  frames = []
  for split_name in ('train', 'val', 'test'):
    split = getattr(source, split_name)
    if split is None:
      continue
    arrays, ok, problems = decode_files(split.paths, settings, split=f'clean-{split_name}', cache_dir=cache_dir,
                                        workers=data.storage.decode_workers)
    reasons = {p.file: p.reason for p in problems}
    workers = data.storage.decode_workers or 2 * (os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      headers = list(pool.map(file_facts, split.paths))
    labels = [''] * len(split) if split.labels is None else [_label_text(y, source.class_names) for y in split.labels]
    frames.append(pd.DataFrame({
        'path': [relative_key(p, source.root) for p in split.paths],
        'split': split_name, 'label': labels, 'labelled': split.labels is not None,
        **pd.DataFrame(headers).to_dict('list'),
        'decoded': ok,
        'problem': [reasons.get(str(p), '') for p in split.paths],
        'phash': [str(imagehash.phash(Image.fromarray(a[:, :, 0], 'L'))) if good else ''
                  for a, good in zip(arrays, ok)],
    }))
  return pd.concat(frames, ignore_index=True)


def file_facts(path) -> dict:
  """Format, mode and size from the header (no pixel decoding), byte count and SHA-256."""
  path = pathlib.Path(path)
  facts = dict(format='', mode='', width=0, height=0, bytes=0, sha256='')
  try:
    data = path.read_bytes()
  except OSError:
    return facts
  facts.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
  try:
    with Image.open(path) as image:
      facts.update(format=image.format or '', mode=image.mode, width=image.size[0], height=image.size[1])
  except Exception:  # noqa: BLE001 -- any header failure just means "unknown"; decoding reports why
    pass
  return facts


def hamming_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512):
  """(i, j, distance) with i < j for every pair of 64-bit hashes at most `threshold` bits apart."""
  out_i, out_j, out_d = [], [], []
  for start in range(0, len(hashes), chunk):
    block = hashes[start:start + chunk, None] ^ hashes[None, :]
    distance = np.bitwise_count(block)
    i, j = np.nonzero(distance <= threshold)
    i += start
    upper = j > i
    out_i.append(i[upper])
    out_j.append(j[upper])
    out_d.append(distance[i[upper] - start, j[upper]])
  if not out_i:
    return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
  return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d).astype(int)


def find_duplicates(files: pd.DataFrame, threshold: int) -> pd.DataFrame:
  """Every pair of decodable files that are byte-identical or within `threshold` pHash bits."""
  columns = ['path_a', 'path_b', 'split_a', 'split_b', 'label_a', 'label_b', 'kind', 'distance', 'cross_split',
             'label_conflict']
  index = np.flatnonzero(files['decoded'].to_numpy())
  hashes = np.array([int(h, 16) for h in files['phash'].iloc[index]], np.uint64)
  i, j, distance = hamming_pairs(hashes, threshold)
  # Byte-identical files have identical pHashes, so they are among these pairs, at distance 0.
  rows = []
  for a, b, d in zip(index[i], index[j], distance):
    fa, fb = files.iloc[a], files.iloc[b]
    rows.append(dict(path_a=fa['path'], path_b=fb['path'], split_a=fa['split'], split_b=fb['split'],
                     label_a=fa['label'], label_b=fb['label'], kind='exact' if fa['sha256'] == fb['sha256'] else 'near',
                     distance=int(d), cross_split=fa['split'] != fb['split'],
                     label_conflict=bool(fa['labelled'] and fb['labelled'] and fa['label'] != fb['label'])))
  return pd.DataFrame(rows, columns=columns)


def decide_keep(files: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
  """Adds keep, reason and group (connected duplicate pairs; -1 for none).

  Corrupt labelled files go. In each duplicate group one labelled copy stays: one in the test split before val
  before train (so training copies of evaluation images go), then the most pixels, the most bytes, the
  first path. A group whose labelled copies disagree on the label loses all its training copies. Unlabelled
  test files always stay (a submission needs them) and do not compete for the kept copy.
  """
  files = files.copy()
  # A corrupt unlabelled test file stays listed: a submission needs its row (config.data.bad_test_images).
  files['keep'] = files['decoded'] | ~files['labelled']
  files['reason'] = np.where(files['decoded'], '', 'corrupt: ' + files['problem'].astype(str))
  files['group'] = connected_groups(files, pairs)
  hashes = {i: int(h, 16) for i, h in zip(files.index, files['phash']) if h}
  for _, members in files[files['group'] >= 0].groupby('group'):
    labelled = members[members['labelled']]
    if len(labelled) < 2:
      continue
    if labelled['label'].nunique() > 1:
      conflict = ', '.join(f'{p} ({lab})' for p, lab in zip(labelled['path'], labelled['label']))
      for i in labelled.index[labelled['split'] == 'train']:
        files.loc[i, ['keep', 'reason']] = [False, f'duplicate with conflicting labels: {conflict}']
      continue
    order = sorted(labelled.index, key=lambda i: (SPLIT_PRIORITY[files.at[i, 'split']],
                                                  -files.at[i, 'width'] * files.at[i, 'height'],
                                                  -files.at[i, 'bytes'], natural_key(files.at[i, 'path'])))
    keeper = order[0]
    for i in order[1:]:
      exact = files.at[i, 'sha256'] == files.at[keeper, 'sha256']
      what = 'exact duplicate' if exact else \
          f'near duplicate (pHash distance {bin(hashes[i] ^ hashes[keeper]).count("1")})'
      leak = files.at[i, 'split'] != files.at[keeper, 'split']
      files.loc[i, ['keep', 'reason']] = [False, f'{what} of {files.at[keeper, "path"]}'
                                          + (f' ({files.at[keeper, "split"]} split: a leak)' if leak else '')]
  return files


def connected_groups(files: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
  """Group id per file: files joined by any chain of duplicate pairs share one; -1 for no duplicate."""
  n = len(files)
  parent = list(range(n))

  def root(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  position = {p: i for i, p in enumerate(files['path'])}
  for a, b in zip(pairs['path_a'], pairs['path_b']):
    ra, rb = root(position[a]), root(position[b])
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)
  roots = np.array([root(i) for i in range(n)])
  in_pair = np.zeros(n, bool)
  in_pair[[position[p] for p in pd.concat([pairs['path_a'], pairs['path_b']])]] = True
  ids = {r: g for g, r in enumerate(sorted(set(roots[in_pair])))}
  return np.array([ids[r] if in_pair[i] else -1 for i, r in enumerate(roots)])


def move_to_quarantine(files: pd.DataFrame, root: pathlib.Path, workdir: pathlib.Path) -> pd.DataFrame:
  """--apply: moves every labelled file clean leaves out to <workdir>/quarantine/<its path under root>.

  Refuses (moving nothing) if any destination exists, so no file is ever overwritten."""
  out = files[~files['keep'] & files['labelled']]
  target = (workdir / QUARANTINE).absolute()
  moves = [(root / p, target / p) for p in out['path']]
  taken = [str(d) for _, d in moves if d.exists()]
  if taken:
    raise UserInputError(f'--apply: {len(taken)} file(s) already exist in {target} ({taken[0]}, ...); move them '
                         'back or use another --workdir. Nothing was moved.')
  done = []
  try:
    for src, dst in moves:
      dst.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(src, dst)
      done.append(dict(path=str(src), moved_to=str(dst)))
  finally:
    fileio.write_csv(workdir / MOVED_CSV, pd.DataFrame(done, columns=['path', 'moved_to']))
  return pd.DataFrame(done, columns=['path', 'moved_to'])


EXTENSIONS = {'JPEG': ('.jpg', '.jpeg'), 'PNG': ('.png',), 'GIF': ('.gif',), 'BMP': ('.bmp',), 'WEBP': ('.webp',),
              'TIFF': ('.tif', '.tiff'), 'PPM': ('.ppm', '.pgm', '.pbm', '.pnm')}


def extension_mismatches(files) -> pd.DataFrame:
  suffix = files['path'].map(lambda p: pathlib.PurePosixPath(p).suffix.lower())
  wrong = [bool(f) and f in EXTENSIONS and s not in EXTENSIONS[f] for f, s in zip(files['format'], suffix)]
  return files[wrong]
