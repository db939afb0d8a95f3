"""`--mode clean`: scan a kaggle_csv or image_folder root for corrupt files and duplicates
(`fpclass.data.cleaning`; near duplicates are config.clean.phash_threshold pHash bits apart at most).

Writes clean_files.csv (every file: format, mode, size, hashes, keep and why), clean_duplicates.csv (every
duplicate pair), clean_report.md and a report.md section. Training reads clean_files.csv through
config.data.file_list. Nothing is deleted or rewritten; only `--apply` moves the files it leaves out into
<workdir>/quarantine/ (listed in clean_moved.csv, so they can be put back).

A recipe may convert every image to PNG; fpclass never rewrites files, because the decode cache already
turns every format and mode into the same uint8 arrays.
"""
import pathlib

import pandas as pd

from fpclass import fileio
from fpclass.analysis.clean_report import report_markdown
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.data.cleaning import (
  FILES_CSV,
  PAIRS_CSV,
  QUARANTINE,
  REPORT_MD,
  decide_keep,
  find_duplicates,
  move_to_quarantine,
  scan_files,
)
from fpclass.errors import UserInputError
from fpclass.runtime import report


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
  data = DataSettings.from_config(config.data)
  source = pipeline.list_raw_source(data)
  files = scan_files(source, data, fileio.cache_root(data.storage.cache_dir))
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
