"""Named TFDS datasets (cifar10, horses_or_humans, cats_vs_dogs, ...) read with `tfds.data_source`.

A prepared dataset is a folder of ArrayRecord files plus its metadata (`<data_dir>/<name>/<version>/`);
`tfds.data_source` reads it by random access with no TensorFlow. Preparing one (download, then write the
ArrayRecord files) is TensorFlow's job and needs internet: `launch.py --mode prepare` does it where
`pip install 'fpclass[prepare]'` has installed TensorFlow, and `tfds build <name> --file_format=array_record`
does the same. A missing or TFRecord-only dataset is a UserInputError saying so.

Records are decoded by TFDS (OpenCV or Pillow), then brought to `config.data` size and channels by
`fpclass.data.decode.fit_image`, the same conversion files get; a record that fails is quarantined. The
result is cached like decoded files, keyed by the prepared files' names, sizes and mtimes.
"""
import hashlib
import json
import os
import pathlib

import numpy as np
from tqdm.auto import tqdm

from fpclass import fileio
from fpclass.config.inputs import DataSettings, DecodeSettings
from fpclass.data.decode import DecodeError, cache_key, fit_image, read_cache, write_cache
from fpclass.data.rows import take_rows
from fpclass.data.source import Problem, Source, Split
from fpclass.errors import UserInputError

ID_KEYS = ('id', 'image/filename', 'file_name', 'filename')  # a record's own name, where the dataset has one
PREPARE_HINT = ("prepare it where TensorFlow and internet are available: pip install 'fpclass[prepare]', then "
                "python launch.py --config <this config> --workdir <any> --mode prepare "
                "(or: tfds build {name} --file_format=array_record --data_dir {data_dir})")


def load_tfds(data: DataSettings) -> Source:
  """The TFDS dataset config.data.tfds names; `data` is the typed data section."""
  cfg = data.files.tfds
  if not cfg.name:
    raise UserInputError('config.data.source=tfds needs config.data.tfds.name (e.g. cifar10)')
  settings = data.decode
  problems, notes = [], []
  train, class_names, info = _read_split(data, 'train_split', 'train', settings, problems)
  val = _read_split(data, 'val_split', 'val', settings, problems)[0] if cfg.val_split else None
  test = _read_split(data, 'test_split', 'test', settings, problems)[0] if cfg.test_split else None
  splits = ', '.join(f'{role} = {cfg[f"{role}_split"]!r}' for role in ('train', 'val', 'test') if cfg[f'{role}_split'])
  notes.append(f'TFDS {info.full_name} ({splits}), read from {info.data_dir}')
  return Source(name=f'tfds:{cfg.name}', class_names=class_names, train=train, val=val, test=test,
                problems=problems, notes=notes)


