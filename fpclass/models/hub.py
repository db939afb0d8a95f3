"""timm checkpoints on the Hugging Face Hub by name: `config.model.pretrained='hf-hub:timm/<arch>.<tag>'`, or a
local folder in the Hub's layout (config.json and model.safetensors).

Files come through `huggingface_hub.hf_hub_download`, so they land in the standard cache ($HF_HOME/hub, or
$HF_HUB_CACHE), $HF_HUB_OFFLINE=1 reads that cache only, and a gated repository takes $HF_TOKEN. Both are read
when a checkpoint is resolved, not when the library was imported. The weights are read with `safetensors.numpy`
(no torch). A checkpoint decides its architecture (config.json's `architecture`, registered here as
'timm_<architecture>', which is the model.name it implies) and its preprocessing (`pretrained_cfg`: mean, std,
input size, interpolation, crop_pct, crop_mode; `data_config` resolves them as timm's `resolve_data_config`).
This module reads a Hub reference and finds a checkpoint's files; `fpclass.models.weights_ref.resolve` is the one
resolver of a `pretrained` value, of which a Hub reference is one kind.
"""
import dataclasses
import functools
import json
import os
import pathlib

from fpclass.errors import UserInputError

PREFIX = 'hf-hub:'
NAME_PREFIX = 'timm_'      # a timm architecture's registered name: 'timm_' + timm's name
TIMM_ORG = 'timm/'         # timm's organisation on the Hub
MODEL_FLAG = 'config.model.pretrained'
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
# timm's defaults where a pretrained_cfg leaves a field out (timm.data.constants and resolve_data_config).
DEFAULTS = dict(input_size=(3, 224, 224), interpolation='bicubic', mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), crop_pct=0.875, crop_mode='center')


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A checkpoint on disk: its config.json and its weights file."""
  config: dict            # config.json
  weights: pathlib.Path   # model.safetensors

  @property
  def architecture(self) -> str:
    return str(self.config.get('architecture', ''))

  @property
  def model_name(self) -> str:
    return NAME_PREFIX + self.architecture


def cache_dir() -> str:
  """The Hub cache huggingface_hub uses, read from the environment now: $HF_HUB_CACHE, else $HF_HOME/hub."""
  if os.environ.get('HF_HUB_CACHE'):
    return os.path.expanduser(os.environ['HF_HUB_CACHE'])
  if os.environ.get('HF_HOME'):
    return os.path.join(os.path.expanduser(os.environ['HF_HOME']), 'hub')
  from huggingface_hub import constants  # lazy: only Hub references need it
  return constants.HF_HUB_CACHE


def offline() -> bool:
  return os.environ.get('HF_HUB_OFFLINE', '').upper() in ('1', 'ON', 'YES', 'TRUE')


@dataclasses.dataclass(frozen=True)
class Reference:
  """A Hub checkpoint as a `pretrained` value names it: a repository (at a revision) or a Hub-layout folder."""
  described: str                  # how errors name the value ("config.model.pretrained='hf-hub:...'")
  repo: str = ''                  # 'org/name'
  revision: str | None = None     # None: the repository's main
  folder: pathlib.Path | None = None

  @property
  def model_name(self) -> str:
    """The registered model it implies. A timm repository is named '<architecture>.<tag>', so 'hf-hub:timm/...'
    needs no download; any other reads config.json."""
    if self.repo.startswith(TIMM_ORG):
      return NAME_PREFIX + self.repo.removeprefix(TIMM_ORG).split('.', 1)[0]
    return self.checkpoint().model_name

  def checkpoint(self) -> Checkpoint:
    """Its config.json and weights file: a repository's downloaded (or found in the cache) first, keyed by the
    environment's cache and offline mode; a folder's read afresh each time (it may be rewritten in place)."""
    if self.folder is None:
      return _from_repository(self.repo, self.revision, self.described, cache_dir(), offline())
    weights = self.folder / WEIGHTS_FILE
    if not weights.is_file():
      raise UserInputError(f'{self.described}: {weights} not found (a Hub-layout folder holds {CONFIG_FILE} and '
                           f'{WEIGHTS_FILE})')
    return Checkpoint(_read_config(self.folder / CONFIG_FILE), weights)


def reference(value: str, described: str) -> Reference | None:
  """The Hub checkpoint `value` names ('hf-hub:<org>/<name>[@revision]', or a folder holding config.json), or None
  when it names none. The first step of `fpclass.models.weights_ref.resolve`; here, beside the download, so
  that `model_keys` learns the model a reference implies from a module importing only `fpclass.errors`."""
  if value.startswith(PREFIX):
    repo, _, revision = value.removeprefix(PREFIX).partition('@')
    if repo.count('/') != 1 or not all(repo.split('/')):
      raise UserInputError(f"{described}: use 'hf-hub:<org>/<name>' (e.g. 'hf-hub:timm/resnet50.a1_in1k') or a "
                           f'folder holding {CONFIG_FILE} and {WEIGHTS_FILE}')
    return Reference(described, repo=repo, revision=revision or None)
  folder = pathlib.Path(value).expanduser()
  if value and folder.is_dir() and (folder / CONFIG_FILE).is_file():
    return Reference(described, folder=folder)
  return None


def implied_model(pretrained, flag: str = MODEL_FLAG) -> str:
  """The registered model a `pretrained` value implies: a Hub checkpoint's 'timm_<architecture>', '' for any other
  value (registered weights and files go with the configured model). `flag` names the setting in errors."""
  value = str(pretrained or '')
  found = reference(value, f'{flag}={value!r}')
  return found.model_name if found else ''


@functools.lru_cache(maxsize=64)   # keyed by the repository and the environment's cache and offline mode
def _from_repository(repo: str, revision: str | None, described: str, cache: str, local_only: bool) -> Checkpoint:
  config_path = _download(described, repo, revision, CONFIG_FILE, cache, local_only)
  weights = _download(described, repo, revision, WEIGHTS_FILE, cache, local_only)
  return Checkpoint(_read_config(config_path), pathlib.Path(weights))


def _read_config(config_path) -> dict:
  try:
    config = json.loads(pathlib.Path(config_path).read_text())
  except (OSError, ValueError) as e:
    raise UserInputError(f'{config_path}: not a readable JSON config ({type(e).__name__}: {e})') from None
  if not isinstance(config, dict) or not config.get('architecture'):
    raise UserInputError(f"{config_path}: no 'architecture' in it (not a timm config.json?)")
  return config


def _download(described, repo, revision, filename, cache, local_only) -> str:
  import huggingface_hub  # lazy: only Hub references need it
  from huggingface_hub import errors
  try:
    return huggingface_hub.hf_hub_download(repo, filename, revision=revision, cache_dir=cache,
                                           local_files_only=local_only)
  except errors.LocalEntryNotFoundError:
    why = 'HF_HUB_OFFLINE is set' if local_only else 'the Hub cannot be reached'
    raise UserInputError(f'{described}: {filename} is not in the Hub cache {cache} and '
                         f'{why}; download it once online (or set HF_HOME to a cache that holds it)') from None
  except errors.GatedRepoError:
    raise UserInputError(f'{described}: {repo} is gated; accept its terms on the Hub and '
                         'set HF_TOKEN') from None
  except errors.RepositoryNotFoundError:
    raise UserInputError(f'{described}: no repository {repo} on the Hub (or it is private: '
                         'set HF_TOKEN)') from None
  except errors.RevisionNotFoundError:
    raise UserInputError(f'{described}: no revision {revision!r} of {repo}') from None
  except errors.EntryNotFoundError:
    raise UserInputError(f'{described}: {repo} has no {filename} (only timm checkpoints '
                         'saved as safetensors are read)') from None
  except (OSError, ValueError) as e:
    raise UserInputError(f'{described}: cannot download {filename} '
                         f'({type(e).__name__}: {str(e)[:200]})') from None


def data_config(config: dict) -> dict:
  """The preprocessing a config.json's `pretrained_cfg` asks for, with timm's defaults for what it leaves out:
  input_size (C, H, W), interpolation, mean, std, crop_pct, crop_mode, as `timm.data.resolve_data_config`
  gives them for a model built from that checkpoint."""
  cfg = config.get('pretrained_cfg', {}) or {}
  out = {}
  for key, default in DEFAULTS.items():
    value = cfg.get(key, default)
    out[key] = tuple(value) if isinstance(value, list) else value
  return out

