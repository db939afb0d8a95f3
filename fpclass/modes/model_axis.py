"""Training many models at once: k folds x seeds along a leading model axis.

Every model ("member") is one (split, seed) pair trained exactly as `fpclass.train.train_and_evaluate`
would train it alone with `data.fold=split, seed=seed`: the same init key, epoch and step keys, the same
batch order (`epoch_order(seed, epoch, n_train_of_its_split, batch)`), the same early-stopping rule
(`train.record_epoch`). All members share one device array of images; a member's batches are gathers
through its own split's indices, so splits of unequal size keep their own batch sequence: a member with
fewer steps per epoch sits out (is masked for) the extra steps of the longest one.

Two forms of the model axis, with the same results (tested against solo runs):

- `vmap`: the train states are stacked and one jitted `jax.vmap` of `Task.train_step` advances every
  member; a member that has stopped early, or has no step left this epoch, is masked (its state is kept
  with `jnp.where`), never retrained. This is the form for accelerators, where small models leave most
  of the device idle.
- `loop`: the same pure step, jitted once, called per member in turn within each step. On XLA:CPU the
  vmapped (grouped) convolutions run about 2.5x slower than the same convolutions one model at a time and
  a `lax.map` over models about 30x slower (bench/vmap_speedup.py), so `auto` picks `loop` on CPU.

Memory. Per member the chunk holds its train state S (params, batch stats, optimizer state) and its best
variables V. The train step needs its temporaries T (XLA's temp bytes: W per model, so M * W in the vmap
form and W in the loop form) and the evaluation program its own, E (M * W_eval or W_eval). With D the
shared uint8 images and k the step-sized blocks the host heap keeps:

    bytes(M) ~= D + M * (S + V) + (k - 1) * T + max(T, E)

and M is the largest chunk with bytes(M) <= memory_fraction * free memory (at least 1), unless
`sweep.models_per_chunk` fixes it. Members are split into chunks of at most M, trained one after another.
The peak resident size of the process is its size when planning (Python, JAX, the decoded data) plus
bytes(M). What the first rule (D + M * (S + V + max(W, W_eval))) missed, measured with
tests/test_memory_rule.py and its probe (peak RSS of a fresh process; 4 footprint CNNs at 120x80 under vmap,
1000 images: 3.9-4.1 GiB measured, 1.3 GiB predicted by the first rule, 3.4 GiB by this one):
- W_eval: XLA:CPU hands the single-model evaluation program's convolutions to a library fusion (YNNPACK)
  whose buffers XLA's memory analysis does not count (it reported 0 bytes). E is read from the program
  compiled without that fusion (loop), or from the vmapped program at two models, whose grouped
  convolutions stay in XLA (vmap: about 470 MB per model at batch 200).
- k: on CPU under `fpclass.runtime.keep_host_buffers` (one glibc arena that never unmaps), the step's
  temporaries are allocated anew each call, and small host allocations between steps split the freed block,
  so the heap settles at two to three step-sized blocks: 1.8 to 3.0 x T, varying from run to run of the
  same chunk (1 to 4 models, 60x40 to 120x80, vmap and loop). k = 2.5 puts the prediction within 20% of
  either end. Elsewhere k = 1.
- the process's own resident size (~0.5 GB on CPU), which the free memory already excludes but a
  measured peak includes.
"""
import dataclasses
import math
import os
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fpclass import checkpoint, fileio, metrics, optim, runtime
from fpclass import task as task_lib
from fpclass.errors import UserInputError
from fpclass.loop_state import MONITOR_MODES, LoopState, SelectionRules, epoch_row, improves
from fpclass.sampling import batch_order
from fpclass.steps import jit_options

FORMS = ('auto', 'vmap', 'loop')


@dataclasses.dataclass(frozen=True)
class Member:
  """One model on the axis: its split (fold k, or -1 for the holdout or the source's own validation
  split), its seed, and its train/val example indices into the shared image array."""
  split: int
  seed: int
  train_index: np.ndarray
  val_index: np.ndarray

  @property
  def name(self) -> str:
    return f'{split_name(self.split)}-seed{self.seed}'


def split_name(split: int) -> str:
  return 'holdout' if split < 0 else f'fold{split}'


