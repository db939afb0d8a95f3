"""The fast max pools equal flax's, values and gradient routing, ties included."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpclass.models.layers.pooling import max_pool


def _value_and_grad(pool, x, g):
  y, vjp = jax.vjp(pool, x)
  return y, vjp(g)[0]


@pytest.mark.parametrize('shape, window', [((2, 8, 6, 3), (2, 2)), ((2, 7, 5, 3), (2, 2)), ((1, 9, 7, 2), (3, 3)),
                                           ((2, 6, 9, 1), (2, 3))])
def test_matches_flax_max_pool_with_ties(shape, window):
  # Values quantised to a few levels, so most windows hold ties: the gradient must go to the first maximum
  # in row-major order, as select-and-scatter (and PyTorch) route it.
  x = jnp.round(jax.random.uniform(jax.random.PRNGKey(0), shape) * 3)
  out_shape = (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])
  g = jax.random.normal(jax.random.PRNGKey(1), out_shape)
  y, dx = jax.jit(lambda x, g: _value_and_grad(lambda v: max_pool(v, window), x, g))(x, g)
  y_ref, dx_ref = jax.jit(lambda x, g: _value_and_grad(lambda v: nn.max_pool(v, window, strides=window), x, g))(x, g)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)


# shape, window, strides, padding: ResNet's and AlexNet's stems, InceptionV3's VALID pool, odd sizes, SAME
OVERLAPPING = [((2, 9, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 11, 7, 2), (3, 3), (2, 2), 'VALID'),
               ((1, 8, 8, 2), (3, 3), (2, 2), 'SAME'), ((2, 7, 9, 1), (3, 2), (1, 2), ((0, 2), (1, 0))),
               ((1, 5, 5, 2), (3, 3), (1, 1), ((1, 1), (1, 1)))]


@pytest.mark.parametrize('shape, window, strides, padding', OVERLAPPING)
def test_overlapping_windows_match_flax_with_ties(shape, window, strides, padding):
  x = jnp.round(jax.random.uniform(jax.random.PRNGKey(2), shape) * 3)
  y_ref = nn.max_pool(x, window, strides=strides, padding=padding)
  g = jax.random.normal(jax.random.PRNGKey(3), y_ref.shape)
  y, dx = jax.jit(lambda x, g: _value_and_grad(lambda v: max_pool(v, window, strides, padding), x, g))(x, g)
  y_ref, dx_ref = jax.jit(lambda x, g: _value_and_grad(
      lambda v: nn.max_pool(v, window, strides=strides, padding=padding), x, g))(x, g)
  np.testing.assert_array_equal(y, y_ref)
  # Same routing; an element two windows send gradient to sums the shares in another order (1 ulp).
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(dx != 0, dx_ref != 0)


def test_gradient_has_no_select_and_scatter():
  # select-and-scatter is what made the CPU backward pass slow; neither fast path may produce it on CPU.
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2)) ** 2))
  assert 'select_and_scatter' not in jax.jit(grad).lower(jnp.ones((2, 8, 8, 4))).as_text()
  overlapping = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), 'SAME') ** 2))
  assert 'select_and_scatter' not in jax.jit(overlapping).lower(jnp.ones((2, 8, 8, 4))).as_text()
