"""The config schema: every key a run can read, with its default. The bottom of the import graph.

Every key is declared here, so `config_flags` (which locks the config) turns a mistyped
`--config.a.b=value` into an error. Task files under `configs/` change values, never add keys, except
under `model`, whose fields belong to the chosen architecture (see `fpclass.models.create_model`).

A section that a module reads as a unit is a frozen `Settings` dataclass: the one place its defaults and
its value checks are written. `base_config` builds that ConfigDict section from the dataclass, and the
consuming module gets a checked instance with `<Settings>.from_config(section)`. Checks that need other
modules (a known model, optimizer or source) live in `fpclass.validation`, which runs once per launch.

This module imports no other fpclass module: everything imports it, it imports nothing of ours.
"""
import ast
import dataclasses
import math
import numbers
import re
import typing
from typing import Any, ClassVar

import ml_collections


class ConfigError(ValueError):
  """A config value that fails its section's check; the message names the key (`fpclass.validation`
  reports it as a UserInputError)."""


# --------------------------------------------------------------------------------------- settings sections

@dataclasses.dataclass(frozen=True)
class Settings:
  """A config section as a frozen dataclass: field defaults are the section's defaults; `check` raises
  ConfigError naming `config.<SECTION>.<key>`. Subclasses set SECTION and override `check`."""
  SECTION: ClassVar[str] = ''
  # Whether the ConfigDict section may hold keys of other owners (config.data holds decode and source keys).
  SHARED_SECTION: ClassVar[bool] = False

  def __post_init__(self):
    self.check()

  def check(self) -> None:
    pass

  @classmethod
  def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}

  @classmethod
  def from_config(cls, section: Any):
    """A checked instance from a ConfigDict section or a mapping (missing keys keep their defaults)."""
    values = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown and not cls.SHARED_SECTION:
      raise ConfigError(f'config.{cls.SECTION}.{unknown[0]}: unknown key; known keys are {names}')
    kwargs = {name: _coerce(f'config.{cls.SECTION}.{name}', hints[name], values[name])
              for name in names if name in values}
    return cls(**kwargs)

  def require(self, name: str, ok: bool, expected: str) -> None:
    if not ok:  # NaN fails every comparison, so it lands here too
      raise ConfigError(f'config.{self.SECTION}.{name}={getattr(self, name)!r}: must be {expected}')


def _coerce(key: str, hint, value):
  """`value` as the field's annotated type; a string where a number belongs is a typo, not a number."""
  origin = typing.get_origin(hint)
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
      raise ConfigError(f'{key}={value!r}: must be a tuple')
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(key, args[0], v) for v in value)
    if len(value) != len(args):
      raise ConfigError(f'{key}={value!r}: must be a tuple of {len(args)} values')
    return tuple(_coerce(key, a, v) for a, v in zip(args, value))
  if hint is bool:
    if not isinstance(value, (bool, numbers.Integral)):
      raise ConfigError(f'{key}={value!r}: must be True or False')
    return bool(value)
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) != int(value):
      raise ConfigError(f'{key}={value!r}: must be a whole number')
    return int(value)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ConfigError(f'{key}={value!r}: must be a number')
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f'{key}={value!r}: must be a string')
    return value
  return value


RESIZE_MODES = ('stretch', 'crop', 'pad')