@dataclasses.dataclass
class MemberResult:
  """A trained member: its solo-compatible loop state and the validation logits of its selected
  checkpoint. `fetch()` returns host copies of (last state, best variables or None); it is valid only
  until the next chunk starts, which frees the chunk's device memory."""
  member: Member
  loop: LoopState
  checkpoint: str          # best | last: the selected one
  epoch: int
  val_logits: np.ndarray
  fetch: object = None

  def monitor_value(self, monitor: str):
    """The monitored metric at the selected checkpoint (what choosing among seeds compares)."""
    if self.checkpoint == 'best':
      return self.loop.best_value
    return self.loop.history[-1][monitor] if self.loop.history else None


def resolve_form(form: str) -> str:
  if form not in FORMS:
    raise UserInputError(f'config.sweep.model_axis={form!r}: choose one of {FORMS}')
  if form == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return form


def batch_size_for(config, n_train: int) -> int:
  return min(int(config.train.batch_size), n_train)


def optimizer_groups(config, members) -> list[list[Member]]:
  """Members that can share one optimizer: the same batch size and the same learning rate at every step.

  The optimizer depends on a member's split only through steps per epoch in the schedule; with the usual
  constant schedule every member shares one group even when splits differ in size by one example."""
  batches = {len(m.train_index): batch_size_for(config, len(m.train_index)) for m in members}
  steps = {n: math.ceil(n / b) for n, b in batches.items()}
  horizon = int(config.train.epochs) * max(steps.values())
  learning_rates = {s: np.asarray(jax.vmap(optim.learning_rate_schedule(config.train, s))(jnp.arange(horizon)),
                                  np.float32).tobytes() for s in set(steps.values())}
  groups: dict = {}
  for m in members:
    n = len(m.train_index)
    groups.setdefault((batches[n], learning_rates[steps[n]]), []).append(m)
  return list(groups.values())


def _tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def free_memory_bytes() -> int:
  """Free accelerator memory, or available host memory on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  try:
    with open('/proc/meminfo') as f:
      info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f}
    return info['MemAvailable']
  except (OSError, KeyError, ValueError):
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


# Step-sized blocks the host heap holds under keep_host_buffers (module docstring; tests/test_memory_rule.py).
HOST_STEP_COPIES = 2.5
# Compiled without it, XLA counts the evaluation program's convolutions in its temp bytes (module docstring).
NO_LIBRARY_FUSION = (('xla_cpu_experimental_ynn_fusion_type', ''),)


def resident_bytes() -> int:
  """This process's resident size on CPU (0 where /proc is absent), or the accelerator's bytes in use."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_in_use' in stats:
    return int(stats['bytes_in_use'])
  return runtime.process_memory_bytes('VmRSS')


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """The terms of the memory formula (module docstring), measured for one task and data shape."""
  shared_bytes: int      # D
  state_bytes: int       # S
  best_bytes: int        # V
  step_bytes: int        # W: one model's train-step temporaries
  eval_bytes: int = 0    # W_eval: one model's evaluation temporaries
  step_copies: float = 1.0   # k
  resident_bytes: int = 0  # the process's size (CPU) or the device's bytes in use when planning

  def temporaries(self, form: str, models: int) -> int:
    """(k - 1) * T + max(T, E) for a chunk of `models`."""
    per = models if form == 'vmap' else 1
    train, evaluate = per * self.step_bytes, per * self.eval_bytes
    return int((self.step_copies - 1) * train) + max(train, evaluate)

  def chunk_bytes(self, form: str, models: int) -> int:
    return self.shared_bytes + models * (self.state_bytes + self.best_bytes) + self.temporaries(form, models)

  def peak_bytes(self, form: str, models: int) -> int:
    """The predicted peak: resident size when planning plus the chunk's bytes."""
    return self.resident_bytes + self.chunk_bytes(form, models)

  def chunk(self, form: str, budget_bytes: int) -> int:
    if form == 'vmap':  # every term but D grows with the chunk
      chunk = (budget_bytes - self.shared_bytes) // max(1, self.chunk_bytes(form, 1) - self.shared_bytes)
    else:
      chunk = (budget_bytes - self.chunk_bytes(form, 0)) // max(1, self.state_bytes + self.best_bytes)
    return max(1, int(chunk))

  def describe(self, form: str, budget_bytes: int, models: int | None = None) -> str:
    """The rule's choice in words; the predicted peak is for a chunk of at most `models`."""
    mib = lambda b: f'{b / 2**20:,.1f} MiB'
    chunk = self.chunk(form, budget_bytes)
    return (f'{chunk} models per chunk by the memory rule (shared images {mib(self.shared_bytes)}; per model: '
            f'state {mib(self.state_bytes)}, best variables {mib(self.best_bytes)}, train step '
            f'{mib(self.step_bytes)} x {self.step_copies} blocks, evaluation {mib(self.eval_bytes)}; budget '
            f'{mib(budget_bytes)}; predicted peak {mib(self.peak_bytes(form, min(chunk, models or chunk)))})')


