"""The report of `--mode clean` (`fpclass.data.cleaning`): files per split, duplicate pairs and leaks across
splits, classes before and after, formats, modes and sizes, and what was left out or moved."""

from fpclass.data.cleaning import FILES_CSV, MOVED_CSV, PAIRS_CSV, QUARANTINE, extension_mismatches
from fpclass.data.source import natural_key
from fpclass.runtime import report


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
