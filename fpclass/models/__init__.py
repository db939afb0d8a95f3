"""The model registry: every architecture by name, with what the rest of the flow needs to know of it.

Each model is a Flax linen module whose `__call__(x, train=False)` takes a normalised float batch
(N, H, W, C) and returns `(logits, features)`, `features` being a dict of named stages that Grad-CAM and
feature-map plots read. Config fields under `config.model` (besides `name` and `head`) are the module's
own dataclass fields, so a mistyped field is an error that lists the valid ones.

Design notes: docs/modules.md (`fpclass/models/__init__.py`).
"""
import dataclasses
import difflib
import importlib
import pkgutil
import re
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from fpclass.config.model import ModelSettings
from fpclass.errors import UserInputError

# config.model keys that configure loading rather than the module itself.
LOADING_KEYS = ('name', 'head', 'pretrained', 'keep_pretrained_head')


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  module: Callable[..., nn.Module]   # a linen Module class (or a partial of one)
  family: str                        # cnn | torchvision | keras | dinov2 | timm
  cam_layer: str                     # the default Grad-CAM feature: the last conv stage
  description: str = ''
  # Pretrained families only:
  preprocessing: Any = None          # fpclass.models.preprocessing.Normalisation the weights expect; None -> config
  stages: tuple = ()                 # ((stage name, regex on '/'-joined param paths), ...) in network order
  weights: dict = dataclasses.field(default_factory=dict)   # {'imagenet': weights.WeightsFile}
  convert: Callable | None = None    # file path -> ({(collection, *path): array}, unmatched names)
  # Regexes on '/'-joined variable paths ('params/fc/kernel'):
  source_head: str = ''              # the source classifier's last layer (replaced for a new class count)
  source_top: str = ''               # the source's whole classifier (unused when the model has a new top)
  stem: str = ''                     # 'first conv module|variable its offset goes to', for grayscale folding
  stem_norm: str = ''                # an in-model per-channel normalisation before the stem (a module with
                                     # batch_stats mean/variance, EfficientNet's): the constants folded instead
  input_size: tuple = ()             # (height, width) its weights were trained at, where known (listing only)

  @property
  def pretrained(self) -> bool:
    return self.convert is not None

  @property
  def stage_names(self) -> tuple:
    return tuple(name for name, _ in self.stages)


REGISTRY: dict[str, ModelSpec] = {}
PERTURBATION_PREFIX = 'feature_'
INTERMEDIATES = 'intermediates'
RELU_FIELD = 'relu'
NOT_CONFIG_FIELDS = ('parent', 'name', 'num_outputs', RELU_FIELD)


def feature(module: nn.Module, features: dict, name: str, x):
  """Records feature map `name` in `features` and returns it.

  The map passes through `module.perturb('feature_<name>', x)`: a no-op unless a 'perturbations'
  collection is given to `apply`, in which case `jax.grad` with respect to that entry is the gradient
  at this feature map (what Grad-CAM needs) without splitting the model. It is also sown into the
  'intermediates' collection under the same name, so `apply(..., mutable='intermediates')` returns it
  at its module path however deeply the module is nested. Both are no-ops in training. Every registered
  model records its named stages this way.
  """
  x = module.perturb(PERTURBATION_PREFIX + name, x)
  module.sow(INTERMEDIATES, PERTURBATION_PREFIX + name, x, init_fn=lambda: None, reduce_fn=lambda _, new: new)
  features[name] = x
  return x


def register(spec: ModelSpec) -> ModelSpec:
  if spec.name in REGISTRY:
    raise ValueError(f'model {spec.name!r} is registered twice')
  REGISTRY[spec.name] = spec
  return spec


def get_spec(name: str) -> ModelSpec:
  _import_families()
  if name not in REGISTRY:
    close = difflib.get_close_matches(name, REGISTRY, n=4, cutoff=0.75)
    timm = sorted({re.sub(r'.*\((.*)\).*', r'\1', s.description) for s in REGISTRY.values() if s.family == 'timm'})
    raise UserInputError(f'config.model.name={name!r}: unknown model' + (f' (close: {", ".join(close)})' if close else '')
                         + f'; timm checkpoints load for the families {", ".join(timm)}; --mode models lists all '
                         f'{len(REGISTRY)} names')
  return REGISTRY[name]


def num_outputs(model: ModelSettings, num_classes: int) -> int:
  """A softmax head has one logit per class; a sigmoid head one logit for a binary task."""
  head = model.head
  if head == 'softmax':
    return num_classes
  if head == 'sigmoid':
    if num_classes != 2:
      raise UserInputError(f'config.model.head=sigmoid needs exactly 2 classes, the data has {num_classes}')
    return 1
  raise UserInputError(f"config.model.head={head!r}: use 'softmax' or 'sigmoid'")


def frozen(stage_index: int, freeze_till: int) -> bool:
  """Whether stage `stage_index` (0-based, network order) is frozen under `freeze_till`."""
  return freeze_till < 0 or stage_index < freeze_till


def create_model(model: ModelSettings, num_classes: int, dtype=None) -> nn.Module:
  """Builds the configured module, checking each config field against the module's own fields.

  `dtype`, when given, is the compute dtype (see `fpclass.train.precision`), passed as the module's `dtype`
  field; parameters stay float32 either way. The package's door for a model: `model` is config.model typed, or
  its ConfigDict (`ml_collections.ConfigDict(dict(name='resnet18'))`), parsed here.
  """
  model = ModelSettings.from_config(model)
  spec = get_spec(model.name)
  kwargs = {k: v for k, v in model.items() if k not in LOADING_KEYS}
  module_fields = {f.name for f in dataclasses.fields(module_class(spec.module))} - set(NOT_CONFIG_FIELDS)
  unknown = sorted(set(kwargs) - module_fields)
  if unknown:
    raise UserInputError(f'config.model.{unknown[0]} is not a field of model {spec.name!r}; its fields are '
                         f'{sorted(module_fields)}')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if dtype is not None and dtype != jnp.float32:
    if 'dtype' not in module_fields:
      raise UserInputError(f'config.train.precision: model {spec.name!r} has no dtype field, so it can only '
                           'train in fp32')
    if 'dtype' in kwargs:
      raise UserInputError('config.model.dtype and config.train.precision both set the compute dtype; '
                           'use config.train.precision')
    kwargs['dtype'] = dtype
  return spec.module(num_outputs=num_outputs(model, num_classes), **kwargs)


def module_class(module):
  return getattr(module, 'func', module)


def _import_families():
  """Registration happens on import. Every module of `fpclass.models.architectures` registers its family, so a
  new family is a new file there and nothing else."""
  package = importlib.import_module(f'{__name__}.architectures')
  for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f'{package.__name__}.{info.name}')
