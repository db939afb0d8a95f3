"""Rough edges of the Python API (issue 12, part 4), each fixed and pinned here.

- `transfer.load_pretrained` takes what `model.init` returns ('perturbations' included), and abstract
  variables, so that training initialises only what the file lacks (`CompiledSteps.init_variables`).
- Replacing the source classifier (keep_pretrained_head=False, the default) is logged.
- `cam.feature_layers` lists the feature maps in network order, not alphabetically.
- The Keras ports document which Keras layer each recorded feature is (`KERAS_FEATURES`), and EfficientNet's
  'stem' is Keras' `stem_activation` (after BN and swish), not the conv's output.
"""
import importlib
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torchvision
from flax import traverse_util

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.config.run import RunSettings
from fpclass.config.schema import base_config
from fpclass.explain import cam
from fpclass.models import transfer
from fpclass.models.architectures import cnn
from fpclass.runtime.compiler_options import jit_options
from fpclass.runtime.sharding import DataParallel
from fpclass.train.steps import CompiledSteps
from fpclass.train.task import build_task
from tests import parity

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  torch.manual_seed(0)
  module = parity.randomise_torch_weights(torchvision.models.resnet18(weights=None))
  path = tmp_path_factory.mktemp('resnet18') / 'resnet18.pth'
  torch.save(module.state_dict(), path)
  return module, path


def model_config(path, **fields):
  return ml_collections.ConfigDict(dict(name='resnet18', head='softmax', pretrained=str(path), **fields))


def test_load_pretrained_takes_the_output_of_model_init(resnet18_file, tmp_path):
  """model.init returns a 'perturbations' collection too (fpclass.models.feature); it holds no weights and
  passes through unchanged instead of being listed as 'missing'."""
  module, path = resnet18_file
  cfg = model_config(path, keep_pretrained_head=True)
  model = models.create_model(cfg, 1000)
  x = jnp.zeros((1, 32, 32, 3))
  # Compiled as training compiles it (op by op, or at XLA's default level, ResNet-18's init takes seconds).
  variables = jax.jit(model.init, compiler_options=jit_options(init=True))(jax.random.PRNGKey(0), x)
  assert 'perturbations' in variables
  loaded = transfer.load_pretrained(models.get_spec('resnet18'), ModelSettings.from_config(cfg), variables,
                                    cache_dir=tmp_path)
  assert set(loaded) == set(variables)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)),
                                                       loaded['perturbations'], variables['perturbations']))
  np.testing.assert_array_equal(loaded['params']['conv1']['kernel'],
                                module.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  logits, _ = jax.jit(model.apply)(loaded, x)   # and the result is usable as it stands
  assert logits.shape == (1, 1000)


def test_training_initialises_only_what_the_file_lacks_and_equals_the_full_init(resnet18_file, tmp_path):
  """The pretrained variables train.py starts from: the file's arrays, and for the new head exactly the
  values the full init gives with the same key (the init program only skips the backbone's initialisers)."""
  _, path = resnet18_file
  cfg = model_config(path, top='avg', top_hidden=(16,))
  config = base_config()
  config.model = cfg
  config.data.update(channels=3, image_size=(32, 32))
  task = build_task(RunSettings.from_config(config), ['a', 'b', 'c'], np.array([0, 1, 2]), steps_per_epoch=1)
  compiled = CompiledSteps(task, DataParallel.over())
  key, shape = jax.random.PRNGKey(3), (32, 32, 3)
  spec = models.get_spec('resnet18')
  model = ModelSettings.from_config(cfg)
  expected = transfer.load_pretrained(spec, model, compiled.init_variables(key, shape), cache_dir=tmp_path)
  loaded = transfer.load_pretrained(spec, model, compiled.variable_shapes(shape), cache_dir=tmp_path)
  abstract = [k for k, v in traverse_util.flatten_dict(loaded).items() if isinstance(v, jax.ShapeDtypeStruct)]
  assert abstract and all(k[1] == 'top' for k in abstract)   # the new head only
  got = compiled.init_variables(key, shape, loaded)
  flat_got, flat_expected = traverse_util.flatten_dict(got), traverse_util.flatten_dict(expected)
  assert flat_got.keys() == flat_expected.keys()
  differ = [k for k in flat_got if not np.array_equal(np.asarray(flat_got[k]), np.asarray(flat_expected[k]))]
  assert not differ, differ
  # ...and the fresh leaves are not the full init of another key (the comparison can fail).
  other = traverse_util.flatten_dict(compiled.init_variables(jax.random.PRNGKey(4), shape, loaded))
  kernel = next(k for k in abstract if k[-1] == 'kernel')
  assert not np.array_equal(np.asarray(other[kernel]), np.asarray(flat_got[kernel]))


def test_replacing_the_source_head_is_logged(resnet18_file, caplog):
  _, path = resnet18_file
  with caplog.at_level(logging.WARNING, logger=transfer.__name__):
    parity.build('resnet18', path, num_classes=3, keep_pretrained_head=False, image_shape=(32, 32, 3))
  messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('resnet18: the source classifier (params/fc/, 1000 outputs in resnet18.pth) is replaced by a new '
             'last layer of 3 outputs' in m and 'keep_pretrained_head=True keeps it' in m for m in messages), messages
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger=transfer.__name__):
    parity.build('resnet18', path, keep_pretrained_head=True, image_shape=(32, 32, 3))
  assert not [r for r in caplog.records if 'source classifier' in r.getMessage()]


