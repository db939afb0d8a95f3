"""How many members of a sweep train at once: the memory rule that sizes a chunk.

Per member a chunk holds its train state S (params, batch stats, optimizer state) and its best variables V.
The train step needs its temporaries T (XLA's temp bytes: W per model, so M * W in the vmap form and W in
the loop form) and the evaluation program its own, E (M * W_eval or W_eval). With D the shared uint8 images
and k the step-sized blocks the host heap keeps:

    bytes(M) ~= D + M * (S + V) + (k - 1) * T + max(T, E)

and M is the largest chunk with bytes(M) <= sweep.memory_fraction * free memory (at least 1), unless
`sweep.models_per_chunk` fixes it. The peak resident size is the size when planning plus bytes(M). Why each
term, and the measurements behind W_eval and k: docs/sweeps.md ("The memory rule"), tests/test_memory_rule.py.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fpclass.config.run import RunSettings
from fpclass.data import stream
from fpclass.runtime import process
from fpclass.runtime.compiler_options import jit_options
from fpclass.train import feature_cache, semi
from fpclass.train import members as members_lib
from fpclass.train.axis import TrainData, vmapped_predict
from fpclass.train.steps import validation_batch
from fpclass.train.task import build_task, common_batch


def _tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def free_memory_bytes() -> int:
  """Free accelerator memory, or available host memory on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return stream.host_available_memory()


# Step-sized blocks the host heap holds under keep_host_buffers, per form (docs/sweeps.md, "The memory rule";
# tests/test_memory_rule.py): the vmap form's one M-model block splits the single arena more than the loop's.
HOST_STEP_COPIES = {'loop': 2.5, 'vmap': 3.75}
# Compiled without it, XLA counts the evaluation program's convolutions in its temp bytes (module docstring).
NO_LIBRARY_FUSION = (('xla_cpu_experimental_ynn_fusion_type', ''),)


def resident_bytes() -> int:
  """This process's resident size on CPU (0 where /proc is absent), or the accelerator's bytes in use."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_in_use' in stats:
    return int(stats['bytes_in_use'])
  return process.process_memory_bytes('VmRSS')


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


def measure_memory(task, images: np.ndarray, batch: int, eval_batch: int, form: str = 'loop',
                   image_shape: tuple | None = None) -> MemoryPlan:
  """D, S and V from array sizes; W and W_eval by compiling the programs (not running them) and reading
  XLA's memory analysis (temp bytes); k from the backend and the host allocator. `eval_batch` is the
  evaluation batch the chunk will use (at most the longest validation split); `image_shape` the model's
  image shape when `images` are features a frozen backbone computed from such images."""
  shape = images.shape[1:]
  abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape or shape))
  x = jax.ShapeDtypeStruct(images.shape, images.dtype)
  y = (jax.ShapeDtypeStruct((len(images), task.num_classes), jnp.uint8) if task.head == 'multilabel'
       else jax.ShapeDtypeStruct((len(images),), jnp.int32))
  idx = jax.ShapeDtypeStruct((semi.batch_rows(batch, task.semi),), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  temp = lambda compiled: int(getattr(compiled.memory_analysis(), 'temp_size_in_bytes', 0) or 0)
  train = temp(jax.jit(task.train_step, compiler_options=jit_options()).lower(abstract, x, y, idx, key).compile())
  cpu = jax.default_backend() == 'cpu'
  if form == 'vmap':
    pair = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((2, *a.shape), a.dtype), abstract)
    program = vmapped_predict(task)
    evaluate = temp(program.lower(pair.params, pair.batch_stats, x,
                                  jax.ShapeDtypeStruct((2, eval_batch), jnp.int32)).compile()) // 2
  else:
    options = {**(jit_options() or {}), **dict(NO_LIBRARY_FUSION)} if cpu else jit_options()
    evaluate = temp(jax.jit(task.predict, compiler_options=options).lower(
        abstract.params, abstract.batch_stats, jax.ShapeDtypeStruct((eval_batch, *shape), images.dtype)).compile())
  return MemoryPlan(shared_bytes=int(images.nbytes), state_bytes=_tree_bytes(abstract),
                    best_bytes=_tree_bytes((abstract.params, abstract.batch_stats)), step_bytes=train,
                    eval_bytes=evaluate, step_copies=HOST_STEP_COPIES[form] if cpu and process.host_buffers_kept() else 1.0,
                    resident_bytes=resident_bytes())


def chunk_size(run: RunSettings, train_data: TrainData, group: list, form: str, shared) -> tuple[int, str]:
  """(members per chunk, how that was decided): config.sweep.models_per_chunk, or the memory rule."""
  fixed = run.sweep.models_per_chunk
  if len(group) == 1:
    return 1, 'one model'
  if fixed > 0:
    return fixed, f'{fixed} models per chunk (config.sweep.models_per_chunk)'
  batch = members_lib.batch_size_for(run.train, len(group[0].train_index))
  steps = -(-len(group[0].train_index) // batch)
  task = build_task(run, train_data.class_names, train_data.train.labels[group[0].train_index], steps)
  eval_batch = common_batch(validation_batch(run.eval, batch), [len(m.val_index) for m in group])
  if train_data.unlabelled:
    task = dataclasses.replace(task, semi=run.semi)
  task, images = _what_trains(run, task, train_data.train.images)
  image_shape = train_data.train.images.shape[1:]
  state = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), image_shape))
  # The plan depends on the programs' shapes alone, not on the values (a learning rate): variants share it.
  key = ('plan', repr(task.model), repr(state), images.shape, str(images.dtype), batch, eval_batch, form)
  plan = shared.get(key, lambda: measure_memory(task, images, batch, eval_batch, form, image_shape))
  budget = int(run.sweep.memory_fraction * free_memory_bytes())
  return plan.chunk(form, budget), plan.describe(form, budget, len(group))


def _what_trains(run: RunSettings, task, images):
  """(task, images) of the first phase as the loop will train it: a frozen backbone's head on its features
  (zeros of their shape: the plan reads shapes and sizes), or the task itself on the images."""
  if run.train.feature_cache == 'off' or run.augment.randomises_input or task.semi is not None:
    return task, images
  variables = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), images.shape[1:]))
  split, _ = feature_cache.find_split(run, task, variables, images.shape[1:])
  if split is None:
    return task, images
  return feature_cache.cached_task(task, split), np.zeros((len(images), *split.feature_shape), split.feature_dtype)
