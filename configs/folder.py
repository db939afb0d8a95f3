"""Your own folder of images, with no config file of yours: one subfolder per class (an ImageFolder; `train/`,
`val/` and `test/` subfolders are read as such).

    python launch.py --mode auto --workdir runs/mine --config.data.root=/data/mine
    python launch.py --workdir runs/mine --config.data.root=/data/mine          # --mode train

launch.py takes this config when a command gives `--config.data.root` and no `--config`. The channels and the
input size are left to the images (0 and (0, 0)): before anything is decoded, a sample of the files' headers
gives the class list, grayscale or colour, and an input size from their median size (the longer side at most
64 pixels, a multiple of 8, the aspect kept), and the run prints what it chose (`fpclass.data.profile`). Any of
them given on the command line is kept. The model is the seed CNN, three conv stages with batch norm, trained
from scratch; `--mode auto` also screens the pretrained backbones whose weights are in the cache.
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick

CHOICES = {'quick': 'a tiny run: 2 epochs'}


def get_config(arg: str = ''):
  args = parse_args('configs/folder.py', arg, CHOICES)
  c = base_config()
  c.name = 'folder'
  c.data.source = 'image_folder'
  c.data.image_size = (0, 0)     # from the images (fpclass.data.profile)
  c.data.channels = 0            # from the images
  c.data.val_fraction = 0.2

  c.model.name = 'footprint_cnn'
  c.model.conv_channels = (32, 64, 128)
  c.model.fc_sizes = (128,)
  c.model.dropout = 0.3
  c.model.batch_norm = True

  c.augment.rotation = 8.0
  c.augment.translate = 0.06

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
