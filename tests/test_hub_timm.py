"""timm checkpoints by name from the Hugging Face Hub (fpclass.models.hub): parity with timm on weights timm
wrote itself in the Hub's layout, loaded through the real `hf_hub_download` from a local cache folder with
HF_HUB_OFFLINE=1 (no network); the preprocessing from config.json against timm's `resolve_data_config`; the
model name a checkpoint implies; a cold cache failing in one line. The smallest member of each family runs
here; bench/hub_parity.py checks every registered name (docs/parity.md).
"""
import json

import jax
import ml_collections
import numpy as np
import pytest

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.errors import UserInputError
from fpclass.models import hub, model_keys, transfer, weights_ref
from tests import parity
from tests import timm_reference as tr

# The CI sample: the smallest member of each family, covering its variants' fields.
# tf_efficientnetv2_b0: TF 'SAME' padding, BN eps 1e-3, ConvBnAct, EdgeResidual (fused) and inverted residual
# blocks with squeeze-excitation (B0-B8 and Lite add depthwise-separable first blocks, 5x5 kernels, ReLU6 and
# blocks without SE: bench/hub_parity.py checks them);
# mobilenetv3_small_050: MobileNetV3's per-block widths and activations, hard-sigmoid SE, fixed stem, efficient head;
# regnety_002: RegNet's grouped bottleneck, its SE sized by the block's input, conv shortcuts (RegNetX is the same
# without SE; the widths of every name and the `_tv` rounding: bench/hub_parity.py).
SAMPLE = ['resnet10t', 'convnextv2_atto', 'vit_small_patch14_reg4_dinov2', 'vit_xsmall_patch16_clip_224',
          'tf_efficientnetv2_b0', 'mobilenetv3_small_050', 'regnety_002']


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('hf') / 'hub'


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache):
  found = {}
  print('\n' + parity.TABLE_HEADER)

  def get(arch):
    if arch not in found:
      case = tr.reference_case(arch, tmp_path_factory.mktemp(arch), cache)
      found[arch] = (case, tr.port(case, cache))
    return found[arch]
  yield get
  found.clear()


@pytest.mark.parametrize('arch', SAMPLE)
def test_hub_checkpoint_matches_timm(arch, reference):
  case, (_, variables, apply) = reference(arch)
  logits, features = apply(variables, case.x)
  assert sum(np.asarray(v).size for v in jax.tree_util.tree_leaves(variables['params'])) == \
      sum(p.numel() for p in case.module.parameters())
  result = tr.agreement(case, logits, features)
  print(result.row())
  parity.check(result)


MUTATIONS = {   # one tensor per family, changed slightly: the check must fail
    'resnet10t': ('the deep stem\'s middle conv kernel transposed', 'params/conv1_3/kernel',
                  lambda k: k.transpose(1, 0, 2, 3)),
    'convnextv2_atto': ('a global response norm weight 5% larger', 'params/features_5_1/grn_weight',
                        lambda w: w * 1.05),
    'vit_small_patch14_reg4_dinov2': ('the registers 10% smaller', 'params/reg_token', lambda r: r * 0.9),
    'tf_efficientnetv2_b0': ('an EdgeResidual projection kernel 5% larger', 'params/features_2_1/block_1/conv/kernel',
                             lambda k: k * 1.05),
    'mobilenetv3_small_050': ('the head conv 5% larger', 'params/conv_head/kernel', lambda k: k * 1.05),
    'regnety_002': ('a grouped 3x3 kernel transposed', 'params/s2_b1/conv2/conv/kernel', lambda k: k.transpose(1, 0, 2, 3)),
}


@pytest.mark.parametrize('arch', list(MUTATIONS))
def test_the_check_fails_on_a_perturbed_tensor(arch, reference):
  case, (_, variables, apply) = reference(arch)
  label, path, change = MUTATIONS[arch]
  logits, features = apply(parity.replaced(variables, {path: change}), case.x)
  result = tr.agreement(case, logits, features, label=f'{arch}, {label}')
  print(result.row())
  parity.assert_check_fails(result)


def test_tf_padding_is_what_makes_a_tf_port_exact(reference):
  """tf_efficientnetv2_b0 with torch's symmetric padding instead of TF's 'SAME' (the same weights): the check
  fails, so the sample's pass shows the padding, not only the weights."""
  case, (model, variables, _) = reference('tf_efficientnetv2_b0')
  symmetric = model.clone(padding='symmetric')   # the port as loaded, its padding field changed
  logits, features = parity.compiled_once(symmetric.apply, variables, case.x)(variables, case.x)
  result = tr.agreement(case, logits, features, label='tf_efficientnetv2_b0, symmetric padding')
  print(result.row())
  parity.assert_check_fails(result)


def test_grayscale_stem_matches_timm_on_the_rgb_copy(reference, cache):
  """config.model.in_channels=1: the folded deep stem on gray images g equals timm on [g, g, g]."""
  case, _ = reference('resnet10t')
  norm = models.get_spec('timm_resnet10t').preprocessing
  g = parity.gray_images((3, *case.x.shape[1:3], 1))
  rgb = np.asarray(norm(np.repeat(g, 3, axis=-1)))
  x = np.asarray(norm.to_grayscale()(g))
  with tr.offline_cache(cache):
    model, variables = parity.build('timm_resnet10t', case.reference, num_classes=tr.NUM_CLASSES,
                                    image_shape=x.shape[1:], in_channels=1)
  logits, _ = parity.compiled_once(model.apply, variables, x)(variables, x)
  ref, _ = parity.torch_forward(case.module, rgb, {})
  jittered, _ = parity.torch_forward(case.module, parity.jittered(rgb), {})
  result = parity.agreement('resnet10t gray', logits, ref, jittered)
  print(result.row())
  parity.check(result)


