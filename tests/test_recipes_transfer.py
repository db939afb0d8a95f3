"""The seeds' transfer-learning recipes end to end through launch.py with `quick`, on stand-in data, loading
no-top weights files that Keras itself wrote (random weights: there is no download here). Each test checks
what the recipe writes and that the frozen backbone left training exactly as the file holds it. Seeds 001
and 003 here; 002 and 004 in test_recipes_transfer_pets.py (two files, so two test workers share them)."""
import numpy as np
import pytest

from fpclass.config.model import ModelSettings
from fpclass.train import optim
from fpclass.train.validation import validate
from tests import content
from tests.conftest import launch, load_config
from tests.test_recipes import check_common_outputs, param_count
from tests.tfds_stand_in import CIFAR10_NAMES, cifar_like_image, prepare_stand_in, two_class_image
from tests.transfer_weights import assert_backbone_as_in_file, write_keras_weights


@pytest.fixture(scope='module')
def keras_weights(tmp_path_factory):
  return write_keras_weights(tmp_path_factory.mktemp('keras-weights'), ['keras_resnet50v2', 'keras_inceptionv3'])


def test_transfer_configs_keep_the_seed_values():
  cifar = load_config('configs/cifar_vehicles.py:resnet50v2')
  assert cifar.data.image_size == (32, 32) and cifar.data.device_resize == (224, 224)
  assert (cifar.model.name, cifar.model.head, tuple(cifar.model.top_hidden), cifar.model.freeze_till) == (
      'keras_resnet50v2', 'sigmoid', (512, 256), -1)
  assert (cifar.train.optimizer, cifar.train.learning_rate, cifar.train.l2) == ('adam', 1e-4, 1e-3)
  assert load_config('configs/cifar_vehicles.py:resnet50v2,quick').data.device_resize == (40, 40)
  assert cifar.model.cut == ''   # the recipe builds the whole backbone; its end-to-end test below cuts it

  horses = load_config('configs/horses_humans.py:inception_mixed7')
  assert horses.data.image_size == (150, 150)
  assert (horses.model.cut, horses.model.top, tuple(horses.model.top_hidden), horses.model.top_dropout,
          horses.model.freeze_till) == ('mixed7', 'flatten', (1024,), 0.2, -1)
  assert (horses.train.optimizer, horses.train.learning_rate) == ('rmsprop', 1e-5)
  # The seed's model summary: 38.5M trainable (the new head on 7x7x768 mixed7 maps), 47.5M in all.
  total = param_count(horses.model, (150, 150, 3))
  head = 7 * 7 * 768 * 1024 + 1024 + 1024 + 1
  assert head == 38_537_217 and round(total / 1e6, 1) == 47.5

  pets = load_config('configs/cats_dogs.py:vgg16')
  assert pets.data.image_size == (224, 224) and pets.data.val_fraction == 0.2
  assert (pets.model.name, pets.model.top, pets.model.freeze_till, pets.explain.after_training) == (
      'keras_vgg16', 'flatten', -1, True)
  labels = optim.param_groups(ModelSettings.from_config(
      load_config('configs/cats_dogs.py:vgg16', **{'model.freeze_till': 16}).model))(
      {'block5_conv2': {'kernel': 0}, 'block5_conv3': {'kernel': 0}, 'top': {'logits': {'kernel': 0}}})
  assert labels == {'block5_conv2': {'kernel': 'frozen'}, 'block5_conv3': {'kernel': 'backbone'},
                    'top': {'logits': {'kernel': 'head'}}}

  for backbone, name in (('mobilenetv3large', 'keras_mobilenetv3large'), ('efficientnetb2', 'keras_efficientnetb2'),
                         ('resnet50', 'keras_resnet50'), ('vgg16', 'keras_vgg16')):
    c = load_config(f'configs/climbing.py:{backbone}')
    validate(c)  # the model builds with these fields and the data fits its input
    assert (c.model.name, tuple(c.model.top_hidden), c.model.top_dropout, c.model.freeze_till) == (
        name, (256, 128), 0.2, -1)
    assert (c.data.image_size, c.train.learning_rate, c.train.early_stopping_patience, c.train.epochs) == (
        (224, 224), 1e-5, 30, 100)
    assert (c.augment.hflip, c.augment.vflip, c.augment.rotation, c.augment.zoom, c.augment.height,
            c.augment.width) == (0.5, 0.5, 72.0, 0.2, 0.2, 0.2)
  with pytest.raises(ValueError, match='one backbone per run'):
    load_config('configs/climbing.py:resnet50,vgg16')