@dataclasses.dataclass(frozen=True)
class DecodeSettings(Settings):
  """How every image is decoded into the uint8 cache: the decode keys of `config.data`."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  image_size: tuple[int, int] = (120, 80)   # (height, width); the seed-000 default is 80 wide by 120 high
  channels: int = 1                         # 1 -> Pillow mode L, 3 -> RGB
  resize: str = 'stretch'                   # stretch | crop (centre crop to aspect) | pad (letterbox)
  alpha_background: int = 255               # RGBA/LA/P-with-transparency is composited onto this grey level
  max_image_pixels: int = 89_478_485        # Pillow's bomb limit; larger files are quarantined, not decoded

  def check(self):
    self.require('channels', self.channels in (1, 3), '1 (grayscale) or 3 (RGB)')
    self.require('resize', self.resize in RESIZE_MODES, f'one of {RESIZE_MODES}')
    self.require('image_size', len(self.image_size) == 2 and min(self.image_size) >= 1,
                 '(height, width), both positive')
    self.require('alpha_background', 0 <= self.alpha_background <= 255, 'a grey level in [0, 255]')
    self.require('max_image_pixels', self.max_image_pixels >= 1, 'at least 1')

  @property
  def height(self) -> int:
    return self.image_size[0]

  @property
  def width(self) -> int:
    return self.image_size[1]


FILL_MODES = ('constant', 'nearest', 'reflect', 'wrap')


@dataclasses.dataclass(frozen=True)
class AugmentSettings(Settings):
  """`config.augment`. Every augmentation is off at its default. Geometry follows Keras' preprocessing
  layers where a seed used them (factors are fractions), rotation is in degrees, colour and erasing follow
  torchvision. Hashable, so `fpclass.augment` decides on/off in Python and an op that is off is never traced."""
  SECTION: ClassVar[str] = 'augment'
  hflip: float = 0.0               # probability
  vflip: float = 0.0               # probability
  rotation: float = 0.0            # max |angle| in degrees
  zoom: float = 0.0                # scale drawn from [1 - zoom, 1 + zoom], same for both axes
  height: float = 0.0              # extra vertical scale drawn from [1 - height, 1 + height]
  width: float = 0.0               # extra horizontal scale drawn from [1 - width, 1 + width]
  translate: float = 0.0           # max shift as a fraction of height/width
  fill_mode: str = 'constant'      # constant | nearest | reflect | wrap (pixels mapped from outside)
  fill_value: float = 0.0          # in [0, 1] image units, for fill_mode=constant
  brightness: float = 0.0          # factor drawn from [1 - b, 1 + b]
  contrast: float = 0.0            # factor drawn from [1 - c, 1 + c], blended around the image mean
  erasing: float = 0.0             # probability of one random-erasing rectangle
  erasing_scale: tuple[float, float] = (0.02, 0.33)
  erasing_ratio: tuple[float, float] = (0.3, 3.3)
  erasing_value: float = 0.5       # in [0, 1] image units; 0.5 is 0 after the default (0.5, 0.5) normalisation
  # Batch mixing (timm's Mixup, 'batch' mode): each batch is mixed with itself reversed, one lambda per batch,
  # and trained on soft labels. Alpha 0 is off.
  mixup_alpha: float = 0.0         # mixup: lambda ~ Beta(alpha, alpha), images blended lambda : 1 - lambda
  cutmix_alpha: float = 0.0        # cutmix: a box of area ~ (1 - lambda) pasted; the labels follow the box's area
  mix_switch_prob: float = 0.5     # both alphas on: cutmix with this probability, else mixup
  mix_prob: float = 1.0            # probability that a batch is mixed at all

  def check(self):
    self.require('fill_mode', self.fill_mode in FILL_MODES, f'one of {FILL_MODES}')
    for name in ('hflip', 'vflip', 'erasing', 'translate', 'fill_value', 'erasing_value'):
      self.require(name, 0.0 <= getattr(self, name) <= 1.0, 'in [0, 1]')
    for name in ('zoom', 'height', 'width'):
      # A factor of 1 would allow a zero scale, a singular transform.
      self.require(name, 0.0 <= getattr(self, name) < 1.0, 'in [0, 1)')
    self.require('rotation', 0.0 <= self.rotation <= 180.0, 'in [0, 180] degrees')
    for name in ('brightness', 'contrast'):
      self.require(name, 0.0 <= getattr(self, name) < math.inf, '>= 0')
    lo, hi = self.erasing_scale
    self.require('erasing_scale', 0.0 <= lo <= hi <= 1.0, '(lo, hi) with 0 <= lo <= hi <= 1')
    lo, hi = self.erasing_ratio
    self.require('erasing_ratio', 0.0 < lo <= hi < math.inf, '(lo, hi) with 0 < lo <= hi')
    for name in ('mixup_alpha', 'cutmix_alpha'):
      self.require(name, 0.0 <= getattr(self, name) < math.inf, '>= 0 (0: off)')
    for name in ('mix_switch_prob', 'mix_prob'):
      self.require(name, 0.0 <= getattr(self, name) <= 1.0, 'in [0, 1]')

  @property
  def geometry_enabled(self) -> bool:
    return any((self.rotation, self.zoom, self.height, self.width, self.translate))

  @property
  def enabled(self) -> bool:
    """Whether any per-image op is on (batch mixing is `mixing_enabled`)."""
    return self.geometry_enabled or any((self.hflip, self.vflip, self.brightness, self.contrast, self.erasing))

  @property
  def mixing_enabled(self) -> bool:
    return bool(self.mixup_alpha or self.cutmix_alpha) and self.mix_prob > 0

  @property
  def randomises_input(self) -> bool:
    """Whether the model sees different inputs from epoch to epoch (per-image ops or mixing)."""
    return self.enabled or self.mixing_enabled


CAM_METHODS = ('gradcam', 'gradcam++', 'hirescam')   # fpclass.cam.METHODS gives each its display name
CAM_TARGETS = ('predicted', 'label')


@dataclasses.dataclass(frozen=True)
class ExplainSettings(Settings):
  """`config.explain`: Grad-CAM and error analysis of the validation split (--mode explain, and train
  when after_training)."""
  SECTION: ClassVar[str] = 'explain'
  after_training: bool = False     # train mode runs explain after evaluation (on in configs/footprint.py)
  method: str = 'gradcam'          # gradcam | gradcam++ | hirescam
  layer: str = ''                  # a feature map the model records; '' -> the model's registered cam_layer
  target: str = 'predicted'        # predicted | label: the class each map explains
  num_images: int = 10             # highest-loss validation images per overlay grid and in the top-losses table
  guided: bool = True              # add a Guided Grad-CAM row (needs a model with a `relu` field)
  inference_grid: int = 16         # validation images in the right/wrong inference grid; 0 -> none
  feature_image: int = 0           # validation index of the image whose feature maps are drawn; -1 -> none
  max_channels: int = 64           # channels drawn per feature map (the first ones)
  alpha: float = 0.5               # heat-map opacity in the overlays
  batch_size: int = 32             # images per Grad-CAM call

  def check(self):
    self.require('method', self.method in CAM_METHODS, f'one of {list(CAM_METHODS)}')
    self.require('target', self.target in CAM_TARGETS, f'one of {list(CAM_TARGETS)}')
    for name, low in (('num_images', 1), ('inference_grid', 0), ('feature_image', -1), ('max_channels', 1),
                      ('batch_size', 1)):
      self.require(name, getattr(self, name) >= low, f'at least {low}')
    self.require('alpha', 0.0 <= self.alpha <= 1.0, 'in [0, 1]')


@dataclasses.dataclass(frozen=True)
class PredictSettings(Settings):
  """`config.predict`: --mode predict classifies new images with a trained workdir's model."""
  SECTION: ClassVar[str] = 'predict'
  inputs: str = ''                 # a file, a folder (recursive), a glob, or a CSV with a `path_column`
  path_column: str = 'path'        # the CSV column holding image paths (relative to the CSV's folder)
  output: str = 'predictions.csv'  # written in --workdir
  calibrated: bool = True          # apply the temperature and threshold stored by --mode calibrate, if any
  explain: bool = False            # also write one Grad-CAM overlay PNG per image under predict_explain/
  batch_size: int = 0              # 0 -> config.eval.batch_size

  def check(self):
    self.require('batch_size', self.batch_size >= 0, '>= 0 (0: config.eval.batch_size)')
    self.require('output', bool(self.output) and '/' not in self.output, 'a file name inside --workdir')


LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '::1')


@dataclasses.dataclass(frozen=True)
class ServeSettings(Settings):
  """`config.serve`: --mode serve, a FastAPI app under uvicorn over one jitted predict function."""
  SECTION: ClassVar[str] = 'serve'
  host: str = '127.0.0.1'          # loopback by default; any other address also needs allow_remote
  port: int = 8000
  allow_remote: bool = False       # True: bind a non-loopback host (anyone who can reach it can use the model)
  micro_batching: bool = True      # gather concurrent requests into one device call
  batch_window_ms: float = 5.0     # how long the first request of a batch waits for others
  max_batch: int = 32              # images per device call at most
  warm_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)   # compiled at start-up; a batch is padded up
  max_upload_bytes: int = 10_000_000   # larger uploads get 413
  max_images_per_request: int = 32
  calibrated: bool = True          # apply the temperature and threshold stored by --mode calibrate, if any
  # Server processes behind the port, each with its own compiled model (0: the usable cores, at most 8).
  workers: int = 0
  # Requests one worker holds at once (being read, waiting for or in a device call); past it a request gets
  # 503 with Retry-After at once, without its body being read.
  max_queue: int = 16
  # An accepted request still waiting for its device call after this long gets 503 with Retry-After: every
  # answer comes within max_wait_ms + one device call of max_batch images (/metadata: device_call_ms).
  max_wait_ms: float = 1000.0
  # A worker whose event loop sends no heartbeat (one a second) for this long is hung: the supervisor kills and
  # replaces it, as gunicorn's --timeout (same default) does (0: never). Its held connections then close.
  worker_timeout_s: float = 30.0

  def check(self):
    self.require('port', 0 <= self.port <= 65535, 'a TCP port in [0, 65535] (0: any free port)')
    self.require('workers', 0 <= self.workers <= 256, 'in [0, 256] (0: the usable cores, at most 8)')
    self.require('max_queue', self.max_queue >= 1, 'at least 1')
    self.require('max_wait_ms', 1.0 <= self.max_wait_ms <= 600_000.0, 'in [1, 600000] milliseconds')
    self.require('worker_timeout_s', self.worker_timeout_s == 0 or 3.0 <= self.worker_timeout_s <= 86_400.0,
                 '0 (never) or in [3, 86400] seconds (workers beat once a second)')
    self.require('host', self.host in LOOPBACK_HOSTS or self.allow_remote,
                 f'a loopback address {LOOPBACK_HOSTS} unless --config.serve.allow_remote=True '
                 '(binding another address exposes the model to the network)')
    self.require('batch_window_ms', 0.0 <= self.batch_window_ms <= 1000.0, 'in [0, 1000] milliseconds')
    self.require('max_batch', self.max_batch >= 1, 'at least 1')
    self.require('warm_batch_sizes', all(b >= 1 for b in self.warm_batch_sizes), 'positive batch sizes')
    self.require('max_upload_bytes', self.max_upload_bytes >= 1, 'at least 1')
    self.require('max_images_per_request', self.max_images_per_request >= 1, 'at least 1')


