"""Pooled features of frozen backbones (`--mode probe`): one inference-mode pass per backbone over a set of
images, cached on disk so that a second run, or another probe of the same images, reuses it.

Design notes: docs/modules.md (`fpclass/probe/pooled_features.py`).
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fpclass import fileio, models
from fpclass.config.model import ModelSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.errors import UserInputError
from fpclass.models import transfer, weights_ref
from fpclass.models.probe_backbones import Backbone
from fpclass.runtime.sharding import DataParallel
from fpclass.train.steps import CompiledSteps
from fpclass.train.task import Task, TaskView, TrainState, build_task

FORMAT = 1        # bump when what a cached entry means changes
FOLDER = 'probe_features'


@dataclasses.dataclass(frozen=True)
class Features:
  values: np.ndarray     # (N, D) float32
  seconds: float         # this run's seconds for them (loading the cache, or the whole pass)
  cached: bool           # read from the cache
  pass_seconds: float    # the pass's own seconds (weights, init, compile and forward), when it ran
  path: pathlib.Path


def backbone_settings(run: RunSettings, probe: ProbeSettings, backbone: Backbone) -> RunSettings:
  """`run` with its model replaced by the backbone, frozen, its top as config.probe.pooling asks."""
  model = ModelSettings(backbone.name, 'softmax', {'pretrained': backbone.weights, 'freeze_till': -1,
                                                   'top': probe.pooling})
  return dataclasses.replace(run, model=model)


@dataclasses.dataclass(frozen=True)
class PooledPass(TaskView):
  """`predict(params, batch_stats, uint8 images)` -> the pooled features, in inference mode."""
  flip: bool

  def predict(self, params, batch_stats, images_u8):
    x = self.task.prepare(images_u8)
    if self.flip:
      x = jnp.concatenate([x, x[:, :, ::-1]])      # NHWC: the width axis mirrored
    _, features, _ = self.task.apply(params, batch_stats, x, train=False)
    pooled = features['pre_logits'].astype(jnp.float32).reshape(x.shape[0], -1)
    if self.flip:
      half = images_u8.shape[0]
      pooled = 0.5 * (pooled[:half] + pooled[half:])
    return pooled


def images_digest(images: np.ndarray) -> str:
  """A hash of the decoded pixels, their order and shape."""
  digest = hashlib.sha256(json.dumps([list(images.shape), str(images.dtype)]).encode())
  for start in range(0, len(images), 256):          # a memory-mapped cache is read in pieces
    digest.update(np.ascontiguousarray(images[start:start + 256]).tobytes())
  return digest.hexdigest()


def backbone_weights(run: RunSettings, backbone: Backbone) -> weights_ref.WeightsRef:
  """The backbone's weights, resolved once for its cache key and its load; errors name its config.probe entry."""
  return weights_ref.resolve(backbone.weights, models.get_spec(backbone.name),
                             fileio.cache_root(run.data.storage.cache_dir), flag=backbone.flag)


def cache_path(run: RunSettings, probe: ProbeSettings, weights: weights_ref.WeightsRef, task: Task,
               digest: str) -> pathlib.Path:
  """The cache entry of the features of images `digest` under `run` (a `backbone_settings`) and `weights`."""
  key = json.dumps([FORMAT, digest, run.model.to_dict(), weights.cache_key(run.seed),
                    dataclasses.asdict(task.normalisation), task.repeat_rgb, list(task.device_resize),
                    run.train.precision, probe.flip_tta], sort_keys=True, default=str)
  name = hashlib.sha256(key.encode()).hexdigest()[:32]
  return fileio.cache_root(run.data.storage.cache_dir) / FOLDER / f'{weights.model}-{name}.npz'


def features(run: RunSettings, probe: ProbeSettings, backbone: Backbone, images: np.ndarray, class_names,
             digest: str) -> Features:
  """The pooled features of `images` (uint8 NHWC) for `backbone`, from the cache or computed and cached.
  `run`: the probed config's typed sections; `digest` is `images_digest(images)`."""
  start = time.perf_counter()
  weights = backbone_weights(run, backbone)
  model_run = backbone_settings(run, probe, backbone)
  task = build_task(model_run, class_names, np.arange(len(class_names)), steps_per_epoch=1)
  path = cache_path(model_run, probe, weights, task, digest)
  cached = _read(path, len(images))
  if cached is not None:
    values, pass_seconds = cached
    return Features(values, time.perf_counter() - start, True, pass_seconds, path)
  parallel = DataParallel.over()
  compiled = CompiledSteps(task, parallel, 'step')
  image_shape = tuple(images.shape[1:])
  loaded = transfer.load_pretrained(models.get_spec(backbone.name), model_run.model,
                                    compiled.variable_shapes(image_shape), fileio.cache_root(run.data.storage.cache_dir),
                                    weights)
  # The key training's init uses (fpclass.train.cohort), so a random-init backbone is the one a run would start from.
  variables = compiled.init_variables(jax.random.fold_in(jax.random.PRNGKey(run.seed), 0), image_shape,
                                      loaded)
  state = parallel.replicate(TrainState(step=np.zeros((), np.int32), params=variables['params'],
                                        batch_stats=variables['batch_stats'], opt_state=()))
  passes = CompiledSteps(PooledPass(task, probe.flip_tta), parallel, 'step')
  values = np.asarray(passes.logits(state, images, probe.batch_size), np.float32)
  seconds = time.perf_counter() - start
  if not np.all(np.isfinite(values)):
    raise UserInputError(f'config.probe.backbones: {backbone.name} gave non-finite features for '
                         f'{int(np.sum(~np.isfinite(values).all(1)))} images (weights {backbone.weights or "random"})')
  _write(path, values, seconds, backbone)
  tqdm.write(f'[{backbone.name}] features {values.shape[1]}-d for {len(values)} images in {seconds:.1f}s '
             f'({"flip TTA, " if probe.flip_tta else ""}cached in {path})')
  return Features(values, seconds, False, seconds, path)


def _read(path: pathlib.Path, rows: int):
  """(values, pass seconds) of a cache entry, or None when it is absent, unreadable or of another size."""
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as entry:
      values, seconds = entry['features'], float(entry['seconds'])
  except (OSError, ValueError, KeyError):
    return None    # compute again and overwrite it
  return (values, seconds) if values.ndim == 2 and len(values) == rows else None


def _write(path: pathlib.Path, values: np.ndarray, seconds: float, backbone: Backbone) -> None:
  with fileio.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, features=values, seconds=np.float64(seconds), backbone=np.str_(backbone.name),
               weights=np.str_(os.fspath(backbone.weights)))
