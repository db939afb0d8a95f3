"""The sections of the modes that read a trained run: explain, predict, serve, export, probe, the
out-of-distribution score they share (ood), distill, which trains a student from a trained teacher, and
label_next, which ranks unlabelled images for labelling."""
import dataclasses
import math
from typing import ClassVar

from fpclass.config.settings import Settings

CAM_METHODS = ('gradcam', 'gradcam++', 'hirescam')   # fpclass.explain.cam.METHODS gives each its display name
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
  # Test-time augmentation as fastai's Learner.tta (fpclass.infer.tta): this many
  # passes with the run's own config.augment, blended with the plain pass on probabilities (0: off).
  tta: int = 0
  tta_beta: float = 0.25           # the plain pass's weight in the blend (fastai's beta)
  tta_use_max: bool = False        # fastai's use_max: the elementwise maximum of every pass instead of the blend

  def check(self):
    self.require('batch_size', self.batch_size >= 0, '>= 0 (0: config.eval.batch_size)')
    self.require('output', bool(self.output) and '/' not in self.output, 'a file name inside --workdir')
    self.require('tta', self.tta >= 0, 'the number of augmented passes, a whole number >= 0 (0: off)')
    self.require('tta_beta', 0.0 <= self.tta_beta <= 1.0, "the plain pass's weight, in [0, 1]")


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
  # Also model.int8.onnx: onnxruntime's static int8 quantisation, calibrated on training images, kept only when its
  # accuracy on held-out images is within int8_max_drop of the float model's (model.int8.json says by how much).
  int8: bool = False
  int8_max_drop: float = 0.01      # the largest accuracy drop accepted, as a fraction (0.01: one point)
  int8_calibration_images: int = 256   # training images, a fixed random subset, that calibrate the ranges

  def check(self):
    self.require('formats', bool(self.formats) and set(self.formats) <= set(EXPORT_FORMATS),
                 f'a non-empty tuple of {EXPORT_FORMATS}')
    self.require('batch_size', self.batch_size >= 0, '>= 0')
    self.require('folder', bool(self.folder), 'a folder name inside --workdir')
    self.require('int8', not self.int8 or 'onnx' in self.formats,
                 "False unless config.export.formats holds 'onnx' (the int8 model is quantised from it)")
    self.require('int8_max_drop', 0.0 <= self.int8_max_drop <= 1.0, 'a fraction in [0, 1], e.g. 0.01')
    self.require('int8_calibration_images', self.int8_calibration_images >= 1, 'at least 1')


OOD_SCORES = ('combined', 'mahalanobis_energy', 'mahalanobis', 'relative_mahalanobis', 'class_mahalanobis', 'knn',
              'vim', 'react', 'energy', 'max_softmax', 'inputs')   # fpclass.deploy.ood_scores.SCORES


@dataclasses.dataclass(frozen=True)
class OodSettings(Settings):
  """`config.ood`: the out-of-distribution score predict, serve and export give every image, and the `unknown`
  flag past its threshold (fpclass.deploy.ood; the choice of score measured in docs/deploy.md)."""
  SECTION: ClassVar[str] = 'ood'
  enabled: bool = True             # predict, serve and export add ood_score and unknown
  score: str = 'combined'         # one of OOD_SCORES (chosen by the worst case over foreign sets: docs/deploy.md)
  # The share of held-out in-distribution images (the validation split) flagged unknown: the threshold's target.
  false_rejection: float = 0.05
  knn_k: int = 10                  # knn: the neighbour whose similarity is the score
  max_bank: int = 4096             # knn: training images kept (a fixed random subset beyond it)

  def check(self):
    self.require('score', self.score in OOD_SCORES, f'one of {OOD_SCORES}')
    self.require('false_rejection', 0.0 < self.false_rejection < 1.0, 'a rate in (0, 1), e.g. 0.05')
    self.require('knn_k', self.knn_k >= 1, 'at least 1')
    self.require('max_bank', self.max_bank >= 1, 'at least 1')