EXPORT_FORMATS = ('onnx', 'stablehlo')


@dataclasses.dataclass(frozen=True)
class ExportSettings(Settings):
  """`config.export`: --mode export writes the model with its preprocessing inside the graph."""
  SECTION: ClassVar[str] = 'export'
  formats: tuple[str, ...] = EXPORT_FORMATS
  folder: str = 'export'           # inside --workdir
  batch_size: int = 0              # 0: any batch size (symbolic; ONNX gets 1 where jax2onnx cannot); else fixed

  def check(self):
    self.require('formats', bool(self.formats) and set(self.formats) <= set(EXPORT_FORMATS),
                 f'a non-empty tuple of {EXPORT_FORMATS}')
    self.require('batch_size', self.batch_size >= 0, '>= 0')
    self.require('folder', bool(self.folder), 'a folder name inside --workdir')


PROBE_POOLINGS = ('avg', 'max', 'source')
PROBE_SOLVERS = ('jax', 'sklearn')
PROBE_RANKS = ('accuracy', 'macro_f1', 'log_loss')


@dataclasses.dataclass(frozen=True)
class ProbeSettings(Settings):
  """`config.probe`: --mode probe screens backbones by linear probes on their frozen, pooled features
  (fpclass.pooled_features, fpclass.linear_probe), over data.num_folds folds x seeds."""
  SECTION: ClassVar[str] = 'probe'
  # Registered pretrained models; 'name=weights' gives one its own weights (a named set or a file), the others
  # take config.model.pretrained ('' or absent: random init, seeded by config.seed).
  backbones: tuple[str, ...] = ()
  pooling: str = 'avg'             # avg | max: the last stage pooled (a ViT's patch tokens); source: the source
                                   # model's own features before its classifier (a ViT's class token)
  flip_tta: bool = False           # each image's features are the mean of its own and its mirror image's
  seeds: tuple[int, ...] = (0,)    # repetitions of the k-fold split, each split with data.split_seed + seed
  inner_folds: int = 5             # the inner cross-validation that picks C, in each outer training fold
  # Inverse L2 strengths C tried (scikit-learn's convention): 1e-4 to 1e4, LogisticRegressionCV's default Cs=10.
  c_values: tuple[float, ...] = tuple(10.0 ** (-4.0 + 8.0 * i / 9) for i in range(10))
  solver: str = 'jax'              # jax | sklearn: the same fit (docs/performance.md measures both)
  max_iter: int = 500              # solver iterations per fit, at most
  batch_size: int = 32             # images per forward pass of a backbone
  rank_by: str = 'accuracy'        # accuracy | macro_f1 | log_loss: the best backbone, which the others are paired with

  def check(self):
    self.require('pooling', self.pooling in PROBE_POOLINGS, f'one of {PROBE_POOLINGS}')
    self.require('solver', self.solver in PROBE_SOLVERS, f'one of {PROBE_SOLVERS}')
    self.require('rank_by', self.rank_by in PROBE_RANKS, f'one of {PROBE_RANKS}')
    self.require('seeds', bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                 'distinct integers, at least one')
    self.require('inner_folds', self.inner_folds >= 2, 'at least 2')
    self.require('c_values', bool(self.c_values) and all(0 < c < math.inf for c in self.c_values),
                 'positive numbers, at least one')
    self.require('max_iter', self.max_iter >= 1, 'at least 1')
    self.require('batch_size', self.batch_size >= 1, 'at least 1')


