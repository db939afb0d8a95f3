"""Helpers of the transfer-recipe tests (test_recipes_transfer*.py): no-top weights files that Keras itself
writes, and the check that a frozen backbone left training exactly as its file holds it.

Keras writes the files with its numpy backend, in a subprocess: the file format is the backend's business
no more than the JAX backend's, and building InceptionV3 on the JAX backend takes over a minute on this
machine (seconds with numpy). Keras 3 is imported only in that subprocess; a missing test dependency fails
loudly rather than skipping."""
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from flax import traverse_util

from fpclass import models
from fpclass.infer.inference import load_trained
from fpclass.train import checkpoint

assert importlib.util.find_spec('keras') and importlib.util.find_spec('h5py'), 'pip install -e .[test]'

APPLICATIONS = {'keras_resnet50v2': 'ResNet50V2', 'keras_resnet50': 'ResNet50', 'keras_vgg16': 'VGG16',
                'keras_inceptionv3': 'InceptionV3', 'keras_mobilenetv3large': 'MobileNetV3Large',
                'keras_efficientnetb2': 'EfficientNetB2'}


def write_keras_weights(folder: pathlib.Path, names) -> dict:
  """{registered name: path} of include_top=False .weights.h5 files written by keras.applications, one
  Keras process for all of `names`."""
  paths = {name: folder / f'{APPLICATIONS[name]}.weights.h5' for name in names}
  script = textwrap.dedent(f'''
      import keras
      keras.utils.set_random_seed(0)
      for app, path in {[(APPLICATIONS[name], str(path)) for name, path in paths.items()]!r}:
        getattr(keras.applications, app)(weights=None, include_top=False, input_shape=(75, 75, 3)).save_weights(path)
  ''')
  subprocess.run([sys.executable, '-c', script], check=True, env=dict(os.environ, KERAS_BACKEND='numpy'),
                 capture_output=True, text=True, timeout=600)
  return paths


def assert_backbone_as_in_file(config, workdir, weights_file, trainable=()):
  """Every backbone variable of the selected checkpoint (params and BN statistics, all but the new top) equals
  the file's, except the modules named in `trainable`, which must have changed."""
  trained = load_trained(config, workdir)
  mapped, _ = models.get_spec(config.model.name).convert(weights_file)
  flat = traverse_util.flatten_dict(checkpoint.model_variables(trained.state))
  backbone = [k for k in flat if k[1] != 'top']
  assert len(backbone) > 10 and any(k[1] == 'top' for k in flat)
  changed = {k[1] for k in backbone if not np.array_equal(np.asarray(flat[k]), mapped[k])}
  assert changed == set(trainable), changed
  return flat
