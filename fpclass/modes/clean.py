"""`--mode clean`: scan a kaggle_csv or image_folder root for corrupt files and duplicates.

Every file is fully decoded through `fpclass.data.decode` (the path training uses, so "corrupt" means the
same thing here and there) and hashed with imagehash's pHash. Exact duplicates share their bytes (SHA-256);
near duplicates are pHash Hamming distance <= config.clean.phash_threshold apart (resized, re-encoded or
slightly cropped copies). Pairs are searched across all splits, where a duplicate leaks a training image
into validation or test.

Writes clean_files.csv (every file: format, mode, size, hashes, keep and why), clean_duplicates.csv (every
duplicate pair), clean_report.md and a report.md section. Training reads clean_files.csv through
config.data.file_list. Nothing is deleted or rewritten; only `--apply` moves the files it leaves out into
<workdir>/quarantine/ (listed in clean_moved.csv, so they can be put back).

A recipe may convert every image to PNG; fpclass never rewrites files, because the decode cache already
turns every format and mode into the same uint8 arrays.
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
from fpclass.config.inputs import DecodeSettings
from fpclass.data import pipeline
from fpclass.data.decode import decode_files
from fpclass.data.file_list import relative_key
from fpclass.data.source import natural_key
from fpclass.errors import UserInputError
from fpclass.runtime import report

HASH_SIZE = 64          # decoded side length fed to pHash (which reduces it to 32x32, then 8x8 DCT terms)
SPLIT_PRIORITY = {'test': 0, 'val': 1, 'train': 2}   # which copy of a duplicate stays: evaluation data first
QUARANTINE = 'quarantine'
FILES_CSV, PAIRS_CSV, MOVED_CSV, REPORT_MD = 'clean_files.csv', 'clean_duplicates.csv', 'clean_moved.csv', 'clean_report.md'


def _label_text(label, class_names) -> str:
  """A class name, or a multi-label 0/1 row as its space-separated tags (so conflicting duplicates compare)."""
  return ' '.join(class_names[k] for k in np.flatnonzero(label)) if np.ndim(label) else class_names[label]


def clean(config, workdir, apply: bool = False) -> pd.DataFrame:
  """Scans, decides what to keep, writes the outputs, and with `apply` moves the rest to quarantine."""
  try:
    import imagehash  # noqa: F401
  except ImportError:
    raise UserInputError("--mode clean needs imagehash for pHash: pip install 'fpclass[clean]'") from None
  if config.data.source not in ('kaggle_csv', 'image_folder'):
    raise UserInputError(f'--mode clean scans image files: config.data.source must be kaggle_csv or image_folder, '
                         f'not {config.data.source!r}')
  workdir = pathlib.Path(workdir)
  source = pipeline.list_raw_source(config)
  files = scan_files(source, config.data, fileio.cache_root(config.data.cache_dir))
  threshold = int(config.clean.phash_threshold)
  pairs = find_duplicates(files, threshold)
  files = decide_keep(files, pairs)
  fileio.write_csv(workdir / FILES_CSV, files.drop(columns=['labelled', 'decoded']))
  fileio.write_csv(workdir / PAIRS_CSV, pairs)
  moved = move_to_quarantine(files, source.root, workdir) if apply else None
  markdown = report_markdown(files, pairs, source, threshold, workdir, moved)
  fileio.write_text(workdir / REPORT_MD, markdown)
  report.write_section(workdir, '05-clean', markdown)
  dropped = files[~files['keep']]
  print(f'{workdir / FILES_CSV}: {len(files)} files, {int((~files["decoded"]).sum())} corrupt, '
        f'{len(pairs)} duplicate pairs, {len(dropped)} left out'
        + (f', {len(moved)} moved to {workdir / QUARANTINE}' if moved is not None else
           f'; train on the rest with --config.data.file_list={(workdir / FILES_CSV).absolute()}'))
  return files


def scan_files(source, data_cfg, cache_dir) -> pd.DataFrame:
  """One row per listed file: split, label, header facts, SHA-256, decode result and pHash."""
  import imagehash
  settings = DecodeSettings(image_size=(HASH_SIZE, HASH_SIZE), channels=1, resize='stretch',
                            alpha_background=int(data_cfg.alpha_background),
                            max_image_pixels=int(data_cfg.max_image_pixels))
  frames = []
  for split_name in ('train', 'val', 'test'):
    split = getattr(source, split_name)
    if split is None:
      continue
    arrays, ok, problems = decode_files(split.paths, settings, split=f'clean-{split_name}', cache_dir=cache_dir,
                                        workers=int(data_cfg.decode_workers))
    reasons = {p.file: p.reason for p in problems}
    workers = int(data_cfg.decode_workers) or 2 * (os.cpu_count() or 1)
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


def report_markdown(files, pairs, source, threshold, workdir, moved) -> str:
  kept = files[files['keep']]
  lines = ['## Data cleaning', '',
           f'Scanned `{source.root}` ({source.name}): {len(files)} files. Each was fully decoded; duplicates are '
           f'byte-identical (exact) or at most {threshold} bits apart in 64-bit pHash (near; '
           f'`config.clean.phash_threshold`).', '',
           report.table(split_summary(files, pairs), ['split', 'files', 'corrupt', 'exact_dup_left_out',
                                                      'near_dup_left_out', 'conflict_left_out', 'kept']), '']
  if len(pairs):
    cross = pairs[pairs['cross_split']]
    lines += [f'Duplicate pairs: {int((pairs["kind"] == "exact").sum())} exact, {int((pairs["kind"] == "near").sum())} '
              f'near; {len(cross)} cross splits (leaks: '
              + (', '.join(f'{a}/{b}: {n}' for (a, b), n in cross.groupby(['split_a', 'split_b']).size().items())
                 or 'none') + f'); {int(pairs["label_conflict"].sum())} with conflicting labels.', '',
              'Near pairs by pHash distance: ' + ', '.join(
                  f'{d}: {n}' for d, n in pairs.loc[pairs['kind'] == 'near', 'distance'].value_counts().sort_index().items())
              + '. Distinct images that share one layout (scans, prints, centred objects on a plain ground) can '
              'be a few bits apart: if pairs crowd at the threshold, look at them and lower it.', '']
  lines += ['### Classes per split, before and after cleaning', '',
            report.table(class_rows(files, kept), ['split', 'when', *sorted_labels(files), 'total']), '',
            '### Formats and modes', '',
            report.table(count_rows(files, 'format'), ['split', *sorted(set(files['format']) - {''}), 'unreadable']),
            '', report.table(count_rows(files, 'mode'), ['split', *sorted(set(files['mode']) - {''}), 'unreadable']),
            '', size_line(files), '']
  mismatched = extension_mismatches(files)
  if len(mismatched):
    lines += [f'{len(mismatched)} file(s) whose extension does not match their format, e.g. '
              + ', '.join(f'`{p}` ({f})' for p, f in zip(mismatched['path'][:5], mismatched['format'][:5])) + '.', '']
  out = files[~files['keep']]
  if len(out):
    lines += ['### Left out', '', report.table(out.head(20).to_dict('records'), ['path', 'split', 'label', 'reason'])]
    if len(out) > 20:
      lines.append(f'... and {len(out) - 20} more in [clean_files.csv]({FILES_CSV}).')
    lines.append('')
  lines += ['Every format and mode becomes the same uint8 array in the decode cache (a recipe that converts its files '
            'to PNG instead); no user file is rewritten.', '',
            f'Files: [{FILES_CSV}]({FILES_CSV}) (train on it with `--config.data.file_list='
            f'{(workdir / FILES_CSV).absolute()}`), [{PAIRS_CSV}]({PAIRS_CSV}).']
  if moved is not None:
    lines += ['', f'`--apply` moved {len(moved)} file(s) into `{workdir / QUARANTINE}` (list: [{MOVED_CSV}]({MOVED_CSV})).']
  else:
    lines += ['', 'Nothing was moved: `--apply` would move the left-out labelled files into '
              f'`{workdir / QUARANTINE}`.']
  return '\n'.join(lines)


def split_summary(files, pairs) -> list[dict]:
  rows = []
  for split, group in files.groupby('split', sort=False):
    reason = group['reason'].astype(str)
    rows.append(dict(split=split, files=len(group), corrupt=int((~group['decoded']).sum()),
                     exact_dup_left_out=int(reason.str.startswith('exact duplicate').sum()),
                     near_dup_left_out=int(reason.str.startswith('near duplicate').sum()),
                     conflict_left_out=int(reason.str.startswith('duplicate with conflicting').sum()),
                     kept=int(group['keep'].sum())))
  return rows


def sorted_labels(files) -> list:
  return sorted(set(files['label']) - {''}, key=natural_key)


def class_rows(files, kept) -> list[dict]:
  """Labelled files per class, per split, before and after cleaning (unlabelled splits have no row)."""
  rows = []
  for split in files.loc[files['labelled'], 'split'].unique():
    for when, frame in (('before', files), ('after', kept)):
      counts = frame.loc[(frame['split'] == split) & frame['labelled'], 'label'].value_counts()
      rows.append(dict(split=split, when=when, **{c: int(counts.get(c, 0)) for c in sorted_labels(files)},
                       total=int(counts.sum())))
  return rows


def count_rows(files, column) -> list[dict]:
  rows = []
  for split, group in files.groupby('split', sort=False):
    counts = group[column].value_counts()
    rows.append(dict(split=split, **{k: int(v) for k, v in counts.items() if k}, unreadable=int(counts.get('', 0))))
  return rows


def size_line(files) -> str:
  known = files[files['width'] > 0]
  if known.empty:
    return 'No readable image sizes.'
  w, h = known['width'], known['height']
  return (f'Sizes (width x height): min {w.min()}x{h.min()}, median {int(w.median())}x{int(h.median())}, '
          f'max {w.max()}x{h.max()}; {known.groupby(["width", "height"]).ngroups} distinct.')


EXTENSIONS = {'JPEG': ('.jpg', '.jpeg'), 'PNG': ('.png',), 'GIF': ('.gif',), 'BMP': ('.bmp',), 'WEBP': ('.webp',),
              'TIFF': ('.tif', '.tiff'), 'PPM': ('.ppm', '.pgm', '.pbm', '.pnm')}


def extension_mismatches(files) -> pd.DataFrame:
  suffix = files['path'].map(lambda p: pathlib.PurePosixPath(p).suffix.lower())
  wrong = [bool(f) and f in EXTENSIONS and s not in EXTENSIONS[f] for f, s in zip(files['format'], suffix)]
  return files[wrong]
