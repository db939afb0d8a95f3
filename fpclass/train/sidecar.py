"""The run's metadata sidecar, `<workdir>/metadata.json`: class names, image size, channels, normalisation,
parameter count and the whole training config, so every mode after training needs only `--workdir`; a sweep's
or a search's `workdir.json` (its kind and config) does the same for the modes that read those; and the
comparisons of a stored config with the current one (restoring against another model or input, or resuming
under a config that would train something else, is refused with the differing keys listed).
"""
import datetime
import json
import pathlib

from flax import traverse_util

from fpclass import __version__, fileio
from fpclass.config.run import RunSettings
from fpclass.config.schema import base_config
from fpclass.errors import UserInputError
from fpclass.models import model_keys
from fpclass.models.heads import head_of

# metadata.json's key of a model trained on the source's test images without their labels (--mode distill with
# config.distill.unlabelled='test'): every score on those images says so (fpclass.infer.evaluation).
TEST_UNLABELLED = 'trained_on_unlabelled_test_images'
METADATA = 'metadata.json'
WORKDIR_RECORD = 'workdir.json'   # a workdir of many runs (sweep, auto): its kind and the config it was written from

# Keys a resumed run may change: they do not alter what has been trained so far.
RESUMABLE_CHANGES = ('train.epochs', 'train.log_every_steps', 'train.loop', 'train.early_stopping_patience', 'eval.',
                     'submit.', 'data.cache_dir', 'data.decode_workers', 'data.root', 'data.bad_test_images',
                     'name', 'explain.', 'sweep.', 'serve.', 'data.tfds.data_dir', 'clean.',
                     'train.tensorboard', 'train.feature_cache', 'data.device_memory_budget', 'predict.', 'lr_find.',
                     'probe.', 'auto.', 'label_issues.', 'ensemble.', 'track.')
# Keys that must agree for a checkpoint to be usable at all (evaluate, submit, explain).
ARCHITECTURE_KEYS = ('model.', 'data.image_size', 'data.channels', 'data.mean', 'data.std')


def build_metadata(config, run: RunSettings, class_names, num_params: int, normalisation: dict) -> dict:
  """metadata.json of a trained run: `config` stored whole, and what its readers need at hand, from `run` (its
  typed sections)."""
  decode = run.data.decode
  return dict(
      fpclass_version=__version__,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      class_names=list(class_names),
      image_size=list(decode.image_size),
      channels=decode.channels,
      normalisation=normalisation,
      model=run.model.name,
      head=head_of(run),
      num_params=num_params,
      config=config_as_json(config),
  )


def read_metadata(workdir) -> dict | None:
  path = pathlib.Path(workdir) / METADATA
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserInputError(f'{path}: not valid JSON ({e}); it is the run sidecar, restore it or use a new '
                         '--workdir') from None


def write_metadata(workdir, metadata: dict) -> None:
  fileio.write_json(pathlib.Path(workdir) / METADATA, metadata)


def config_differences(stored: dict, current: dict, ignore=(), only=None) -> list[str]:
  """['key: stored -> current'] for differing flattened config keys."""
  a = traverse_util.flatten_dict(stored, sep='.')
  b = traverse_util.flatten_dict(current, sep='.')
  out = []
  for key in sorted(set(a) | set(b)):
    if any(key == p or key.startswith(p) for p in ignore if p):
      continue
    if only is not None and not any(key == p or key.startswith(p) for p in only):
      continue
    if _normal(a.get(key, '<absent>')) != _normal(b.get(key, '<absent>')):
      out.append(f'{key}: {a.get(key, "<absent>")!r} -> {b.get(key, "<absent>")!r}')
  return out


def _normal(value):
  return json.loads(json.dumps(value)) if not isinstance(value, str) else value


def check_resume(workdir, metadata: dict, config_dict: dict) -> None:
  """Refuses to continue a run in `workdir` under a config that would change what it trains. A key that the
  run's version did not have yet (config.train.ema_decay, for a run from before it) counts as equal when it
  is at its default, which keeps the behaviour of the versions before it."""
  stored = _stored_with_model_defaults(metadata)
  defaults = traverse_util.flatten_dict(config_as_json(base_config()), sep='.')
  for key, value in traverse_util.flatten_dict(config_dict, sep='.').items():
    if key not in stored and key in defaults and _normal(value) == _normal(defaults[key]):
      stored[key] = value
  diffs = config_differences(traverse_util.unflatten_dict(stored, sep='.'), config_dict, ignore=RESUMABLE_CHANGES)
  if diffs:
    raise UserInputError(f'{workdir} holds a run with a different config, so it cannot be resumed: '
                         + '; '.join(diffs[:10]) + '. Use a new --workdir, or the original flags.')


