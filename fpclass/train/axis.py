"""The model axis's data, and its vmap form: how the members of one training phase advance through an epoch.

- `LoopAxis` (`fpclass.train.steps`, beside the programs it runs): each member in turn through the single-model
  programs (the step or scan loop form, data parallel over the mesh, resident or streamed data). A solo `--mode
  train` run is this form with one member, so a sweep's member runs the solo run's programs.
- `VmapAxis`: the members' states stacked, one jitted `jax.vmap` of `Task.train_step` advancing them all;
  a member with no step left this epoch (a shorter split) or out of this phase is masked (`jnp.where`).
  Chosen by name: where many tiny models would each leave an accelerator idle.
`auto` picks `loop` on every backend measured: on XLA:CPU the vmapped (grouped) convolutions ran 2-3x slower
than one model at a time (bench/vmap_speedup.py), and on an H100 15 footprint CNNs took 0.13 s a model-epoch
vmapped against 0.06 s in turn, and the loop form's one-model programs serve any member count
(docs/performance.md, GPU session 2026-11-26).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.data import stream
from fpclass.errors import UserInputError
from fpclass.runtime.compiler_options import jit_options
from fpclass.train import precise_bn
from fpclass.train import task as task_lib

FORMS = ('auto', 'vmap', 'loop')


def resolve_form(form: str) -> str:
  if form not in FORMS:
    raise UserInputError(f'config.sweep.model_axis={form!r}: choose one of {FORMS}')
  return 'loop' if form == 'auto' else form


@dataclasses.dataclass
class Split:
  """Images and labels that members' indices point into (uint8 images, or a frozen backbone's features)."""
  images: object
  labels: np.ndarray


@dataclasses.dataclass
class TrainData:
  """The arrays every member's indices point into: a solo run's train and val splits, or a sweep's pool
  (train and val the same arrays, each member's fold picking its rows)."""
  class_names: tuple
  train: Split
  val: Split
  unlabelled: tuple = ()   # (first row, count) of the unlabelled images after the labelled ones in `train`


@dataclasses.dataclass
class MemberData:
  """What one member trains and validates on in a phase: the train split its orders index, its own
  validation images (the loop form predicts them), their indices into the val array (the vmap form
  gathers them on the device), and its class weights."""
  train: Split
  val_images: object
  val_index: np.ndarray
  class_weights: tuple | None


def where_tree(mask, new, old):
  def pick(a, b):
    m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)
  return jax.tree_util.tree_map(pick, new, old)


def vmapped_predict(task):
  """(stacked params, stacked batch_stats, images, (models, batch) indices) -> (models, batch, ...) logits."""
  return jax.jit(jax.vmap(lambda p, bs, x, idx: task.predict(p, bs, x[idx]), in_axes=(0, 0, None, 0)),
                 compiler_options=jit_options())


class VmapAxis:
  """Every member of the chunk in one stacked state (slot m is member m); a member not in this phase, or
  with no step left, is masked. The data is shared: every member indexes the same device arrays."""

  def __init__(self, task, slots: int, template, train: Split, val_images, class_weights: list):
    if stream.is_streamed(train):
      raise UserInputError("config.sweep.model_axis='vmap': the images exceed config.data.device_memory_budget "
                           "and are streamed, which the vmap form cannot do; use config.sweep.model_axis='loop'")
    self.task, self.slots = task, slots
    self.states = jax.tree_util.tree_map(lambda a: jnp.stack([a] * slots), template)
    self.images, self.labels = jax.device_put(train.images), jax.device_put(np.asarray(train.labels, np.int32))
    self.val_images = self.images if val_images is train.images else jax.device_put(np.asarray(val_images))
    self.val_index = [None] * slots
    self.class_weights = (None if class_weights[0] is None else jnp.asarray(class_weights, jnp.float32))

    # The learning rate and smoothing are arguments, as in the loop form's programs (`Task.arguments`).
    self.arguments = {k: None if v is None else jnp.asarray(v, jnp.float32) for k, v in task.arguments().items()
                      if k != 'class_weights'}

    def one(state, x, y, order, i, key, active, cw, arguments):
      new, out = task.with_arguments(dict(arguments, class_weights=cw)).train_step(state, x, y, order[i],
                                                                                  jax.random.fold_in(key, i))
      return where_tree(active, new, state), out

    axes = (0, None, None, 0, None, 0, 0, None if self.class_weights is None else 0, None)
    self._step = jax.jit(jax.vmap(one, in_axes=axes), donate_argnums=0, compiler_options=jit_options())
    self._predict = vmapped_predict(task)
    self._batch_stats = precise_bn.program(task)
    self._set = jax.jit(lambda states, m, state: jax.tree_util.tree_map(lambda a, b: a.at[m].set(b), states, state),
                        donate_argnums=0)

  def add(self, m, state, data: MemberData) -> None:
    self.states = self._set(self.states, m, state)
    self.val_index[m] = np.asarray(data.val_index)

  def remove(self, m):
    state = self.state(m)
    self.val_index[m] = None
    return state

  def run_epoch(self, members, orders, keys, on_step=None, start=0, should_stop=None) -> dict:
    steps = np.zeros(self.slots, int)
    padded = np.zeros((self.slots, max(len(orders[m]) for m in members), orders[members[0]].shape[1]), np.int32)
    epoch_keys = [jax.random.PRNGKey(0)] * self.slots
    for m in members:
      steps[m] = len(orders[m])
      padded[m, :steps[m]] = orders[m]
      epoch_keys[m] = keys[m]
    padded, epoch_keys = jax.device_put(padded), jnp.stack(epoch_keys)
    outputs = []
    for i in range(int(steps.max())):
      active = i < steps
      self.states, out = self._step(self.states, self.images, self.labels, padded, i, epoch_keys,
                                    jnp.asarray(active), self.class_weights, self.arguments)
      outputs.append((out, active))
    outputs = jax.device_get(outputs)
    return {m: [{k: v[m] for k, v in out.items()} for out, active in outputs if active[m]] for m in members}

  def val_logits(self, members, eval_batch: int) -> dict:
    longest = max(len(self.val_index[m]) for m in members)
    batch = task_lib.common_batch(eval_batch, [longest])
    padded = np.zeros((self.slots, math.ceil(longest / batch) * batch), np.int32)
    for m in members:
      padded[m, :len(self.val_index[m])] = self.val_index[m]
    evaluated = self.states.for_evaluation()
    out = [self._predict(evaluated.params, evaluated.batch_stats, self.val_images, padded[:, s:s + batch])
           for s in range(0, padded.shape[1], batch)]
    logits = np.concatenate(jax.device_get(out), axis=1)
    return {m: logits[m, :len(self.val_index[m])] for m in members}

  def state(self, m):
    return jax.tree_util.tree_map(lambda a: a[m], self.states)

  def recompute_batch_stats(self, members, rows: dict, chunk: int) -> None:
    """As `LoopAxis.recompute_batch_stats`, slot by slot."""
    if self._batch_stats is not None:
      for m in members:
        self.states = self._set(self.states, m, precise_bn.recomputed(self._batch_stats, self.state(m), self.images,
                                                                      rows[m], chunk))

  def updates(self, m) -> int:
    return int(self.task.optimizer_updates(self.states)[m])
