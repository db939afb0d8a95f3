"""Multi-label classification: each image carries any number of classes (Planet-style space-separated tags).

    python launch.py --config configs/multilabel.py --workdir runs/shapes

With no data.root it trains on the embedded SYNTHETIC shapes set (fpclass.data.synthetic_multilabel: five
shapes, two of them rare, some images with none), generated once into the cache. For your own Kaggle folder:
--config.data.root=DIR --config.data.id_column=image_name --config.data.label_column=tags (or
--config.data.label_columns=a,b,c for one 0/1 column per class). One sigmoid per class with binary
cross-entropy and positive weights from the label frequencies; folds stratified per label; the checkpoint
with the best validation mAP is kept. `--mode calibrate` then fits one threshold per label.
"""
import ml_collections

from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'quick': 'a tiny run: 2 epochs of a tiny CNN on 240 images of 32 px'}


def get_config(arg: str = ''):
  args = parse_args('configs/multilabel.py', arg, CHOICES)
  c = base_config()
  c.name = 'multilabel_shapes'
  c.data.task = 'multilabel'
  c.data.id_column = 'image_name'
  c.data.label_column = 'tags'
  c.data.image_size = (64, 64)
  c.data.channels = 3
  c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  c.data.val_fraction = 0.2

  # The CIFAR-10 recipe's CNN (3 blocks of 2 convs + BN + pool, global average pooling): on the shapes it
  # reaches about twice the footprint CNN's subset accuracy (docs/multilabel.md).
  c.model.name = 'cifar_cnn'
  c.model.block_channels = (32, 64, 128)
  c.model.dense_sizes = (128,)
  c.model.dropout = 0.2
  c.model.dense_dropout = 0.2

  c.augment.hflip = 0.5
  c.augment.vflip = 0.5

  c.train.batch_size = 32
  c.train.epochs = 30
  c.train.learning_rate = 2e-3
  c.train.schedule = 'cosine'
  c.train.class_weights = 'auto'     # positive weights: negatives / positives per class (torch's pos_weight)
  c.train.monitor = 'val_map'
  c.train.early_stopping_patience = 8
  c.train.select_checkpoint = 'best'
  c.eval.batch_size = 128
  if 'quick' in args:
    shrink_for_quick(c)
    c.data.synthetic.shapes.update(n_train=240, n_test=60, size=32)
    c.data.image_size = (32, 32)
    c.model = ml_collections.ConfigDict(dict(name='footprint_cnn', head='softmax', conv_channels=(8, 16),
                                             fc_sizes=(16,), dropout=0.2, batch_norm=True))
  return c