def section(settings: type[Settings], **extra) -> ml_collections.ConfigDict:
  """The ConfigDict section of `settings`, plus `extra` keys that other owners read from it."""
  return ml_collections.ConfigDict({**extra, **settings.defaults()})


# ----------------------------------------------------------------------------------------------- the schema

def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'run'
  c.seed = 0

  c.data = section(
      DecodeSettings,
      # kaggle_csv | image_folder | tfds | digits. kaggle_csv with an empty root means the embedded
      # SYNTHETIC footprints (generated once into the cache), so a newcomer needs no download.
      source='kaggle_csv',
      root='',
      # A CSV written by `--mode clean` (clean_files.csv): only its keep=True files are used, from the
      # labelled splits of a kaggle_csv or image_folder root; a file it never scanned is an error.
      file_list='',
      # Groups source classes into new ones, 'coarse:fine,fine;other:*' ('*' = every class not named
      # before). Classes follow the group order; each example keeps its source class as extras['fine_label'].
      label_map='',
      # Kaggle layout: <root>/<labels_csv>, <root>/<train_dir>/, <root>/<test_dir>/ or <root>/<sample_submission>.
      labels_csv='train.csv',
      train_dir='train',
      test_dir='test',
      sample_submission='sample_submission.csv',
      id_column='filename',
      label_column='SEX',
      # Optional fixed class order; empty means sorted unique labels (Kaggle) or sorted folder names.
      class_names=(),
      bad_test_images='error',  # error | prior: an undecodable test image stops submit, or gets the prior
      mean=(0.5,),             # seed CNNs only: a pretrained model uses its family's (see fpclass.preprocessing)
      std=(0.5,),
      device_resize=(),        # (height, width): resize on the device after augmentation (e.g. CIFAR's 32 -> 224)
      val_fraction=0.2,        # stratified, seeded holdout when the source has no validation split
      split_seed=0,            # fixed apart from `seed`, so runs with other seeds share one split
      num_folds=5,             # k for stratified k-fold indices (fpclass.data.splits)
      fold=-1,                 # >= 0: validate on that fold instead of the holdout
      cache_dir='',            # '' -> $FPCLASS_CACHE or ~/.cache/fpclass
      decode_workers=0,        # 0 -> 2 x CPU count threads
      # Bytes the decoded train + val arrays may take on each device; 0 -> half its free memory (host RAM
      # on CPU). Above it, batches stream from the memory-mapped decode cache in the same order.
      device_memory_budget=0,
      synthetic=ml_collections.ConfigDict(dict(
          seed=0, n_class0=845, n_class1=728, n_test=1055)),
      # data.source=tfds: a named TFDS dataset prepared as ArrayRecord, read with tfds.data_source (no
      # TensorFlow at run time). Splits take TFDS slicing ('train[:80%]'); '' means none (val: a holdout
      # of val_fraction from the train split). `launch.py --mode prepare` downloads and prepares it.
      tfds=ml_collections.ConfigDict(dict(
          name='',               # e.g. cifar10, horses_or_humans, cats_vs_dogs (optionally name:version)
          data_dir='',           # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
          train_split='train',
          val_split='',
          test_split='',         # a labelled test split is scored in scores.json
          image_key='image',
          label_key='label',
      )),
  )

  c.augment = section(AugmentSettings)

  # The remaining model.* keys are the module's own fields (see fpclass.models), set by each task config.
  # Pretrained models also read `pretrained` ('' | 'imagenet' | a weights file the source framework wrote)
  # and `keep_pretrained_head` (keep the file's classifier; otherwise its last layer is trained anew).
  c.model = ml_collections.ConfigDict(dict(name='footprint_cnn', head='softmax'))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      epochs=50,
      optimizer='adam',        # adam | adamw | rmsprop | sgd
      learning_rate=1e-3,
      schedule='constant',     # constant | cosine | exponential | step
      warmup_epochs=0,
      decay_rate=0.1,          # exponential: factor per decay_epochs; step: factor at each boundary
      decay_epochs=10,
      momentum=0.9,            # sgd momentum
      nesterov=False,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      rmsprop_decay=0.9,
      weight_decay=0.0,        # decoupled (adamw) or added to the gradient (others)
      l2=0.0,                  # Keras-style kernel_regularizer: l2 * sum(w**2) added to the loss
      l2_params='.*kernel',    # regex on '/'-joined parameter paths that l2 applies to
      label_smoothing=0.0,
      class_weights='',        # '' | auto | 'name:weight,name:weight'
      # uniform: a permutation per epoch | balanced: every class fills an equal share of each epoch's
      # batches (minority examples repeat, majority ones are subsampled); same epoch length either way.
      sampler='uniform',
      grad_clip_norm=0.0,
      backbone_lr_factor=1.0,  # pretrained models: learning-rate multiplier for unfrozen backbone stages
      finetune_epochs=0,       # > 0: a second phase after `epochs` (or early stopping) with ...
      finetune_freeze_till=0,  # ... model.freeze_till set to this (0 = everything trainable) ...
      finetune_lr_factor=0.1,  # ... and the learning rate multiplied by this
      select_checkpoint='best',  # best | last: which checkpoint evaluate/submit restore
      monitor='val_loss',      # val_loss | val_accuracy | val_macro_f1 | val_roc_auc
      early_stopping_patience=0,  # 0 -> off; otherwise epochs without improvement before stopping
      min_delta=0.0,
      log_every_steps=10,
      tensorboard=True,        # also write per-epoch scalars as TensorBoard event files (tensorboard/)
      # fp32 | bf16: bf16 computes in bfloat16 with float32 params, optimizer state, BN statistics and loss,
      # on GPU/TPU; on CPU bf16 trains in fp32 with a warning (fpclass/precision.py).
      precision='fp32',
      # auto | step | scan: one jitted call per step, or one lax.scan over the whole epoch. auto picks step
      # on CPU (XLA:CPU runs the scanned loop slower) and scan on GPU/TPU (docs/performance.md).
      loop='auto',
      # The share of a GPU a training process takes up front (XLA_PYTHON_CLIENT_MEM_FRACTION; JAX's default is
      # 0.75). The modes that only read a model allocate as they go, so servers and evaluations fit beside a
      # training run. Unused on CPU (fpclass/runtime.py).
      gpu_memory_fraction=0.75,
      # auto | on | off: compute a frozen backbone's output once and train the head on it. auto uses it when
      # every trainable parameter follows the frozen prefix and nothing random (augmentation) comes before
      # it; on makes that an error when it does not hold. Two-phase recipes use it in phase 1 only.
      feature_cache='auto',
  ))

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256,
      score_train=False,       # also score the (un-augmented) training split in scores.json
  ))

  # --mode clean: corrupt files, exact and pHash near duplicates, format and mode statistics.
  c.clean = ml_collections.ConfigDict(dict(
      phash_threshold=8,       # near duplicates: Hamming distance between 64-bit pHashes at most this
  ))

  c.explain = section(ExplainSettings)

  c.submit = ml_collections.ConfigDict(dict(
      filename='submission.csv',
      probabilities_filename='submission_probabilities.csv',
      average_folds=False,     # --workdir is a sweep experiment folder: average its fold models' probabilities
      tta_hflip=False,         # also predict each test image mirrored and average the two
      calibrated=True,         # apply the temperature and threshold stored by --mode calibrate/sweep, if any
  ))

  c.predict = section(PredictSettings)
  c.serve = section(ServeSettings)
  c.export = section(ExportSettings)

  # --mode sweep: every variant x split x seed, trained together along a model axis (fpclass.train.engine, fpclass.train.axis),
  # summarised with confidence intervals (fpclass.modes.sweep), and calibrated (fpclass.calibration).
  c.sweep = ml_collections.ConfigDict(dict(
      # Named config changes, one string each: 'name: key=value; key=value' (values are Python literals;
      # see `parse_variant`). Empty -> one variant, 'base', the config as given (repeated seeds of any config).
      variants=(),
      baseline='',             # the variant paired differences are taken against; '' -> the first
      folds=(),                # () -> all data.num_folds folds (or the source's own val split); (-1,) -> holdout
      seeds=(0, 1, 2),
      model_axis='auto',       # auto (loop on CPU, vmap elsewhere) | vmap | loop; see fpclass.train.axis
      models_per_chunk=0,      # models resident at once; 0 -> from the memory rule and memory_fraction
      memory_fraction=0.5,     # share of free device (or host) memory the chunk may use
      ece_bins=15,             # equal-width confidence bins for expected calibration error
      threshold_metric='macro_f1',  # macro_f1 | f1 (positive class): what the binary threshold maximises
  ))
  c.probe = section(ProbeSettings)
  return c


