"""Orbax checkpoints (best and last) plus the run's metadata sidecar.

    <workdir>/checkpoints/last/<epoch>/   every epoch: train state + loop state (resume point)
    <workdir>/checkpoints/best/<epoch>/   when the monitored metric improves
    <workdir>/metadata.json               class names, image size, channels, normalisation, config

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a killed run leaves
the previous checkpoint intact. Restoring against a config whose model or data shape differs from the
sidecar's is refused with the differing keys listed.
"""
import datetime
import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from fpclass import __version__, fileio
from fpclass.config import base_config
from fpclass.errors import UserInputError

METADATA = 'metadata.json'

# Keys a resumed run may change: they do not alter what has been trained so far.
RESUMABLE_CHANGES = ('train.epochs', 'train.log_every_steps', 'train.loop', 'train.early_stopping_patience', 'eval.',
                     'submit.', 'data.cache_dir', 'data.decode_workers', 'data.root', 'data.bad_test_images',
                     'name', 'explain.', 'sweep.', 'serve.', 'data.tfds.data_dir', 'clean.',
                     'train.tensorboard')
# Keys that must agree for a checkpoint to be usable at all (evaluate, submit, explain).
ARCHITECTURE_KEYS = ('model.', 'data.image_size', 'data.channels', 'data.mean', 'data.std')


class CheckpointStore:
  def __init__(self, workdir: str | pathlib.Path):
    self.root = pathlib.Path(workdir).absolute() / 'checkpoints'
    self._managers = {}

  def _manager(self, kind: str) -> ocp.CheckpointManager:
    if kind not in self._managers:
      options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=True,
                                             enable_async_checkpointing=False)
      self._managers[kind] = ocp.CheckpointManager(self.root / kind, options=options)
    return self._managers[kind]

  def latest_epoch(self, kind: str) -> int | None:
    if not (self.root / kind).is_dir():
      return None
    return self._manager(kind).latest_step()

  def save(self, kind: str, epoch: int, state, loop_state: dict) -> None:
    """Saves the model variables and loop state; `last` also keeps the optimizer state for resuming."""
    items = dict(model=ocp.args.StandardSave(model_variables(state)), loop=ocp.args.JsonSave(loop_state))
    if kind == 'last':
      items['optimizer'] = ocp.args.StandardSave(dict(step=state.step, opt_state=state.opt_state))
    self._manager(kind).save(epoch, args=ocp.args.Composite(**items), force=True)

  def restore(self, kind: str, abstract_state, epoch: int | None = None, with_optimizer: bool = False):
    """(state, loop_state) from the `kind` checkpoint; a clear error if it is absent or does not fit.

    Without `with_optimizer` only the model variables are read, so evaluation does not depend on the
    optimizer settings; `abstract_state` may then come from `jax.eval_shape`.
    """
    epoch = self.latest_epoch(kind) if epoch is None else epoch
    if epoch is None:
      raise UserInputError(f'{self.root / kind}: no {kind!r} checkpoint; train this workdir first '
                           '(--mode train)')
    target = jax.tree_util.tree_map(_placed_here, abstract_state)
    items = dict(model=ocp.args.StandardRestore(model_variables(target)), loop=ocp.args.JsonRestore())
    if with_optimizer:
      items['optimizer'] = ocp.args.StandardRestore(dict(step=target.step, opt_state=target.opt_state))
    try:
      restored = self._manager(kind).restore(epoch, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
      raise UserInputError(f'{self.root / kind}/{epoch}: the checkpoint does not match the model built from '
                           f'this config ({type(e).__name__}: {str(e)[:500]})') from None
    state = abstract_state.replace(params=restored.model['params'],
                                   batch_stats=restored.model.get('batch_stats', {}))
    if with_optimizer:
      state = state.replace(step=restored.optimizer['step'], opt_state=restored.optimizer['opt_state'])
    return state, restored.loop

  def loop_state(self, kind: str = 'last') -> dict | None:
    """The loop state (history, best epoch, stop reason) of the newest `kind` checkpoint, if any."""
    epoch = self.latest_epoch(kind)
    if epoch is None:
      return None
    return self._manager(kind).restore(epoch, args=ocp.args.Composite(loop=ocp.args.JsonRestore())).loop

  def close(self):
    for manager in self._managers.values():
      manager.close()


def build_metadata(config, class_names, num_params: int, normalisation: dict) -> dict:
  return dict(
      fpclass_version=__version__,
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      class_names=list(class_names),
      image_size=list(config.data.image_size),
      channels=int(config.data.channels),
      normalisation=normalisation,
      model=config.model.name,
      head=config.model.get('head', 'softmax'),
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
  """Refuses to continue a run in `workdir` under a config that would change what it trains."""
  diffs = config_differences(metadata['config'], config_dict, ignore=RESUMABLE_CHANGES)
  if diffs:
    raise UserInputError(f'{workdir} holds a run with a different config, so it cannot be resumed: '
                         + '; '.join(diffs[:10]) + '. Use a new --workdir, or the original flags.')


def check_restorable(workdir, metadata: dict, config_dict: dict) -> None:
  """Refuses to restore a checkpoint into a model or input other than the one it was trained as,
  naming each differing key and the value stored at training."""
  stored = traverse_util.flatten_dict(metadata['config'], sep='.')
  current = traverse_util.flatten_dict(config_dict, sep='.')
  diffs = [f'--config.{key}={_tuples(_normal(current.get(key, "<absent>")))!r} (trained with '
           f'{_tuples(_normal(stored[key]))!r})'
           if key in stored else f'--config.{key}: not a key of the trained model'
           for key in config_differences_keys(stored, current, ARCHITECTURE_KEYS)]
  if diffs:
    raise UserInputError(f'{workdir}: these overrides change the trained model or its input: '
                         + '; '.join(diffs[:10]) + '. Leave them out: without --config, the workdir\'s '
                         f'{METADATA} supplies the training config.')


def config_differences_keys(stored: dict, current: dict, only) -> list[str]:
  return [key for key in sorted(set(stored) | set(current))
          if any(key == p or key.startswith(p) for p in only)
          and _normal(stored.get(key, '<absent>')) != _normal(current.get(key, '<absent>'))]


def stored_config(workdir):
  """The training config of `workdir`, from its sidecar, as a ConfigDict of the current schema: keys this
  version does not know are dropped (model fields are kept: they belong to the architecture)."""
  metadata = read_metadata(workdir)
  if metadata is None:
    raise UserInputError(f'{workdir}: no trained run here ({METADATA} is missing); pass --config, or train '
                         'this --workdir first')
  config = base_config()
  _update(config, metadata['config'], free=('model',))
  return config


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


def model_variables(state) -> dict:
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def _placed_here(leaf):
  """The leaf's own sharding, else the first local device: orbax would otherwise restore onto the devices
  the checkpoint was saved from (a 4-device run's checkpoint then fails to load on 1 device)."""
  sharding = getattr(leaf, 'sharding', None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def abstract_like(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
