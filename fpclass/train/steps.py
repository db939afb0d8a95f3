"""The compiled train and predict programs, and an epoch through them: one place from the loop to the update.

`CompiledSteps` wraps the pure `Task.train_step` in one of two loop forms (config.train.loop):
- 'step': one jitted call per step. XLA:CPU runs this form fastest (docs/performance.md).
- 'scan': one jitted `lax.scan` over every step of the epoch, so the host dispatches once per epoch; the
  form for GPU/TPU, where a small model's step is shorter than the host's per-step dispatch.
'auto' picks 'step' on CPU and 'scan' elsewhere. Both forms run the same step function with the same
keys, fold_in(epoch_key, step), so they train the same model and a resumed run matches an unbroken one.
`CompiledSteps.epoch` takes the split resident on the devices (a batch is an index gather in the step) or streamed
from the host (one jitted call a step), the same batches either way (tests/test_streaming.py). `LoopAxis` is the
model axis's loop form: each member of a phase in turn through these programs (the vmap form: `fpclass.train.axis`).
Every program is data-parallel over `fpclass.runtime.sharding.DataParallel`, its state donated. A task's class
weights, label smoothing and learning rate are the train programs' arguments (`Task.arguments`), so a sweep's or a
search's variants that differ in them alone share one compiled step.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.config.training import LOOPS
from fpclass.data import stream
from fpclass.data.rows import ImageRows
from fpclass.errors import UserInputError
from fpclass.runtime.compiler_options import default_compiler_options, jit_options
from fpclass.runtime.sharding import DataParallel
from fpclass.train import precise_bn
from fpclass.train.batches import predict_logits as predict_in_batches


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

  def place(self, split):
    """The split's (images, labels) replicated on the mesh, for `epoch`; None for a streamed split."""
    return None if stream.is_streamed(split) else self.parallel.replicate((split.images, split.labels))

  def epoch(self, state, split, order: np.ndarray, epoch_key, on_step=None, start: int = 0, should_stop=None,
            arguments=None, placed=None):
    """Trains one epoch of `split` (its images and labels, resident or streamed) over the host `order` (steps,
    batch) from step `start`, as `run_epoch`; `placed`: the split as `place` put it on the mesh (shared by the
    members that read it, and by the epochs; placed here otherwise)."""
    if not stream.is_streamed(split):
      images, labels = placed or self.place(split)
      return self.run_epoch(state, images, labels, self.parallel.replicate(order), epoch_key, on_step, start,
                            should_stop, arguments)
    arguments = self.arguments() if arguments is None else arguments
    # A mesh of this process's devices alone (a sweep's member on one process of several) reads whole batches.
    share = dict(process_index=0, process_count=1) if self.parallel.process_local else {}
    batches = stream.device_batches(split.images, np.asarray(split.labels), order[start:], self.parallel.batch, **share)
    metrics = []
    for i, (images, labels) in enumerate(batches, start=start):
      state, out = self.train_batch_step(state, images, labels, i, epoch_key, arguments)
      metrics.append(out)
      if on_step is not None:
        on_step(i + 1, metrics)
      if should_stop is not None and i + 1 < len(order) and should_stop():
        break
    return state, metrics

  def logits(self, state, images, batch_size: int) -> np.ndarray:
    """Logits of `images` as validation computes them during training: the chunks and program of
    `fpclass.train.batches.predict_logits`, with a streamed split's chunks read ahead on threads."""
    if not isinstance(images, ImageRows) or len(images) == 0:
      return predict_in_batches(self.task, state, images, batch_size, self.predict)
    size = min(batch_size, len(images))
    out = [self.predict(state.params, state.batch_stats, chunk) for chunk in stream.host_chunks(images, size)]
    return np.concatenate(out)[:len(images)]

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


class LoopAxis:
  """The loop form of the model axis: members one after another, each through the one `CompiledSteps` (`steps`):
  every member runs the same programs, with `task`'s learning rate and label smoothing and its own class weights
  as their arguments (`steps` may be another task's of the same structure, shared); device copies of the data
  are shared by members that read the same arrays."""

  def __init__(self, task, steps: CompiledSteps):
    self.task, self.steps, self.parallel = task, steps, steps.parallel
    self.states, self._data, self._placed = {}, {}, {}
    self._batch_stats = precise_bn.program(task)   # jitted on first use

  def add(self, m, state, data) -> None:
    """Member m's first state and its `fpclass.train.axis.MemberData`."""
    self.states[m] = state
    self._data[m] = (data.train, data.val_images, data.class_weights)

  def remove(self, m):
    self._data.pop(m)
    return self.states.pop(m)

  def _placed_on_mesh(self, train):
    """The split's device copy, one per array, shared by the members that read it; None when it is streamed."""
    if stream.is_streamed(train):
      return None
    if id(train.images) not in self._placed:   # the array is kept beside its copy, so its id stays its own
      self._placed[id(train.images)] = (train.images, self.steps.place(train))
    return self._placed[id(train.images)][1]

  def run_epoch(self, members, orders, keys, on_step=None, start=0, should_stop=None) -> dict:
    """Trains each of `members` one epoch over its order; {m: [per-step metrics on the host]}."""
    out = {}
    for m in members:
      train, _, class_weights = self._data[m]
      self.states[m], metrics = self.steps.epoch(
          self.states[m], train, orders[m], keys[m], on_step, start, should_stop,
          self.steps.arguments(self.task, class_weights), self._placed_on_mesh(train))
      out[m] = jax.device_get(metrics)
    return out

  def val_logits(self, members, eval_batch: int) -> dict:
    """Each member's validation logits, with the variables it is evaluated with (`TrainState.for_evaluation`)."""
    return {m: self.steps.logits(self.states[m].for_evaluation(), self._data[m][1], eval_batch) for m in members}

  def state(self, m):
    return self.states[m]

  def recompute_batch_stats(self, members, rows: dict, chunk: int) -> None:
    """config.train.bn_statistics='precise': each member's batch statistics from its training rows (`rows[m]`)
    under its current weights (`fpclass.train.precise_bn`)."""
    if self._batch_stats is not None:
      for m in members:
        self.states[m] = precise_bn.recomputed(self._batch_stats, self.states[m], self._data[m][0].images, rows[m],
                                               chunk)

  def updates(self, m) -> int:
    """Member m's optimizer updates so far in this phase."""
    return int(self.task.optimizer_updates(self.states[m]))