@dataclasses.dataclass(frozen=True)
class DistillSettings(Settings):
  """`config.distill`: --mode distill trains config.model, the student, on a teacher's probabilities of the very
  augmented view it sees, and compares it with the teacher and with itself trained on the labels alone."""
  SECTION: ClassVar[str] = 'distill'
  teacher: str = ''                # an ensemble workdir, a sweep (its root or one variant), an auto run, or a run
  unlabelled: str = ''             # '' none; 'test': the source's test images; else a folder, glob or CSV of images
  cross_fit: bool = False          # each training image taught by the teacher's models that held it out
  temperature: float = 1.0         # Hinton's T: teacher and student logits divided by it, the loss scaled by T^2
  label_weight: float = 0.0        # Hinton's alpha: the share of each labelled image's target its label keeps
  compare: bool = True             # also train the student alone, and score all three on folds neither saw
  folds: tuple[int, ...] = ()      # the comparison's folds: () every fold the teacher's models held out
  seeds: tuple[int, ...] = (0,)    # the comparison's seeds: folds x seeds runs of the student, and alone

  def check(self):
    self.require('seeds', bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
                 'distinct integers, at least one')
    self.require('temperature', self.temperature > 0, 'a number above 0 (1: the probabilities as they are)')
    self.require('label_weight', 0.0 <= self.label_weight < 1.0, 'in [0, 1): 0, the teacher alone')
    self.require('label_weight', self.label_weight == 0.0 or self.temperature == 1.0,
                 '0 with config.distill.temperature != 1 (a softened teacher would soften the labels too)')
    self.require('folds', len(set(self.folds)) == len(self.folds) and all(f >= -1 for f in self.folds),
                 'distinct folds (-1: the holdout)')


PROBE_POOLINGS = ('avg', 'max', 'source')
PROBE_SOLVERS = ('jax', 'sklearn')
PROBE_RANKS = ('accuracy', 'macro_f1', 'log_loss')


@dataclasses.dataclass(frozen=True)
class ProbeSettings(Settings):
  """`config.probe`: --mode probe screens backbones by linear probes on their frozen, pooled features
  (fpclass.probe.pooled_features, fpclass.probe.linear_probe), over data.num_folds folds x seeds."""
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


@dataclasses.dataclass(frozen=True)
class SubmitSettings(Settings):
  """`config.submit`: --mode submit writes the sample submission's rows with the restored model's labels."""
  SECTION: ClassVar[str] = 'submit'
  filename: str = 'submission.csv'
  probabilities_filename: str = 'submission_probabilities.csv'
  average_folds: bool = False      # --workdir is a sweep experiment folder: average its fold models' probabilities
  tta_hflip: bool = False          # also predict each test image mirrored and average the two
  calibrated: bool = True          # apply the temperature and threshold stored by --mode calibrate/sweep, if any
  # Test-time augmentation as fastai's Learner.tta (fpclass.infer.tta): passes with config.augment, blended with
  # the plain pass (0: off). With tta_hflip, the image and its mirror each get the blend, then are averaged.
  tta: int = 0
  tta_beta: float = 0.25           # the plain pass's weight in the blend (fastai's beta)
  tta_use_max: bool = False        # fastai's use_max: the elementwise maximum of every pass instead of the blend

  def check(self):
    for name in ('filename', 'probabilities_filename'):
      self.require(name, bool(getattr(self, name)) and '/' not in getattr(self, name), 'a file name inside --workdir')
    self.require('tta', self.tta >= 0, 'the number of augmented passes, a whole number >= 0 (0: off)')
    self.require('tta_beta', 0.0 <= self.tta_beta <= 1.0, "the plain pass's weight, in [0, 1]")


@dataclasses.dataclass(frozen=True)
class CleanSettings(Settings):
  """`config.clean`: --mode clean finds corrupt files, exact and pHash near duplicates, and format statistics."""
  SECTION: ClassVar[str] = 'clean'
  phash_threshold: int = 8         # near duplicates: Hamming distance between 64-bit pHashes at most this

  def check(self):
    self.require('phash_threshold', 0 <= self.phash_threshold <= 64, 'in [0, 64] bits')


LR_FIND_SUGGESTIONS = ('valley', 'minimum', 'steep')


@dataclasses.dataclass(frozen=True)
class LrFindSettings(Settings):
  """`config.lr_find`: --mode lr_find, fastai's Learner.lr_find (an exponential learning-rate sweep from the
  run's initial state, through its own train step; fpclass.train.lr_finder)."""
  SECTION: ClassVar[str] = 'lr_find'
  start_lr: float = 1e-7           # the first step's learning rate
  end_lr: float = 10.0             # the rate step num_it would take: step i takes start * (end / start) ** (i / num_it)
  num_it: int = 100                # steps at most (fastai's floor is 6)
  beta: float = 0.98               # the loss's exponential moving average, debiased
  stop_div: bool = True            # stop once the smoothed loss exceeds 4x its minimum so far
  suggestion: str = 'valley'       # valley | minimum | steep: the suggestion printed first

  def check(self):
    self.require('start_lr', 0.0 < self.start_lr < math.inf, '> 0')
    self.require('end_lr', self.start_lr < self.end_lr < math.inf, f'> config.lr_find.start_lr={self.start_lr}')
    self.require('num_it', self.num_it >= 6, "at least 6 (fastai's floor)")
    self.require('beta', 0.0 <= self.beta < 1.0, 'in [0, 1)')
    self.require('suggestion', self.suggestion in LR_FIND_SUGGESTIONS, f'one of {LR_FIND_SUGGESTIONS}')


