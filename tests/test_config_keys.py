"""Every `--config.<key>` that README.md, CONTRIBUTING.md, docs/ and configs/ mention overrides from the command
line on every config that has it, through launch.py's own parser (`fpclass.modes.command_line`)."""
import functools
import importlib.util
import re

import ml_collections
import pytest

from fpclass.errors import UserInputError
from fpclass.models import model_keys
from fpclass.modes.command_line import config_from_argv
from tests.conftest import REPO

# Keys the docs show on purpose as mistakes (the error a typo gets).
DOCUMENTED_TYPOS = {'train.epochz'}
SEED_CONFIGS = ('footprint', 'cifar_vehicles', 'climbing', 'horses_humans', 'cats_dogs')


def documented_keys() -> set[str]:
  texts = [REPO / 'README.md', REPO / 'CONTRIBUTING.md', *sorted((REPO / 'docs').rglob('*.md')),
           *sorted((REPO / 'configs').glob('*.py'))]
  keys = set()
  for path in texts:
    keys.update(re.findall(r'--config\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)', path.read_text()))
  return keys - DOCUMENTED_TYPOS


def config_variants() -> list[str]:
  """'configs/<file>.py[:<arg>]' for every config file and each argument it takes alone."""
  specs = []
  for path in sorted((REPO / 'configs').glob('*.py')):
    if path.stem in ('__init__', 'workdir'):
      continue
    spec = importlib.util.spec_from_file_location(f'cfg_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in ['', *getattr(module, 'CHOICES', {})]:
      try:
        module.get_config(arg)
      except ValueError:   # an argument that needs another one (configs/finetune.py's quick)
        continue
      specs.append(f'configs/{path.name}' + (f':{arg}' if arg else ''))
  return specs


VARIANTS = config_variants()
KEYS = sorted(documented_keys())


def load(spec: str, *overrides: str):
  return config_from_argv(['launch.py', f'--config={spec}', *overrides])


@functools.lru_cache(maxsize=None)
def as_given(spec: str):
  """The config file's own config (no override), loaded once: every key's test reads it, none changes it."""
  return load(spec)


def lookup(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def another_value(value):
  """A command-line value of the same type as `value`, different from it where the type allows."""
  if isinstance(value, bool):
    return str(not value)
  if isinstance(value, (int, float)):
    return str(value + 1)
  if isinstance(value, tuple):
    return repr(tuple(type(v)(another_value(v)) for v in value)) if value else "('x',)"
  return value + 'x'


def test_the_docs_mention_keys_and_every_config_file_loads():
  assert len(KEYS) > 40 and any(k.startswith('model.') for k in KEYS)
  assert len(VARIANTS) > 50


@pytest.mark.parametrize('key', KEYS)
def test_each_documented_key_overrides_on_every_config_that_has_it(key):
  """Model keys on every config whose model has the key (and at least one does, or some registered model);
  the others on every config file's default."""
  checked = 0
  for spec in VARIANTS:
    if not key.startswith('model.') and ':' in spec:
      continue
    config = as_given(spec)
    try:
      current = lookup(config, key)
    except (KeyError, AttributeError):
      assert key.startswith('model.'), f'{spec}: --config.{key} is not a key'
      continue
    if isinstance(current, ml_collections.ConfigDict):   # a section named in prose ('--config.serve.*')
      checked += 1
      continue
    if key == 'model.name':
      text = current
    elif isinstance(current, str) and key != 'model.pretrained':
      text = current   # names the schema checks later (a source, a metric): the same value parses
    else:
      text = another_value(current)
    overridden = load(spec, f'--config.{key}={text}')
    expected = lookup(as_given(spec), key) if text == current else None
    if expected is not None:
      assert lookup(overridden, key) == expected
    else:
      assert lookup(overridden, key) != current, f'{spec}: --config.{key}={text} left {current!r}'
    checked += 1
  if key.startswith('model.') and checked == 0:
    leaf = key.split('.', 1)[1]
    owners = [n for n in sorted(model_keys.models.REGISTRY) if leaf in model_keys.model_keys(n)]
    assert owners, f'--config.{key}: no registered model has it'
    config = load('configs/footprint.py', f'--config.model.name={owners[0]}', f'--config.{key}={leaf}')
    checked = 1
  assert checked


@pytest.mark.parametrize('name', SEED_CONFIGS)
def test_the_readme_override_example_works_on_every_seed_config(name):
  assert load(f'configs/{name}.py', '--config.model.dropout=0.3').model.dropout == 0.3


@pytest.mark.parametrize('spec,key,value', [
    ('configs/footprint.py:resnet18', 'drop_path_rate', 0.1), ('configs/footprint.py:efficientnet_b0', 'drop_path_rate', 0.1),
    ('configs/finetune.py:convnext_tiny', 'freeze_till', 2), ('configs/finetune.py:vit_b16', 'top', 'avg'),
    ('configs/finetune.py:dinov2_vits14', 'top', 'avg'), ('configs/finetune.py:convnext_tiny', 'top', 'avg'),
    ('configs/climbing.py:resnet50', 'cut', 'conv4'), ('configs/footprint.py:resnet18', 'cut', 'layer3'),
    ('configs/climbing.py:probe', 'pretrained', '/w.h5'), ('configs/cats_dogs.py', 'pretrained', '/w.h5')])
def test_the_model_keys_the_issue_found_refused_now_override(spec, key, value):
  """The keys that were refused because the config file had not set them, though sweeps accepted them."""
  assert lookup(load(spec, f'--config.model.{key}={value}'), f'model.{key}') == value


def test_a_changed_model_name_brings_its_own_keys_and_refuses_the_old_ones():
  config = load('configs/footprint.py', '--config.model.name=resnet18', '--config.model.drop_path_rate=0.1')
  assert config.model.name == 'resnet18' and config.model.drop_path_rate == 0.1
  assert 'fc_sizes' not in config.model and config.model.head == 'softmax'
  with pytest.raises(UserInputError, match=r'--config\.model\.fc_sizes: no such config key'):
    load('configs/footprint.py', '--config.model.name=resnet18', '--config.model.fc_sizes=(8,)')
  # The grayscale transfer config's channels carry over to another backbone; its stage settings do not.
  gray = load('configs/footprint.py:resnet18', '--config.model.name=alexnet')
  assert gray.model.in_channels == 1 and gray.model.pretrained == '' and gray.model.freeze_till == 0


def test_a_misspelt_model_key_suggests_the_close_one():
  with pytest.raises(UserInputError, match=r'--config\.model\.dropot: no such config key\. Did you mean "dropout"'):
    load('configs/footprint.py', '--config.model.dropot=0.3')
  with pytest.raises(UserInputError, match=r'config\.model\.dropot is not a key of model .footprint_cnn. \(did you '
                                           r'mean dropout\?\)'):
    model_keys.complete({'name': 'footprint_cnn', 'dropot': 0.3})


def test_a_model_key_keeps_its_type_check():
  with pytest.raises(UserInputError, match=r'--config'):
    load('configs/footprint.py', '--config.model.dropout=lots')


@pytest.mark.parametrize('argument,expected', [('a,b,c', ('a', 'b', 'c')), ("('a', 'b')", ('a', 'b')),
                                               ('a', ('a',)), ('a, b', ('a', 'b'))])
def test_a_tuple_of_names_takes_a_comma_separated_list(argument, expected):
  config = load('configs/multilabel.py', f'--config.data.label_columns={argument}', '--config.data.task=multilabel')
  assert config.data.label_columns == expected


def test_sweep_variants_keep_their_commas():
  variant = 'size: data.image_size=(8,8); model.conv_channels=(4,8)'
  assert load('configs/digits.py', f'--config.sweep.variants=({variant!r},)').sweep.variants == (variant,)


def test_a_tuple_key_given_twice_is_refused_not_joined():
  # ml_collections joins a tuple field's repeated values: (16, 32) then (32, 64) would build four conv stages
  with pytest.raises(UserInputError, match=r'--config.model.conv_channels is given 2 times \(\(16,32\), \(32,64\)\)'):
    load('configs/mnist.py', '--config.model.conv_channels=(16,32)', '--config.model.conv_channels=(32,64)')
  with pytest.raises(UserInputError, match='--config.data.image_size is given 2 times'):
    load('configs/mnist.py', '--config.data.image_size', '[8, 8]', '--config.data.image_size=(16,16)')
  # bare values keep ml_collections' meaning, one item each
  config = load('configs/multilabel.py', '--config.data.label_columns=a', '--config.data.label_columns=b',
                '--config.data.task=multilabel')
  assert config.data.label_columns == ('a', 'b')
