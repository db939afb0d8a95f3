"""Data parallelism with jax.sharding: one Mesh over every device, the batch split along its 'data' axis.

The same code runs on one device and on many: params, optimizer state and the (small) uint8 training set
are replicated (past data.device_memory_budget the set is streamed instead: fpclass.data.stream), each
step's batch is sharded along 'data', so every device gathers, augments and differentiates its slice of it, and XLA's SPMD partitioner inserts the gradient all-reduce (and the
cross-device batch-norm statistics: they are the global batch's, as on one device). No pmap.

Several processes: `initialize_distributed` calls `jax.distributed.initialize()` when the environment
describes a cluster (JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a multi-task
SLURM / Open MPI job, which jax detects itself). Every process then loads the same data, builds the same
global arrays from it and runs the same programs; only process 0 writes the workdir's files
(`fpclass.fileio.set_primary`), and orbax saves and restores checkpoints with all of them together.
"""
import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fpclass.errors import UserInputError

DATA_AXIS = 'data'


def initialize_distributed() -> bool:
  """Joins the multi-host job the environment describes, if any; True when it did (or already had)."""
  if jax.distributed.is_initialized():
    return True
  cluster = (os.environ.get('JAX_COORDINATOR_ADDRESS')
             or int(os.environ.get('SLURM_NTASKS', '1')) > 1
             or int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)
  if not cluster:
    return False
  # CPU devices of different processes exchange gradients through gloo (XLA:CPU has no cross-process
  # collectives otherwise); GPUs and TPUs keep their own (NCCL, ICI).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # jax reads the coordinator address from the environment but not the count and id; SLURM and Open MPI
  # jobs leave them unset here and jax detects them itself.
  count, index = os.environ.get('JAX_NUM_PROCESSES'), os.environ.get('JAX_PROCESS_ID')
  try:
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)
  except ValueError as e:
    raise UserInputError(f'joining the multi-process job failed ({e}); set JAX_COORDINATOR_ADDRESS=host:port, '
                         'JAX_NUM_PROCESSES and JAX_PROCESS_ID for every process (README: several processes)') from None
  return True



def process_count() -> int:
  return jax.process_count()


def agree_on(flag: bool) -> bool:
  """Process 0's `flag`, on every process of a multi-process job (so all take the same branch)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def barrier(name: str) -> None:
  """Waits until every process of a multi-process job has reached the barrier `name` (one process: returns)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def is_primary_process() -> bool:
  """Process 0 of a multi-process job (or the only process): the one that writes the workdir's files."""
  return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A 1-D mesh over `devices` (default: all of them, on every host) and its two shardings."""
  mesh: Mesh

  @classmethod
  def over(cls, devices=None) -> 'DataParallel':
    devices = jax.devices() if devices is None else list(devices)
    return cls(Mesh(np.asarray(devices), (DATA_AXIS,)))

  @classmethod
  def local(cls) -> 'DataParallel':
    """A mesh of this process's own devices: a sweep's members train apart on each process of a job."""
    return cls.over(jax.local_devices())

  @property
  def size(self) -> int:
    return self.mesh.size

  @property
  def process_local(self) -> bool:
    """Whether every device of the mesh belongs to this process (so it needs no other process)."""
    return jax.process_count() == 1 or all(d.process_index == jax.process_index() for d in self.mesh.devices.flat)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch(self) -> NamedSharding:
    """Leading axis split across the devices."""
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def check_batch_size(self, batch_size: int, key: str = 'config.train.batch_size') -> None:
    if batch_size % self.size:
      raise UserInputError(f'{key}={batch_size}: must be a multiple of the {self.size} devices the batch is '
                           f'split across (e.g. {max(1, batch_size // self.size) * self.size})')

  def replicate(self, tree):
    """Host values (numpy or jax) -> global arrays with a full copy on every device."""
    return jax.tree_util.tree_map(lambda x: _global_array(np.asarray(x), self.replicated), tree)

  def shard_batch(self, batch: np.ndarray):
    """A host batch (the same on every process) -> a global array split along its first axis."""
    return _global_array(np.asarray(batch), self.batch)

  def constrain_batch(self, x):
    """Inside jit: lay `x` out split along its first axis (a batch of indices, images or labels)."""
    return jax.lax.with_sharding_constraint(x, self.batch)

  def to_host(self, x) -> np.ndarray:
    """A global array -> numpy, gathering the shards other processes hold when there are several."""
    if getattr(x, 'is_fully_addressable', True):
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _global_array(value: np.ndarray, sharding: NamedSharding):
  # make_array_from_callback places each process's addressable shards only, so it also works multi-host.
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
