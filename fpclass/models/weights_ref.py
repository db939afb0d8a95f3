"""The one place a `pretrained` value is interpreted (config.model.pretrained, or a config.probe.backbones entry's
weights): `resolve` turns it into a `WeightsRef` that every consumer reads, as timm resolves a model's weights
once into its `pretrained_cfg`. Its kinds, tried in this order:

- '' : none, the model starts from its seeded random init;
- a Hub checkpoint: 'hf-hub:<org>/<name>[@revision]' (downloaded through huggingface_hub) or a local folder in
  the Hub's layout (config.json and model.safetensors); its config.json decides the architecture and the
  preprocessing. `fpclass.models.hub.reference` reads this kind's syntax, for `resolve` and for
  `hub.implied_model` (the model a reference names, which `model_keys` needs before any model is chosen);
- registered weights: a name of the model's `ModelSpec.weights` (downloaded once to <cache>/weights, checksum
  verified);
- a file the source framework wrote: an existing path, or any value with a '/' or a weights suffix (reading it
  names a missing one).
Anything else, and a value for a model without pretrained weights, is one line naming the setting.
"""
import dataclasses
import enum
import pathlib
from typing import Any

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.errors import UserInputError
from fpclass.models import hub, preprocessing

MODEL_FLAG = hub.MODEL_FLAG
FILE_SUFFIXES = ('.pth', '.pt', '.h5', '.safetensors')


class Kind(enum.Enum):
  NONE = 'none'
  REGISTERED = 'registered weights'
  FILE = 'file'
  HUB_REPOSITORY = 'Hub repository'
  HUB_FOLDER = 'Hub-layout folder'


@dataclasses.dataclass(frozen=True)
class WeightsRef:
  """A resolved `pretrained` value: what it is, which file holds it, what it expects of the input, and what the
  probe's feature cache keys it by."""
  value: str                          # as configured
  kind: Kind
  model: str                          # the registered model the weights are for
  file: pathlib.Path | None           # the file to read (registered: its place in the cache, see `local_file`)
  normalisation: preprocessing.Normalisation | None   # what they expect; None: a seed CNN's config.data.mean/std
  input_size: tuple                   # (H, W) they were trained at: a Hub checkpoint's own, else the registry's
  identity: tuple                     # the weights as the probe cache tells them apart (see `cache_key`)
  source: Any = None    # registered: the spec's `weights.WeightsFile` (canonical URL and checksum)
  checkpoint: hub.Checkpoint | None = None        # a Hub checkpoint: its config.json and weights file

  def local_file(self) -> pathlib.Path:
    """The file to read now: registered weights are downloaded into the cache first (checksum verified)."""
    if self.file is None:
      raise ValueError(f'{self.kind.value} weights of {self.model} have no file here (resolved without a cache)')
    return self.source.fetch_to(self.file) if self.kind is Kind.REGISTERED else self.file

  def cache_key(self, seed: int) -> list:
    """The identity as a cache key: a random init is drawn from `seed`, so its key holds the seed."""
    return [*self.identity, seed] if self.kind is Kind.NONE else list(self.identity)


def resolve(pretrained, spec: models.ModelSpec, cache_root=None, *, flag: str = MODEL_FLAG) -> WeightsRef:
  """`pretrained` for model `spec`, resolved: a Hub checkpoint is downloaded (or found in the cache) now and must
  be of `spec`'s architecture; registered weights are located under `cache_root` (config.data.cache_dir's root,
  `fileio.cache_root`), downloaded when `local_file` is read. `flag` names the setting in errors."""
  value = str(pretrained or '')
  described = f'{flag}={value!r}'
  if not value:
    return WeightsRef(value, Kind.NONE, spec.name, None, spec.preprocessing, spec.input_size, ('random init',))
  if not spec.pretrained:
    raise UserInputError(f'{described}: model {spec.name!r} has no pretrained weights')
  location = hub.reference(value, described)
  if location is not None:
    return _hub_checkpoint(value, spec, location, flag)
  if value in spec.weights:
    source = spec.weights[value]
    file = None if cache_root is None else source.cached_path(cache_root)
    return WeightsRef(value, Kind.REGISTERED, spec.name, file, spec.preprocessing, spec.input_size,
                      ('named', value, source.url, source.checksum), source=source)
  path = pathlib.Path(value).expanduser()
  if path.exists() or '/' in value or value.endswith(FILE_SUFFIXES):
    return WeightsRef(value, Kind.FILE, spec.name, path, spec.preprocessing, spec.input_size, _file_identity(path))
  raise UserInputError(f'{described}: neither a file nor one of the named weights {sorted(spec.weights)} of '
                       f'{spec.name!r}')


def weights_normalisation(model: ModelSettings) -> preprocessing.Normalisation | None:
  """The normalisation config.model's weights expect: a Hub checkpoint's own (tags of one architecture differ:
  ViT's augreg 0.5, CLIP's), else the registry's; None for a seed CNN (config.data.mean/std apply)."""
  return resolve(model.get('pretrained', ''), models.get_spec(model.name)).normalisation


def _hub_checkpoint(value: str, spec, location: hub.Reference, flag: str) -> WeightsRef:
  """A Hub checkpoint for `spec`: its architecture must be spec's; its config.json decides the preprocessing.
  Keyed by the file it resolves to now: in the Hub's cache a snapshot's file links to a blob named by its content's
  hash, so a repository moved to another commit (or a Hub-layout folder rewritten) is other weights."""
  checkpoint = location.checkpoint()
  if checkpoint.model_name != spec.name:
    fix = (f'set config.model.name={checkpoint.model_name} (or leave model.name to the checkpoint)' if flag == MODEL_FLAG
           else f'list it alone, or as {checkpoint.model_name}={value}')
    raise UserInputError(f'{location.described} holds a timm {checkpoint.architecture} checkpoint, not {spec.name}: '
                         f'{fix}')
  stat = checkpoint.weights.stat()
  data = hub.data_config(checkpoint.config)
  kind = Kind.HUB_FOLDER if location.folder is not None else Kind.HUB_REPOSITORY
  normalisation = preprocessing.Normalisation(tuple(float(v) for v in data['mean']), tuple(float(v) for v in data['std']))
  return WeightsRef(value, kind, spec.name, checkpoint.weights, normalisation, tuple(data['input_size'][1:]),
                    ('hub', value, str(checkpoint.weights.resolve()), stat.st_size, stat.st_mtime_ns),
                    checkpoint=checkpoint)


def _file_identity(path: pathlib.Path) -> tuple:
  """A file by where it resolves to, its size and its modification time: rewritten in place, it is other weights.
  A missing one is keyed as missing (reading it names the problem)."""
  try:
    stat = path.stat()
  except OSError:
    return ('file', str(path), 'missing')
  return ('file', str(path.resolve()), stat.st_size, stat.st_mtime_ns)
