"""The layout's promises: the schema imports nothing of ours, every mode is one module with its function,
and each settings section's defaults are its dataclass's."""
import dataclasses
import importlib
import subprocess
import sys

import pytest

from fpclass import config as config_lib
from fpclass.modes import MODES, mode_function
from fpclass.validation import SETTINGS


def test_the_schema_imports_no_other_project_module():
  loaded = subprocess.run([sys.executable, '-c', 'import sys, fpclass.config; '
                           'print(sorted(m for m in sys.modules if m.startswith("fpclass")))'],
                          capture_output=True, text=True, check=True).stdout.strip()
  assert loaded == "['fpclass', 'fpclass.config']"


@pytest.mark.parametrize('name', sorted(MODES))
def test_every_mode_is_one_module_with_its_function(name):
  mode = MODES[name]
  module = importlib.import_module(f'fpclass.modes.{mode.module}')
  assert callable(mode_function(name)) and module.__doc__, f'fpclass.modes.{mode.module} needs a docstring'


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: s.__name__)
def test_each_settings_section_is_built_from_its_dataclass(settings):
  section = config_lib.base_config()[settings.SECTION]
  for field in dataclasses.fields(settings):
    assert section[field.name] == field.default
  assert settings.from_config(section) == settings()


def test_a_bad_settings_value_names_its_key():
  with pytest.raises(config_lib.ConfigError, match=r'config\.serve\.host=.*allow_remote'):
    config_lib.ServeSettings.from_config({'host': '0.0.0.0'})
  with pytest.raises(config_lib.ConfigError, match=r"config\.augment\.rotation='ten': must be a number"):
    config_lib.AugmentSettings.from_config({'rotation': 'ten'})
  with pytest.raises(config_lib.ConfigError, match=r'config\.explain\.colour: unknown key'):
    config_lib.ExplainSettings.from_config({'colour': 1})
