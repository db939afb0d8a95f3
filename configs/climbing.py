"""Seed 002, climbing footwork (heel_hook, toe_hook, others; 306 scraped images, imbalanced), Keras.

    python launch.py --config configs/climbing.py --workdir runs/climbing --mode clean --config.data.root=/data/climbing
    python launch.py --config configs/climbing.py --workdir runs/climbing --config.data.root=/data/climbing \\
        --config.data.file_list=runs/climbing/clean_files.csv

The first command is the seed's cleaning (corrupt files, pHash duplicates within and across splits, format
and mode statistics; see `fpclass/data/clean.py`); the second trains on the files it kept. Data: an
ImageFolder, <root>/heel_hook, <root>/others, <root>/toe_hook (or train/ and val/ folders of them);
without a val folder a stratified 20% holdout validates (the seed does not say how it split).

Shared settings, as the seed: 224x224, flip (horizontal and vertical), rotation 0.2, zoom 0.2, height 0.2,
width 0.2; class weights 'balanced'; Adam 1e-5, batch 32, up to 100 epochs, early stopping with patience
30 (the best epoch's weights are kept); macro F1 and per-class reports in scores.json and
classification_report.txt.

Variants (arguments), one run per backbone, each in its own workdir, then a table across them:

    for b in mobilenetv3large efficientnetb2 resnet50 vgg16; do
      python launch.py --config configs/climbing.py:$b --workdir runs/climbing/$b --config.data.root=/data/climbing \\
          --config.data.file_list=runs/climbing/clean_files.csv
    done
    python launch.py --config configs/climbing.py --workdir runs/climbing --mode compare

or all four as one sweep with 95% intervals and paired differences (5 folds x 3 seeds):

    python launch.py --config configs/climbing.py:compare --mode sweep --workdir runs/climbing-sweep \\
        --config.data.root=/data/climbing --config.data.file_list=runs/climbing/clean_files.csv

- `mobilenetv3large`, `efficientnetb2`, `resnet50`, `vgg16`: the seed's four backbones. The Keras port (fpclass/models/keras_*.py) with its
  ImageNet no-top weights (downloaded once into the cache, md5 checked; offline, a file Keras wrote via
  --config.model.pretrained=<file>), frozen, then global average pooling (the seed does not say how it
  pooled) and the seed head: dense 256, dropout 0.2, dense 128, dropout 0.2, softmax (widths are this
  project's; the seed does not give them). Adam 1e-5. Inputs get the backbone's own preprocessing (the
  registry's normalisation), not the seed's Rescaling(1/255), which ImageNet weights were not trained on.
- `scratch` (the default) is not in the seed: seed 001's 3-block CNN trained from scratch under the seed's
  head, at lr 1e-3 (1e-5 suits a pretrained base, not training from zero).

`--mode compare` on the parent workdir tables every run below it (comparison.csv, macro F1 per backbone;
the seed's best was ResNet50 at macro F1 0.42).

Which backbone? `probe` screens five in minutes instead of training each: the seed's best, ResNet50 (Keras), and
four modern families (ConvNeXt-Tiny, EfficientNetV2-S, ViT-B/16, DINOv2 ViT-S/14), each with its published
weights, by a linear probe on its frozen, pooled features over 5 folds (fpclass/modes/probe.py):

    python launch.py --config configs/climbing.py:probe --mode probe --workdir runs/climbing-probe \\
        --config.data.root=/data/climbing --config.data.file_list=runs/climbing/clean_files.csv
"""
from fpclass.config.schema import base_config, parse_args, shrink_for_quick
from fpclass.config.variants import config_changes, variant_spec

# argument -> the registered Keras port (fpclass.models REGISTRY). Adding a backbone is one line here.
BACKBONES = {
    'mobilenetv3large': 'keras_mobilenetv3large',
    'efficientnetb2': 'keras_efficientnetb2',
    'resnet50': 'keras_resnet50',
    'vgg16': 'keras_vgg16',
}
# `probe`: which backbone? The seed's best (ResNet50) and four modern families, each with its published weights.
PROBE_BACKBONES = ('keras_resnet50=imagenet_notop', 'convnext_tiny=imagenet', 'efficientnet_v2_s=imagenet',
                   'vit_b16=imagenet', 'dinov2_vits14=lvd142m')
