"""The whole schema: every key a run can read, with its default, and what configs/ files share.

Every key is declared here, so `config_flags` (which locks the config) turns a mistyped `--config.a.b=value`
into an error. Task files under `configs/` change values, never add keys, except under `model`, whose fields
belong to the chosen architecture (see `fpclass.models.create_model`).
"""
import ml_collections

from fpclass.config.inputs import AugmentSettings, DecodeSettings, LabelSettings
from fpclass.config.outputs import (
  CleanSettings,
  ExplainSettings,
  ExportSettings,
  LrFindSettings,
  PredictSettings,
  ProbeSettings,
  ServeSettings,
  SubmitSettings,
)
from fpclass.config.search import AutoSettings
from fpclass.config.settings import section
from fpclass.config.training import EvalSettings, SweepSettings, TrainSettings


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'run'
  c.seed = 0

  c.data = section(
      DecodeSettings,
      # single_label | multilabel (with label_columns; see LabelSettings). Multi-label reads a Kaggle CSV
      # whose label_column holds space-separated tags (Planet's layout) or whose label_columns are 0/1.
      **LabelSettings.defaults(),
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
      mean=(0.5,),             # seed CNNs only: a pretrained model uses its family's (see fpclass.models.preprocessing)
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
      # The embedded SYNTHETIC sets: footprints (single-label), or with task=multilabel the shapes set
      # (fpclass.data.synthetic_multilabel: n_train/n_test images of `size` pixels).
      synthetic=ml_collections.ConfigDict(dict(
          seed=0, n_class0=845, n_class1=728, n_test=1055,
          shapes=ml_collections.ConfigDict(dict(n_train=2000, n_test=500, size=64)))),
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

  c.train = section(TrainSettings)
  c.eval = section(EvalSettings)
  c.clean = section(CleanSettings)

  c.explain = section(ExplainSettings)

  c.submit = section(SubmitSettings)
  c.predict = section(PredictSettings)
  c.serve = section(ServeSettings)
  c.export = section(ExportSettings)

  c.sweep = section(SweepSettings)
  c.probe = section(ProbeSettings)
  c.lr_find = section(LrFindSettings)
  c.auto = section(AutoSettings)
  return c


# Every typed section, in schema order; `fpclass.train.validation` checks each once per launch.
SETTINGS = (DecodeSettings, LabelSettings, AugmentSettings, TrainSettings, EvalSettings, CleanSettings, ExplainSettings,
            SubmitSettings, PredictSettings, ServeSettings, ExportSettings, SweepSettings, ProbeSettings,
            LrFindSettings, AutoSettings)


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