def measure_memory(task, images: np.ndarray, batch: int, eval_batch: int, form: str = 'loop') -> MemoryPlan:
  """D, S and V from array sizes; W and W_eval by compiling the programs (not running them) and reading
  XLA's memory analysis (temp bytes); k from the backend and the host allocator. `eval_batch` is the
  evaluation batch the chunk will use (at most the longest validation split)."""
  shape = images.shape[1:]
  abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), shape))
  x = jax.ShapeDtypeStruct(images.shape, images.dtype)
  y = jax.ShapeDtypeStruct((len(images),), jnp.int32)
  idx = jax.ShapeDtypeStruct((batch,), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  temp = lambda compiled: int(getattr(compiled.memory_analysis(), 'temp_size_in_bytes', 0) or 0)
  train = temp(jax.jit(task.train_step, compiler_options=jit_options()).lower(abstract, x, y, idx, key).compile())
  cpu = jax.default_backend() == 'cpu'
  if form == 'vmap':
    pair = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((2, *a.shape), a.dtype), abstract)
    program = _VmapModels(task, pair, [None, None])._predict
    evaluate = temp(program.lower(pair.params, pair.batch_stats, x,
                                  jax.ShapeDtypeStruct((2, eval_batch), jnp.int32)).compile()) // 2
  else:
    options = {**(jit_options() or {}), **dict(NO_LIBRARY_FUSION)} if cpu else jit_options()
    evaluate = temp(jax.jit(task.predict, compiler_options=options).lower(
        abstract.params, abstract.batch_stats, jax.ShapeDtypeStruct((eval_batch, *shape), images.dtype)).compile())
  return MemoryPlan(shared_bytes=int(images.nbytes), state_bytes=_tree_bytes(abstract),
                    best_bytes=_tree_bytes((abstract.params, abstract.batch_stats)), step_bytes=train,
                    eval_bytes=evaluate, step_copies=HOST_STEP_COPIES if cpu and runtime.host_buffers_kept() else 1.0,
                    resident_bytes=resident_bytes())


def balanced_chunks(items: list, chunk: int) -> list[list]:
  """Splits into ceil(n / chunk) chunks of near-equal size, so at most two chunk shapes get compiled."""
  count = max(1, math.ceil(len(items) / chunk))
  bounds = np.linspace(0, len(items), count + 1).round().astype(int)
  return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _where_tree(mask, new, old):
  def pick(a, b):
    m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)
  return jax.tree_util.tree_map(pick, new, old)


def _member_task(task, class_weights):
  return task if class_weights is None else dataclasses.replace(task, class_weights=class_weights)


