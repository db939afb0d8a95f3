"""A timm checkpoint by name through launch.py, offline from a local Hugging Face cache (timm's own export, see
tests/timm_reference.py): --mode train with only --config.model.pretrained=hf-hub:timm/<arch>.<tag> (model.name
follows), --mode probe with the reference as a backbone, a cold cache failing in one line, and a sweep from it
(both recipes, one fold); an auto search from it with FPCLASS_SLOW_HUB=1 (passed 2026-11-25 on the 2-core VM)."""
import json
import os

import pandas as pd
import pytest

from tests import timm_reference as tr
from tests.conftest import launch
from tests.test_probe import write_folder

ARCH = 'resnet10t'
# An auto search trains its trials, confirmation and refit: minutes on a busy 2-core VM, so on request.
ON_REQUEST = pytest.mark.skipif(os.environ.get('FPCLASS_SLOW_HUB') != '1', reason='FPCLASS_SLOW_HUB=1 runs it')


@pytest.fixture(scope='module')
def hub_env(tmp_path_factory):
  """(HF environment, the reference, a small image folder): the cache holds timm's resnet10t export."""
  tmp = tmp_path_factory.mktemp('hub-runs')
  case = tr.reference_case(ARCH, tmp, tmp / 'hub')
  root = tmp / 'climbing'
  write_folder(root)
  return {'HF_HUB_CACHE': str(tmp / 'hub'), 'HF_HUB_OFFLINE': '1'}, case.reference, root


def test_train_takes_the_model_and_its_preprocessing_from_the_checkpoint(hub_env, tmp_path):
  env, reference, root = hub_env
  launch('--config=configs/climbing.py:quick', f'--workdir={tmp_path}', f'--config.data.root={root}',
         f'--config.data.cache_dir={tmp_path / "cache"}', '--config.data.image_size=32,32', '--config.train.epochs=1',
         f'--config.model.pretrained={reference}', '--config.model.top=avg', env=env)
  metadata = json.loads((tmp_path / 'metadata.json').read_text())
  assert metadata['config']['model']['name'] == f'timm_{ARCH}'
  assert metadata['config']['model']['pretrained'] == reference
  assert (tmp_path / 'scores.json').is_file()


def test_probe_screens_a_hub_checkpoint(hub_env, tmp_path):
  env, reference, root = hub_env
  launch('--config=configs/climbing.py:probe,quick', '--mode=probe', f'--workdir={tmp_path}',
         f'--config.data.root={root}', f'--config.data.cache_dir={tmp_path / "cache"}',
         '--config.data.image_size=32,32', '--config.data.num_folds=2', '--config.probe.inner_folds=2',
         f'--config.probe.backbones=("{reference}",)', env=env)
  assert f'timm_{ARCH}' in (tmp_path / 'report.md').read_text()


def test_a_cold_cache_offline_is_one_line(tmp_path):
  result = launch('--config=configs/climbing.py:quick', f'--workdir={tmp_path / "run"}',
                  '--config.model.pretrained=hf-hub:timm/resnet18.a1_in1k', check=False,
                  env={'HF_HUB_CACHE': str(tmp_path / 'empty'), 'HF_HUB_OFFLINE': '1'})
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('fpclass: error: ') and 'HF_HUB_OFFLINE' in lines[-1] and 'resnet18.a1_in1k' in lines[-1]


def test_sweep_trains_every_member_from_the_checkpoint(hub_env, tmp_path):
  """In CI at the smallest size that still has both recipes: one fold of two, 16x16 images, one epoch."""
  env, reference, root = hub_env
  result = launch('--config=configs/climbing.py:quick', '--mode=sweep', f'--workdir={tmp_path}',
                  f'--config.data.root={root}', f'--config.data.cache_dir={tmp_path / "cache"}',
                  '--config.data.image_size=16,16', '--config.train.epochs=1', f'--config.model.pretrained={reference}',
                  '--config.model.top=avg', '--config.data.num_folds=2', '--config.sweep.folds=(0,)',
                  "--config.sweep.variants=('frozen: model.freeze_till=-1', 'tuned: model.freeze_till=0')",
                  '--config.sweep.seeds=(0,)', '--config.explain.after_training=False', env=env)
  models = pd.read_csv(tmp_path / 'sweep_models.csv')
  assert models[['experiment', 'split', 'seed']].values.tolist() == [['frozen', 0, 0], ['tuned', 0, 0]]
  for variant, freeze_till in (('frozen', -1), ('tuned', 0)):
    config = json.loads((tmp_path / variant / 'fold0' / 'metadata.json').read_text())['config']
    assert (config['model']['name'], config['model']['pretrained']) == (f'timm_{ARCH}', reference)
    assert config['model']['freeze_till'] == freeze_till
  assert 'feature cache' in result.stdout   # the frozen member trained its head on the backbone's features


@pytest.mark.slow
@ON_REQUEST
def test_auto_screens_and_searches_with_hub_checkpoints(hub_env, tmp_path):
  env, reference, root = hub_env
  result = launch('--config=configs/climbing.py:quick', '--mode=auto', f'--workdir={tmp_path}',
                  f'--config.data.root={root}', f'--config.data.cache_dir={tmp_path / "cache"}',
                  '--config.data.image_size=32,32', '--config.train.epochs=1', '--config.auto.folds=2',
                  '--config.auto.trials=2', '--config.auto.time_budget=1h', '--config.auto.confirm_seeds=()',
                  '--config.auto.finalists=1', f'--config.auto.backbones=("{reference}",)',
                  "--config.auto.space=('model.name: backbones',)", '--config.probe.inner_folds=2',
                  '--config.explain.after_training=False', env=env)
  assert 'chose trial' in result.stdout
  assert f'timm_{ARCH}' in (tmp_path / 'report.md').read_text()
