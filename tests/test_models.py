"""The registry and the seed CNNs: shapes, features, pinned parameter counts, config checking."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.train import optim


def build(name, num_classes=2, **fields):
  cfg = ml_collections.ConfigDict(dict(name=name, head=fields.pop('head', 'softmax'), **fields))
  return models.create_model(cfg, num_classes)


def init(model, shape):
  return jax.jit(model.init, static_argnames='train')({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                    jnp.zeros((2, *shape)), train=False)


def abstract_init(model, shape):
  return jax.eval_shape(lambda: init(model, shape))


# Parameter counts worked out by hand from the layer shapes, so a changed architecture is noticed.
@pytest.mark.parametrize('name, fields, shape, expected', [
    # conv1 1*32*9+32, conv2 32*64*9+64, fc1 (30*20*64)*128+128, head 128*2+2
    ('footprint_cnn', {}, (120, 80, 1), 320 + 18_496 + 4_915_328 + 258),
    ('footprint_cnn', {'fc_sizes': (32,)}, (120, 80, 1), 320 + 18_496 + 38_400 * 32 + 32 + 66),
    # seed 003 reports 9.5M parameters at 150x150
    ('small_cnn', {}, (150, 150, 3), 448 + 4_640 + 18_496 + 17 * 17 * 64 * 512 + 512 + 1_026),
    ('cifar_cnn', {}, (32, 32, 3),
     (896 + 9_248 + 128) + (18_496 + 36_928 + 256) + (73_856 + 147_584 + 512) + 16_512 + 8_256 + 130),
])
def test_parameter_counts(name, fields, shape, expected):
  variables = abstract_init(build(name, **fields), shape)
  assert optim.count_params(variables['params']) + optim.count_params(variables.get('batch_stats', {})) == expected


@pytest.mark.parametrize('name, shape, layer', [('footprint_cnn', (120, 80, 1), 'conv2'),
                                                ('cifar_cnn', (32, 32, 3), 'block3'),
                                                ('small_cnn', (64, 64, 3), 'conv3')])
def test_outputs_and_named_features(name, shape, layer):
  model = build(name, num_classes=3)
  variables = init(model, shape)
  logits, features = jax.jit(model.apply)(variables, jnp.ones((2, *shape)))
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  assert layer == models.get_spec(name).cam_layer and features[layer].ndim == 4
  assert features['pre_logits'].shape[0] == 2


def test_sigmoid_head_has_one_logit_and_needs_two_classes():
  model = build('footprint_cnn', head='sigmoid')
  logits, _ = model.apply(init(model, (16, 16, 1)), jnp.ones((2, 16, 16, 1)))
  assert logits.shape == (2, 1)
  with pytest.raises(UserInputError, match='exactly 2 classes'):
    build('footprint_cnn', num_classes=3, head='sigmoid')


def test_batch_norm_and_dropout_switches():
  model = build('footprint_cnn', batch_norm=True, dropout=0.5)
  variables = init(model, (16, 16, 1))
  assert set(variables['batch_stats']) == {'bn1', 'bn2'}
  x = jnp.ones((2, 16, 16, 1))
  a, _ = model.apply(variables, x, train=False)
  b, _ = model.apply(variables, x, train=False)
  assert jnp.array_equal(a, b)  # eval mode is deterministic


def test_unknown_model_and_field_are_named():
  with pytest.raises(UserInputError, match="config.model.name='resnet9000'"):
    build('resnet9000')
  with pytest.raises(UserInputError, match=r'config.model.dropuot is not a field .*dropout'):
    build('footprint_cnn', dropuot=0.5)


def test_feature_gradients_through_perturbations():
  """d(logit)/d(feature map) via the perturbation collection equals the gradient computed by hand
  through the head (the only layers after 'pre_logits')."""
  model = build('footprint_cnn', fc_sizes=())
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 1))
  variables = init(model, (16, 16, 1))
  perturbations = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
      lambda: model.apply(variables, x, mutable='perturbations')[1]['perturbations']))
  grads = jax.grad(lambda p: model.apply({**variables, 'perturbations': p}, x)[0][:, 1].sum())(perturbations)
  assert set(grads) == {'feature_conv1', 'feature_conv2'}
  # With no hidden FC, logits = flatten(maxpool(conv2)) @ W + b, so the conv2 gradient is W[:, 1]
  # routed to each pool window's maximum.
  _, features = model.apply(variables, x)
  expected = jax.grad(lambda a: (nn_pool_flat(a) @ variables['params']['head']['kernel'][:, 1]).sum())(
      features['conv2'])
  assert jnp.allclose(grads['feature_conv2'], expected, atol=1e-6)


def nn_pool_flat(a):
  import flax.linen as nn
  return nn.max_pool(a, (2, 2), strides=(2, 2)).reshape(a.shape[0], -1)
