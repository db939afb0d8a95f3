"""timm as the reference for the Hub ports: a timm model with random, informative weights, written in the Hub's
layout by timm's own saving code (`save_for_hf`: model.safetensors and config.json), placed in a Hugging Face
cache folder (models--timm--<name>/snapshots/<hash>/, refs/main), and fpclass's port loaded from it by name
through the real `hf_hub_download` with HF_HUB_OFFLINE=1. tests/test_hub_timm.py and bench/hub_parity.py use it.
"""
import contextlib
import dataclasses
import os
import pathlib
import shutil

import numpy as np

from fpclass import models
from fpclass.models import hub
from tests import parity

COMMIT = '0123456789abcdef0123456789abcdef01234567'
TAG = 'fpclass_test'
NUM_CLASSES = 17
# Each family's input in the parity check (height, width): small, not square, odd sides inside the network.
SIZES = {'resnet': (72, 56), 'convnext': (72, 56), 'efficientnet': (72, 56), 'regnet': (72, 56), 'vit': None}
# The stage features compared besides the logits: {fpclass feature: timm module}, per family.
FEATURES = {
    'resnet': {'layer2': 'layer2', 'layer4': 'layer4'},
    'convnext': {'stage2': 'stages.1', 'stage4': 'stages.3'},
    'efficientnet': {},
    'regnet': {'s2': 's2', 's4': 's4'},
    'vit': {},
}


def family_of(arch: str) -> str:
  module = models.get_spec(hub.NAME_PREFIX + arch).module
  name = models.module_class(module).__module__
  for family in ('resnet', 'convnext', 'efficientnet', 'regnet'):
    if family in name:
      return family
  return 'vit'


def place_in_cache(folder: pathlib.Path, cache: pathlib.Path, repo: str) -> pathlib.Path:
  """Copies a Hub-layout `folder` into the huggingface_hub cache `cache` as repository `repo` at COMMIT."""
  root = cache / ('models--' + repo.replace('/', '--'))
  snapshot = root / 'snapshots' / COMMIT
  snapshot.mkdir(parents=True, exist_ok=True)
  for name in (hub.CONFIG_FILE, hub.WEIGHTS_FILE):
    shutil.copyfile(folder / name, snapshot / name)
  (root / 'refs').mkdir(exist_ok=True)
  (root / 'refs' / 'main').write_text(COMMIT)
  return snapshot


@contextlib.contextmanager
def offline_cache(cache: pathlib.Path):
  """HF_HUB_CACHE pointing at `cache` and HF_HUB_OFFLINE=1 for the duration."""
  saved = {k: os.environ.get(k) for k in ('HF_HUB_CACHE', 'HF_HUB_OFFLINE')}
  os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1')
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def timm_model(arch: str, size, seed: int = 0, **kwargs):
  """timm's `arch` (pretrained=False) with random weights a mapping mistake cannot hide, BN statistics from
  its own train-mode pass over the test images, in eval mode; and those images (NHWC, normalised)."""
  import timm
  import torch
  torch.manual_seed(seed)
  module = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
  parity.randomise_torch_weights(module, seed)
  parity.randomise_torch_transformer_parts(module, seed)
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():   # what still holds its constant initial value (GRN's zeros, a token): drawn too
    for p in module.parameters():
      if p.numel() > 1 and bool(torch.all(p == p.reshape(-1)[0])):
        p.add_(torch.randn(p.shape, generator=generator) * 0.3)
  x = parity.varied_images((3, *size, 3), seed)
  parity.informative_torch_bn(module, x, seed)
  return module.eval(), x


def save_hub_folder(module, folder: pathlib.Path) -> pathlib.Path:
  """timm's own export of `module`: model.safetensors and config.json."""
  from timm.models._hub import save_for_hf  # what timm.models.push_to_hf_hub writes before uploading
  save_for_hf(module, str(folder), safe_serialization=True)
  return folder


@dataclasses.dataclass
class Case:
  arch: str
  reference: str          # 'hf-hub:timm/<arch>.<tag>'
  module: object          # timm's model
  x: np.ndarray
  out: np.ndarray
  features: dict
  jittered_out: np.ndarray
  jittered_features: dict


def size_for(arch: str):
  """The parity input of `arch`: its family's small size; a ViT's its patch size times a small odd grid."""
  size = SIZES[family_of(arch)]
  if size:
    return size
  patch = models.get_spec(hub.NAME_PREFIX + arch).module.keywords['patch_size']
  return (5 * patch, 3 * patch)


def reference_case(arch: str, tmp: pathlib.Path, cache: pathlib.Path, seed: int = 0, **kwargs) -> Case:
  """timm's `arch` written to the Hub cache `cache`, and its outputs on the test batch and on the jittered
  batch (the reference's own float32 noise)."""
  size = size_for(arch)
  family = family_of(arch)
  if family == 'vit':
    kwargs.setdefault('dynamic_img_size', True)
  module, x = timm_model(arch, size, seed, **kwargs)
  folder = save_hub_folder(module, tmp / arch)
  repo = f'timm/{arch}.{TAG}'
  place_in_cache(folder, cache, repo)
  feature_modules = FEATURES[family]
  out, feats = parity.torch_forward(module, x, feature_modules)
  jittered_out, jittered_feats = parity.torch_forward(module, parity.jittered(x), feature_modules)
  return Case(arch, f'{hub.PREFIX}{repo}', module, x, out, feats, jittered_out, jittered_feats)


def port(case: Case, cache: pathlib.Path, **fields):
  """(model, variables, compiled apply) of fpclass's port of `case`, loaded by name from the Hub cache."""
  with offline_cache(cache):
    model, variables = parity.build(hub.NAME_PREFIX + case.arch, case.reference, num_classes=NUM_CLASSES,
                                    image_shape=case.x.shape[1:], **fields)
  return model, variables, parity.compiled_once(model.apply, variables, case.x)


def agreement(case: Case, logits, features, label=None) -> parity.Agreement:
  return parity.agreement(label or case.arch, logits, case.out, case.jittered_out,
                          {k: features[k] for k in case.features}, case.features, case.jittered_features)