def zero_variables(model, shape):
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)


def test_feature_layers_are_listed_in_network_order():
  """Ten convolutions: alphabetically conv10 would come second. A port: its stem first, not last. Only shapes
  are traced (eval_shape), so the 1024-pixel input costs nothing."""
  seed_cnn = cnn.FootprintCNN(conv_channels=(2,) * 10, fc_sizes=(), num_outputs=2)
  variables = zero_variables(seed_cnn, (1024, 1024, 1))
  variables.pop('perturbations', None)
  assert cam.feature_layers(seed_cnn.apply, variables, (1024, 1024, 1)) == [f'conv{i}' for i in range(1, 11)]
  port = models.create_model(ml_collections.ConfigDict(dict(name='resnet18')), 3)
  variables = zero_variables(port, (32, 32, 3))
  variables.pop('perturbations', None)
  assert cam.feature_layers(port.apply, variables, (32, 32, 3)) == ['stem', 'layer1', 'layer2', 'layer3', 'layer4']


models.get_spec('keras_vgg16')   # imports every family, so that the registry is complete
KERAS_PORTS = sorted(name for name, spec in models.REGISTRY.items() if spec.family == 'keras')
assert len(KERAS_PORTS) == 7, KERAS_PORTS


@pytest.mark.parametrize('name', KERAS_PORTS)
def test_every_keras_port_documents_the_keras_layer_of_each_feature(name):
  spec = models.get_spec(name)
  module = importlib.import_module(models.module_class(spec.module).__module__)
  assert list(module.KERAS_FEATURES) == list(spec.stage_names)
  assert 'KERAS_FEATURES' in module.__doc__


def test_keras_efficientnet_stem_feature_is_keras_stem_activation(tmp_path):
  """'stem' equals Keras' stem_activation (after stem_bn and swish), and not stem_bn's output: what the
  documentation says."""
  import keras  # after tests.parity, which selects the JAX backend
  keras.utils.set_random_seed(0)
  model = parity.keras_application('EfficientNetB0', (32, 32, 3))
  path = tmp_path / 'b0.weights.h5'
  model.save_weights(str(path))
  x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  probe = keras.Model(model.inputs, [model.get_layer('stem_activation').output, model.get_layer('stem_bn').output])
  activation, batch_norm = (np.asarray(o) for o in probe.predict(x, verbose=0))
  port, variables = parity.build('keras_efficientnetb0', path, num_classes=2, image_shape=(32, 32, 3), cut='stem',
                                 top='avg', keep_pretrained_head=False)
  stem = parity.apply(port, variables, x)[1]['stem']
  scale = float(np.max(np.abs(activation)))
  assert parity.max_abs_diff(stem, activation) <= 1e-5 * scale
  assert parity.max_abs_diff(stem, batch_norm) > 0.1 * scale
