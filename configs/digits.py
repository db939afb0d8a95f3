"""scikit-learn's 8x8 digits (1,797 images, 10 classes): a small real dataset that needs no download.

    python launch.py --config configs/digits.py --workdir runs/digits

Anchors on the same data: scikit-learn's MLP 0.981 and RBF SVC 0.96 (5-fold).
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'quick': 'a tiny run: 2 epochs'}


def get_config(arg: str = ''):
  args = parse_args('configs/digits.py', arg, CHOICES)
  c = base_config()
  c.name = 'digits'
  c.data.source = 'digits'
  c.data.image_size = (16, 16)   # upsampled from 8x8 so two conv+pool stages keep spatial detail
  c.data.channels = 1
  c.data.mean, c.data.std = (0.5,), (0.5,)
  c.data.val_fraction = 0.2

  c.model.name = 'footprint_cnn'
  c.model.conv_channels = (32, 64)
  c.model.fc_sizes = (128,)
  c.model.dropout = 0.3
  c.model.batch_norm = False

  c.augment.rotation = 8.0
  c.augment.translate = 0.06

  c.train.batch_size = 32
  c.train.epochs = 40
  c.train.learning_rate = 1e-3
  c.train.schedule = 'cosine'
  c.train.monitor = 'val_loss'
  c.train.early_stopping_patience = 10
  c.train.select_checkpoint = 'best'
  if 'quick' in args:
    shrink_for_quick(c)
  return c
