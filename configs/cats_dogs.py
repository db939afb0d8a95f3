"""Seed 004, cats vs dogs (Keras pipeline): a Cat/ and Dog/ folder, an 80/20 split, corrupt files left out at
ingest, TensorBoard logs, the best checkpoint, scores.json, ROC/AUC, confusion matrix, classification report.

    python launch.py --config configs/cats_dogs.py --workdir runs/pets --config.data.root=/data/PetImages
    python launch.py --config configs/cats_dogs.py:tfds --workdir runs/pets-tfds     # TFDS cats_vs_dogs
    python launch.py --config configs/cats_dogs.py:vgg16 --workdir runs/pets-vgg16/frozen \\
        --config.data.root=/data/PetImages [--config.model.pretrained=/path/to/vgg16_..._notop.h5]

Data: an ImageFolder with Cat/ and Dog/ (Kaggle's PetImages), or TFDS cats_vs_dogs (`:tfds`; prepared once
with `--mode prepare`). Corrupt, empty and non-image files (PetImages has some, and Thumbs.db files) are
listed in quarantine.csv and left out; nothing is deleted, unlike the seed's ingest stage.
`--mode clean` also finds duplicates.

Variants:
- `vgg16`, the seed's model: Keras VGG16 with ImageNet weights (the no-top file, downloaded once into the
  cache with its md5 checked; offline, any file Keras wrote via --config.model.pretrained=<file>), every
  layer frozen, a new head: flatten, dense 2, softmax. Inputs get VGG16's caffe preprocessing (BGR minus
  the ImageNet mean; the registry's, not config.data.mean/std). Grad-CAM of the highest-loss validation
  images on block5_conv3 after training (explain/; no Guided Grad-CAM row: the Keras ports' ReLUs are not
  the swappable `relu` field). The seed gives no optimizer values: Adam 1e-4 is this project's.
- the freeze_till sweep: `--config.model.freeze_till=N` freezes VGG16's first N Keras layers (block1_conv1 ..
  block5_pool, 18 in all; -1 = all, the default) and trains the rest, as the seed's "number of layers kept
  frozen". One workdir per value, then a table of them:

      for n in 18 14 10 6; do
        python launch.py --config configs/cats_dogs.py:vgg16 --workdir runs/pets-vgg16/freeze_till_$n \\
            --config.data.root=/data/PetImages --config.model.freeze_till=$n
      done
      python launch.py --config configs/cats_dogs.py:vgg16 --workdir runs/pets-vgg16 --mode compare

  or, with 95% intervals over 5 folds x 3 seeds, one sweep:

      python launch.py --config configs/cats_dogs.py:freeze_sweep --mode sweep --workdir runs/pets-vgg16-sweep \\
          --config.data.root=/data/PetImages

- `scratch` (the default) is not in the seed: seed 001's 3-block CNN trained from scratch under a new softmax
  head.
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

FREEZE_SWEEP = (18, 14, 10, 6)   # VGG16's Keras layers kept frozen: all 18, then fewer

CHOICES = {'scratch': 'a from-scratch 3-block CNN with a new softmax head (default; not in the seed)',
           'vgg16': "VGG16 (ImageNet) frozen with a new flatten-dense-softmax head; --config.model.freeze_till=N "
                    'trains all but its first N layers',
           'freeze_sweep': 'for --mode sweep: VGG16 with freeze_till 18 (all), 14, 10 and 6, over 5 folds x 3 seeds',
           'tfds': 'read TFDS cats_vs_dogs (80/20 of its train split) instead of a folder',
           'quick': 'a tiny run: 2 epochs at 64x64 (vgg16: 32x32)'}


def get_config(arg: str = 'scratch'):
  args = parse_args('configs/cats_dogs.py', arg, CHOICES)
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
  if 'vgg16' in args or 'freeze_sweep' in args:
    c.name = 'cats-dogs-vgg16'
    c.model = base_config().model
    c.model.update(name='keras_vgg16', head='softmax', pretrained='imagenet_notop', top='flatten', top_hidden=(),
                   freeze_till=-1)
    c.train.learning_rate = 1e-4
    c.explain.after_training = True          # the seed's Grad-CAM
    c.explain.guided = False
  if 'quick' in args:
    shrink_for_quick(c)
    # The data keeps its layout and sizes; decoding shrinks it (VGG16 further, for CPU tests).
    c.data.image_size = (32, 32) if 'vgg16' in args or 'freeze_sweep' in args else (64, 64)
  if 'freeze_sweep' in args:
    c.name = 'cats-dogs-vgg16-freeze-sweep'
    c.sweep.variants = tuple(f'freeze{n}: model.freeze_till={n}' for n in FREEZE_SWEEP)
    c.sweep.baseline = f'freeze{FREEZE_SWEEP[0]}'
    c.sweep.folds = ()
    c.explain.after_training = False
  return c