@pytest.mark.parametrize('arch', SAMPLE)
def test_preprocessing_is_timms_resolve_data_config(arch, reference, cache, monkeypatch):
  """mean, std, input size, interpolation, crop_pct and crop_mode from config.json, as timm resolves them for
  the model it builds from the same cached checkpoint."""
  import timm
  import torch
  from timm.data import resolve_data_config
  case, _ = reference(arch)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  with tr.offline_cache(cache):
    resolved = weights_ref.resolve(case.reference, models.get_spec(f'timm_{arch}'))
    checkpoint = resolved.checkpoint
    with torch.device('meta'):   # its configuration is all that is read: no weights drawn (ViT-S: 1 CPU-s)
      module = timm.create_model(case.reference, pretrained=False, num_classes=tr.NUM_CLASSES,
                                 cache_dir=str(cache))
  expected = resolve_data_config({}, model=module)
  got = hub.data_config(checkpoint.config)
  assert {k: got[k] for k in expected} == {k: tuple(v) if isinstance(v, list) else v for k, v in expected.items()}
  norm = resolved.normalisation
  assert norm.mean == tuple(expected['mean']) and norm.std == tuple(expected['std'])


def test_a_checkpoint_s_own_mean_and_std_decide_the_input(reference, cache, tmp_path):
  """A tag with other statistics (an 'inception' 0.5/0.5 checkpoint) normalises the input its way."""
  case, _ = reference('resnet10t')
  snapshot = next((cache / 'models--timm--resnet10t.fpclass_test' / 'snapshots').iterdir())
  config = json.loads((snapshot / 'config.json').read_text())
  config['pretrained_cfg'].update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
  folder = tmp_path / 'folder'
  folder.mkdir()
  (folder / 'config.json').write_text(json.dumps(config))
  (folder / 'model.safetensors').symlink_to(snapshot / 'model.safetensors')
  norm = weights_ref.weights_normalisation(ModelSettings.from_config(dict(name='timm_resnet10t',
                                                                                   pretrained=str(folder))))
  assert norm.mean == (0.5, 0.5, 0.5)
  assert models.get_spec('timm_resnet10t').preprocessing.mean == (0.485, 0.456, 0.406)


def test_the_checkpoint_implies_the_model_name(reference, cache):
  """model.pretrained='hf-hub:timm/<arch>.<tag>' makes model.name 'timm_<arch>', keeping the checkpoint; a
  Hub-layout folder reads its architecture from config.json."""
  section = model_keys.complete(dict(name='convnext_tiny', pretrained='hf-hub:timm/resnet50.a1_in1k',
                                     head='softmax', in_channels=3))
  assert section.name == 'timm_resnet50' and section.pretrained == 'hf-hub:timm/resnet50.a1_in1k'
  case, _ = reference('resnet10t')
  with tr.offline_cache(cache):
    snapshot = weights_ref.resolve(case.reference, models.get_spec('timm_resnet10t')).file.parent
  assert model_keys.complete(dict(name='footprint_cnn', pretrained=str(snapshot))).name == 'timm_resnet10t'


def test_a_checkpoint_of_another_architecture_is_refused(reference, cache):
  case, _ = reference('resnet10t')
  cfg = ml_collections.ConfigDict(dict(name='timm_resnet18', head='softmax', pretrained=case.reference))
  with tr.offline_cache(cache), pytest.raises(UserInputError, match='timm resnet10t checkpoint.*model.name='
                                                                    'timm_resnet10t'):
    transfer.load_pretrained(models.get_spec('timm_resnet18'), ModelSettings.from_config(cfg), {},
                             cache_dir='/nonexistent')


def test_a_cold_cache_offline_fails_in_one_line(tmp_path):
  with tr.offline_cache(tmp_path / 'empty'), pytest.raises(UserInputError) as error:
    weights_ref.resolve('hf-hub:timm/resnet18.a1_in1k', models.get_spec('timm_resnet18'))
  message = str(error.value)
  assert '\n' not in message and 'HF_HUB_OFFLINE' in message and 'resnet18.a1_in1k' in message


def test_a_malformed_reference_names_the_flag():
  with pytest.raises(UserInputError, match="config.model.pretrained='hf-hub:resnet18'"):
    weights_ref.resolve('hf-hub:resnet18', models.get_spec('timm_resnet18'))


def test_registered_input_sizes_are_timms_defaults():
  """Each timm name's listed input size is its default pretrained_cfg's (no model is built)."""
  from timm.models import get_pretrained_cfg
  models.get_spec('footprint_cnn')
  names = [n for n, spec in models.REGISTRY.items() if spec.family == 'timm']
  assert len(names) >= 40
  wrong = {n: (models.REGISTRY[n].input_size, get_pretrained_cfg(n[len(hub.NAME_PREFIX):]).input_size[1:])
           for n in names if models.REGISTRY[n].input_size !=
           tuple(get_pretrained_cfg(n[len(hub.NAME_PREFIX):]).input_size[1:])}
  assert not wrong


def test_the_cache_follows_hf_home_and_hf_hub_cache_when_resolved(monkeypatch, tmp_path):
  monkeypatch.delenv('HF_HUB_CACHE', raising=False)
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'home'))
  assert hub.cache_dir() == str(tmp_path / 'home' / 'hub')
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'elsewhere'))
  assert hub.cache_dir() == str(tmp_path / 'elsewhere')
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  assert hub.offline()