class _LoopModels:
  """The `loop` form: a list of per-member states, each advanced by the one jitted single-model step."""

  def __init__(self, task, states, class_weights):
    self.task, self.states, self.class_weights = task, states, class_weights
    self.best = [None] * len(states)
    self._step = jax.jit(lambda s, x, y, order, i, k, cw: _member_task(self.task, cw).train_step(
        s, x, y, order[i], jax.random.fold_in(k, i)), donate_argnums=0, compiler_options=jit_options())
    self._predict = jax.jit(task.predict, compiler_options=jit_options())

  @classmethod
  def create(cls, task, init_keys, image_shape, class_weights):
    init = jax.jit(task.init, static_argnums=1, compiler_options=jit_options(init=True))
    return cls(task, [init(k, image_shape) for k in init_keys], class_weights)

  def step(self, images, labels, orders, i, epoch_keys, active):
    outs = [None] * len(self.states)
    for m in np.flatnonzero(active):
      self.states[m], outs[m] = self._step(self.states[m], images, labels, orders[m], i, epoch_keys[m],
                                           self.class_weights[m])
    return outs

  @staticmethod
  def step_totals(step_outputs, m):
    done = jax.device_get([o[m] for o in step_outputs if o[m] is not None])
    return {k: float(sum(np.asarray(d[k]) for d in done)) for k in done[0]}

  def val_logits(self, host_images, val_indices, members, eval_batch):
    return [None if idx is None else
            task_lib.predict_logits(self.task, self.states[m], host_images[idx], eval_batch, self._predict)
            for m, idx in enumerate(val_indices)]

  def keep_best(self, improved):
    for m in np.flatnonzero(improved):
      self.best[m] = jax.tree_util.tree_map(jnp.copy, (self.states[m].params, self.states[m].batch_stats))

  def fetch(self, m):
    return jax.device_get(self.states[m]), (None if self.best[m] is None else jax.device_get(self.best[m]))


class _VmapModels:
  """The `vmap` form: stacked states; one jitted, vmapped step masks members that sit a step out."""

  def __init__(self, task, states, class_weights):
    self.task, self.states = task, states
    self.class_weights = None if class_weights[0] is None else jnp.asarray(class_weights, jnp.float32)
    self.best = None
    self.has_best = np.zeros(len(class_weights), bool)

    def one(state, x, y, order, i, key, active, cw):
      new, out = _member_task(task, cw).train_step(state, x, y, order[i], jax.random.fold_in(key, i))
      return _where_tree(active, new, state), out

    axes = (0, None, None, 0, None, 0, 0, None if self.class_weights is None else 0)
    self._step = jax.jit(jax.vmap(one, in_axes=axes), donate_argnums=0, compiler_options=jit_options())
    self._predict = jax.jit(jax.vmap(lambda p, bs, x, idx: task.predict(p, bs, x[idx]),
                                     in_axes=(0, 0, None, 0)), compiler_options=jit_options())
    self._keep = jax.jit(lambda mask, cur, best: _where_tree(mask, cur, best), donate_argnums=2)

  @classmethod
  def create(cls, task, init_keys, image_shape, class_weights):
    init = jax.jit(jax.vmap(lambda k: task.init(k, image_shape)), compiler_options=jit_options(init=True))
    states = init(jnp.stack(init_keys))
    return cls(task, states, class_weights)

  def step(self, images, labels, orders, i, epoch_keys, active):
    self.states, out = self._step(self.states, images, labels, orders, i, epoch_keys,
                                  jnp.asarray(active), self.class_weights)
    return (out, np.asarray(active))

  @staticmethod
  def step_totals(step_outputs, m):
    done = jax.device_get([o for o, active in step_outputs if active[m]])
    return {k: float(sum(np.asarray(d[k][m]) for d in done)) for k in done[0]}

  def val_logits(self, device_images, val_indices, members, eval_batch):
    live = [idx for idx in val_indices if idx is not None]
    if not live:
      return [None] * len(val_indices)
    longest = max(len(idx) for idx in live)
    batch = task_lib.common_batch(eval_batch, [longest])
    padded = np.zeros((len(val_indices), math.ceil(longest / batch) * batch), np.int32)
    for m, idx in enumerate(val_indices):
      if idx is not None:
        padded[m, :len(idx)] = idx
    out = [self._predict(self.states.params, self.states.batch_stats, device_images, padded[:, s:s + batch])
           for s in range(0, padded.shape[1], batch)]
    logits = np.concatenate(jax.device_get(out), axis=1)
    return [None if idx is None else logits[m, :len(idx)] for m, idx in enumerate(val_indices)]

  def keep_best(self, improved):
    current = (self.states.params, self.states.batch_stats)
    if self.best is None:
      self.best = jax.tree_util.tree_map(jnp.copy, current)
    else:
      self.best = self._keep(jnp.asarray(improved), current, self.best)
    self.has_best |= improved

  def fetch(self, m):
    take = lambda tree: jax.device_get(jax.tree_util.tree_map(lambda a: a[m], tree))
    return take(self.states), (take(self.best) if self.has_best[m] else None)


