"""Seed 003, horses vs humans (Keras): the 3-conv CNN, with and without augmentation, at 150 or 300 pixels.

    python launch.py --config configs/horses_humans.py --workdir runs/hh-150
    python launch.py --config configs/horses_humans.py:augment --workdir runs/hh-150-aug
    python launch.py --config configs/horses_humans.py:size300 --workdir runs/hh-300
    python launch.py --config configs/horses_humans.py:augment,quick --workdir runs/hh-quick   # a tiny run
    python launch.py --config configs/horses_humans.py:inception_mixed7 --workdir runs/hh-inception \\
        [--config.model.pretrained=/path/to/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5]

Data: TFDS horses_or_humans (1,027 train, 256 test images of 300x300; the seed's train and validation
sets), prepared once as ArrayRecord (`--mode prepare`). The seed's folders (horses/, humans/) work too:
--config.data.source=image_folder --config.data.root=<folder with train/ and validation/>.

Model: conv 16/32/64 (3x3, valid) each with 2x2 max pooling, flatten, dense 512, one sigmoid unit; RMSprop
1e-3, 15 epochs, batch 32, the final weights (Keras' fit without callbacks). About 9.5M parameters at 150,
40M at 300 (pinned by tests/test_recipes.py).

Transfer (`inception_mixed7`, the seed's phase 3): Keras InceptionV3 with ImageNet weights, cut after
'mixed7' (`model.cut`: the stages after it are not built and their weights not loaded), every stage frozen
(`model.freeze_till=-1`: weights unchanged, BatchNorm on its ImageNet statistics); flatten, dense 1024
(ReLU), dropout 0.2, one sigmoid unit; RMSprop 1e-5; 150x150 inputs scaled to [-1, 1] as InceptionV3's
preprocess_input does. At 150 mixed7 is 7x7x768, so the head has 38.5M trainable parameters and the whole
model 47.5M, the seed's figures (pinned by tests/test_recipes_transfer.py). Weights: Keras' no-top file,
downloaded once into the cache (md5 checked), or any .h5/.weights.h5 file Keras wrote via
--config.model.pretrained. The seed does not give its epoch count: 15 here, as phase 1 and 2.
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'augment': "the seed's phase 2: flip, rotation 0.2, zoom 0.2, height 0.2, width 0.2",
           'size300': 'images at 300x300 instead of 150x150 (the image-size comparison)',
           'inception_mixed7': "InceptionV3 (ImageNet) cut at 'mixed7', frozen, flatten-1024-dropout 0.2-sigmoid "
                               'head, RMSprop 1e-5',
           'quick': 'a tiny run: 2 epochs (inception_mixed7: at 75x75, its smallest input)'}


def get_config(arg: str = ''):
  args = parse_args('configs/horses_humans.py', arg, CHOICES)
  size = 300 if 'size300' in args else 150
  c = base_config()
  c.name = f'horses-humans-cnn{size}' + ('-aug' if 'augment' in args else '')
  c.data.source = 'tfds'
  c.data.tfds.name = 'horses_or_humans'
  c.data.tfds.train_split = 'train'
  c.data.tfds.val_split = 'test'             # the seed's validation-horse-or-human set
  c.data.image_size = (size, size)
  c.data.channels = 3
  c.data.mean, c.data.std = (0.0,), (1.0,)   # Rescaling(1/255)

  c.model.name = 'small_cnn'
  c.model.head = 'sigmoid'                   # 0 horses, 1 humans
  c.model.conv_channels = (16, 32, 64)
  c.model.dense_size = 512

  c.train.optimizer = 'rmsprop'
  c.train.learning_rate = 1e-3
  c.train.rmsprop_decay = 0.9                # Keras' rho
  c.train.eps = 1e-7                         # Keras' epsilon
  c.train.batch_size = 32                    # image_dataset_from_directory's default
  c.train.epochs = 15
  c.train.monitor = 'val_accuracy'
  c.train.select_checkpoint = 'last'
  if 'augment' in args:
    # Keras layers: RandomFlip('horizontal'), RandomRotation(0.2) (a fraction of a full turn: +-72 degrees),
    # RandomZoom(0.2), RandomHeight(0.2), RandomWidth(0.2); Keras fills with reflection.
    c.augment.hflip = 0.5
    c.augment.rotation = 72.0
    c.augment.zoom = 0.2
    c.augment.height = 0.2
    c.augment.width = 0.2
    c.augment.fill_mode = 'reflect'
  if 'inception_mixed7' in args:
    c.name = f'horses-humans-inception-mixed7-{size}' + ('-aug' if 'augment' in args else '')
    c.model = base_config().model
    c.model.update(name='keras_inceptionv3', head='sigmoid', pretrained='imagenet_notop', cut='mixed7',
                   top='flatten', top_hidden=(1024,), top_dropout=0.2, freeze_till=-1)
    c.train.learning_rate = 1e-5             # the seed's RMSprop(learning_rate=0.00001)
  if 'quick' in args:
    shrink_for_quick(c)
    if 'inception_mixed7' in args:
      c.data.image_size = (75, 75)           # InceptionV3's smallest input, for CPU tests; the full config keeps 150
  return c
