"""The sections of training: `config.train` (the optimizer, schedule, selection and process settings), `config.eval`
and `config.sweep` (many members trained together and summarised with intervals)."""
import dataclasses
import math
from typing import ClassVar

from fpclass.config.settings import Settings

OPTIMIZERS = ('adam', 'adamw', 'rmsprop', 'sgd')
SCHEDULES = ('constant', 'cosine', 'exponential', 'step')
SAMPLERS = ('uniform', 'balanced')
PRECISIONS = ('fp32', 'bf16')
LOOPS = ('auto', 'step', 'scan')
FEATURE_CACHE = ('auto', 'on', 'off')
SELECT_CHECKPOINTS = ('best', 'last')
BN_STATISTICS = ('running', 'precise')   # fpclass.train.precise_bn
MODEL_AXES = ('auto', 'vmap', 'loop')
THRESHOLD_METRICS = ('macro_f1', 'f1', 'f2')  # f2: multi-label only (each label's F2)
SEMI_METHODS = ('fixmatch', 'none')
STRONG_POLICIES = ('trivialaugment', 'randaugment')
SEMI_THRESHOLDS = ('fixed', 'adaptive')


@dataclasses.dataclass(frozen=True)
class TrainSettings(Settings):
  """`config.train`: how a model is trained, one member or many (`fpclass.train.loop`)."""
  SECTION: ClassVar[str] = 'train'
  batch_size: int = 32
  epochs: int = 50
  optimizer: str = 'adam'          # adam | adamw | rmsprop | sgd
  learning_rate: float = 1e-3
  schedule: str = 'constant'       # constant | cosine | exponential | step
  warmup_epochs: int = 0
  decay_rate: float = 0.1          # exponential: factor per decay_epochs; step: factor at each boundary
  decay_epochs: int = 10
  momentum: float = 0.9            # sgd momentum
  nesterov: bool = False
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  rmsprop_decay: float = 0.9
  weight_decay: float = 0.0        # decoupled (adamw) or added to the gradient (others)
  l2: float = 0.0                  # Keras-style kernel_regularizer: l2 * sum(w**2) added to the loss
  l2_params: str = '.*kernel'      # regex on '/'-joined parameter paths that l2 applies to
  label_smoothing: float = 0.0
  class_weights: str = ''          # '' | auto | 'name:weight,name:weight'
  # uniform: a permutation per epoch | balanced: every class fills an equal share of each epoch's batches
  # (minority examples repeat, majority ones are subsampled); same epoch length either way.
  sampler: str = 'uniform'
  grad_clip_norm: float = 0.0
  backbone_lr_factor: float = 1.0  # pretrained models: learning-rate multiplier for unfrozen backbone stages
  finetune_epochs: int = 0         # > 0: a second phase after `epochs` (or early stopping) with ...
  finetune_freeze_till: int = 0    # ... model.freeze_till set to this (0 = everything trainable) ...
  finetune_lr_factor: float = 0.1  # ... and the learning rate multiplied by this
  select_checkpoint: str = 'best'  # best | last: which checkpoint evaluate/submit restore
  # val_<name> of a metric of fpclass/analysis/metric_registry.py that the task has (checked there): val_loss,
  # val_accuracy, val_macro_f1, val_roc_auc (single-label), val_map (multi-label), ...
  monitor: str = 'val_loss'
  early_stopping_patience: int = 0  # 0 -> off; otherwise epochs without improvement before stopping
  min_delta: float = 0.0
  log_every_steps: int = 10
  tensorboard: bool = True         # also write per-epoch scalars as TensorBoard event files (tensorboard/)
  # fp32 | bf16: bf16 computes in bfloat16 with float32 params, optimizer state, BN statistics and loss, on
  # GPU/TPU; on CPU bf16 trains in fp32 with a warning (fpclass/train/precision.py).
  precision: str = 'fp32'
  # auto | step | scan: one jitted call per step, or one lax.scan over the whole epoch. auto picks step on CPU
  # (XLA:CPU runs the scanned loop slower) and scan on GPU/TPU (docs/performance.md).
  loop: str = 'auto'
  # The share of a GPU a training process takes up front (XLA_PYTHON_CLIENT_MEM_FRACTION). The modes that only
  # read a model allocate as they go, so servers and evaluations fit beside a training run. Unused on CPU.
  gpu_memory_fraction: float = 0.75
  # auto | on | off: compute a frozen backbone's output once and train the head on it. auto uses it when every
  # trainable parameter follows the frozen prefix and nothing random (augmentation) comes before it; on makes
  # that an error when it does not hold. Two-phase recipes use it in phase 1 only.
  feature_cache: str = 'auto'
  # < 1: layer-wise learning-rate decay as timm's layer_decay, lr x layer_decay ** (depth below the head), the
  # depths from fpclass/train/layer_decay.py; 1 = off.
  layer_decay: float = 1.0
  # > 0: validate, select and save an exponential moving average of the weights and BN statistics, updated after
  # every optimizer update, as timm's ModelEmaV3 (e.g. 0.9998); 0 = off (fpclass/train/ema.py).
  ema_decay: float = 0.0
  ema_warmup: bool = True          # timm's decay warmup: min(ema_decay, 1 - n^(-2/3)) at update n
  # Batch-norm statistics validation and the saved model use: 'running' (the moving averages, as Keras and PyTorch
  # keep them) | 'precise' (recomputed from the training images after each epoch: fpclass.train.precise_bn).
  bn_statistics: str = 'running'
  # > 1: one optimizer update per this many batches, with their mean gradient (optax.MultiSteps); the last update
  # of an epoch takes what is left of it. BN still sees single batches (docs/finetuning.md).
  accumulate_steps: int = 1

  def check(self):
    for name, allowed in (('optimizer', OPTIMIZERS), ('schedule', SCHEDULES), ('sampler', SAMPLERS),
                          ('precision', PRECISIONS), ('loop', LOOPS),
                          ('feature_cache', FEATURE_CACHE), ('select_checkpoint', SELECT_CHECKPOINTS),
                          ('bn_statistics', BN_STATISTICS)):
      self.require(name, getattr(self, name) in allowed, f'one of {allowed}')
    for name in ('batch_size', 'epochs', 'log_every_steps'):
      self.require(name, getattr(self, name) >= 1, 'at least 1')
    for name in ('warmup_epochs', 'decay_epochs', 'finetune_epochs', 'early_stopping_patience'):
      self.require(name, getattr(self, name) >= 0, '>= 0')
    self.require('learning_rate', 0.0 <= self.learning_rate < math.inf, 'a number >= 0 (0 trains nothing)')
    for name in ('weight_decay', 'l2', 'grad_clip_norm', 'backbone_lr_factor', 'min_delta', 'momentum',
                 'finetune_lr_factor'):
      self.require(name, 0.0 <= getattr(self, name) < math.inf, '>= 0')
    for name in ('b1', 'b2', 'rmsprop_decay', 'label_smoothing'):
      self.require(name, 0.0 <= getattr(self, name) < 1.0, 'in [0, 1)')
    self.require('eps', 0.0 < self.eps < 1.0, 'in (0, 1)')
    self.require('gpu_memory_fraction', 0.0 < self.gpu_memory_fraction <= 1.0, 'in (0, 1]')
    self.require('finetune_freeze_till', self.finetune_freeze_till >= -1, '>= -1')
    self.require('layer_decay', 0.0 < self.layer_decay <= 1.0, 'in (0, 1] (1: off)')
    self.require('ema_decay', 0.0 <= self.ema_decay < 1.0, 'in [0, 1) (0: off)')
    self.require('accumulate_steps', self.accumulate_steps >= 1, 'at least 1 (1: off)')