def test_cifar_vehicles_resnet50v2_quick(tmp_path, keras_weights):
  tfds_dir = tmp_path / 'tfds'
  # Few images (both coarse classes in every split), and an evaluation batch of 2, so the val and test splits are
  # not padded up to the train split's size and the frozen backbone's feature pass compiles one batch shape for
  # train and val.
  prepare_stand_in('cifar10', tfds_dir, {'train': 20, 'test': 4}, cifar_like_image, CIFAR10_NAMES)
  workdir = tmp_path / 'run'
  weights = keras_weights['keras_resnet50v2']
  # ResNet50V2 cut after its first stack, conv2 (its strided block and both shortcut kinds), from the whole file
  # Keras wrote: what is checked is the recipe's data, upsampling, head and frozen backbone, none of which needs
  # conv3 to conv5 (tracing and compiling those was most of the launch; test_pretrained_keras.py checks the whole
  # network against Keras).
  overrides = {'data.tfds.data_dir': str(tfds_dir), 'model.pretrained': str(weights), 'model.cut': 'conv2'}
  result = launch('--config=configs/cifar_vehicles.py:resnet50v2,quick', f'--workdir={workdir}',
                  *[f'--config.{k}={v}' for k, v in overrides.items()], '--config.eval.batch_size=2')
  scores, history = check_common_outputs(workdir, 2, ('vehicle', 'animal'))
  assert [scores[s]['n'] for s in ('train', 'test')] == [18, 4]
  content.check_fine_label_table(workdir)
  # 32x32 images upsampled to 40x40 on the device: conv2's output is 5x5 (it would be 4x4 at 32).
  log = result.stdout + result.stderr
  assert 'the head trains on its 5x5x256 outputs' in log, log[-2000:]
  # No dropout, no augmentation, a frozen backbone: only the head can change the epoch's mean loss.
  assert abs(history['train_loss'][0] - history['train_loss'][1]) > 1e-4
  flat = assert_backbone_as_in_file(load_config('configs/cifar_vehicles.py:resnet50v2,quick', **overrides), workdir,
                                    weights)
  assert not any(k[1].startswith(('conv3', 'conv4', 'conv5', 'post_bn')) for k in flat)  # cut after conv2
  # The recipe's head on the pooled 256 channels of conv2: dense 512 and 256, one sigmoid logit.
  assert flat[('params', 'top', 'dense1', 'kernel')].shape == (256, 512)
  assert flat[('params', 'top', 'logits', 'kernel')].shape == (256, 1)


def test_horses_humans_inception_mixed7_quick(tmp_path, keras_weights):
  tfds_dir = tmp_path / 'tfds'
  prepare_stand_in('horses_or_humans', tfds_dir, {'train': 8, 'test': 4}, two_class_image((300, 300)))
  workdir = tmp_path / 'run'
  weights = keras_weights['keras_inceptionv3']
  overrides = {'data.tfds.data_dir': str(tfds_dir), 'model.pretrained': str(weights)}
  # An evaluation batch of 4, the val split's size: the frozen backbone's feature pass compiles one batch shape for
  # the 8 train and 4 val images instead of one for each (InceptionV3 to mixed7 takes seconds to compile).
  launch('--config=configs/horses_humans.py:inception_mixed7,quick', f'--workdir={workdir}',
         *[f'--config.{k}={v}' for k, v in overrides.items()], '--config.eval.batch_size=4')
  scores, _ = check_common_outputs(workdir, 4, ('horses', 'humans'))
  config = load_config('configs/horses_humans.py:inception_mixed7,quick', **overrides)
  flat = assert_backbone_as_in_file(config, workdir, weights)
  assert not any(k[1] in ('mixed8', 'mixed9', 'mixed10') for k in flat)  # cut after mixed7
  assert flat[('params', 'top', 'dense1', 'kernel')].shape == (3 * 3 * 768, 1024)  # mixed7 at 75x75
  assert flat[('params', 'top', 'logits', 'kernel')].shape == (1024, 1)
  assert scores['num_params'] == sum(int(np.size(v)) for k, v in flat.items() if k[0] == 'params')
