"""fpclass.models.layers.conv: on CPU, convolutions on inputs smaller than their kernel go through im2col and
depthwise convolutions through a sum over taps, with the values and gradients of lax.conv_general_dilated;
everything else is lax's convolution unchanged."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpclass.models.layers import conv

# (input height, width), kernel, stride, padding
SMALL = [((2, 2), 3, 1, ((1, 1), (1, 1))), ((1, 1), 3, 1, 'SAME'), ((2, 2), 3, 2, ((1, 1), (1, 1))),
         ((3, 3), 7, 2, ((3, 3), (3, 3))), ((2, 5), 3, 1, ((1, 1), (1, 1))), ((4, 4), 5, 1, 'SAME'),
         ((2, 2), 3, 1, ((0, 2), (1, 0)))]


def _dims(x, kernel):
  return jax.lax.conv_dimension_numbers(x.shape, kernel.shape, conv.NHWC)


@pytest.mark.parametrize('size,k,stride,padding', SMALL)
def test_small_input_convolution_equals_lax_with_gradients(size, k, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, *size, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
  assert conv._cpu_route(x, kernel, None, None, _dims(x, kernel), 1, None) == 'im2col'

  def ours(x, kernel):
    return conv.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_dims(x, kernel))

  def lax(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=conv.NHWC)

  np.testing.assert_allclose(ours(x, kernel), lax(x, kernel), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=lax(x, kernel).shape), jnp.float32)
  ours_grads = jax.vjp(ours, x, kernel)[1](cotangent)
  lax_grads = jax.vjp(lax, x, kernel)[1](cotangent)
  for a, b in zip(ours_grads, lax_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


# (input height, width), kernel, stride, padding
DEPTHWISE = [((9, 7), 3, 1, ((1, 1), (1, 1))), ((8, 8), 5, 2, 'SAME'), ((7, 6), 3, 2, ((0, 1), (1, 0))),
             ((2, 2), 5, 1, ((2, 2), (2, 2))), ((5, 5), 3, 1, 'VALID')]


@pytest.mark.parametrize('size,k,stride,padding', DEPTHWISE)
def test_depthwise_convolution_equals_lax_with_gradients(size, k, stride, padding):
  rng = np.random.default_rng(1)
  channels = 6
  x = jnp.asarray(rng.normal(size=(2, *size, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, channels)), jnp.float32)
  assert conv._cpu_route(x, kernel, None, None, _dims(x, kernel), channels, None) == 'depthwise'

  def ours(x, kernel):
    return conv.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_dims(x, kernel),
                                     feature_group_count=channels)

  def lax(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=conv.NHWC,
                                        feature_group_count=channels)

  np.testing.assert_allclose(ours(x, kernel), lax(x, kernel), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=lax(x, kernel).shape), jnp.float32)
  for a, b in zip(jax.vjp(ours, x, kernel)[1](cotangent), jax.vjp(lax, x, kernel)[1](cotangent)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_other_convolutions_are_lax_unchanged():
  def route(x, kernel, groups=1, rhs_dilation=None):
    return conv._cpu_route(x, kernel, None, rhs_dilation, _dims(x, kernel), groups, None)
  x, small = jnp.ones((2, 8, 8, 4)), jnp.ones((2, 2, 2, 4))
  assert route(x, jnp.ones((3, 3, 4, 4))) is None                       # big enough for its kernel
  assert route(small, jnp.ones((3, 3, 2, 4)), groups=2) is None         # grouped, not depthwise
  assert route(x, jnp.ones((3, 3, 1, 8)), groups=4) is None             # depthwise with a channel multiplier
  assert route(small, jnp.ones((3, 3, 4, 4)), rhs_dilation=(2, 2)) is None
  assert route(jnp.ones((2, 8, 8, 1)), jnp.ones((3, 3, 1, 4))) is None  # one input channel is a plain conv


@pytest.mark.parametrize('groups', [1, 16])
def test_routed_convolutions_compile_without_xla_convolutions(groups):
  # The point of the module: XLA:CPU must not see the convolutions it runs with its slow emitters.
  layer = conv.Conv(16, (3, 3), padding=1, feature_group_count=groups)
  x = jnp.ones((4, 2, 2, 16))
  variables = layer.init(jax.random.PRNGKey(0), x)
  hlo = jax.jit(layer.apply).lower(variables, x).compile().as_text()
  assert ' convolution(' not in hlo
  if groups == 1:   # a plain convolution of a big enough input stays XLA's
    big = jnp.ones((4, 6, 6, 16))
    assert ' convolution(' in jax.jit(layer.apply).lower(variables, big).compile().as_text()


def test_conv_is_a_drop_in_for_flax_conv():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 2, 3)), jnp.float32)
  ours, flax_conv = conv.Conv(6, (3, 3), padding='SAME'), nn.Conv(6, (3, 3), padding='SAME')
  variables = ours.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_conv.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-5, atol=1e-5)

  class Unnamed(nn.Module):   # auto-names match too, so parameter paths of unnamed layers do not move
    layer: type

    @nn.compact
    def __call__(self, x):
      return self.layer(4, (1, 1))(x)
  assert (set(Unnamed(conv.Conv).init(jax.random.PRNGKey(0), x)['params'])
          == set(Unnamed(nn.Conv).init(jax.random.PRNGKey(0), x)['params']) == {'Conv_0'})
