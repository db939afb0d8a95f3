"""scikit-image's LFW subset (200 real 25x25 grayscale crops: 100 faces, 100 background patches of the same
photos), face / not_face: a small real two-class set that needs no download (`pip install 'fpclass[samples]'`).

    python launch.py --config configs/faces.py --workdir runs/faces

Anchors on the same 200 images (pixels scaled to [0, 1], stratified 5-fold CV, shuffle seed 0; scikit-learn
1.8, 2026-11-25): RBF SVC 0.965 (standardised pixels, default C and gamma; the same on raw pixels), logistic
regression 0.965, MLP 0.955, an RBF SVC with C and gamma grid-searched inside each fold 0.975; the default RBF SVC
on this project's own 5 folds (split_seed 0) 0.965 too. This config over those folds (`--mode sweep`, 1 seed):
1.000, every one of the 200 images right out of fold; at data.image_size=(8,8) 0.980, at (6,6) 0.955, for a
harder task. One image is half a point of the 200; a validation fold of 40 moves in steps of 0.025.
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'quick': 'a tiny run: 2 epochs'}


def get_config(arg: str = ''):
  args = parse_args('configs/faces.py', arg, CHOICES)
  c = base_config()
  c.name = 'faces'
  c.data.source = 'lfw_faces'
  c.data.image_size = (25, 25)   # the crops' own size: no resampling; two conv+pool stages leave 6x6
  c.data.channels = 1
  c.data.mean, c.data.std = (0.5,), (0.5,)
  c.data.val_fraction = 0.2

  c.model.name = 'footprint_cnn'
  c.model.conv_channels = (16, 32)   # 160 training images: a small network
  c.model.fc_sizes = (64,)
  c.model.dropout = 0.3
  c.model.batch_norm = False

  # Faces and backgrounds are both left-right symmetric in kind; the crops are roughly centred.
  c.augment.hflip = 0.5
  c.augment.rotation = 8.0
  c.augment.translate = 0.06

  c.train.batch_size = 16
  c.train.epochs = 60
  c.train.learning_rate = 1e-3
  c.train.schedule = 'cosine'
  c.train.monitor = 'val_loss'
  c.train.early_stopping_patience = 15
  c.train.select_checkpoint = 'best'
  if 'quick' in args:
    shrink_for_quick(c)
  return c