def train_chunk(config, task, class_names, images: np.ndarray, labels: np.ndarray, members: list[Member],
                form: str, log_prefix: str = '') -> tuple[list[MemberResult], dict]:
  """Trains `members` together (one optimizer group, one chunk) and returns their results and timings.

  `task` comes from `build_task` for this group; `images`/`labels` are the shared host arrays the
  members' indices point into."""
  train_cfg = config.train
  rules = SelectionRules.from_config(train_cfg)
  monitor, epochs = rules.monitor, int(train_cfg.epochs)
  eval_batch = int(config.eval.batch_size)
  batch = batch_size_for(config, len(members[0].train_index))
  sizes = [len(m.train_index) for m in members]
  steps = np.array([math.ceil(n / batch) for n in sizes])
  class_weights = [task_lib.class_weights(train_cfg.class_weights, class_names, labels[m.train_index])
                   for m in members]
  base_keys = [jax.random.PRNGKey(m.seed) for m in members]
  image_shape = images.shape[1:]
  models_cls = _VmapModels if form == 'vmap' else _LoopModels
  models = models_cls.create(task, [jax.random.fold_in(k, 0) for k in base_keys], image_shape, class_weights)
  device_images, device_labels = jax.device_put(images), jax.device_put(labels.astype(np.int32))
  eval_images = device_images if form == 'vmap' else images
  loops = [LoopState() for _ in members]
  best_logits, last_logits = [None] * len(members), [None] * len(members)
  timing = dict(train_seconds=0.0, epochs_run=0, model_epochs=0, models=len(members))

  for epoch in range(epochs):
    alive = np.array([not loop.finished for loop in loops])
    if not alive.any():
      break
    start = time.perf_counter()
    orders = [m.train_index[batch_order(train_cfg.sampler, m.seed, epoch, labels[m.train_index], batch)]
              .astype(np.int32) for m in members]
    epoch_keys = [jax.random.fold_in(jax.random.fold_in(k, 1), epoch) for k in base_keys]
    if form == 'vmap':
      padded = np.zeros((len(members), steps.max(), batch), np.int32)
      for m, order in enumerate(orders):
        padded[m, :len(order)] = order
      orders, epoch_keys = jax.device_put(padded), jnp.stack(epoch_keys)
    else:
      orders = [jax.device_put(o) for o in orders]
    step_outputs = [models.step(device_images, device_labels, orders, i, epoch_keys, alive & (i < steps))
                    for i in range(int(steps[alive].max()))]
    val_indices = [m.val_index if a else None for m, a in zip(members, alive)]
    val_logits = models.val_logits(eval_images, val_indices, members, eval_batch)
    seconds = time.perf_counter() - start
    improved = np.zeros(len(members), bool)
    for m in np.flatnonzero(alive):
      totals = models.step_totals(step_outputs, m)
      val = metrics.epoch_metrics(labels[members[m].val_index], val_logits[m], task.head, len(class_names))
      # The rate of the epoch's last step, as the single-model loop logs it.
      lr = float(optim.learning_rate_schedule(train_cfg, int(steps[m]))((epoch + 1) * int(steps[m]) - 1))
      # `seconds` is the chunk's epoch: all its members together.
      improved[m], _ = loops[m].record(epoch_row(epoch + 1, totals, val, lr, 0, seconds), rules, epochs)
      last_logits[m] = val_logits[m]
      if improved[m]:
        best_logits[m] = val_logits[m]
    if improved.any():
      models.keep_best(improved)
    timing['train_seconds'] += seconds
    timing['epochs_run'] += 1
    timing['model_epochs'] += int(alive.sum())
    stopped = [members[m].name for m in np.flatnonzero(alive) if loops[m].stop_reason == 'early_stopping']
    mean_monitor = np.nanmean([np.nan if loops[m].history[-1][monitor] is None
                               else loops[m].history[-1][monitor] for m in np.flatnonzero(alive)])
    tqdm.write(f'{log_prefix}epoch {epoch + 1}/{epochs}: {int(alive.sum())} models, {seconds:.1f}s, mean '
               f'{monitor} {mean_monitor:.4f}' + (f'; early stopped: {", ".join(stopped)}' if stopped else ''))

  results = []
  for m, member in enumerate(members):
    loop = loops[m]
    use_best = train_cfg.select_checkpoint == 'best' and loop.best_epoch is not None
    results.append(MemberResult(
        member=member, loop=loop, checkpoint='best' if use_best else 'last',
        epoch=int(loop.best_epoch if use_best else loop.epoch),
        val_logits=np.asarray(best_logits[m] if use_best else last_logits[m]),
        fetch=(lambda m=m: models.fetch(m))))
  return results, timing