CHOICES = {'scratch': 'a from-scratch 3-block CNN under the seed head (default; not in the seed)',
           **{arg: f'{name} (ImageNet, frozen) under the seed head, lr 1e-5' for arg, name in BACKBONES.items()},
           'probe': 'for --mode probe: screen five backbones (ResNet50, ConvNeXt-T, EfficientNetV2-S, ViT-B/16, '
                    'DINOv2 ViT-S/14) by linear probes on their frozen features, 5 folds',
           'compare': 'for --mode sweep: the four backbones above, each frozen under the seed head, over 5 folds x 3 '
                      'seeds',
           'quick': 'a tiny run: 2 epochs at 64x64 (backbones: 32x32)'}
HEAD_SIZES = (256, 128)   # the seed's two dense layers; it does not give their widths


def get_config(arg: str = 'scratch'):
  args = parse_args('configs/climbing.py', arg, CHOICES)
  if 'compare' in args:
    return _backbone_sweep([a for a in args if a == 'quick'])
  backbones = [a for a in args if a in BACKBONES]
  if len(backbones) > 1:
    raise ValueError(f'configs/climbing.py: one backbone per run, got {backbones}; run each in its own workdir '
                     'and compare them with --mode compare')
  c = base_config()
  c.name = 'climbing-scratch'
  c.data.source = 'image_folder'
  c.data.image_size = (224, 224)
  c.data.channels = 3
  c.data.mean, c.data.std = (0.0,), (1.0,)   # Rescaling(1/255)
  c.data.val_fraction = 0.2

  # RandomFlip('horizontal_and_vertical'), RandomRotation(0.2) (+-72 degrees), RandomZoom(0.2),
  # RandomHeight(0.2), RandomWidth(0.2), filled by reflection as Keras does.
  c.augment.hflip = 0.5
  c.augment.vflip = 0.5
  c.augment.rotation = 72.0
  c.augment.zoom = 0.2
  c.augment.height = 0.2
  c.augment.width = 0.2
  c.augment.fill_mode = 'reflect'

  c.model.name = 'cifar_cnn'
  c.model.head = 'softmax'
  c.model.block_channels = (32, 64, 128)
  c.model.dropout = 0.3
  c.model.dense_sizes = HEAD_SIZES
  c.model.dense_dropout = 0.2                # Dropout(0.2) after each dense layer

  c.train.class_weights = 'auto'
  c.train.optimizer = 'adam'
  c.train.learning_rate = 1e-3               # scratch; the seed's 1e-5 returns with the pretrained backbones
  c.train.eps = 1e-7
  c.train.batch_size = 32
  c.train.epochs = 100
  c.train.monitor = 'val_loss'               # Keras EarlyStopping's default monitor
  c.train.early_stopping_patience = 30
  c.train.select_checkpoint = 'best'
  if backbones:
    c.name = f'climbing-{backbones[0]}'
    c.model = base_config().model
    c.model.update(name=BACKBONES[backbones[0]], head='softmax', pretrained='imagenet_notop', top='avg',
                   top_hidden=HEAD_SIZES, top_dropout=0.2, freeze_till=-1)
    c.train.learning_rate = 1e-5             # the seed's
  if 'probe' in args:
    c.name = 'climbing-probe'
    c.probe.backbones = PROBE_BACKBONES
  if 'quick' in args:
    shrink_for_quick(c)
    # The data keeps its layout and sizes; decoding shrinks it (a pretrained backbone further, for CPU tests;
    # the probe's to 112, a multiple of both ViT patch sizes, 16 and 14).
    c.data.image_size = (112, 112) if 'probe' in args else (32, 32) if backbones else (64, 64)
  return c


def _backbone_sweep(extra: list):
  """The seed's backbone comparison as one sweep: the first backbone's recipe, each backbone a variant."""
  names = list(BACKBONES)
  c = get_config(','.join([names[0], *extra]))
  c.name = 'climbing-backbones'
  c.sweep.variants = tuple(variant_spec(n, config_changes(c, get_config(','.join([n, *extra])))) for n in names)
  c.sweep.baseline = names[0]
  c.sweep.folds = ()
  return c
