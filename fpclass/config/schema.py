"""The whole schema: every key a run can read, with its default, and what configs/ files share.

Every key is declared here, so `config_flags` (which locks the config) turns a mistyped `--config.a.b=value`
into an error. Task files under `configs/` change values, never add keys, except under `model`, whose fields
belong to the chosen architecture (see `fpclass.models.create_model`).
"""
import ml_collections

from fpclass.config.inputs import (
  AugmentSettings,
  CurationSettings,
  DataSettings,
  DecodeSettings,
  InputSettings,
  LabelSettings,
  SourceSettings,
  SplitSettings,
  StorageSettings,
  UnlabelledSettings,
)
from fpclass.config.outputs import (
  CleanSettings,
  DistillSettings,
  ExplainSettings,
  ExportSettings,
  LabelIssuesSettings,
  LabelNextSettings,
  LrFindSettings,
  ModelsSettings,
  OodSettings,
  PredictSettings,
  ProbeSettings,
  ServeSettings,
  SubmitSettings,
)
from fpclass.config.search import AutoSettings, EnsembleSettings
from fpclass.config.settings import section
from fpclass.config.tracking import TrackSettings
from fpclass.config.training import EvalSettings, SemiSettings, SweepSettings, TrainSettings


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'run'
  c.seed = 0

  # Its keys and their meaning: the parts of DataSettings (fpclass/config/inputs.py).
  c.data = section(DataSettings)

  c.augment = section(AugmentSettings)

  # The remaining model.* keys are the module's own fields (see fpclass.models), set by each task config.
  # Pretrained models also read `pretrained` ('' | 'imagenet' | a weights file the source framework wrote)
  # and `keep_pretrained_head` (keep the file's classifier; otherwise its last layer is trained anew).
  c.model = ml_collections.ConfigDict(dict(name='footprint_cnn', head='softmax'))

  c.train = section(TrainSettings)
  c.semi = section(SemiSettings)
  c.eval = section(EvalSettings)
  c.clean = section(CleanSettings)

  c.explain = section(ExplainSettings)

  c.submit = section(SubmitSettings)
  c.predict = section(PredictSettings)
  c.serve = section(ServeSettings)
  c.export = section(ExportSettings)
  c.ood = section(OodSettings)
  c.distill = section(DistillSettings)

  c.sweep = section(SweepSettings)
  c.probe = section(ProbeSettings)
  c.lr_find = section(LrFindSettings)
  c.models = section(ModelsSettings)
  c.auto = section(AutoSettings)
  c.ensemble = section(EnsembleSettings)
  c.label_issues = section(LabelIssuesSettings)
  c.label_next = section(LabelNextSettings)
  c.track = section(TrackSettings)
  return c


# Every typed section, in schema order; `fpclass.train.validation` checks each once per launch.
SETTINGS = (DecodeSettings, LabelSettings, SourceSettings, SplitSettings, StorageSettings, InputSettings,
            CurationSettings, UnlabelledSettings, AugmentSettings, SemiSettings, TrainSettings, EvalSettings, CleanSettings, ExplainSettings,
            SubmitSettings, PredictSettings, ServeSettings, ExportSettings, OodSettings, DistillSettings,
            SweepSettings, ProbeSettings, LrFindSettings, AutoSettings, LabelIssuesSettings, EnsembleSettings,
            TrackSettings, ModelsSettings, LabelNextSettings)


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
