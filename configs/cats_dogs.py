"""Seed 004, cats vs dogs (Keras pipeline): a Cat/ and Dog/ folder, an 80/20 split, corrupt files left out at
ingest, TensorBoard logs, the best checkpoint, scores.json, ROC/AUC, confusion matrix, classification report.

    python launch.py --config configs/cats_dogs.py --workdir runs/pets --config.data.root=/data/PetImages
    python launch.py --config configs/cats_dogs.py:tfds --workdir runs/pets-tfds     # TFDS cats_vs_dogs

Data: an ImageFolder with Cat/ and Dog/ (Kaggle's PetImages), or TFDS cats_vs_dogs (`:tfds`; prepared once
with `--mode prepare`). Corrupt, empty and non-image files (PetImages has some, and Thumbs.db files) are
listed in quarantine.csv and left out; nothing is deleted, unlike the seed's ingest stage.
`--mode clean` also finds duplicates.

Variants: `scratch` (the default for now) is not in the seed: seed 001's 3-block CNN trained from scratch
under a new softmax head, so the pipeline runs end to end. The seed's model, VGG16 frozen with a new
head, and its freeze_till sweep need issue 3's VGG16 port (and issue 5's sweeps).
"""
from fpclass.config import base_config, parse_args

CHOICES = {'scratch': 'a from-scratch 3-block CNN with a new softmax head (default, until VGG16 lands)',
           'tfds': 'read TFDS cats_vs_dogs (80/20 of its train split) instead of a folder',
           'quick': 'a tiny run: 2 epochs at 64x64'}
PENDING = {'vgg16': 'VGG16 frozen with a new head (and the freeze_till sweep) needs the pretrained VGG16 port of '
                    'issue 3'}


def get_config(arg: str = 'scratch'):
  args = parse_args('configs/cats_dogs.py', arg, CHOICES, PENDING)
  c = base_config()
  c.name = 'cats-dogs-scratch'
  c.data.source = 'image_folder'
  if 'tfds' in args:
    c.data.source = 'tfds'
    c.data.tfds.name = 'cats_vs_dogs'
    c.data.tfds.train_split = 'train'
  c.data.val_fraction = 0.2                  # the seed's 80/20 split
  c.data.image_size = (224, 224)             # VGG16's input, and the seed app's default size
  c.data.channels = 3
  c.data.mean, c.data.std = (0.0,), (1.0,)   # rescale 1/255, as the seed's generators

  # The seed lists rotation, flips, shifts, shear, zoom and brightness without values; these are this
  # project's (shear is not among fpclass's augmentations). ImageDataGenerator fills with the nearest pixel.
  c.augment.hflip = 0.5
  c.augment.rotation = 20.0
  c.augment.translate = 0.1
  c.augment.zoom = 0.2
  c.augment.brightness = 0.2
  c.augment.fill_mode = 'nearest'

  c.model.name = 'cifar_cnn'
  c.model.head = 'softmax'                   # two probabilities, as the seed's app shows
  c.model.block_channels = (32, 64, 128)
  c.model.dropout = 0.3
  c.model.dense_sizes = (128,)
  c.model.dense_dropout = 0.5

  c.train.optimizer = 'adam'
  c.train.learning_rate = 1e-3
  c.train.batch_size = 32
  c.train.epochs = 30
  c.train.monitor = 'val_loss'               # ModelCheckpoint(save_best_only=True)'s default monitor
  c.train.select_checkpoint = 'best'
  c.train.tensorboard = True
  if 'quick' in args:
    c.train.epochs = 2
    c.data.image_size = (64, 64)             # the data keeps its layout and sizes; decoding shrinks it
  return c
