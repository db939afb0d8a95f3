"""`fpclass.models.weights_ref`: the one resolver of a `pretrained` value. Each kind (none, registered weights, a
file, a Hub repository, a Hub-layout folder) resolves to its file, its preprocessing and its cache key, on files
torch and timm wrote themselves; the order of the kinds is pinned where two could claim one value; a bad value of
each kind is one line naming its setting; and the consumers read the resolved object, not the string.
"""
import dataclasses
import hashlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpclass import models
from fpclass.config.model import ModelSettings
from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.errors import UserInputError
from fpclass.models import hub, model_keys, preprocessing, probe_backbones, transfer, weights_ref
from fpclass.models.probe_backbones import Backbone
from fpclass.models.weights import WeightsFile
from fpclass.models.weights_ref import Kind
from fpclass.modes import command_line
from fpclass.probe import pooled_features
from tests import timm_reference as tr
from tests.conftest import load_config, torchvision_weights

REPOSITORY = 'timm/resnet10t.fpclass_ref'


@pytest.fixture(scope='module')
def torch_file(tmp_path_factory):
  """A resnet18 state_dict torch wrote."""
  return torchvision_weights(tmp_path_factory.mktemp('torch'))


@pytest.fixture(scope='module')
def timm_export(tmp_path_factory):
  """(timm's resnet10t, its own Hub-layout export, a Hub cache holding it as REPOSITORY)."""
  import timm
  module = timm.create_model('resnet10t', pretrained=False, num_classes=5).eval()
  folder = tr.save_hub_folder(module, tmp_path_factory.mktemp('export'))
  cache = tmp_path_factory.mktemp('hf') / 'hub'
  tr.place_in_cache(folder, cache, REPOSITORY)
  return module, folder, cache


def one_line_error(call, *args, **kwargs) -> str:
  with pytest.raises(UserInputError) as error:
    call(*args, **kwargs)
  message = str(error.value)
  assert '\n' not in message, message
  return message


# --- each kind: its file, its preprocessing, its key ----------------------------------------------------------------


def test_none_is_the_seeded_random_init_with_the_registry_s_preprocessing():
  ref = weights_ref.resolve('', models.get_spec('resnet18'))
  assert (ref.kind, ref.file, ref.model) == (Kind.NONE, None, 'resnet18')
  assert ref.normalisation == preprocessing.TORCH_IMAGENET
  assert ref.cache_key(3) == ['random init', 3] != weights_ref.resolve(None, models.get_spec('resnet18')).cache_key(4)
  seed_cnn = weights_ref.resolve('', models.get_spec('footprint_cnn'))
  assert seed_cnn.kind is Kind.NONE and seed_cnn.normalisation is None   # config.data.mean/std apply


def test_registered_weights_live_in_the_cache_and_are_fetched_when_read(torch_file, tmp_path):
  """A registered name is keyed by its URL and checksum, without a download; reading it downloads (here a file://
  URL) into <cache>/weights, verified, and the copy is what load_pretrained reads."""
  digest = hashlib.sha256(torch_file.read_bytes()).hexdigest()
  source = WeightsFile(torch_file.as_uri(), f'sha256:{digest[:16]}')
  spec = dataclasses.replace(models.get_spec('resnet18'), weights={'mine': source})
  ref = weights_ref.resolve('mine', spec, tmp_path / 'cache')
  assert (ref.kind, ref.source) == (Kind.REGISTERED, source)
  assert ref.file == tmp_path / 'cache' / 'weights' / torch_file.name and not ref.file.exists()
  assert ref.cache_key(0) == ['named', 'mine', source.url, source.checksum]
  assert ref.normalisation == preprocessing.TORCH_IMAGENET
  assert ref.local_file() == ref.file and ref.file.read_bytes() == torch_file.read_bytes()
  with pytest.raises(ValueError, match='without a cache'):
    weights_ref.resolve('mine', spec).local_file()


def test_a_file_is_keyed_by_where_it_resolves_its_size_and_its_time(torch_file, tmp_path):
  ref = weights_ref.resolve(str(torch_file), models.get_spec('resnet18'))
  stat = torch_file.stat()
  assert (ref.kind, ref.file) == (Kind.FILE, torch_file)
  assert ref.cache_key(7) == ['file', str(torch_file.resolve()), stat.st_size, stat.st_mtime_ns]
  assert ref.normalisation == preprocessing.TORCH_IMAGENET and ref.local_file() == torch_file
  for value in ('~/weights.pth', 'relative/weights', 'weights.h5', 'weights.safetensors', 'weights.pt'):
    assert weights_ref.resolve(value, models.get_spec('resnet18')).kind is Kind.FILE, value