def train_members(config, class_names, images: np.ndarray, labels: np.ndarray, members: list[Member],
                  log_prefix: str = '') -> Iterator[tuple[list[MemberResult], dict]]:
  """Trains every member, chunk by chunk; yields (results, timing) per chunk. A chunk's `fetch()`
  handles are valid until the generator resumes."""
  form = resolve_form(config.sweep.model_axis)
  # Members start from fresh variables in one phase; a pretrained backbone or a fine-tuning phase would be
  # silently dropped, so they are refused (train those with --mode train and compare with --mode compare).
  if config.model.get('pretrained') or int(config.train.finetune_epochs) > 0:
    raise UserInputError(f'config.model.name={config.model.name!r}: --mode sweep trains models from scratch in one '
                         'phase; pretrained weights (config.model.pretrained) and fine-tuning phases '
                         '(config.train.finetune_epochs) are not supported there')
  for group in optimizer_groups(config, members):
    batch = batch_size_for(config, len(group[0].train_index))
    steps = math.ceil(len(group[0].train_index) / batch)
    task = task_lib.build_task(config, class_names, labels[group[0].train_index], steps)
    fixed = int(config.sweep.models_per_chunk)
    if len(group) == 1:
      chunk_size, how = 1, 'one model'
    elif fixed > 0:
      chunk_size, how = fixed, f'{fixed} models per chunk (config.sweep.models_per_chunk)'
    else:
      eval_batch = task_lib.common_batch(config.eval.batch_size, [len(m.val_index) for m in group])
      plan = measure_memory(task, images, batch, eval_batch, form)
      budget = int(float(config.sweep.memory_fraction) * free_memory_bytes())
      chunk_size, how = plan.chunk(form, budget), plan.describe(form, budget, len(group))
    chunks = balanced_chunks(group, chunk_size)
    tqdm.write(f'{log_prefix}{form} form, {how}')
    for c, chunk in enumerate(chunks):
      prefix = f'{log_prefix}chunk {c + 1}/{len(chunks)}: ' if len(chunks) > 1 else log_prefix
      results, timing = train_chunk(config, task, class_names, images, labels, chunk, form, prefix)
      timing.update(form=form, chunk=len(chunk), plan=how)
      yield results, timing


def better_result(a: MemberResult | None, b: MemberResult, monitor: str) -> bool:
  """Whether b beats a on the monitored metric at their selected checkpoints (a None loses)."""
  if a is None:
    return True
  value = b.monitor_value(monitor)
  return value is not None and not np.isnan(value) and improves(value, a.monitor_value(monitor),
                                                                MONITOR_MODES[monitor])


def save_member_workdir(workdir, member_config, class_names, result: MemberResult, states, normalisation) -> None:
  """Writes a trained member as an ordinary fpclass workdir (metadata.json, metrics.csv, `last` and
  `best` checkpoints), so --mode evaluate/submit/train(resume) work on it as on a solo run."""
  last, best = states
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint.write_metadata(workdir, checkpoint.build_metadata(
      member_config, class_names, optim.count_params(last.params), normalisation))
  fileio.write_csv(workdir / 'metrics.csv', pd.DataFrame(result.loop.history))
  store = checkpoint.CheckpointStore(workdir, writer=True)
  try:
    if best is not None:
      params, batch_stats = best
      store.save('best', int(result.loop.best_epoch), last.replace(params=params, batch_stats=batch_stats),
                 result.loop.to_json())
    store.save('last', int(result.loop.epoch), last, result.loop.to_json())
  finally:
    store.close()
