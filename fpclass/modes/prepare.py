"""`--mode prepare`: download and prepare config.data.tfds.name as ArrayRecord, which
`fpclass.data.tfds_source` then reads with no TensorFlow. Needs TensorFlow and internet (`fpclass[prepare]`)."""
import importlib.util
import logging

from fpclass.errors import UserInputError


def prepare(config, workdir=None) -> None:
  """`--mode prepare`: download and prepare config.data.tfds.name as ArrayRecord (needs TensorFlow)."""
  cfg = config.data.tfds
  if config.data.source != 'tfds' or not cfg.name:
    raise UserInputError(f'--mode prepare prepares TFDS datasets: set config.data.source=tfds and '
                         f'config.data.tfds.name (now source={config.data.source!r}, name={cfg.name!r})')
  import tensorflow_datasets as tfds  # only here: reading prepared data does not need its builders
  builder = tfds.builder(cfg.name, data_dir=cfg.data_dir or None, file_format='array_record')
  if builder.is_prepared() and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    print(f'{cfg.name}: already prepared in {builder.data_dir}')
    return
  if importlib.util.find_spec('tensorflow') is None:
    raise UserInputError(f'preparing TFDS {cfg.name!r} needs TensorFlow (and internet), which is not installed: '
                         "pip install 'fpclass[prepare]', then run --mode prepare again. Reading a prepared "
                         'dataset needs neither.')
  logging.warning('downloading and preparing %s into %s', cfg.name, builder.data_dir)
  builder.download_and_prepare()
  print(f'{cfg.name}: prepared in {builder.data_dir}')