def open_split(cfg, key: str):
  """`tfds.data_source` for config.data.tfds.<key>, with each way it can fail turned into a clear message."""
  import tensorflow_datasets as tfds
  split = cfg[key]
  data_dir = cfg.data_dir or None
  try:
    return tfds.data_source(cfg.name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserInputError(f'config.data.tfds.name={cfg.name!r}: TFDS has no dataset of that name') from None
  except Exception as e:  # tfds reports a missing dataset as an unsupported TFRecord format; find out why
    builder = tfds.builder(cfg.name, data_dir=data_dir)
    where = builder.data_dir
    if not builder.is_prepared():
      raise UserInputError(f'config.data.tfds.name={cfg.name!r}: not prepared in {where}; '
                           + PREPARE_HINT.format(name=cfg.name, data_dir=data_dir or '~/tensorflow_datasets')) from None
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise UserInputError(f'config.data.tfds.name={cfg.name!r}: prepared in {where} as '
                           f'{builder.info.file_format.value}, but random access needs array_record; prepare it '
                           'again into another config.data.tfds.data_dir with --mode prepare') from None
    if isinstance(e, ValueError) and 'split' in str(e).lower():
      raise UserInputError(f'config.data.tfds.{key}={split!r}: {e}') from None
    raise


def _read_split(data: DataSettings, key: str, role: str, settings: DecodeSettings, problems: list):
  """(Split, class names, dataset info) for config.data.tfds.<key>, decoded and fitted (cached)."""
  cfg = data.files.tfds
  source = open_split(cfg, key)
  info = source.dataset_info
  features = info.features
  for name in ('image_key', 'label_key'):
    if cfg[name] not in features:
      raise UserInputError(f'config.data.tfds.{name}={cfg[name]!r}: {cfg.name} has features {list(features)}')
  class_names = tuple(str(n) for n in features[cfg.label_key].names)

  cache_file = _cache_file(data, info, cfg[key], settings, source)
  arrays = read_cache(cache_file, CACHED) if cache_file else None
  if arrays is None:
    arrays = _decode_records(source, cfg, cfg[key], role, settings)
    if cache_file:
      write_cache(cache_file, **arrays)
      arrays = read_cache(cache_file, CACHED) or arrays  # the mapped copy, so the decoded one is freed
  ok = arrays['ok']
  problems.extend(Problem(file=f'{cfg.name}:{cfg[key]}[{i}]', split=role, reason=str(arrays['reasons'][i]))
                  for i in np.flatnonzero(~ok))
  keep = np.flatnonzero(ok)
  split = Split(ids=[str(i) for i in arrays['ids'][keep]], labels=arrays['labels'][keep],
                images=take_rows(arrays['images'], keep))  # a cached (memory-mapped) split stays unread
  return split, class_names, info


CACHED = ('images', 'labels', 'ids', 'ok', 'reasons')


def _decode_records(source, cfg, split: str, role: str, settings) -> dict:
  n = len(source)
  images = np.zeros((n, settings.height, settings.width, settings.channels), np.uint8)
  labels = np.zeros(n, np.int32)
  ok = np.zeros(n, bool)
  ids, reasons = [f'{split}[{i}]' for i in range(n)], [''] * n
  for i in tqdm(range(n), desc=f'read {cfg.name} {role}', unit='img', leave=False, disable=None):
    try:
      record = source[i]
    except Exception as e:  # noqa: BLE001 -- TFDS decodes with OpenCV or Pillow, whichever is installed, and
      # the two fail differently on a corrupt image (cv2.error, AttributeError, OSError, ...)
      reasons[i] = f'unreadable record: {type(e).__name__}: {e}'
      continue
    ids[i] = _record_id(record, ids[i])
    labels[i] = int(record[cfg.label_key])
    try:
      images[i] = fit_image(record[cfg.image_key], settings)
      ok[i] = True
    except DecodeError as e:
      reasons[i] = str(e)
  return dict(images=images, labels=labels, ids=np.array(ids, dtype=str), ok=ok,
              reasons=np.array(reasons, dtype=str))


def _record_id(record, default: str) -> str:
  for key in ID_KEYS:
    if key in record:
      value = record[key]
      return value.decode() if isinstance(value, bytes) else str(value)
  return default


def _cache_file(data: DataSettings, info, split: str, settings, source) -> pathlib.Path | None:
  """Where this split's decoded arrays are cached, or None when there are no prepared files to key it by.

  The key covers the prepared files (names, sizes, mtimes) and a fingerprint of three records as read, so
  a source that does not read those files (tfds.testing.mock_data) never shares their cache entry."""
  folder = pathlib.Path(os.fspath(info.data_dir))
  files = sorted(folder.glob('*.array_record*')) if folder.is_dir() else []
  if not files or len(source) == 0:
    return None
  cfg = data.files.tfds
  digest = hashlib.sha256(cache_key(files, settings).encode())
  digest.update(json.dumps([info.full_name, split, cfg.image_key, cfg.label_key, len(source)]).encode())
  for i in sorted({0, len(source) // 2, len(source) - 1}):
    try:
      record = source[i]
      digest.update(np.ascontiguousarray(record[cfg.image_key]).tobytes() + str(record[cfg.label_key]).encode())
    except Exception:  # noqa: BLE001 -- an unreadable record is a fact about the data, fingerprinted as such
      digest.update(f'unreadable {i}'.encode())
  return fileio.cache_root(data.storage.cache_dir) / 'decoded' / f'tfds-{info.name}-{digest.hexdigest()[:32]}.npz'
