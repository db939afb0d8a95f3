"""The compiled train and predict programs: loop form and data parallelism.

`CompiledSteps` wraps the pure `Task.train_step` in one of two loop forms (config.train.loop):
- 'step': one jitted call per step. XLA:CPU runs this form fastest (docs/performance.md).
- 'scan': one jitted `lax.scan` over every step of the epoch, so the host dispatches once per epoch; the
  form for GPU/TPU, where a small model's step is shorter than the host's per-step dispatch.
'auto' picks 'step' on CPU and 'scan' elsewhere. Both forms run the same step function with the same
keys, fold_in(epoch_key, step), so they train the same model and a resumed run matches an unbroken one.

Every program is data-parallel over `fpclass.runtime.sharding.DataParallel` (one device is a mesh of one). The
train state is donated, so each step updates it in place. A task's class weights, label smoothing and learning
rate are arguments of the train programs, not constants in them (`Task.arguments`): the folds of an experiment
weigh their classes by their own labels (config.train.class_weights='auto'), and a sweep's or a search's variants
that differ in their rate or smoothing alone share one compiled step, as a solo run's.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.config.training import LOOPS
from fpclass.errors import UserInputError
from fpclass.runtime.sharding import DataParallel

# XLA:CPU hands convolutions, matmuls and reductions to YNNPACK by default; its convolution weight gradients
# ran ~4x slower than XLA's Eigen ones (footprint CNN conv2), so on CPU convolutions stay with Eigen and
# YNNPACK keeps matmuls and reductions. Measured ~1.1x per step when chosen; a later run on the loaded shared
# machine did not reproduce it (defaults x1.06, within noise): re-measure on a quiet machine with
# `bench/cpu_ablations.py --only xla` (docs/performance.md).
CPU_OPTIONS = (('xla_cpu_experimental_ynn_fusion_type', 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'),)
# The init program runs once: XLA's O1 compiles it in under half the time of O3 (its threefry PRNG code
# is most of the compile) and runs it about as fast.
CPU_INIT_OPTIONS = (('xla_backend_optimization_level', 1),)


def default_compiler_options(backend: str | None = None) -> tuple:
  return CPU_OPTIONS if (backend or jax.default_backend()) == 'cpu' else ()


def jit_options(init: bool = False) -> dict | None:
  """`jax.jit(compiler_options=...)` for this backend: the train/predict programs' options, or the init
  program's. Every program that must reproduce `CompiledSteps` exactly (e.g. `fpclass.train.axis`) uses
  these, since XLA options may change floating-point results."""
  if init:
    return dict(CPU_INIT_OPTIONS) if jax.default_backend() == 'cpu' else None
  return dict(default_compiler_options()) or None


def check_loop(loop: str) -> str:
  if loop not in LOOPS:
    raise UserInputError(f'config.train.loop={loop!r}: choose one of {LOOPS}')
  return loop


def resolve_loop(loop: str, backend: str | None = None) -> str:
  """'auto' -> 'step' on CPU, 'scan' on GPU/TPU; an explicit form is kept."""
  if check_loop(loop) != 'auto':
    return loop
  return 'step' if (backend or jax.default_backend()) == 'cpu' else 'scan'


def validation_batch(evaluation, train_batch: int, backend: str | None = None) -> int:
  """The batch of each epoch's validation (`evaluation`: config.eval's settings): its validation_batch_size when
  set; else the training batch on GPU/TPU (the shapes its autotuning covers) and its batch_size on CPU."""
  if evaluation.validation_batch_size:
    return evaluation.validation_batch_size
  return evaluation.batch_size if (backend or jax.default_backend()) == 'cpu' else train_batch


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """Jitted programs for one task on one mesh. `form` is 'step' or 'scan' (see `resolve_loop`)."""
  task: Any
  parallel: DataParallel
  form: str = 'step'
  compiler_options: tuple | None = None   # XLA options as (name, value) pairs; None: the backend's defaults

  @property
  def _options(self) -> dict | None:
    options = default_compiler_options() if self.compiler_options is None else self.compiler_options
    return dict(options) or None

  def arguments(self, task=None, class_weights=None) -> dict:
    """The train programs' `arguments`: `task`'s (default: this one's) class weights, label smoothing and learning
    rate (`Task.arguments`), `class_weights` (a member's own) replacing the task's; replicated on the mesh. A task
    that shares these programs (the same structure, another learning rate) passes its own."""
    values = (task or self.task).arguments()
    if class_weights is not None:
      values['class_weights'] = class_weights
    return self.parallel.replicate({k: None if v is None else np.asarray(v, np.float32) for k, v in values.items()})

  def _step(self, state, images, labels, order, i, epoch_key, arguments):
    index = self.parallel.constrain_batch(order[i])
    return self.task.with_arguments(arguments).train_step(state, images, labels, index, jax.random.fold_in(epoch_key, i))

  def _batch_step(self, state, batch_images, batch_labels, i, epoch_key, arguments):
    batch_images = self.parallel.constrain_batch(batch_images)
    batch_labels = self.parallel.constrain_batch(batch_labels)
    return self.task.with_arguments(arguments).train_batch(state, batch_images, batch_labels,
                                                           jax.random.fold_in(epoch_key, i))

  def _epoch(self, state, images, labels, order, epoch_key, arguments):
    def body(state, i):
      return self._step(state, images, labels, order, i, epoch_key, arguments)
    return jax.lax.scan(body, state, jnp.arange(order.shape[0]))

  @functools.cached_property
  def train_step(self) -> Callable:
    """(state, images, labels, order, i, epoch_key, arguments) -> (state, metrics) for step `i` of `order`."""
    return jax.jit(self._step, donate_argnums=0, out_shardings=self.parallel.replicated,
                   compiler_options=self._options)

  @functools.cached_property
  def train_epoch(self) -> Callable:
    """(state, images, labels, order, epoch_key, arguments) -> (state, metrics stacked over the epoch's steps)."""
    return jax.jit(self._epoch, donate_argnums=0, out_shardings=self.parallel.replicated,
                   compiler_options=self._options)

  @functools.cached_property
  def train_batch_step(self) -> Callable:
    """(state, batch_images, batch_labels, i, epoch_key, arguments) -> (state, metrics): step `i` on a batch gathered
    on the host and sharded along the batch (fpclass.data.stream); the same step as `train_step`."""
    return jax.jit(self._batch_step, donate_argnums=0, out_shardings=self.parallel.replicated,
                   compiler_options=self._options)

  @property
  def _init_options(self) -> dict | None:
    return jit_options(init=True)

  @functools.cached_property
  def init(self) -> Callable:
    """(key, image_shape[, variables]) -> a replicated TrainState: one compiled program instead of op-by-op
    dispatch; from `variables` (e.g. pretrained weights) when given, else freshly initialised."""
    return jax.jit(self.task.init, static_argnums=1, out_shardings=self.parallel.replicated,
                   compiler_options=self._init_options)

  @functools.cached_property
  def _init_programs(self) -> dict:
    return {}

  def variable_shapes(self, image_shape) -> dict:
    """The model variables for `image_shape` as `jax.ShapeDtypeStruct`s (nothing computed)."""
    return jax.eval_shape(lambda key: self.task.init_variables(key, image_shape), jax.random.PRNGKey(0))

  def init_variables(self, key, image_shape, loaded: dict | None = None) -> dict:
    """Fresh model variables, compiled like `init`, except where `loaded` (the tree of `variable_shapes`
    with some leaves replaced by arrays, e.g. by `transfer.load_pretrained`) already holds an array.

    The program computes only the leaves that are still abstract: XLA drops the initialisers whose outputs
    are not asked for, so a pretrained backbone is not initialised only to be overwritten (ResNet50V2's init
    compiled in 9 s, the new head's in a fraction of that). The leaves it computes are those of the full
    init with the same key, bit for bit: each is the same function of its own key (Flax folds the module path
    into the key), and integer PRNG arithmetic has no rounding to differ in."""
    loaded = self.variable_shapes(image_shape) if loaded is None else loaded
    leaves, treedef = jax.tree_util.tree_flatten(loaded)
    fresh = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.ShapeDtypeStruct)]

    program_key = (tuple(image_shape), treedef, tuple(fresh))
    if program_key not in self._init_programs:   # one program for every model initialised alike (a sweep's)
      def fresh_leaves(key):
        variables = self.task.init_variables(key, image_shape)
        if jax.tree_util.tree_structure(variables) != treedef:
          raise ValueError('init_variables: `loaded` does not have the structure of this model\'s variables')
        every = jax.tree_util.tree_leaves(variables)
        return [every[i] for i in fresh]
      self._init_programs[program_key] = jax.jit(fresh_leaves, compiler_options=self._init_options)
    values = self._init_programs[program_key](key) if fresh else []
    for i, value in zip(fresh, values):
      leaves[i] = value
    return jax.tree_util.tree_unflatten(treedef, leaves)

  def run_epoch(self, state, images, labels, order, epoch_key, on_step=None, start: int = 0, should_stop=None,
                arguments=None):
    """Trains one epoch over `order` (steps, batch) from step `start`; returns (state, per-step metrics on the
    device, for the steps it ran). `arguments`: the member's (`arguments()`; default: this task's).

    `on_step(done, metrics)` is called after each step in the 'step' form and once at the end in the
    'scan' form, with the number of steps done and the metrics so far. `should_stop()` is asked after each
    step of the 'step' form: True ends the epoch there (a stop requested by a signal); the 'scan' form runs
    whole epochs, and a partial epoch (start > 0) always takes the step form.
    """
    steps = order.shape[0]
    arguments = self.arguments() if arguments is None else arguments
    if self.form == 'scan' and start == 0:
      state, stacked = self.train_epoch(state, images, labels, order, epoch_key, arguments)
      stacked = jax.device_get(stacked)  # a few numbers per step; split on the host
      metrics = [{k: v[i] for k, v in stacked.items()} for i in range(steps)]
      if on_step is not None:
        on_step(steps, metrics)
      return state, metrics
    metrics = []
    for i in range(start, steps):
      state, out = self.train_step(state, images, labels, order, i, epoch_key, arguments)
      metrics.append(out)
      if on_step is not None:
        on_step(i + 1, metrics)
      if should_stop is not None and i + 1 < steps and should_stop():
        break
    return state, metrics

  @functools.cached_property
  def _predict(self) -> Callable:
    return jax.jit(self.task.predict, out_shardings=self.parallel.batch,
                   compiler_options=self._options)

  def predict(self, params, batch_stats, images_u8: np.ndarray):
    """Logits for a host batch, split across the devices (padded to a multiple of their number)."""
    n = len(images_u8)
    pad = -n % self.parallel.size
    if pad:
      images_u8 = np.concatenate([images_u8, np.zeros((pad, *images_u8.shape[1:]), images_u8.dtype)])
    return self.parallel.to_host(self._predict(params, batch_stats, self.parallel.shard_batch(images_u8)))[:n]
