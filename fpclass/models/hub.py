"""timm checkpoints on the Hugging Face Hub by name: `config.model.pretrained='hf-hub:timm/<arch>.<tag>'`, or a
local folder in the Hub's layout (config.json and model.safetensors).

Files come through `huggingface_hub.hf_hub_download`, so they land in the standard cache ($HF_HOME/hub, or
$HF_HUB_CACHE), $HF_HUB_OFFLINE=1 reads that cache only, and a gated repository takes $HF_TOKEN. Both are read
when a checkpoint is resolved, not when the library was imported. The weights are read with `safetensors.numpy`
(no torch). A checkpoint decides its architecture (config.json's `architecture`, registered here as
'timm_<architecture>', which is the model.name it implies) and its preprocessing (`pretrained_cfg`: mean, std,
input size, interpolation, crop_pct, crop_mode; `data_config` resolves them as timm's `resolve_data_config`).
"""
import dataclasses
import functools
import json
import os
import pathlib

from fpclass.errors import UserInputError

PREFIX = 'hf-hub:'
NAME_PREFIX = 'timm_'      # a timm architecture's registered name: 'timm_' + timm's name
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
# timm's defaults where a pretrained_cfg leaves a field out (timm.data.constants and resolve_data_config).
DEFAULTS = dict(input_size=(3, 224, 224), interpolation='bicubic', mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), crop_pct=0.875, crop_mode='center')


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A resolved checkpoint: where it came from, its config.json and the weights file on disk."""
  reference: str          # as configured: 'hf-hub:<repo>[@revision]' or a folder
  config: dict            # config.json
  weights: pathlib.Path   # model.safetensors

  @property
  def architecture(self) -> str:
    return str(self.config.get('architecture', ''))

  @property
  def model_name(self) -> str:
    return NAME_PREFIX + self.architecture


def is_reference(value) -> bool:
  """Whether `value` (config.model.pretrained) names a Hub checkpoint or a folder in the Hub's layout."""
  value = str(value or '')
  if value.startswith(PREFIX):
    return True
  path = pathlib.Path(value).expanduser()
  return bool(value) and path.is_dir() and (path / CONFIG_FILE).is_file()


def model_name(value) -> str:
  """The registered model name a checkpoint reference implies ('' when `value` is none). A timm repository is
  named '<architecture>.<tag>', so 'hf-hub:timm/...' needs no download; other references read config.json."""
  value = str(value or '')
  if not is_reference(value):
    return ''
  repo, _ = _split(value) if value.startswith(PREFIX) else ('', '')
  if repo.startswith('timm/'):
    return NAME_PREFIX + repo.split('/', 1)[1].split('.', 1)[0]
  return resolve(value).model_name


def _split(value: str) -> tuple[str, str | None]:
  """'hf-hub:org/name@revision' -> ('org/name', 'revision' or None)."""
  repo, _, revision = value[len(PREFIX):].partition('@')
  if repo.count('/') != 1 or not all(repo.split('/')):
    raise UserInputError(f"config.model.pretrained={value!r}: use 'hf-hub:<org>/<name>' (e.g. "
                         "'hf-hub:timm/resnet50.a1_in1k') or a folder holding config.json and model.safetensors")
  return repo, revision or None


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


def resolve(value: str) -> Checkpoint:
  """The checkpoint `value` names, its two files downloaded (or found in the cache) first."""
  return _resolve(str(value), cache_dir(), offline())


@functools.lru_cache(maxsize=64)   # keyed by the reference and the environment's cache and offline mode
def _resolve(value: str, cache: str, local_only: bool) -> Checkpoint:
  if not value.startswith(PREFIX):
    folder = pathlib.Path(value).expanduser()
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not weights.is_file():
      raise UserInputError(f'config.model.pretrained={value!r}: {weights} not found (a Hub-layout folder holds '
                           f'{CONFIG_FILE} and {WEIGHTS_FILE})')
  else:
    repo, revision = _split(value)
    config_path = _download(value, repo, revision, CONFIG_FILE, cache, local_only)
    weights = _download(value, repo, revision, WEIGHTS_FILE, cache, local_only)
  try:
    config = json.loads(pathlib.Path(config_path).read_text())
  except (OSError, ValueError) as e:
    raise UserInputError(f'{config_path}: not a readable JSON config ({type(e).__name__}: {e})') from None
  if not isinstance(config, dict) or not config.get('architecture'):
    raise UserInputError(f"{config_path}: no 'architecture' in it (not a timm config.json?)")
  return Checkpoint(value, config, pathlib.Path(weights))


def _download(value, repo, revision, filename, cache, local_only) -> str:
  import huggingface_hub  # lazy: only Hub references need it
  from huggingface_hub import errors
  try:
    return huggingface_hub.hf_hub_download(repo, filename, revision=revision, cache_dir=cache,
                                           local_files_only=local_only)
  except errors.LocalEntryNotFoundError:
    why = 'HF_HUB_OFFLINE is set' if local_only else 'the Hub cannot be reached'
    raise UserInputError(f'config.model.pretrained={value!r}: {filename} is not in the Hub cache {cache} and '
                         f'{why}; download it once online (or set HF_HOME to a cache that holds it)') from None
  except errors.GatedRepoError:
    raise UserInputError(f'config.model.pretrained={value!r}: {repo} is gated; accept its terms on the Hub and '
                         'set HF_TOKEN') from None
  except errors.RepositoryNotFoundError:
    raise UserInputError(f'config.model.pretrained={value!r}: no repository {repo} on the Hub (or it is private: '
                         'set HF_TOKEN)') from None
  except errors.RevisionNotFoundError:
    raise UserInputError(f'config.model.pretrained={value!r}: no revision {revision!r} of {repo}') from None
  except errors.EntryNotFoundError:
    raise UserInputError(f'config.model.pretrained={value!r}: {repo} has no {filename} (only timm checkpoints '
                         'saved as safetensors are read)') from None
  except (OSError, ValueError) as e:
    raise UserInputError(f'config.model.pretrained={value!r}: cannot download {filename} '
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

