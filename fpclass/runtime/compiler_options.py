"""The XLA options every program of a run is compiled with, per backend: the train and predict programs' and the
init program's. Every program that must reproduce another's numbers exactly uses these, since XLA options may
change floating-point results (`fpclass.train.steps`, the vmap axis, test-time augmentation, the memory plan)."""
import jax

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
