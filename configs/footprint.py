"""Seed 000, the footprint sex classifier: the baseline CNN and its ten controlled experiments.

    --config configs/footprint.py            experiment 4 (early stopping + dropout), the seed's best
    --config configs/footprint.py:exp0       the baseline; exp1 .. exp10 as the seed lists them
    --config configs/footprint.py:exp4,quick a tiny, fast run (tests, smoke checks)
    --config configs/footprint.py:resnet18   transfer learning from ImageNet weights (TRANSFER below)

Data: the embedded SYNTHETIC footprints unless --config.data.root points at the competition folder
(train.csv with filename,SEX; train/; test/ or sample_submission.csv).
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

# Each experiment is the baseline plus the changes listed, exactly as seed 000 describes them.
DROPOUT = {'model.dropout': 0.5}
EARLY_STOPPING = {'train.early_stopping_patience': 7, 'train.select_checkpoint': 'best'}
BATCH_NORM = {'model.batch_norm': True}
RANDOM_ERASING = {'augment.erasing': 0.5}
ROTATION = {'augment.rotation': 10.0}
SMALL_FC = {'model.fc_sizes': (32,)}

EXPERIMENTS = {
    'exp0': {},
    'exp1': DROPOUT,
    'exp2': EARLY_STOPPING,
    'exp3': BATCH_NORM,
    'exp4': {**EARLY_STOPPING, **DROPOUT},
    'exp5': RANDOM_ERASING,
    'exp6': {**RANDOM_ERASING, **DROPOUT},
    'exp7': {**RANDOM_ERASING, **BATCH_NORM},
    'exp8': {**RANDOM_ERASING, **BATCH_NORM, **EARLY_STOPPING},
    'exp9': {**ROTATION, **BATCH_NORM, **EARLY_STOPPING},
    'exp10': {**SMALL_FC, **EARLY_STOPPING},
}


# Seed 000's transfer learning: a torchvision backbone on the grayscale footprints. Its RGB stem is folded
# to one channel (config.model.in_channels=1), the final layer replaced; phase 1 trains that layer only,
# phase 2 fine-tunes everything at a tenth of the learning rate. Weights: 'imagenet' downloads
# torchvision's file once (checksum verified); offline, pass --config.model.pretrained=/path/to/file.pth.
TRANSFER = ('resnet18', 'alexnet', 'efficientnet_b0')

CHOICES = {**{name: f'experiment {name[3:]}' + (' (the baseline)' if name == 'exp0' else '') for name in EXPERIMENTS},
           **{name: f'{name} transfer from ImageNet weights, grayscale stem' for name in TRANSFER},
           'quick': 'a tiny, fast run (tests, smoke checks)'}


def get_config(arg: str = 'exp4'):
  args = parse_args('configs/footprint.py', arg, CHOICES, default='exp4')
  chosen = [a for a in args if a != 'quick']
  if len(chosen) > 1:
    raise ValueError(f'configs/footprint.py: choose one experiment or transfer model, not {chosen}')
  experiment = chosen[0] if chosen else 'exp4'
  c = base_config()
  c.name = f'footprint-{experiment}'
  c.data.source = 'kaggle_csv'
  c.data.image_size = (120, 80)        # 80 wide x 120 high, grayscale, as in seed 000
  c.data.channels = 1
  c.data.mean, c.data.std = (0.5,), (0.5,)
  # "Controlled fake variety" every experiment shares (seed 000's preprocessing section).
  c.augment.hflip = 0.5
  c.augment.brightness = 0.2
  c.augment.contrast = 0.2

  c.model = base_config().model
  c.model.name = 'footprint_cnn'
  c.model.conv_channels = (32, 64)
  c.model.fc_sizes = (128,)
  c.model.dropout = 0.0
  c.model.batch_norm = False

  c.train.optimizer = 'adam'
  c.train.learning_rate = 1e-3
  c.train.batch_size = 32
  c.train.epochs = 50
  c.train.monitor = 'val_loss'
  c.train.select_checkpoint = 'last'   # without early stopping the seed kept the final model
  c.explain.after_training = True      # seed 000 ran Grad-CAM on its highest-loss validation images
  for key, value in EXPERIMENTS.get(experiment, {}).items():
    section, field = key.split('.')
    c[section][field] = value
  if experiment in TRANSFER:
    c.model = base_config().model
    c.model.update(name=experiment, pretrained='imagenet', keep_pretrained_head=False, in_channels=1,
                   top='source', freeze_till=-1)
    c.train.update(epochs=10, finetune_epochs=10, finetune_freeze_till=0, finetune_lr_factor=0.1,
                   early_stopping_patience=5, select_checkpoint='best')

  if 'quick' in args:
    c.data.synthetic.update(n_class0=40, n_class1=32, n_test=16)
    shrink_for_quick(c)
    c.train.batch_size = 16
    c.train.finetune_epochs = min(c.train.finetune_epochs, 1)
  return c
