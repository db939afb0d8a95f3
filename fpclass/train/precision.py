"""Training precision, `config.train.precision`: fp32 or bf16.

bf16 means bfloat16 *compute*: the model's convolutions, matmuls and activations run in bfloat16, while
the parameters, the optimizer state, the batch-norm statistics, the logits and the loss stay float32
(Flax casts the float32 parameters per layer through each module's `dtype`; gradients flow back to the
float32 parameters through those casts). It applies on GPU and TPU. On CPU a bf16 request trains in
fp32, with a warning: bf16 training was slower than fp32 on XLA:CPU here, for fpclass and for PyTorch
(`bench/footprint_cnn.py --precision bf16`, docs/performance.md).
"""
import logging

import jax
import jax.numpy as jnp

from fpclass.config.training import PRECISIONS
from fpclass.errors import UserInputError


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise UserInputError(f'config.train.precision={precision!r}: choose one of {PRECISIONS}')
  return precision


def compute_dtype(precision: str, backend: str | None = None):
  """The dtype the model computes in for `precision` on `backend` (default: JAX's default backend)."""
  check_precision(precision)
  if precision == 'fp32':
    return jnp.float32
  backend = backend or jax.default_backend()
  if backend == 'cpu':
    logging.warning('config.train.precision=bf16: the CPU backend trains in fp32 (bf16 compute applies on '
                    'GPU/TPU only)')
    return jnp.float32
  return jnp.bfloat16