def check_restorable(workdir, metadata: dict, config_dict: dict) -> None:
  """Refuses to restore a checkpoint into a model or input other than the one it was trained as,
  naming each differing key and the value stored at training."""
  stored = _stored_with_model_defaults(metadata)
  current = traverse_util.flatten_dict(config_dict, sep='.')
  diffs = [f'--config.{key}={_tuples(_normal(current.get(key, "<absent>")))!r} (trained with '
           f'{_tuples(_normal(stored[key]))!r})'
           if key in stored else f'--config.{key}: not a key of the trained model'
           for key in config_differences_keys(stored, current, ARCHITECTURE_KEYS)]
  if diffs:
    raise UserInputError(f'{workdir}: these overrides change the trained model or its input: '
                         + '; '.join(diffs[:10]) + '. Leave them out: without --config, the workdir\'s '
                         f'{METADATA} supplies the training config.')


def _stored_with_model_defaults(metadata: dict) -> dict:
  """The stored training config, flattened, with every key of its model (a run from before the model section
  held them all kept the defaults of the ones it lacks)."""
  stored = traverse_util.flatten_dict(metadata['config'], sep='.')
  name = stored.get('model.name')
  if name is not None:
    for key, value in model_keys.model_keys(name).items():
      stored.setdefault(f'model.{key}', list(value) if isinstance(value, tuple) else value)
  return stored


def config_differences_keys(stored: dict, current: dict, only) -> list[str]:
  return [key for key in sorted(set(stored) | set(current))
          if any(key == p or key.startswith(p) for p in only)
          and _normal(stored.get(key, '<absent>')) != _normal(current.get(key, '<absent>'))]


def stored_config(workdir):
  """The config `workdir` was written from, as a ConfigDict of the current schema: a trained run's (its
  metadata.json), else a sweep's or a search's (workdir.json). Keys this version does not know are dropped
  (model fields are kept: they belong to the architecture)."""
  metadata = read_metadata(workdir)
  if metadata is None:
    metadata = read_workdir_record(workdir)
  if metadata is None:
    raise UserInputError(f'{workdir}: no trained run here ({METADATA} is missing, and so is the {WORKDIR_RECORD} '
                         'a sweep or an auto run writes); pass --config, or train this --workdir first')
  return config_from_json(metadata['config'])


def stored_settings(workdir) -> RunSettings:
  """The typed sections `workdir` was trained with (`stored_config`, parsed): what a reader of a trained run
  that does not restore it (selection's examples, a suspect's fold) needs of its config."""
  return RunSettings.from_config(stored_config(workdir))


def settings_from_json(values: dict) -> RunSettings:
  """The typed sections of a config stored as JSON (`config_from_json`, parsed)."""
  return RunSettings.from_config(config_from_json(values))


def write_workdir_record(workdir, kind: str, config) -> None:
  """workdir.json: what wrote `workdir` (`kind`: the mode) and its config, so that the modes reading it later
  (ensemble, label_issues) need only --workdir."""
  fileio.write_json(pathlib.Path(workdir) / WORKDIR_RECORD, dict(
      kind=kind, fpclass_version=__version__,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      config=config_as_json(config)))


AUTO_FINAL = 'final'   # where an auto run keeps its final model: named here, below the search and the stages reading it


def model_elsewhere(workdir) -> str:
  """For a workdir of many runs whose one model lives in a folder of it (an auto run's final model): a clause
  naming that folder, for the line that says `workdir` holds no trained run; '' otherwise."""
  workdir = pathlib.Path(workdir)
  record = read_workdir_record(workdir)
  if record and record.get('kind') == 'auto' and (workdir / AUTO_FINAL / METADATA).is_file():
    return f'; it is an auto run, whose final model is --workdir={workdir / AUTO_FINAL}'
  return ''


def read_workdir_record(workdir) -> dict | None:
  path = pathlib.Path(workdir) / WORKDIR_RECORD
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserInputError(f'{path}: not valid JSON ({e}); it records the config this workdir was written from: '
                         'restore it, or pass --config') from None
  if not isinstance(record, dict) or not isinstance(record.get('config'), dict):
    raise UserInputError(f'{path}: holds no config; restore it, or pass --config')
  return record


def config_from_json(values: dict):
  """A ConfigDict of the current schema from a config stored as JSON (a sidecar's, a chosen configuration's):
  keys this version does not know are dropped (model fields are kept: they belong to the architecture)."""
  config = base_config()
  _update(config, values, free=('model',))
  return model_keys.completed(config)


def _update(node, values: dict, free=(), path=''):
  for key, value in values.items():
    if isinstance(value, dict) and key in node and hasattr(node[key], 'keys'):
      _update(node[key], value, free, f'{path}{key}.')
    elif key in node or path.rstrip('.') in free:
      node[key] = _tuples(value)


def _tuples(value):
  """JSON turned the config's tuples into lists; the schema's types are tuples."""
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_as_json(config) -> dict:
  """The config as the sidecar stores it (JSON types), so stored and current configs compare equal."""
  return json.loads(config.to_json_best_effort())