def test_a_hub_repository_resolves_to_its_snapshot_and_its_config(timm_export):
  module, folder, cache = timm_export
  spec = models.get_spec('timm_resnet10t')
  with tr.offline_cache(cache):
    ref = weights_ref.resolve(f'hf-hub:{REPOSITORY}', spec)
  snapshot = cache / ('models--' + REPOSITORY.replace('/', '--')) / 'snapshots' / tr.COMMIT
  assert (ref.kind, ref.model) == (Kind.HUB_REPOSITORY, 'timm_resnet10t')
  assert ref.file == snapshot / hub.WEIGHTS_FILE and ref.checkpoint.architecture == 'resnet10t'
  cfg = json.loads((folder / hub.CONFIG_FILE).read_text())['pretrained_cfg']
  assert ref.normalisation == preprocessing.Normalisation(tuple(cfg['mean']), tuple(cfg['std']))
  assert ref.input_size == tuple(cfg['input_size'][1:]) == tuple(module.pretrained_cfg['input_size'][1:])
  stat = ref.file.stat()
  assert ref.cache_key(0) == ['hub', f'hf-hub:{REPOSITORY}', str(ref.file.resolve()), stat.st_size, stat.st_mtime_ns]


def test_a_hub_folder_s_config_decides_its_preprocessing_and_input_size(timm_export, tmp_path):
  """A checkpoint whose pretrained_cfg differs from the registry's (0.5/0.5 statistics, 160x128 input) brings its
  own; the registry's stay as they were."""
  _, export, _ = timm_export
  folder = tmp_path / 'tag'
  shutil.copytree(export, folder)
  config = json.loads((folder / hub.CONFIG_FILE).read_text())
  config['pretrained_cfg'].update(mean=[0.5] * 3, std=[0.5] * 3, input_size=[3, 160, 128])
  (folder / hub.CONFIG_FILE).write_text(json.dumps(config))
  ref = weights_ref.resolve(str(folder), models.get_spec('timm_resnet10t'))
  assert (ref.kind, ref.file) == (Kind.HUB_FOLDER, folder / hub.WEIGHTS_FILE)
  assert ref.normalisation == preprocessing.Normalisation((0.5,) * 3, (0.5,) * 3) and ref.input_size == (160, 128)
  assert ref.cache_key(0)[:3] == ['hub', str(folder), str((folder / hub.WEIGHTS_FILE).resolve())]
  assert weights_ref.weights_normalisation(ModelSettings.from_config(dict(
      name='timm_resnet10t', pretrained=str(folder)))) == ref.normalisation
  assert models.get_spec('timm_resnet10t').preprocessing.mean == (0.485, 0.456, 0.406)


# --- the order of the kinds, where two could claim one value ---------------------------------------------------------


def test_a_hub_folder_is_a_checkpoint_not_a_file_and_a_folder_without_config_is_a_file(timm_export, tmp_path):
  _, export, _ = timm_export
  spec = models.get_spec('timm_resnet10t')
  assert weights_ref.resolve(str(export), spec).kind is Kind.HUB_FOLDER      # a path with '/', existing
  bare = tmp_path / 'weights_only'
  bare.mkdir()
  shutil.copyfile(export / hub.WEIGHTS_FILE, bare / hub.WEIGHTS_FILE)
  assert weights_ref.resolve(str(bare), spec).kind is Kind.FILE


