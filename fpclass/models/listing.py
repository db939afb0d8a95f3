"""The registered models as `--mode models` lists them: name (and timm's name), family, parameters, default input
size and whether parity with the source framework is verified; selected by an fnmatch pattern. A name that
matches nothing gets its close matches, or one line naming the ported families."""
import dataclasses
import difflib
import fnmatch
import re

import jax
import jax.numpy as jnp

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.models import hub, timm_verified

PARITY_TESTS = {'torchvision': 'tests/test_pretrained_torchvision.py, test_pretrained_modern.py',
                'keras': 'tests/test_pretrained_keras*.py', 'dinov2': 'tests/test_pretrained_modern.py'}


@dataclasses.dataclass(frozen=True)
class Row:
  name: str             # the registered name (config.model.name)
  family: str
  parameters: int       # -1: not counted
  input_size: tuple     # (H, W) the weights were trained at; () unknown
  verified: str         # where parity was verified, or 'no'
  description: str


def registry() -> dict:
  models.get_spec('footprint_cnn')   # imports every family
  return models.REGISTRY


def timm_family(spec) -> str:
  """A timm port's family note ('ResNet family', 'ConvNeXt V2', ...), from its description."""
  found = re.search(r'\(([^)]+)\)', spec.description)
  return found.group(1) if found else spec.family


def ported_families() -> list[str]:
  return sorted({timm_family(s) for s in registry().values() if s.family == 'timm'})


def close_names(name: str) -> list[str]:
  """Registered names close to `name` (a registered name, a timm name, or a Hub reference)."""
  bare = name.removeprefix(hub.PREFIX).removeprefix('timm/').split('.')[0].removeprefix(hub.NAME_PREFIX)
  keys = {}
  for registered in registry():
    keys.setdefault(registered, registered)
    keys.setdefault(registered.removeprefix(hub.NAME_PREFIX), registered)
  found = [keys[k] for k in difflib.get_close_matches(bare, keys, n=6, cutoff=0.75)]
  return list(dict.fromkeys(found))[:5]


def select(pattern: str = '*', family: str = '') -> list:
  """The specs whose name (or timm name) matches `pattern` in `family`; a pattern matching none is an error
  naming the close names, or the ported families when it names an unported timm architecture."""
  specs = registry()
  chosen = [s for name, s in sorted(specs.items()) if (not family or s.family == family) and
            (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.removeprefix(hub.NAME_PREFIX), pattern))]
  if chosen:
    return chosen
  if family and family not in {s.family for s in specs.values()}:
    raise UserInputError(f'config.models.family={family!r}: no such family; families are '
                         f'{sorted({s.family for s in specs.values()})}')
  close = close_names(pattern)
  if close:
    raise UserInputError(f'config.models.pattern={pattern!r} matches no registered model; close: {", ".join(close)}')
  raise UserInputError(f'config.models.pattern={pattern!r}: not a ported architecture; timm checkpoints load for '
                       f'the families {", ".join(ported_families())} (and fpclass ports: '
                       f'{", ".join(sorted({s.family for s in specs.values()} - {"timm"}))})')


def count_parameters(spec) -> int:
  """Parameters of a pretrained `spec`'s module with a 1000-class source head, traced at its input size, not
  run; -1 for a seed CNN (its count depends on config.data.image_size)."""
  if not spec.pretrained:
    return -1
  module = spec.module(num_outputs=1000)
  keywords = getattr(spec.module, 'keywords', {})
  side = 2 * keywords['patch_size'] if 'patch_size' in keywords else (spec.input_size or (224,))[0]
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3)), train=False))
  return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes.get('params', {}))))


def verified(spec) -> str:
  if spec.family == 'timm':
    return 'bench/hub_parity.py' if spec.name.removeprefix(hub.NAME_PREFIX) in timm_verified.VERIFIED else 'no'
  return PARITY_TESTS.get(spec.family, 'no') if spec.pretrained else '-'


def parameters_of(spec, trace: bool) -> int:
  """The recorded count of a timm port (bench/hub_parity.py), else traced when `trace`, else -1."""
  recorded = timm_verified.PARAMETERS.get(spec.name.removeprefix(hub.NAME_PREFIX)) if spec.family == 'timm' else None
  return recorded if recorded is not None else (count_parameters(spec) if trace else -1)


def rows(pattern: str = '*', family: str = '', parameters: bool = True) -> list[Row]:
  return [Row(spec.name, timm_family(spec) if spec.family == 'timm' else spec.family, parameters_of(spec, parameters),
              spec.input_size, verified(spec), spec.description)
          for spec in select(pattern, family)]