LABEL_ISSUE_FILTERS = ('prune_by_noise_rate', 'prune_by_class', 'both', 'confident_learning', 'predicted_neq_given')


@dataclasses.dataclass(frozen=True)
class LabelIssuesSettings(Settings):
  """`config.label_issues`: --mode label_issues flags the given labels that a workdir's out-of-fold predictions
  say are probably wrong (cleanlab's confident learning; fpclass.explain.label_issues)."""
  SECTION: ClassVar[str] = 'label_issues'
  filter_by: str = 'prune_by_noise_rate'   # cleanlab's find_label_issues method (its default)
  grid: int = 24                   # the least confident flagged examples drawn in label_issues.png; 0 -> none
  cam: int = 0                     # the least confident flagged examples explained with Grad-CAM (given and
                                   # suggested label, by a model that held each out) in label_issues_cam.png

  def check(self):
    self.require('filter_by', self.filter_by in LABEL_ISSUE_FILTERS, f'one of {LABEL_ISSUE_FILTERS}')
    self.require('grid', self.grid >= 0, '>= 0 (0: no grid)')
    self.require('cam', self.cam >= 0, '>= 0 (0: no Grad-CAM)')


LABEL_NEXT_STRATEGIES = ('margin', 'entropy', 'disagreement')   # fpclass.analysis.acquisition.STRATEGIES
LABEL_NEXT_DIVERSITY = ('kcenter', 'none')


@dataclasses.dataclass(frozen=True)
class LabelNextSettings(Settings):
  """`config.label_next`: --mode label_next ranks config.data.unlabelled's images by how much their labels would
  help the workdir's model (fpclass.analysis.acquisition), and writes them for a labelling tool."""
  SECTION: ClassVar[str] = 'label_next'
  count: int = 100                 # in-distribution images to list, best first (foreign ones are listed after)
  strategy: str = 'margin'         # margin | entropy | disagreement (of several models: a sweep's folds, an ensemble)
  diversity: str = 'kcenter'       # kcenter: k-center among the most uncertain; none: the most uncertain in order
  candidates: float = 3.0          # kcenter chooses among the count x candidates most uncertain images
  contact_sheet: int = 48          # the first images drawn in label_next.png; 0 -> none
  output: str = 'label_next.csv'   # written in --workdir, with <stem>_labels.csv and <stem>_label_studio.json
  batch_size: int = 0              # 0 -> config.eval.batch_size
  # Where Label Studio finds an image: this prefix + its path relative to the pool's folder (Label Studio's local
  # files; or e.g. 'http://localhost:8081/' for a folder served over HTTP).
  image_prefix: str = '/data/local-files/?d='

  def check(self):
    self.require('count', self.count >= 1, 'at least 1')
    self.require('strategy', self.strategy in LABEL_NEXT_STRATEGIES, f'one of {LABEL_NEXT_STRATEGIES}')
    self.require('diversity', self.diversity in LABEL_NEXT_DIVERSITY, f'one of {LABEL_NEXT_DIVERSITY}')
    self.require('candidates', 1.0 <= self.candidates < math.inf, 'a factor >= 1 (1: the count most uncertain)')
    self.require('contact_sheet', self.contact_sheet >= 0, '>= 0 (0: no contact sheet)')
    self.require('output', self.output.endswith('.csv') and '/' not in self.output,
                 'a .csv file name inside --workdir')
    self.require('batch_size', self.batch_size >= 0, '>= 0 (0: config.eval.batch_size)')


@dataclasses.dataclass(frozen=True)
class ModelsSettings(Settings):
  """`config.models`: --mode models lists the registered models (a timm checkpoint's architecture among them)
  with their family, parameters, default input size and whether their parity with the source is verified."""
  SECTION: ClassVar[str] = 'models'
  pattern: str = '*'               # fnmatch on the registered name or, for timm's, its timm name ('convnext*')
  family: str = ''                 # only this family (timm, torchvision, keras, dinov2, cnn); '' -> all
  parameters: bool = True          # count each listed model's parameters (traces every model: slower for many)