def test_a_registered_name_wins_over_a_file_of_that_name(torch_file, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  shutil.copyfile(torch_file, tmp_path / 'imagenet')
  ref = weights_ref.resolve('imagenet', models.get_spec('resnet18'), tmp_path / 'cache')
  assert ref.kind is Kind.REGISTERED and ref.file == tmp_path / 'cache' / 'weights' / 'resnet18-f37072fd.pth'
  (tmp_path / 'other').write_bytes(b'')   # an existing file needs no '/' or suffix
  assert weights_ref.resolve('other', models.get_spec('resnet18')).kind is Kind.FILE


def test_the_implied_model_needs_no_download_for_a_timm_repository(timm_export, tmp_path):
  """'hf-hub:timm/<arch>.<tag>' names its model by itself (a cold offline cache is not asked); another
  organisation's repository and a folder read config.json; anything else implies no model."""
  _, export, cache = timm_export
  with tr.offline_cache(tmp_path / 'empty'):
    assert hub.implied_model('hf-hub:timm/resnet50.a1_in1k') == 'timm_resnet50'
    assert command_line.model_name_override(['--config.model.pretrained=hf-hub:timm/resnet50.a1_in1k']) == \
        'timm_resnet50'
    assert model_keys.complete(dict(name='resnet18', pretrained='hf-hub:timm/convnext_atto.d2_in1k')).name == \
        'timm_convnext_atto'
    one_line_error(hub.implied_model, 'hf-hub:someone/resnet10t')
  other = 'someone/renamed'
  tr.place_in_cache(export, cache, other)
  with tr.offline_cache(cache):
    assert hub.implied_model(f'hf-hub:{other}') == 'timm_resnet10t'
  assert hub.implied_model(str(export)) == 'timm_resnet10t'
  assert [hub.implied_model(v) for v in ('', None, 'imagenet', str(tmp_path / 'w.pth'))] == [''] * 4


# --- bad values: one line naming the setting --------------------------------------------------------------------------


def test_each_kind_s_bad_value_is_one_line_naming_the_setting(timm_export, tmp_path):
  _, export, cache = timm_export
  resnet18, resnet10t = models.get_spec('resnet18'), models.get_spec('timm_resnet10t')
  assert one_line_error(weights_ref.resolve, 'imagenet', models.get_spec('footprint_cnn')) == \
      "config.model.pretrained='imagenet': model 'footprint_cnn' has no pretrained weights"
  assert one_line_error(weights_ref.resolve, 'imagenett', resnet18) == \
      "config.model.pretrained='imagenett': neither a file nor one of the named weights ['imagenet'] of 'resnet18'"
  assert one_line_error(weights_ref.resolve, 'hf-hub:resnet10t', resnet10t).startswith(
      "config.model.pretrained='hf-hub:resnet10t': use 'hf-hub:<org>/<name>'")
  with tr.offline_cache(tmp_path / 'empty'):
    assert 'HF_HUB_OFFLINE' in one_line_error(weights_ref.resolve, f'hf-hub:{REPOSITORY}', resnet10t)
  with tr.offline_cache(cache):
    assert one_line_error(weights_ref.resolve, f'hf-hub:{REPOSITORY}', models.get_spec('timm_resnet18')) == (
        f"config.model.pretrained='hf-hub:{REPOSITORY}' holds a timm resnet10t checkpoint, not timm_resnet18: set "
        'config.model.name=timm_resnet10t (or leave model.name to the checkpoint)')
  folder = tmp_path / 'no_weights'
  folder.mkdir()
  shutil.copyfile(export / hub.CONFIG_FILE, folder / hub.CONFIG_FILE)
  assert one_line_error(weights_ref.resolve, str(folder), resnet10t).startswith(
      f"config.model.pretrained='{folder}': {folder / hub.WEIGHTS_FILE} not found")
  (folder / hub.CONFIG_FILE).write_text('{"num_classes": 5}')
  shutil.copyfile(export / hub.WEIGHTS_FILE, folder / hub.WEIGHTS_FILE)
  assert "no 'architecture'" in one_line_error(weights_ref.resolve, str(folder), resnet10t)
  missing = tmp_path / 'gone.pth'   # a file resolves as named; reading it says what is wrong
  ref = weights_ref.resolve(str(missing), resnet18)
  assert ref.cache_key(0) == ['file', str(missing), 'missing']
  assert 'weights file not found' in one_line_error(transfer.load_pretrained, resnet18,
                                                    dict(name='resnet18', pretrained=''), {}, tmp_path, ref)


def test_a_probe_backbone_s_weights_are_named_by_its_entry(timm_export):
  config = load_config('configs/cats_dogs.py:vgg16,quick', **{'probe.backbones': (
      'resnet18', f'hf-hub:{REPOSITORY}', 'resnet18=imagenett')})
  with tr.offline_cache(timm_export[2]):
    run = RunSettings.from_config(config)
    backbones = probe_backbones.parse_backbones(ProbeSettings.from_config(config.probe), run.model)
    assert [(b.name, b.flag) for b in backbones] == [
        ('resnet18', 'config.probe.backbones[0]'), ('timm_resnet10t', 'config.probe.backbones[1]'),
        ('resnet18', 'config.probe.backbones[2]')]
    assert pooled_features.backbone_weights(run, backbones[1]).kind is Kind.HUB_REPOSITORY
    assert one_line_error(pooled_features.backbone_weights, run, backbones[2]).startswith(
        "config.probe.backbones[2]='imagenett': neither a file nor one of the named weights")
    wrong = Backbone('timm_resnet18', f'hf-hub:{REPOSITORY}', 'x', 'config.probe.backbones[0]')
    assert one_line_error(pooled_features.backbone_weights, run, wrong).endswith(
        f'list it alone, or as timm_resnet10t=hf-hub:{REPOSITORY}')


# --- the consumers read the object ------------------------------------------------------------------------------------


def test_load_pretrained_reads_the_file_of_the_reference_it_is_given(torch_file, tmp_path):
  """The config says no weights; the reference given is what loads (its file's stem kernel, as torch holds it);
  a reference resolved for another model is refused."""
  import torch
  spec = models.get_spec('resnet18')
  cfg = ModelSettings.from_config(dict(name='resnet18', head='softmax', pretrained='', keep_pretrained_head=True))
  model = models.create_model(cfg, 1000)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert transfer.load_pretrained(spec, cfg, shapes, tmp_path) is shapes
  loaded = transfer.load_pretrained(spec, cfg, shapes, tmp_path, weights_ref.resolve(str(torch_file), spec))
  expected = torch.load(torch_file, weights_only=True)['conv1.weight'].numpy().transpose(2, 3, 1, 0)
  assert np.array_equal(np.asarray(loaded['params']['conv1']['kernel']), expected)
  with pytest.raises(ValueError, match='resolved for resnet50, loaded into resnet18'):
    transfer.load_pretrained(spec, cfg, shapes, tmp_path, weights_ref.resolve('', models.get_spec('resnet50')))
