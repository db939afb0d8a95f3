"""The config a command line asks for: `--config <file>[:<arg>]` and every `--config.<key>=<value>` override.

ml_collections' config flag loads the file and applies the overrides, each parsed by the type of the value
it replaces, on a locked config (a misspelt key is an error that suggests the close ones). Two additions:
- the model section gets every key of its model from the registry (`fpclass.models.model_keys`) before the
  overrides apply, and from the overriding model when `--config.model.name` changes it;
- a tuple of names takes a comma-separated list: `--config.data.label_columns=a,b,c` is ('a', 'b', 'c'), as
  `--config.data.image_size=64,64` is (64, 64). Sweep variants and search-space entries keep their commas;
- a key given twice with a tuple literal is refused: ml_collections joins a tuple field's repeated values, so
  `--config.model.conv_channels=(16,32) --config.model.conv_channels=(32,64)` would build (16, 32, 32, 64).
"""
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from fpclass.errors import UserInputError
from fpclass.models import hub, model_keys

HELP = ('task config, e.g. configs/footprint.py:exp4; optional for the modes that read a trained workdir (its '
        'metadata.json holds the training config)')
# Tuples of strings whose items may themselves hold commas.
NOT_COMMA_LISTS = ('sweep.variants', 'auto.space')


class _CompletingParser(flags.ArgumentParser):
  """ml_collections' config-file parser, then the model section completed (for the model the command line
  names) and the config locked."""

  def __init__(self, file_parser: flags.ArgumentParser, argv):
    self._file_parser, self._argv = file_parser, argv

  def parse(self, argument):
    config = self._file_parser.parse(argument)
    if isinstance(config, ml_collections.ConfigDict):
      if 'model' in config:
        config = model_keys.completed(config, model_name_override(self._argv()))
      config.lock()
    return config

  def flag_type(self):
    return self._file_parser.flag_type()


def define_config_flag(flag_values=flags.FLAGS, argv=None) -> flags.FlagHolder:
  """Defines `--config` on `flag_values`; its overrides are read from `argv` (default: sys.argv at parse time)."""
  holder = config_flags.DEFINE_config_file('config', None, HELP, flag_values=flag_values, lock_config=False,
                                           sys_argv=argv)
  flag = flag_values['config']
  flag.parser = _CompletingParser(flag.parser, (lambda: argv) if argv is not None else (lambda: sys.argv))
  return holder


def finish(flag_values=flags.FLAGS) -> None:
  """After parsing: each comma-separated list given for a tuple of names split into its items."""
  config = flag_values['config'].value
  for path, value in flag_values['config'].override_values.items():
    if path in NOT_COMMA_LISTS or not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
      continue
    items = tuple(item.strip() for v in value for item in v.split(',') if item.strip())
    if items != value:
      *parents, leaf = path.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = items


def parse(flag_values, argv: list[str]) -> list[str]:
  """Parses `argv` into `flag_values` (which has the config flag); returns the arguments left over. Every
  config problem is a UserInputError of one line naming the flag: config_flags raises AttributeError or
  KeyError for an override naming no key, embeds a traceback in a config file's own ValueError, and reports
  a missing file only when the config is first read."""
  _refuse_repeated_tuples(argv)
  try:
    args = flag_values(argv)
    if flag_values.config is not None:
      flag_values.config.get('name')  # the first read loads the file, so a missing one fails here
  except (AttributeError, KeyError) as e:
    hint = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').split()).strip('"\'')
    found = re.search(r'instead of "([^"]+)"', hint) or re.search(r"'([^']+)'", hint)
    key = found.group(1) if found else hint
    bad = [a.split('=')[0] for a in argv if a.startswith('--config.') and key in a.split('=')[0].split('.')]
    suggestion = re.search(r'Did you mean .*', hint)
    raise UserInputError(f'{bad[0] if bad else "--config"}: no such config key'
                         + (f'. {suggestion.group(0)}' if suggestion else f' ({hint})')) from None
  except UserInputError:
    raise
  except (flags.Error, ValueError, OSError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = lines[-1] if lines else str(e)
    if 'No such file' in str(e):
      detail = 'config file not found (' + detail + ')'
    raise UserInputError(f'--config: {detail}' if 'config' in str(e) else detail) from None
  if flag_values.config is not None:
    finish(flag_values)
  return args


def _refuse_repeated_tuples(argv: list[str]) -> None:
  """One line for a `--config.<key>` given more than once where an occurrence is a tuple or list literal: a
  script that appends its own overrides to common ones means the last, and ml_collections would join them.
  Repeating bare values (`--config.data.label_columns=a --config.data.label_columns=b`) keeps its meaning."""
  seen = {}
  for key, value in _overrides(argv):
    seen.setdefault(key, []).append(value or '')
  for key, values in seen.items():
    if len(values) > 1 and any(v.strip().startswith(('(', '[')) for v in values):
      raise UserInputError(f'--config.{key} is given {len(values)} times ({", ".join(values)}): ml_collections '
                           'would join the tuples into one; give it once')


def _overrides(argv) -> list[tuple[str, str | None]]:
  """Each `--config.<key>` override in `argv`, in order, as (key, value): the value after '=', else the next
  argument (absl's two forms), None where there is none."""
  found = []
  for i, arg in enumerate(argv or ()):
    match = re.fullmatch(r'--?config\.([\w.]+)(?:=(.*))?', arg, re.DOTALL)
    if match:
      found.append((match.group(1), match.group(2) if match.group(2) is not None else (
          argv[i + 1] if i + 1 < len(argv) else None)))
  return found


def config_from_argv(argv: list[str]) -> ml_collections.ConfigDict:
  """The config `argv` (its `--config` and `--config.<key>=...` arguments) asks for, as launch.py builds it.
  For tests and scripts: each call has its own flags."""
  flag_values = flags.FlagValues()
  define_config_flag(flag_values, argv)
  parse(flag_values, argv)
  return flag_values.config


def model_name_override(argv) -> str | None:
  """The last `--config.model.name` value in `argv`; without one, the model a Hub checkpoint given as
  `--config.model.pretrained` implies ('hf-hub:timm/resnet50.a1_in1k': timm_resnet50); else None."""
  found = {key.removeprefix('model.'): value for key, value in _overrides(argv)
           if key in ('model.name', 'model.pretrained')}
  if found.get('name') is None and found.get('pretrained'):
    return hub.implied_model(found['pretrained']) or None
  return found.get('name')
