"""Mixup and cutmix (config.augment.mixup_alpha, cutmix_alpha, mix_switch_prob, mix_prob): the mixed images
and soft labels, the soft-label loss with smoothing, class weights and the sigmoid head, and a run with mixing
through launch.py that a resumed run matches bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from flax import linen as nn

from fpclass.config.inputs import AugmentSettings
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.models.preprocessing import Normalisation
from fpclass.modes.runner import run
from fpclass.train import augment
from fpclass.train import task as task_lib
from fpclass.train.validation import validate
from tests.conftest import IN_PROCESS_XLA_FLAGS, launch, load_config
from tests.test_feature_cache import AUGMENT_OFF

HEIGHT, WIDTH, N = 7, 10, 6   # neither square nor even, so boxes clip unevenly


def constant_batch():
  """Image i is the constant i + 1 and has class i (one-hot targets): every pixel tells whose it is."""
  images = jnp.broadcast_to(jnp.arange(1.0, N + 1)[:, None, None, None], (N, HEIGHT, WIDTH, 2))
  return images, jax.nn.one_hot(jnp.arange(N), N)


def mixed(key, **settings):
  images, targets = constant_batch()
  return augment.mix_batch(images, targets, jax.random.PRNGKey(key), AugmentSettings(**settings))


def test_mixup_blends_images_and_labels_in_one_proportion_that_sums_to_one():
  images, _ = constant_batch()
  lams = []
  for key in range(8):
    x, y = mixed(key, mixup_alpha=0.4)
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)
    lam = float(y[0, 0])
    assert np.isclose(float(y[0, N - 1]), 1 - lam, atol=1e-6)   # the partner is the reversed batch
    np.testing.assert_allclose(x, lam * images + (1 - lam) * images[::-1], atol=1e-5)
    lams.append(lam)
  assert len(set(lams)) == 8 and all(0 <= lam <= 1 for lam in lams)


def test_cutmix_labels_are_the_pasted_area_exactly_also_where_the_box_is_clipped():
  clipped = 0
  for key in range(30):
    x, y = mixed(key, cutmix_alpha=1.0)
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)
    for i in range(N):
      own, partner = x[i, ..., 0] == i + 1, x[i, ..., 0] == N - i
      assert bool(jnp.all(own | partner))   # pixels are pasted, never blended
      pasted = float(partner.mean()) if i != N - 1 - i else 0.0
      assert abs(float(y[i, N - 1 - i]) - pasted) <= 1e-6, (key, i)
    rows, cols = np.nonzero(np.asarray(x[0, ..., 0] == N))
    if len(rows) and (rows.min() == 0 or rows.max() == HEIGHT - 1 or cols.min() == 0 or cols.max() == WIDTH - 1):
      clipped += 1
  assert clipped >= 5   # the border cases, where the drawn lambda and the pasted area differ, were tested


def test_the_switch_and_the_probability_choose_per_batch():
  images, _ = constant_batch()
  always_cutmix = [mixed(k, mixup_alpha=1.0, cutmix_alpha=1.0, mix_switch_prob=1.0)[0] for k in range(6)]
  always_mixup = [mixed(k, mixup_alpha=1.0, cutmix_alpha=1.0, mix_switch_prob=0.0)[0] for k in range(6)]
  is_pasted = lambda x: bool(jnp.all((x[0] == 1) | (x[0] == N)))
  assert all(is_pasted(x) for x in always_cutmix) and not any(is_pasted(x) for x in always_mixup)
  either = [is_pasted(mixed(k, mixup_alpha=1.0, cutmix_alpha=1.0)[0]) for k in range(20)]
  assert 0 < sum(either) < 20
  untouched = [bool(jnp.array_equal(mixed(k, mixup_alpha=1.0, mix_prob=0.5)[0], images)) for k in range(20)]
  assert 0 < sum(untouched) < 20
  assert not AugmentSettings(mixup_alpha=1.0, mix_prob=0.0).mixing_enabled
  # An alpha past float32's range still mixes half and half, as a huge alpha means.
  np.testing.assert_allclose(mixed(0, mixup_alpha=1e300)[1][0, [0, N - 1]], [0.5, 0.5], atol=1e-3)


def old_loss(logits, labels, head, num_classes, smoothing, class_weights):
  """The hard-label loss as it was before soft targets: the reference a run without mixing must still equal."""
  if head == 'sigmoid':
    per_example = optax.sigmoid_binary_cross_entropy(logits[:, 0], labels * (1.0 - smoothing) + 0.5 * smoothing)
  else:
    onehot = jax.nn.one_hot(labels, num_classes)
    per_example = optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, smoothing) if smoothing else onehot)
  if class_weights is None:
    return jnp.mean(per_example)
  w = jnp.asarray(class_weights, jnp.float32)[labels]
  return jnp.sum(w * per_example) / jnp.sum(w)


def loss_task(head, weights=None, smoothing=0.0):
  return task_lib.Task(model=None, tx=None, normalisation=None, augment_cfg=AugmentSettings(), head=head,
                       num_classes=2 if head == 'sigmoid' else 3, class_weights=weights, label_smoothing=smoothing)


@pytest.mark.parametrize('head', ['softmax', 'sigmoid'])
@pytest.mark.parametrize('weights', [None, (1.0, 3.0, 0.5)])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_soft_label_loss(head, weights, smoothing):
  t = loss_task(head, weights and weights[:2 if head == 'sigmoid' else 3], smoothing)
  k = t.num_classes
  logits = jax.random.normal(jax.random.PRNGKey(1), (5, 1 if head == 'sigmoid' else k))
  a, b = jnp.array([0, 1, 1, 0, k - 1]), jnp.array([1, 0, k - 1, 0, 0])
  # Hard labels: bit for bit the loss and gradient of the code before soft targets.
  reference = lambda z: old_loss(z, a, head, k, smoothing, t.class_weights)
  assert np.array_equal(t.loss(logits, a), reference(logits))
  assert np.array_equal(jax.grad(lambda z: t.loss(z, a))(logits), jax.grad(reference)(logits))
  # A soft target: smoothing of the mixed one-hots, each example weighted by its expected class weight.
  lam = 0.7
  soft = lam * jax.nn.one_hot(a, k) + (1 - lam) * jax.nn.one_hot(b, k)
  smoothed = soft * (1 - smoothing) + smoothing / (2 if head == 'sigmoid' else k)
  if head == 'sigmoid':
    p1 = jax.nn.sigmoid(logits[:, 0])
    per_example = -(smoothed[:, 1] * jnp.log(p1) + (1 - smoothed[:, 1]) * jnp.log(1 - p1))
  else:
    per_example = -jnp.sum(smoothed * jax.nn.log_softmax(logits), axis=1)
  w = jnp.ones(5) if weights is None else soft @ jnp.asarray(t.class_weights)
  np.testing.assert_allclose(t.loss(logits, soft), jnp.sum(w * per_example) / jnp.sum(w), rtol=1e-6)
  if weights is None:   # cross-entropy is linear in the target: the mixed loss is the mix of the two losses
    np.testing.assert_allclose(t.loss(logits, soft), lam * t.loss(logits, a) + (1 - lam) * t.loss(logits, b),
                               rtol=1e-6)


TINY_FLAGS = {'data.image_size': '(8,8)', 'augment.rotation': 0.0, 'augment.translate': 0.0,
              'train.schedule': 'constant', 'model.conv_channels': '(8,)', 'model.fc_sizes': '(16,)',
              'train.batch_size': 64, 'explain.after_training': False}


def tiny_digits(**overrides):
  """The launch flags TINY_FLAGS as a config: a constant schedule, so 1 + 1 epochs continue as 2 do."""
  return load_config('configs/digits.py:quick', **{
      'data.image_size': (8, 8), 'augment.rotation': 0.0, 'augment.translate': 0.0, 'train.schedule': 'constant',
      'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'train.batch_size': 64, 'explain.after_training': False,
      **overrides})


class Linear(nn.Module):
  """A model of one dense layer: a train step that compiles in a moment."""
  num_outputs: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_outputs, name='fc')(x.reshape(len(x), -1)), {}


def linear_task(head='softmax', **augment_settings):
  return task_lib.Task(model=Linear(1 if head == 'sigmoid' else 3), tx=optax.sgd(0.1),
                       normalisation=Normalisation((0.5,), (0.5,)), augment_cfg=AugmentSettings(**augment_settings),
                       head=head, num_classes=2 if head == 'sigmoid' else 3, class_weights=(1.0, 2.0, 0.5)[:2 if
                       head == 'sigmoid' else 3], label_smoothing=0.1)


def test_the_step_trains_on_the_mixed_batch_and_zero_alphas_change_nothing(head='softmax'):
  # The sigmoid head trains with mixing in the launch test below.
  images = jax.random.randint(jax.random.PRNGKey(0), (8, 5, 4, 1), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(8) % (2 if head == 'sigmoid' else 3)
  key = jax.random.PRNGKey(3)
  plain = linear_task(head, hflip=0.5)
  mixing = linear_task(head, hflip=0.5, mixup_alpha=0.4, cutmix_alpha=1.0)
  state = plain.init(jax.random.PRNGKey(0), (5, 4, 1))
  # The step's loss is the loss of the mixed images against the mixed labels, drawn from the step's key.
  @jax.jit   # one program for both: compiling is most of this test's time
  def step_and_expected_loss(state, images, labels, key):
    aug_key, _ = jax.random.split(key)
    x, targets = augment.mix_batch(mixing.prepare(images, aug_key), jax.nn.one_hot(labels, mixing.num_classes),
                                   jax.random.fold_in(aug_key, task_lib.MIX_STREAM), mixing.augment_cfg)
    logits, _, _ = mixing.apply(state.params, state.batch_stats, x)
    _, metrics = mixing.train_batch(state, images, labels, key)
    return metrics['loss_sum'] / len(images), mixing.loss(logits, targets), targets

  step_loss, loss, targets = step_and_expected_loss(state, images, labels, key)
  assert not np.allclose(targets, jax.nn.one_hot(labels, mixing.num_classes))   # this key mixes
  np.testing.assert_allclose(step_loss, loss, rtol=1e-6)
  # Zero alphas: the program of a run without the keys, whatever the other two say.
  zero = linear_task(head, hflip=0.5, mix_prob=0.7, mix_switch_prob=0.2)
  program = lambda t: str(jax.make_jaxpr(t.train_batch)(state, images, labels, key))
  assert program(zero) == program(plain) != program(mixing)


def test_settings_are_checked_and_mixing_turns_the_feature_cache_off():
  for key, value in (('mixup_alpha', -0.1), ('cutmix_alpha', float('nan')), ('mix_prob', 1.5),
                     ('mix_switch_prob', -1.0)):
    with pytest.raises(UserInputError, match=f'config.augment.{key}='):
      validate(tiny_digits(**{f'augment.{key}': value}))
  cached = {'train.feature_cache': 'on', **AUGMENT_OFF}
  validate(load_config('configs/cats_dogs.py:vgg16,quick', **cached))
  with pytest.raises(UserInputError, match='needs augmentation off.*mixup, cutmix'):
    validate(load_config('configs/cats_dogs.py:vgg16,quick', **cached, **{'augment.cutmix_alpha': 1.0}))


def test_a_launch_with_mixing_equals_a_resumed_run_bit_for_bit(tmp_path):
  """launch.py trains 2 epochs with mixup and cutmix (a sigmoid head, class weights, label smoothing); in
  process, 1 epoch then a relaunch to 2 resumes from the checkpoint: the same metrics and parameters, since each
  step's mixing is keyed by (seed, epoch, step)."""
  mixing = {'augment.mixup_alpha': 0.4, 'augment.cutmix_alpha': 1.0, 'augment.mix_prob': 0.8, 'augment.hflip': 0.5,
            'model.head': 'sigmoid', 'data.label_map': 'low:0,1,2,3,4;high:*', 'train.class_weights': 'auto',
            'train.label_smoothing': 0.1}
  launch('--config=configs/digits.py:quick', f'--workdir={tmp_path / "a"}',
         *[f'--config.{k}={v}' for k, v in {**TINY_FLAGS, **mixing, 'train.epochs': 2}.items()],
         env={'XLA_FLAGS': IN_PROCESS_XLA_FLAGS})   # compared with runs in this process: compiled alike
  run('train', tiny_digits(**mixing, **{'train.epochs': 1}), tmp_path / 'b')
  run('train', tiny_digits(**mixing, **{'train.epochs': 2}), tmp_path / 'b')
  a, b = (pd.read_csv(tmp_path / d / 'metrics.csv').drop(columns='seconds') for d in 'ab')
  assert list(a['epoch']) == [1, 2]
  pd.testing.assert_frame_equal(a, b, check_exact=True)
  pa, pb = (load_trained(tiny_digits(**mixing), tmp_path / d, 'last').state.params for d in 'ab')
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, pa, pb)))
