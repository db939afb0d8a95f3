"""Seed 001, CIFAR-10 vehicles vs animals (Keras): the 3-block CNN, scored on train, val and test.

    python launch.py --config configs/cifar_vehicles.py --workdir runs/cifar-cnn
    python launch.py --config configs/cifar_vehicles.py:quick --workdir runs/cifar-quick   # a tiny run
    python launch.py --config configs/cifar_vehicles.py:resnet50v2 --workdir runs/cifar-resnet50v2 \\
        [--config.model.pretrained=/path/to/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5]

Data: TFDS cifar10, prepared once as ArrayRecord (`--mode prepare`, needs TensorFlow and internet), read
without TensorFlow. Its 10 classes are mapped to vehicle (airplane, automobile, ship, truck) and animal
(the rest); each image keeps its CIFAR class, so evaluation writes a confusion table by original class
(confusion_by_fine_label.csv: are birds taken for planes?). Train = 90% of CIFAR's train split, val = the
other 10% (stratified; the seed does not give its split), test = CIFAR's test split.

Transfer (`resnet50v2`): Keras ResNet50V2 with ImageNet weights, frozen (the seed reports the base "not
fine-tuned"), on CIFAR's 32x32 images upsampled to 224x224 on the device (bilinear, after augmentation:
the decode cache keeps 32x32 arrays); global average pooling, dense 512 and 256 (ReLU, L2 1e-3), one
logit with binary cross-entropy (the seed's Dense(1, sigmoid): `model.head='sigmoid'`); Adam 1e-4. The
weights are Keras' ResNet50V2 no-top file, downloaded once into the cache (md5 checked), or any
.h5/.weights.h5 file Keras wrote, by `--config.model.pretrained=<file>`. Inputs are scaled to [-1, 1]
as ResNet50V2's preprocess_input does (the registry's normalisation, not config.data.mean/std).

The seed reports mean ± std over repeated runs; that is the repeated-seeds mechanism of issue 5 (branch
`sweep`), which runs this config once per seed. This file configures one run.
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'cnn': "the seed's custom 3-block CNN (default)",
           'resnet50v2': 'ResNet50V2 (ImageNet, frozen) on 32 -> 224 upsampled images, a 512-256-1 sigmoid head, '
                         'Adam 1e-4',
           'quick': 'a tiny run: 2 epochs (resnet50v2: upsampled to 40x40 only)'}
VEHICLES = ('airplane', 'automobile', 'ship', 'truck')
ANIMALS = ('bird', 'cat', 'deer', 'dog', 'frog', 'horse')


def get_config(arg: str = 'cnn'):
  args = parse_args('configs/cifar_vehicles.py', arg, CHOICES)
  c = base_config()
  c.name = 'cifar-vehicles-cnn'
  c.data.source = 'tfds'
  c.data.tfds.name = 'cifar10'
  c.data.tfds.train_split = 'train'
  c.data.tfds.test_split = 'test'
  c.data.val_fraction = 0.1
  c.data.label_map = f'vehicle:{",".join(VEHICLES)};animal:{",".join(ANIMALS)}'
  c.data.image_size = (32, 32)
  c.data.channels = 3
  c.data.mean, c.data.std = (0.0,), (1.0,)   # Keras Rescaling(1/255)

  # Conv blocks 32/64/128, 2 convs each (ReLU), BN, max pool, dropout 0.3; global average pooling; dense
  # layers with L2. The seed tuned the dense widths without listing them: 128 and 64 are this project's.
  c.model.name = 'cifar_cnn'
  c.model.head = 'sigmoid'                   # one unit, binary cross-entropy, as the seed's Keras models
  c.model.block_channels = (32, 64, 128)
  c.model.dropout = 0.3
  c.model.dense_sizes = (128, 64)
  c.model.dense_dropout = 0.3
  c.train.l2 = 1e-3                          # kernel_regularizer=l2(1e-3), the value the seed's transfer head uses
  c.train.l2_params = r'dense\d+/kernel'     # the hidden dense layers only

  c.train.optimizer = 'adam'
  c.train.learning_rate = 1e-3               # Keras' Adam default; the seed tuned it by hand without stating it
  c.train.eps = 1e-7                         # Keras' Adam epsilon
  c.train.batch_size = 32
  c.train.epochs = 30
  c.train.monitor = 'val_loss'
  c.train.early_stopping_patience = 5
  c.train.select_checkpoint = 'best'
  c.eval.score_train = True                  # the seed reports train, val and test accuracy and precision
  if 'resnet50v2' in args:
    c.name = 'cifar-vehicles-resnet50v2'
    c.data.device_resize = (224, 224)        # the seed's UpSampling to ResNet50V2's input size
    c.model = base_config().model
    c.model.update(name='keras_resnet50v2', head='sigmoid', pretrained='imagenet_notop', top='avg',
                   top_hidden=(512, 256), top_dropout=0.0, freeze_till=-1)
    # The seed lists no dropout layer in this head (its discussion blames 'dropout' for underfitting).
    c.train.l2 = 1e-3                        # kernel_regularizer=l2(1e-3) on the two hidden dense layers
    c.train.l2_params = r'^top/dense\d+/kernel'
    c.train.learning_rate = 1e-4
    c.train.epochs = 10                      # the seed does not say; early stopping (patience 5) decides
  if 'quick' in args:
    shrink_for_quick(c)
    if c.data.device_resize:
      c.data.device_resize = (40, 40)        # a CPU-sized stand-in for 224 (still upsampled); the full config keeps 224
  return c
