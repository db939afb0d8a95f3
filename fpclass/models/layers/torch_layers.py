"""torch layer semantics the torchvision ports share.

`BatchNorm` is torch.nn.BatchNorm2d in Flax's variable layout (params scale/bias, batch_stats mean/var, so
weight tables and checkpoints are those of `flax.linen.BatchNorm`). It differs from Flax's in one place:
in training, the running variance is updated with the unbiased batch variance (times n / (n - 1), n the
values per channel in the batch), as torch does, while the batch itself is normalised with the biased one,
as both do. With Flax's BatchNorm a torchvision port fine-tuned on the same batches as torch ends with
smaller running variances, so its evaluation outputs drift from torch's.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d (affine, tracking running statistics) on channels-last input.

  momentum is Flax's (running = momentum * running + (1 - momentum) * batch): torch's 0.1 is 0.9 here.
  Statistics and normalisation compute in the input's dtype promoted with float32 (float64 stays float64);
  dtype None gives that dtype as the output's, as `flax.linen.BatchNorm` does.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((channels,), jnp.float32))
    compute = jnp.promote_types(x.dtype, jnp.float32)
    values = x.astype(compute)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(values, axes)
      var = jnp.mean(jnp.square(values - mean), axes)   # two passes: no cancellation for large means
      if not self.is_initializing():
        n = x.size // channels
        unbiased = var * (n / max(n - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    y = (values - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or compute)