@dataclasses.dataclass(frozen=True)
class SemiSettings(Settings):
  """`config.semi`: how training uses config.data.unlabelled (`fpclass.train.semi`). FixMatch (Sohn et al., 2020):
  each unlabelled image's weakly augmented view (config.augment) is predicted, and where the top class's probability
  reaches `threshold` that class is the target of a strongly augmented view of the same image. The defaults are the
  paper's (7 unlabelled images per labelled one, 0.95, weight 1, RandAugment-like policy with Cutout). On a few
  hundred images and a short schedule, fewer pass 0.95 early: docs/unlabelled.md has what changed there."""
  SECTION: ClassVar[str] = 'semi'
  method: str = 'fixmatch'         # fixmatch | none (the pool is read by --mode label_next only)
  ratio: int = 7                   # unlabelled images per labelled image in each batch (FixMatch's mu)
  threshold: float = 0.95          # the confidence a weak view's prediction needs to become a target (tau)
  # fixed: `threshold` for every class; adaptive: FreeMatch's self-adaptive thresholds (Wang et al., 2023), a
  # running mean of the weak views' confidence scaled per class by each class's running mean probability over
  # its largest: low while the model is unsure, lower for the classes it predicts least (`threshold` unused).
  thresholds: str = 'fixed'
  threshold_momentum: float = 0.999   # adaptive: the running means' momentum (FreeMatch's lambda)
  weight: float = 1.0              # the unlabelled loss's weight (lambda_u)
  strong_policy: str = 'trivialaugment'   # the strong view: this policy (one random magnitude per image) ...
  strong_erasing: float = 1.0      # ... then Cutout (a random-erasing rectangle) with this probability

  def check(self):
    self.require('method', self.method in SEMI_METHODS, f'one of {SEMI_METHODS}')
    self.require('ratio', self.ratio >= 1, '>= 1')
    self.require('threshold', 0.0 <= self.threshold <= 1.0, 'in [0, 1]')
    self.require('thresholds', self.thresholds in SEMI_THRESHOLDS, f'one of {SEMI_THRESHOLDS}')
    self.require('threshold_momentum', 0.0 <= self.threshold_momentum < 1.0, 'in [0, 1)')
    self.require('weight', 0.0 <= self.weight < math.inf, '>= 0')
    self.require('strong_policy', self.strong_policy in STRONG_POLICIES, f'one of {STRONG_POLICIES}')
    self.require('strong_erasing', 0.0 <= self.strong_erasing <= 1.0, 'in [0, 1]')


