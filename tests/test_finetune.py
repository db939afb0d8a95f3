"""Fine-tuning a pretrained backbone: frozen stages, parameter groups, two phases, through launch.py."""
import jax
import numpy as np
import pandas as pd
import pytest

from fpclass.config.model import ModelSettings
from fpclass.config.run import RunSettings
from fpclass.train import optim
from fpclass.train import task as task_lib
from tests.conftest import launch, load_config, torchvision_weights

# ResNet-18's layout with one block in each stage but the first (which keeps two: the frozen layer1_1 below):
# freezing, parameter groups and the two phases are about stages, not depth, and the program compiles in a
# fraction of the full network's time.
LAYERS = (2, 1, 1, 1)


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  return torchvision_weights(tmp_path_factory.mktemp('weights'), layers=LAYERS)


def test_param_groups_follow_stages_and_freeze_till():
  config = load_config('configs/footprint.py:resnet18', **{'model.freeze_till': 2})
  labels = optim.param_groups(ModelSettings.from_config(config.model))
  params = {'conv1': {'kernel': 0}, 'bn1': {'scale': 0}, 'layer1_0': {'conv1': {'kernel': 0}},
            'layer2_1': {'bn2': {'bias': 0}}, 'fc': {'kernel': 0}}
  assert labels(params) == {'conv1': {'kernel': 'frozen'}, 'bn1': {'scale': 'frozen'},
                            'layer1_0': {'conv1': {'kernel': 'frozen'}}, 'layer2_1': {'bn2': {'bias': 'backbone'}},
                            'fc': {'kernel': 'head'}}


def test_frozen_stages_keep_weights_and_batch_statistics(resnet18_file):
  config = load_config('configs/footprint.py:resnet18,quick', **{
      'model.pretrained': str(resnet18_file), 'model.layers': LAYERS, 'model.freeze_till': 2,
      'train.backbone_lr_factor': 0.5})
  task = task_lib.build_task(RunSettings.from_config(config), ('0', '1'), np.array([0, 1]), steps_per_epoch=2)
  from fpclass.models import get_spec, transfer
  variables = transfer.load_pretrained(get_spec('resnet18'), RunSettings.from_config(config).model,
                                       task.init_variables(jax.random.PRNGKey(0), (32, 24, 1)), '/nonexistent')
  state = task.init(jax.random.PRNGKey(0), (32, 24, 1), variables)
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 24, 1), dtype=np.uint8)
  labels = np.array([0, 1] * 4, np.int32)
  new, _ = jax.jit(task.train_step)(state, images, labels, np.arange(8), jax.random.PRNGKey(1))
  same = lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b)))  # noqa: E731
  for frozen in ('conv1', 'bn1', 'layer1_0', 'layer1_1'):
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(same, state.params[frozen], new.params[frozen])))
  for frozen_bn in ('bn1', 'layer1_1'):
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(same, state.batch_stats[frozen_bn],
                                                                new.batch_stats[frozen_bn])))
  assert not same(state.params['layer2_0']['conv1']['kernel'], new.params['layer2_0']['conv1']['kernel'])
  assert not same(state.batch_stats['layer3_0']['bn1']['mean'], new.batch_stats['layer3_0']['bn1']['mean'])
  assert not same(state.params['fc']['kernel'], new.params['fc']['kernel'])
  assert new.params['conv1']['kernel'].shape == (7, 7, 1, 64)  # the folded grayscale stem


def test_footprint_transfer_two_phases_start_from_the_best_weights(tmp_path, resnet18_file):
  """Seed 000's ResNet-18 transfer through launch.py: a frozen-backbone phase, then fine-tuning, then a
  submission. A min_delta no epoch can beat makes epoch 1 the best and epoch 2 the last of phase 1. Phase 2
  here freezes every stage at learning rate 0, so it changes nothing: its validation loss is that of the
  weights it started from, which must be epoch 1's (restored best, as Keras' restore_best_weights), not
  epoch 2's."""
  workdir = tmp_path / 'run'
  # 32x24 images (the quick config's are 120x80) and LAYERS: which weights phase 2 starts from does not depend on
  # the image size or the depth.
  args = ['--config=configs/footprint.py:resnet18,quick', f'--workdir={workdir}', '--config.data.image_size=(32,24)',
          f'--config.model.pretrained={resnet18_file}', f'--config.model.layers={LAYERS}',
          '--config.train.early_stopping_patience=5',
          '--config.train.min_delta=1e6', '--config.train.finetune_freeze_till=-1',
          '--config.train.finetune_lr_factor=0.0', '--config.explain.after_training=False']
  result = launch(*args)
  assert 'fine-tuning: 1 epochs' in result.stdout + result.stderr
  history = pd.read_csv(workdir / 'metrics.csv')
  assert history['phase'].tolist() == [0, 0, 1] and history['epoch'].tolist() == [1, 2, 3]
  first, last, tuned = history['val_loss'].tolist()
  assert abs(last - first) > 1e-4 * abs(first)  # epoch 2 moved the weights, so the two starts differ
  assert tuned == pytest.approx(first, rel=1e-6), (first, last, tuned)
  launch(*args, '--mode=submit')
  assert len(pd.read_csv(workdir / 'submission.csv')) == 16


def test_footprint_transfer_without_internet_names_the_flag(tmp_path, monkeypatch):
  result = launch('--config=configs/footprint.py:resnet18,quick', f'--workdir={tmp_path}',
                  '--config.model.pretrained=/no/such/file.pth', check=False)
  assert result.returncode == 2 and '/no/such/file.pth: weights file not found' in result.stderr


def test_head_only_trains_just_the_last_layer_of_a_source_classifier():
  config = load_config('configs/footprint.py:resnet18', **{'model.name': 'alexnet', 'model.freeze_till': -1})
  labels = optim.param_groups(ModelSettings.from_config(config.model))
  params = {'features_0': {'kernel': 0}, 'classifier_1': {'kernel': 0}, 'classifier_4': {'bias': 0},
            'classifier_6': {'kernel': 0}}
  assert labels(params) == {'features_0': {'kernel': 'frozen'}, 'classifier_1': {'kernel': 'frozen'},
                            'classifier_4': {'bias': 'frozen'}, 'classifier_6': {'kernel': 'head'}}
  config.model.freeze_till = 5  # the five conv stages; the classifier's hidden layers train
  assert optim.param_groups(ModelSettings.from_config(config.model))(params)['classifier_1'] == {'kernel': 'backbone'}
