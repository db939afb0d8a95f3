"""A frozen parameter (config.model.freeze_till) is outside the gradient, as in Keras (trainable=False) and
PyTorch (requires_grad=False): its gradient is zero, global-norm clipping counts the trained parameters alone,
and the step does not trace a backward pass through the frozen stages (`Task.trained_gradient`)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from fpclass.config.run import RunSettings
from fpclass.train.task import build_task
from tests.conftest import load_config
from tests.test_feature_cache import AUGMENT_OFF, LAYERS

IMAGE = (32, 32, 3)
EPS = 1e-8


def resnet_task(freeze_till: int, **train):
  """A small ResNet-18 (one block a stage) on 32 px images, augmentation off, with `train` overrides."""
  config = load_config('configs/cats_dogs.py:vgg16,quick', **AUGMENT_OFF, **{f'train.{k}': v for k, v in train.items()})
  with config.unlocked():
    config.model = ml_collections.ConfigDict(dict(name='resnet18', head='softmax', top='source',
                                                  freeze_till=freeze_till, layers=LAYERS))
  return build_task(RunSettings.from_config(config), ('a', 'b'), np.array([0, 1]), steps_per_epoch=1)


def batch():
  images = np.random.default_rng(0).integers(0, 256, (8, *IMAGE), np.uint8)
  return images, jnp.array([0, 1] * 4), jnp.arange(8), jax.random.PRNGKey(3)


def test_frozen_parameters_stay_and_clipping_counts_the_trained_ones():
  """One Adam step with a clipping norm small enough to bind: the trained parameters move as Adam on their own
  gradients clipped by their own global norm (computed here from the full gradient, frozen part dropped), and
  the frozen ones keep their bits."""
  clip, lr = 1e-3, 1e-2
  task = resnet_task(freeze_till=3, grad_clip_norm=clip, learning_rate=lr, optimizer='adam', eps=EPS)
  state = jax.jit(task.init, static_argnums=1)(jax.random.PRNGKey(0), IMAGE)
  images, labels, index, key = batch()
  new_state, _ = jax.jit(task.train_step)(state, images, labels, index, key)

  def loss(params):   # the step's own loss: same keys, same views
    aug_key, dropout_key = jax.random.split(key)
    logits, _, _ = task.apply(params, state.batch_stats, task.prepare(images, aug_key), train=True,
                              rngs={'dropout': dropout_key})
    return task.loss(logits, labels)
  full = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(state.params), sep='/')
  trained = {path: g for path, g in full.items() if task.param_groups.label(path) != 'frozen'}
  frozen = set(full) - set(trained)
  assert frozen and trained and any(float(jnp.abs(full[p]).max()) > 0 for p in frozen)
  norm = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in trained.values())))
  assert norm > 10 * clip   # clipping binds
  before = traverse_util.flatten_dict(state.params, sep='/')
  after = traverse_util.flatten_dict(new_state.params, sep='/')
  for path in frozen:
    np.testing.assert_array_equal(after[path], before[path])
  # Adam's first step moves each weight by lr * g / (|g| + eps) with g the clipped gradient: about lr * sign(g)
  # wherever |g| is far above eps, so compare where the clipped gradient is clear of eps.
  for path, g in trained.items():
    clipped = np.asarray(g) * clip / norm
    expected = -lr * clipped / (np.abs(clipped) + EPS)
    clear = np.abs(clipped) > 100 * EPS
    np.testing.assert_allclose((np.asarray(after[path]) - np.asarray(before[path]))[clear], expected[clear],
                               rtol=2e-3, atol=1e-7, err_msg=path)


def _equations(jaxpr) -> int:
  """The equations of `jaxpr` and of the jaxprs inside them (jit, custom_vjp, ...)."""
  count = len(jaxpr.eqns)
  for eqn in jaxpr.eqns:
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)   # a ClosedJaxpr holds its Jaxpr
      if hasattr(inner, 'eqns'):
        count += _equations(inner)
  return count


def test_the_step_traces_no_backward_pass_through_frozen_stages():
  """Every stage frozen (only the classifier trains): the traced step is far smaller than the same network's
  with every stage trained, whose backward pass runs through the whole network."""
  images, labels, index, key = batch()

  def size(freeze_till):
    task = resnet_task(freeze_till)
    state = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), IMAGE))
    return _equations(jax.make_jaxpr(task.train_step)(state, images, labels, index, key).jaxpr)
  frozen, trained = size(-1), size(0)
  # 449 against 1,677 equations (jax 0.10.2); 753 when the frozen stages' backward pass was traced as well.
  assert frozen < 0.35 * trained, (frozen, trained)


def test_a_fully_trained_network_takes_the_plain_gradient():
  """Nothing frozen: the gradient is jax.value_and_grad's over every parameter, unchanged."""
  task = resnet_task(freeze_till=0)
  params = {'a': jnp.ones(3), 'b': jnp.arange(2.0)}
  loss = lambda p: (jnp.sum(p['a'] ** 2) + jnp.sum(p['b'] ** 3), None)   # noqa: E731
  (value, _), grads = task.trained_gradient(loss, params)
  assert float(value) == 4.0 and np.array_equal(grads['a'], 2 * np.ones(3)) and np.array_equal(grads['b'], [0, 3])