@dataclasses.dataclass(frozen=True)
class EvalSettings(Settings):
  """`config.eval`: scoring a trained run (--mode evaluate, and train after its last epoch)."""
  SECTION: ClassVar[str] = 'eval'
  batch_size: int = 256
  score_train: bool = False        # also score the (un-augmented) training split in scores.json
  # The validation split's batch: each epoch's, and evaluate's and explain's for every split they score (one
  # program). 0: the training batch on GPU/TPU, whose convolutions the train step has already
  # autotuned (another batch is tuned again, seconds for a large backbone: docs/performance.md), and
  # batch_size on CPU, which tunes nothing and gains from the larger batch.
  validation_batch_size: int = 0

  def check(self):
    self.require('batch_size', self.batch_size >= 1, 'at least 1')
    self.require('validation_batch_size', self.validation_batch_size >= 0,
                 '>= 0 (0: the training batch on GPU/TPU, eval.batch_size on CPU)')


@dataclasses.dataclass(frozen=True)
class SweepSettings(Settings):
  """`config.sweep`: every variant x split x seed, trained together along a model axis (`fpclass.train.loop`,
  `fpclass.train.axis`), summarised with confidence intervals and calibrated."""
  SECTION: ClassVar[str] = 'sweep'
  # Named config changes, one string each: 'name: key=value; key=value' (values are Python literals; see
  # `fpclass.config.parse_variant`). Empty -> one variant, 'base', the config as given (repeated seeds).
  variants: tuple[str, ...] = ()
  baseline: str = ''               # the variant paired differences are taken against; '' -> the first
  folds: tuple[int, ...] = ()      # () -> all data.num_folds folds (or the source's own val split); (-1,) -> holdout
  seeds: tuple[int, ...] = (0, 1, 2)
  model_axis: str = 'auto'         # auto (loop: measured faster on CPU and GPU) | vmap | loop; fpclass.train.axis
  models_per_chunk: int = 0        # models resident at once; 0 -> from the memory rule and memory_fraction
  memory_fraction: float = 0.5     # share of free device (or host) memory the chunk may use
  ece_bins: int = 15               # equal-width confidence bins for expected calibration error
  threshold_metric: str = 'macro_f1'  # macro_f1 | f1 (positive class) | f2: what a threshold maximises

  def check(self):
    self.require('model_axis', self.model_axis in MODEL_AXES, f'one of {MODEL_AXES}')
    self.require('threshold_metric', self.threshold_metric in THRESHOLD_METRICS, f'one of {THRESHOLD_METRICS}')
    self.require('seeds', bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                 'distinct integers, at least one')
    self.require('folds', len(set(self.folds)) == len(self.folds) and all(f >= -1 for f in self.folds),
                 'distinct fold indices (or (-1,) for the holdout)')
    self.require('models_per_chunk', self.models_per_chunk >= 0, '>= 0 (0: from the memory rule)')
    self.require('memory_fraction', 0.0 < self.memory_fraction <= 1.0, 'in (0, 1]')
    self.require('ece_bins', self.ece_bins >= 2, 'at least 2')