# ------------------------------------------------------------------------------------- sweep variant strings

VARIANT_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


def parse_variant(spec: str) -> tuple[str, dict]:
  """'exp4: model.dropout=0.5; train.early_stopping_patience=7' -> ('exp4', {...}); values are Python
  literals, anything else is taken as a string."""
  name, sep, body = spec.partition(':')
  name = name.strip()
  if not sep or not VARIANT_NAME.match(name):
    raise ConfigError(f'config.sweep.variants: {spec!r} is not "name: key=value; key=value" with a name of '
                      'letters, digits, ".", "_" or "-"')
  changes = {}
  for item in filter(None, (part.strip() for part in body.split(';'))):
    key, eq, text = item.partition('=')
    if not eq or not key.strip():
      raise ConfigError(f'config.sweep.variants: {item!r} in variant {name!r} is not key=value')
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = text.strip()
    changes[key.strip()] = value
  return name, changes


def variant_spec(name: str, changes: dict) -> str:
  """The inverse of parse_variant, for config files that build `sweep.variants` from a table."""
  return f'{name}: ' + '; '.join(f'{k}={v!r}' for k, v in changes.items())


def config_changes(base: ml_collections.ConfigDict, other: ml_collections.ConfigDict,
                   skip=('name', 'sweep.')) -> dict:
  """{dotted key: other's value} where `other` differs from `base`: a whole recipe (another model with its
  own training schedule) as one sweep variant of `base` (`variant_spec`). Keys under `skip` are left out.
  Another model starts from the schema's model section, as a variant that changes model.name does
  (`fpclass.modes.sweep.apply_changes`), so only what its recipe sets is listed."""
  def flat(node, prefix=''):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from flat(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}', value
  reference = dict(flat(base))
  if other.model.name != base.model.name:
    reference = {k: v for k, v in reference.items() if not k.startswith('model.')}
    reference.update(flat(base_config().model, 'model.'))
  return {k: v for k, v in flat(other) if reference.get(k) != v and not k.startswith(tuple(skip))}


# --------------------------------------------------------------------------------------- config-file arguments

def parse_args(config_file: str, arg: str, choices: dict, default: str = '') -> list:
  """The comma-separated arguments of `configs/<file>.py:<arg>` (or `default` when none is given), each
  checked against `choices` (name -> what it does). The one parser every file in configs/ uses. Raises
  ValueError, which launch.py reports on one line."""
  args = [a.strip() for a in (arg or default or '').split(',') if a.strip()]
  for a in args:
    if a not in choices:
      listed = '; '.join(f'{k}: {v}' for k, v in choices.items())
      raise ValueError(f'{config_file}: unknown argument {a!r}; arguments (comma-separated): {listed}')
  return args


def shrink_for_quick(c: ml_collections.ConfigDict) -> None:
  """What every config's `quick` argument shares: 2 epochs, and explanation figures that draw in a
  fraction of the time (4 CAM images, a 6-image inference grid, 4 channels per feature map: VGG16's full
  feature-map figure is 19,000 pixels tall). Each file shrinks its data and sizes on top of this."""
  c.train.epochs = 2
  c.explain.update(num_images=4, inference_grid=6, max_channels=4)
