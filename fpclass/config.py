"""The config schema every task config starts from.

Every key a run can read is declared here, so `config_flags` (which locks the config) turns a mistyped
`--config.a.b=value` into an error. Task files under `configs/` change values, never add keys, except
under `model`, whose fields belong to the chosen architecture (see `fpclass.models.create_model`).
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'run'
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
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
      # Decoded size as (height, width); the seed-000 default is 80 wide by 120 high.
      image_size=(120, 80),
      channels=1,              # 1 -> Pillow mode L, 3 -> RGB
      resize='stretch',        # stretch | crop (centre crop to aspect) | pad (letterbox)
      alpha_background=255,    # RGBA/LA/P-with-transparency is composited onto this grey level
      max_image_pixels=89_478_485,  # Pillow's bomb limit; larger files are quarantined, not decoded
      bad_test_images='error',  # error | prior: an undecodable test image stops submit, or gets the prior
      mean=(0.5,),             # seed CNNs only: a pretrained model uses its family's (see fpclass.preprocessing)
      std=(0.5,),
      device_resize=(),        # (height, width): resize on the device after augmentation (seed 001's 32 -> 224)
      val_fraction=0.2,        # stratified, seeded holdout when the source has no validation split
      split_seed=0,            # fixed apart from `seed`, so runs with other seeds share one split
      num_folds=5,             # k for stratified k-fold indices (fpclass.data.splits)
      fold=-1,                 # >= 0: validate on that fold instead of the holdout
      cache_dir='',            # '' -> $FPCLASS_CACHE or ~/.cache/fpclass
      decode_workers=0,        # 0 -> 2 x CPU count threads
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
  ))

  # Every augmentation is off at its default. Geometry follows Keras' preprocessing layers where a seed
  # used them (factors are fractions), rotation is in degrees, colour and erasing follow torchvision.
  c.augment = ml_collections.ConfigDict(dict(
      hflip=0.0,               # probability
      vflip=0.0,               # probability
      rotation=0.0,            # max |angle| in degrees
      zoom=0.0,                # scale drawn from [1 - zoom, 1 + zoom], same for both axes
      height=0.0,              # extra vertical scale drawn from [1 - height, 1 + height]
      width=0.0,               # extra horizontal scale drawn from [1 - width, 1 + width]
      translate=0.0,           # max shift as a fraction of height/width
      fill_mode='constant',    # constant | nearest | reflect | wrap (pixels mapped from outside)
      fill_value=0.0,          # in [0, 1] image units, for fill_mode=constant
      brightness=0.0,          # factor drawn from [1 - b, 1 + b]
      contrast=0.0,            # factor drawn from [1 - c, 1 + c], blended around the image mean
      erasing=0.0,             # probability of one random-erasing rectangle
      erasing_scale=(0.02, 0.33),
      erasing_ratio=(0.3, 3.3),
      erasing_value=0.5,       # in [0, 1] image units; 0.5 is 0 after the default (0.5, 0.5) normalisation
  ))

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
  ))

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256,
      score_train=False,       # also score the (un-augmented) training split in scores.json
  ))

  # --mode clean: corrupt files, exact and pHash near duplicates, format and mode statistics.
  c.clean = ml_collections.ConfigDict(dict(
      phash_threshold=8,       # near duplicates: Hamming distance between 64-bit pHashes at most this
  ))

  # --mode explain (and train, when after_training): Grad-CAM and error analysis of the validation split.
  c.explain = ml_collections.ConfigDict(dict(
      after_training=False,    # train mode runs explain after evaluation (on in configs/footprint.py)
      method='gradcam',        # gradcam | gradcam++ | hirescam (fpclass.cam.METHODS)
      layer='',                # a feature map the model records; '' -> the model's registered cam_layer
      target='predicted',      # predicted | label: the class each map explains
      num_images=10,           # highest-loss validation images per overlay grid and in the top-losses table
      guided=True,             # add a Guided Grad-CAM row (needs a model with a `relu` field)
      inference_grid=16,       # validation images in the right/wrong inference grid; 0 -> none
      feature_image=0,         # validation index of the image whose feature maps are drawn; -1 -> none
      max_channels=64,         # channels drawn per feature map (the first ones)
      alpha=0.5,               # heat-map opacity in the overlays
      batch_size=32,           # images per Grad-CAM call
  ))

  c.submit = ml_collections.ConfigDict(dict(
      filename='submission.csv',
      probabilities_filename='submission_probabilities.csv',
      average_folds=False,     # --workdir is a sweep experiment folder: average its fold models' probabilities
      tta_hflip=False,         # also predict each test image mirrored and average the two
      calibrated=True,         # apply the temperature and threshold stored by --mode calibrate/sweep, if any
  ))

  # --mode sweep: every variant x split x seed, trained together along a model axis (fpclass.model_axis),
  # summarised with confidence intervals (fpclass.sweep), and calibrated (fpclass.calibration).
  c.sweep = ml_collections.ConfigDict(dict(
      # Named config changes, one string each: 'name: key=value; key=value' (values are Python literals).
      # Empty -> one variant, 'base', the config as given (repeated seeds of any config).
      variants=(),
      baseline='',             # the variant paired differences are taken against; '' -> the first
      folds=(),                # () -> all data.num_folds folds (or the source's own val split); (-1,) -> holdout
      seeds=(0, 1, 2),
      model_axis='auto',       # auto (loop on CPU, vmap elsewhere) | vmap | loop; see fpclass.model_axis
      models_per_chunk=0,      # models resident at once; 0 -> from the memory rule and memory_fraction
      memory_fraction=0.5,     # share of free device (or host) memory the chunk may use
      ece_bins=15,             # equal-width confidence bins for expected calibration error
      threshold_metric='macro_f1',  # macro_f1 | f1 (positive class): what the binary threshold maximises
  ))
  return c


def validate(config) -> None:
  """Checks every enumerated or ranged value before any work starts, so a typo in an override fails in
  a second instead of after decoding the data. Each check is the one the consuming module applies."""
  from fpclass import augment, data, explain, models, optim, precision, sampling, steps, task, train
  from fpclass.data.decode import DecodeSettings
  from fpclass.errors import UserInputError
  if config.data.source not in data.SOURCES:
    raise UserInputError(f'config.data.source={config.data.source!r}: unknown source; choose one of '
                         f'{sorted(data.SOURCES)}')
  DecodeSettings.from_config(config.data)
  augment.AugmentConfig.from_config(config.augment)
  explain.ExplainSettings.from_config(config.explain)
  models.create_model(config.model, 2 if config.model.get('head') == 'sigmoid' else 3)
  optim.make_optimizer(config.train, steps_per_epoch=1, groups=optim.param_groups(config.model))
  precision.check_precision(config.train.precision)
  steps.check_loop(config.train.loop)
  task.model_input(config)
  if int(config.train.finetune_epochs) > 0 and not models.get_spec(config.model.name).stages:
    raise UserInputError(f'config.train.finetune_epochs={config.train.finetune_epochs}: fine-tuning phases need '
                         f'a pretrained model with stages; {config.model.name!r} has none')
  if config.train.monitor not in train.MONITOR_MODES:
    raise UserInputError(f'config.train.monitor={config.train.monitor!r}: choose one of '
                         f'{sorted(train.MONITOR_MODES)}')
  if config.train.select_checkpoint not in ('best', 'last'):
    raise UserInputError(f'config.train.select_checkpoint={config.train.select_checkpoint!r}: use best or last')
  if int(config.train.batch_size) < 1 or int(config.train.epochs) < 1:
    raise UserInputError('config.train.batch_size and config.train.epochs must be at least 1')
  if config.train.sampler not in sampling.SAMPLERS:
    raise UserInputError(f'config.train.sampler={config.train.sampler!r}: choose one of {sampling.SAMPLERS}')
  if not 0 <= int(config.clean.phash_threshold) <= 64:
    raise UserInputError(f'config.clean.phash_threshold={config.clean.phash_threshold}: a Hamming distance '
                         'between 64-bit hashes, in [0, 64]')
  if config.data.bad_test_images not in ('error', 'prior'):
    raise UserInputError(f'config.data.bad_test_images={config.data.bad_test_images!r}: use error or prior')


def parse_args(config_file: str, arg: str, choices: dict) -> list:
  """The comma-separated arguments of `configs/<file>.py:<arg>`, each checked against `choices` (name ->
  what it does). Raises ValueError, which launch.py reports on one line."""
  args = [a.strip() for a in (arg or '').split(',') if a.strip()]
  for a in args:
    if a not in choices:
      listed = '; '.join(f'{k}: {v}' for k, v in choices.items())
      raise ValueError(f'{config_file}: unknown argument {a!r}; arguments (comma-separated): {listed}')
  return args
