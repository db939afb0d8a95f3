"""Fine-tuning a modern pretrained backbone on your own ImageFolder, as the published recipes do.

    python launch.py --config configs/finetune.py:convnext_tiny --workdir runs/ft --config.data.root=/data/mine
    python launch.py --config configs/finetune.py:digits_sweep --mode sweep --workdir runs/digits-ft \
        --config.data.root=/tmp/digits-folder      # bench/digits_finetune_sweep.py writes that folder

One recipe for every backbone: AdamW, a cosine schedule after a linear warmup, layer-wise learning-rate decay,
an EMA of the weights, stochastic depth, RandAugment, mixup and cutmix, label smoothing and random erasing
(docs/finetuning.md). The values are the published fine-tuning recipes' (cited beside each), with the epochs and
warmup scaled to a few hundred images and the learning rate to the batch size (MAE's rule, lr = blr * batch / 256).
`digits_sweep` compares the project's digits recipe with this one from scratch (nothing can be downloaded here),
over 5 folds x 2 seeds: it says whether the recipe's pieces work together, nothing about pretrained gains.
"""
from configs import digits
from fpclass.config.schema import base_config, parse_args, shrink_for_quick
from fpclass.config.variants import config_changes, variant_spec

# backbone -> (its pretrained weights, layer decay, drop path rate). ViT-B/16: MAE's FINETUNE.md command for
# ViT-Base (--layer_decay 0.65 --drop_path 0.1). ConvNeXt-T: drop path 0.1, its ImageNet-1K recipe for T. The
# other layer decays are this project's choice, milder for shallower stacks (no published value at these sizes):
# 0.75 for DINOv2 ViT-S (12 blocks, narrower), 0.8 for the convnets. EfficientNetV2-S: drop path 0.2,
# torchvision's default; DINOv2 ViT-S: 0.1, as ViT-B.
BACKBONES = {
    'convnext_tiny': ('imagenet', 0.8, 0.1),
    'efficientnet_v2_s': ('imagenet', 0.8, 0.2),
    'vit_b16': ('imagenet', 0.65, 0.1),
    'dinov2_vits14': ('lvd142m', 0.75, 0.1),
}
CHOICES = {**{name: f'fine-tune {name} ({weights} weights) with the recipe' for name, (weights, _, _)
              in BACKBONES.items()},
           'digits_sweep': "for --mode sweep: digits' own recipe against this one on ResNet-18 from scratch, 5 folds "
                           'x 2 seeds, on the digits written as an ImageFolder (data.root)',
           'quick': 'a tiny run: 2 epochs at 32x32'}


def recipe(c) -> None:
  """The recipe's optimizer, schedule, regularisers and augmentation, on top of `c` (its model and data)."""
  # AdamW, weight decay 0.05, cosine after a linear warmup: MAE's fine-tuning (5 of 100 epochs of warmup there;
  # 2 of 30 here).
  c.train.optimizer = 'adamw'
  c.train.weight_decay = 0.05
  c.train.b2 = 0.999
  c.train.batch_size = 32
  c.train.learning_rate = 5e-4 * c.train.batch_size / 256   # MAE's base lr 5e-4 per 256 images
  c.train.schedule = 'cosine'
  c.train.epochs = 30
  c.train.warmup_epochs = 2
  c.train.label_smoothing = 0.1                 # timm/MAE/ConvNeXt: --smoothing 0.1
  c.train.ema_decay = 0.9998                    # timm train.py's --model-ema-decay default, with its warmup
  c.train.monitor = 'val_loss'
  c.train.select_checkpoint = 'best'
  # timm's 'rand-m9-mstd0.5-inc1' as torchvision's RandAugment (2 ops at magnitude 9), horizontal flips,
  # random erasing 0.25 (--reprob 0.25), mixup 0.8 and cutmix 1.0 switched half and half (--mixup 0.8
  # --cutmix 1.0 --mixup-switch-prob 0.5).
  c.augment.update(policy='randaugment', num_ops=2, magnitude=9, hflip=0.5, erasing=0.25, mixup_alpha=0.8,
                   cutmix_alpha=1.0, mix_switch_prob=0.5, mix_prob=1.0)


def get_config(arg: str = 'convnext_tiny'):
  args = parse_args('configs/finetune.py', arg, CHOICES)
  if 'digits_sweep' in args:
    return _digits_sweep('quick' in args)
  backbones = [a for a in args if a in BACKBONES]
  if len(backbones) != 1:
    raise ValueError(f'configs/finetune.py: name one backbone of {list(BACKBONES)}, got {backbones}')
  name = backbones[0]
  weights, layer_decay, drop_path = BACKBONES[name]
  c = base_config()
  c.name = f'finetune-{name}'
  c.data.source = 'image_folder'
  c.data.image_size = (224, 224)
  c.data.channels = 3
  c.data.resize = 'crop'
  c.model.update(name=name, head='softmax', pretrained=weights, drop_path_rate=drop_path)
  recipe(c)
  c.train.layer_decay = layer_decay
  if 'quick' in args:
    shrink_for_quick(c)
    c.data.image_size = (32, 32) if name not in ('vit_b16', 'dinov2_vits14') else (56, 56)
  return c


def _digits_seed_recipe(quick: bool):
  c = digits.get_config('quick' if quick else '')
  c.data.source = 'image_folder'   # the digits as files (bench/digits_finetune_sweep.py), through the real path
  c.data.image_size = (32, 32)
  c.train.early_stopping_patience = 0
  c.train.epochs = 2 if quick else 12
  return c


def _digits_finetune_recipe(quick: bool):
  c = _digits_seed_recipe(quick)
  c.model = base_config().model
  c.model.update(name='resnet18', head='softmax', pretrained='', in_channels=1, drop_path_rate=0.1)
  recipe(c)
  c.train.learning_rate = 1e-3     # from scratch: the digits recipe's own rate, not a fine-tuning one
  c.train.layer_decay = 0.8
  c.train.epochs = 2 if quick else 12
  c.train.warmup_epochs = 0 if quick else 2
  return c


def _digits_sweep(quick: bool):
  c = _digits_seed_recipe(quick)
  c.name = 'digits-recipes'
  c.sweep.variants = (variant_spec('seed', {}),
                      variant_spec('finetune', config_changes(c, _digits_finetune_recipe(quick))))
  c.sweep.baseline = 'seed'
  c.sweep.seeds = (0, 1)
  c.sweep.folds = ()
  return c
