"""The layout's promises: the schema imports nothing of ours, every mode is one module with its function, no
mode imports another and the core imports no mode, and each settings section's defaults are its dataclass's."""
import ast
import dataclasses
import functools
import importlib
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from fpclass import models
from fpclass.config import outputs, schema
from fpclass.config import settings as config_settings
from fpclass.config.inputs import AugmentSettings
from fpclass.config.schema import SETTINGS
from fpclass.models import model_keys
from fpclass.modes import MODES, mode_function
from tests.conftest import REPO


def test_the_schema_imports_no_other_project_module():
  loaded = subprocess.run([sys.executable, '-c', 'import sys, fpclass.config; '
                           'print(sorted(m for m in sys.modules if m.startswith("fpclass")))'],
                          capture_output=True, text=True, check=True).stdout.strip()
  assert all(name == 'fpclass' or name.startswith('fpclass.config') for name in eval(loaded)), loaded


def test_training_imports_no_plotting_module():
  """Every module of fpclass/train imported, matplotlib is not: figures belong to the reports and modes that draw
  them (a sweep's table, the lr_find plot), not to the loop that trains."""
  code = ('import importlib, pkgutil, sys, fpclass.train\n'
          'for info in pkgutil.iter_modules(fpclass.train.__path__):\n'
          '  importlib.import_module("fpclass.train." + info.name)\n'
          'print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")[:3])')
  loaded = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=REPO)
  assert loaded.stdout.strip() == '[]', loaded.stdout


@pytest.mark.parametrize('name', sorted(MODES))
def test_every_mode_is_one_module_with_its_function(name):
  mode = MODES[name]
  module = importlib.import_module(f'fpclass.modes.{mode.module}')
  assert callable(mode_function(name)) and module.__doc__, f'fpclass.modes.{mode.module} needs a docstring'


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: s.__name__)
def test_each_settings_section_is_built_from_its_dataclass(settings):
  section = schema.base_config()[settings.SECTION]
  for field in dataclasses.fields(settings):
    value, default = section[field.name], field.default
    if isinstance(default, config_settings.Settings):   # a nested section (data.tfds): its keys and defaults
      value, default = value.to_dict(), default.defaults()
    assert value == default
  assert settings.from_config(section) == settings()


def test_a_bad_settings_value_names_its_key():
  with pytest.raises(config_settings.ConfigError, match=r'config\.serve\.host=.*allow_remote'):
    outputs.ServeSettings.from_config({'host': '0.0.0.0'})
  with pytest.raises(config_settings.ConfigError, match=r"config\.augment\.rotation='ten': must be a number"):
    AugmentSettings.from_config({'rotation': 'ten'})
  with pytest.raises(config_settings.ConfigError, match=r'config\.explain\.colour: unknown key'):
    outputs.ExplainSettings.from_config({'colour': 1})


def project_imports(path) -> set[str]:
  """The fpclass modules a source file imports (`import fpclass.x`, `from fpclass.x import y`, `from fpclass
  import x`), from its syntax tree: every import, at any depth, counts."""
  found = set()
  for node in ast.walk(parsed(pathlib.Path(path).read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.startswith('fpclass'))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('fpclass') and not node.level:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return found


def import_violations(package_root) -> list[str]:
  """'a -> b' for every mode module that imports another mode module (the runner and the registry may import
  the modes), and every core module that imports `fpclass.modes`."""
  root = pathlib.Path(package_root)
  modes = {p.stem for p in (root / 'modes').glob('*.py') if p.stem != '__init__'}
  violations = []
  for path in sorted(root.rglob('*.py')):
    relative = path.relative_to(root.parent).with_suffix('')
    name = '.'.join(relative.parts)
    imported = {'.'.join(i.split('.')[:3]) for i in project_imports(path)}   # fpclass.modes.<module>
    if relative.parts[1] == 'modes':
      if path.stem in ('__init__', 'runner'):
        continue
      violations += [f'{name} -> {i}' for i in sorted(imported)
                     if i.startswith('fpclass.modes.') and i.split('.')[2] in modes and i.split('.')[2] != path.stem]
    else:
      violations += [f'{name} -> {i}' for i in sorted(imported) if i == 'fpclass.modes' or i.startswith('fpclass.modes.')]
  return violations


# The stage packages, bottom to top: a package imports only those on levels below its own (and the foundations,
# errors and fileio). A level of several packages holds siblings: the features built on a trained run (explain,
# ensemble, probe, distill, deploy) import the core below them and never one another. docs/architecture.md draws
# the graph this gives (`package_graph`).
LEVELS = ('config', 'runtime', 'data', 'models', 'analysis', 'train', 'infer',
          ('explain', 'ensemble', 'probe', 'distill', 'deploy'), 'auto', 'serve', 'modes')
STAGES = tuple(p for level in LEVELS for p in ((level,) if isinstance(level, str) else level))
LEVEL_OF = {p: i for i, level in enumerate(LEVELS) for p in ((level,) if isinstance(level, str) else level)}
FOUNDATIONS = ('errors', 'fileio')


def package_of(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def package_edges(package_root) -> dict[tuple[str, str], list[str]]:
  """(importing package, imported package) -> the module imports behind it, between different packages."""
  edges: dict = {}
  for name, imported in module_graph(package_root).items():
    for other in imported:
      a, b = package_of(name), package_of(other)
      if a != b and a and b not in FOUNDATIONS + ('',):   # '': the fpclass package itself
        edges.setdefault((a, b), []).append(f'{name} -> {other}')
  return edges


def upward_imports(package_root) -> list[str]:
  """Every import of a package on the importer's level or above it in LEVELS (or not a stage at all)."""
  bad = []
  for (a, b), imports in sorted(package_edges(package_root).items()):
    if a in FOUNDATIONS:
      bad += imports   # the foundations import no stage
    elif a not in LEVEL_OF or b not in LEVEL_OF or LEVEL_OF[b] >= LEVEL_OF[a]:
      bad += imports
  return bad


def test_the_stage_packages_import_only_downwards():
  assert upward_imports(REPO / 'fpclass') == []


def planted_copy(tmp_path, plants: dict) -> pathlib.Path:
  """A copy of the package with `plants` ({module path under fpclass/: text}) appended; returns its root."""
  root = tmp_path / 'fpclass'
  shutil.copytree(REPO / 'fpclass', root, ignore=shutil.ignore_patterns('__pycache__', 'static'))
  for module, text in plants.items():
    (root / module).write_text((root / module).read_text() + text)
  return root


def test_the_stage_rule_catches_a_planted_upward_import(tmp_path):
  root = planted_copy(tmp_path, {'train/loop.py': '\nfrom fpclass.infer import inference  # noqa\n'})
  assert 'fpclass.train.loop -> fpclass.infer.inference' in upward_imports(root)
  assert all(v.startswith('fpclass.train.loop -> fpclass.infer') for v in upward_imports(root))


def test_the_stage_rule_catches_a_feature_importing_its_sibling(tmp_path):
  root = planted_copy(tmp_path, {'distill/report.py': '\nfrom fpclass.ensemble import selection  # noqa\n'})
  assert 'fpclass.distill.report -> fpclass.ensemble.selection' in upward_imports(root)
  assert all(v.startswith('fpclass.distill.report -> fpclass.ensemble') for v in upward_imports(root))


def _all_model_names() -> list[str]:
  models.get_spec('footprint_cnn')   # registers every family
  return list(models.REGISTRY)


# The config sections and their keys. A read of `<holder>.<section>.<key>`, for a key of that section, outside
# fpclass/config and the modes is a consumer reading the raw ConfigDict instead of its typed section, whatever
# the holder is named. The one exception is a holder that is a `RunSettings` (fpclass/config/run.py: a run's typed
# sections, parsed once per variant) or another object of ours whose fields share a section's name (`TrainData`'s
# `class_names`), known from the code's own annotations: a parameter or field annotated with one of our classes,
# an attribute assigned from such a parameter, a local assigned from a typed expression, and calls that return a
# RunSettings (`RunSettings.from_config`, `.phase`, `.with_split`, `validate`). Other objects whose fields share
# a section's name (a dataset's `train` split, a task's `model` module, `jax.export`) have other attributes.
SECTION_KEYS = {name: frozenset(section.keys()) for name, section in schema.base_config().items()
                if hasattr(section, 'keys')}
SECTION_KEYS['model'] = frozenset(['name', 'head', 'pretrained', 'keep_pretrained_head', *(
    key for name in sorted({n for n in map(str, _all_model_names())}) for key in model_keys.model_keys(name))])
SECTIONS = frozenset(SECTION_KEYS)
RAW_READERS = ('config', 'modes')   # the schema, and the leaves that parse a run's config and hand it on
TYPED = 'RunSettings'
TYPED_CALLS = frozenset(['from_config', 'phase', 'with_split', 'validate'])


def _annotated_typed(annotation) -> bool:
  """An annotation naming a class of ours: a RunSettings, or an object whose fields only share a section's name
  (`TrainData.class_names`); a ConfigDict, a mapping or Any is not typed."""
  if annotation is None:
    return False
  text = ast.unparse(annotation)
  return not any(word in text for word in ('ConfigDict', 'dict', 'Any', 'Mapping')) and text[:1].isupper()


def _typed_attributes(tree) -> set[str]:
  """Attribute names that hold a RunSettings: annotated fields, and `self.x` assigned from a typed parameter."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.AnnAssign) and _annotated_typed(node.annotation):
      target = node.target
      names.add(target.id if isinstance(target, ast.Name) else getattr(target, 'attr', ''))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      params = {a.arg for a in node.args.args + node.args.kwonlyargs if _annotated_typed(a.annotation)}
      for inner in ast.walk(node):
        if isinstance(inner, ast.Assign):
          for target, value in _pairs(inner):
            if isinstance(target, ast.Attribute) and isinstance(value, ast.Name) and value.id in params:
              names.add(target.attr)
  return names - {''}


def _pairs(assign: ast.Assign) -> list:
  """(target, value) pairs of an assignment, a tuple unpacked element by element."""
  out = []
  for target in assign.targets:
    if isinstance(target, ast.Tuple) and isinstance(assign.value, ast.Tuple) and \
       len(target.elts) == len(assign.value.elts):
      out += list(zip(target.elts, assign.value.elts))
    else:
      out.append((target, assign.value))
  return out


def _is_typed(node, local: set[str], attributes: set[str]) -> bool:
  if isinstance(node, ast.Name):
    return node.id in local
  if isinstance(node, ast.Attribute):
    return node.attr in attributes
  if isinstance(node, ast.Call):
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
    if name == 'from_config':
      return isinstance(func, ast.Attribute) and ast.unparse(func.value) == TYPED
    return name in TYPED_CALLS and (name == 'validate' or _is_typed(func.value, local, attributes))
  return False


def _reads_in(function, inherited: set[str], attributes: set[str], found: list, where: str) -> None:
  """Raw reads in `function`'s own body (nested functions and lambdas see its typed locals)."""
  args = function.args
  local = set(inherited) | {a.arg for a in args.args + args.kwonlyargs
                            if _annotated_typed(getattr(a, 'annotation', None))}
  body = function.body if isinstance(function.body, list) else [function.body]
  for statement in body:
    for node in ast.walk(statement):
      if isinstance(node, ast.Assign):
        local |= {t.id for t, value in _pairs(node) if isinstance(t, ast.Name) and _is_typed(value, local, attributes)}
  stack = list(body)
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      _reads_in(node, local, attributes, found, where)
      continue
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and isinstance(node.ctx, ast.Load):
      section, holder = node.value, node.value.value
      own_field = isinstance(holder, ast.Name) and holder.id == 'self' and section.attr in attributes
      if section.attr in SECTIONS and node.attr in SECTION_KEYS[section.attr] and not own_field and \
         not _is_typed(holder, local, attributes):
        found.append(f'{where}:{node.lineno} {ast.unparse(node)}')
    stack.extend(ast.iter_child_nodes(node))


def raw_config_reads(package_root) -> list[str]:
  """'module:line <holder>.<section>.<key>' for each raw read of a config key in the core (writes, which build a
  config, and passing a whole section to its `from_config` are fine)."""
  texts = {path: path.read_text() for path in sorted(pathlib.Path(package_root).rglob('*.py'))}
  attributes = frozenset().union(*(_file_attributes(text) for text in texts.values()))
  found = [read for path, text in texts.items() if path.relative_to(package_root).parts[0] not in RAW_READERS
           for read in _file_reads(text, str(path.relative_to(package_root)), attributes)]
  return sorted(set(found), key=lambda r: (r.split(':')[0], int(r.split(':')[1].split(' ')[0])))


# The rules walk every module's syntax tree; the planted copies differ from the package in one file, so each
# file's tree and findings are kept by its text (the trees are only read).
@functools.lru_cache(maxsize=None)
def parsed(text: str) -> ast.Module:
  return ast.parse(text)


@functools.lru_cache(maxsize=None)
def _file_attributes(text: str) -> frozenset:
  return frozenset(_typed_attributes(parsed(text)))


@functools.lru_cache(maxsize=None)
def _file_reads(text: str, where: str, attributes: frozenset) -> tuple:
  found = []
  module = ast.FunctionDef(name='<module>', args=ast.arguments([], [], None, [], [], None, []), body=parsed(text).body,
                           decorator_list=[], returns=None, type_params=[])
  _reads_in(module, set(), attributes, found, where)
  return tuple(found)


def test_the_core_reads_typed_sections_not_the_configdict():
  assert raw_config_reads(REPO / 'fpclass') == []


@pytest.mark.parametrize('holder', ['config', 'base', 'cfg', 'self.settings_dict'])
def test_the_typed_read_rule_catches_a_planted_raw_read(tmp_path, holder):
  """Whatever the holder is named, a raw read is found; the same read from a RunSettings is not."""
  plant = (f'\n\ndef epochs({holder.split(".")[0]}):\n  return {holder}.train.epochs\n'
           '\n\ndef typed_epochs(run: RunSettings):\n  return run.train.epochs\n')
  root = planted_copy(tmp_path, {'train/loop_state.py': plant})
  assert [r.split(' ')[1] for r in raw_config_reads(root)] == [f'{holder}.train.epochs']


# Where a ConfigDict enters the flow and is parsed, once: the schema itself; the modes (a launch's own sections);
# where a plan is made from the variants (`plan`, `sweep_plan`) and a launch is checked (`validation`); where a
# workdir's stored config is read back (`sidecar`) and its model restored (`inference`: the restored run's
# RunSettings ride on `Trained`, and an ensemble's members' on `MemberModel`: `ensemble`); a tracking sink's own
# section when the job's tracker is made; a served job's, in the worker process it is handed to (`worker`,
# `load_service`); the search's, in `run_auto`; and `models.create_model`, the package's door for a model, which
# takes config.model typed or as a ConfigDict. Everything else takes typed settings.
ENTRIES = ('config/', 'modes/', 'train/plan.py', 'train/sweep_plan.py', 'train/validation.py', 'train/sidecar.py',
           'infer/inference.py', 'infer/ensemble.py', 'runtime/sinks/', 'serve/worker.py',
           'serve/service.py::load_service', 'auto/search.py::run_auto', 'models/__init__.py::create_model')


def parses_outside_the_entries(package_root) -> list[str]:
  """'module:line' of each `from_config` call outside the modules and functions where a ConfigDict enters
  (ENTRIES)."""
  root, found = pathlib.Path(package_root), []
  for path in sorted(root.rglob('*.py')):
    where = path.relative_to(root).as_posix()
    if where.startswith(tuple(e for e in ENTRIES if '::' not in e)):
      continue
    tree = parsed(path.read_text())
    entries = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f'{where}::{f.name}' in ENTRIES]
    skipped = {id(node) for f in entries for node in ast.walk(f)}
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'from_config' and id(node) not in skipped:
        found.append(f'{where}:{node.lineno}')
  return found


def parse_counts(package_root) -> dict:
  """{'calls': n, 'files': n, 'by_package': {...}, 'by_section': {...}} of the `<Settings>.from_config(` calls
  outside fpclass/config: the figures docs/architecture.md gives (`python -m tests.test_architecture --parses`)."""
  root = pathlib.Path(package_root)
  by_package, by_section, files = {}, {}, set()
  for path in sorted(root.rglob('*.py')):
    where = path.relative_to(root).as_posix()
    if where.startswith('config/'):
      continue
    for node in ast.walk(parsed(path.read_text())):
      if isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'from_config' and \
         isinstance(node.func.value, ast.Name):
        package, section = where.split('/')[0], node.func.value.id
        by_package[package] = by_package.get(package, 0) + 1
        by_section[section] = by_section.get(section, 0) + 1
        files.add(where)
  return dict(calls=sum(by_package.values()), files=len(files), by_package=by_package, by_section=by_section)


def test_settings_are_parsed_once_where_a_config_enters():
  assert parses_outside_the_entries(REPO / 'fpclass') == []


def test_the_parse_rule_catches_a_planted_parse(tmp_path):
  plant = '\n\ndef epochs(config):\n  return TrainSettings.from_config(config.train).epochs\n'
  root = planted_copy(tmp_path, {'train/cohort.py': plant, 'deploy/int8.py': plant})
  assert [r.split(':')[0] for r in parses_outside_the_entries(root)] == ['deploy/int8.py', 'train/cohort.py']


def package_graph(package_root) -> str:
  """The stage graph as a mermaid flowchart, one line per package with what it imports."""
  edges = package_edges(package_root)
  lines = ['flowchart BT']
  for package in STAGES:
    below = sorted({b for a, b in edges if a == package}, key=STAGES.index)
    lines.append(f'  {package}' + (f' --> {" & ".join(below)}' if below else ''))
  return '\n'.join(lines)


def test_the_architecture_page_draws_the_graph_the_code_has():
  """docs/architecture.md's stage graph is this one (regenerate it with `python -m tests.test_architecture`)."""
  assert f'```mermaid\n{package_graph(REPO / "fpclass")}\n```' in (REPO / 'docs' / 'architecture.md').read_text()


def test_no_mode_imports_another_and_the_core_imports_no_mode():
  assert import_violations(REPO / 'fpclass') == []


def test_the_import_rule_catches_a_planted_violation(tmp_path):
  root = planted_copy(tmp_path, {'modes/submit.py': '\nfrom fpclass.modes import calibrate  # noqa\n',
                                 'train/task.py': '\nfrom fpclass.modes.runner import run  # noqa\n'})
  assert import_violations(root) == ['fpclass.modes.submit -> fpclass.modes.calibrate',
                                                     'fpclass.train.task -> fpclass.modes.runner']


def test_module_docstrings_are_short_and_name_no_seed():
  """What and why in a few lines; the design notes and measurements live in docs/ (docs/modules.md), and the
  seed projects are named in configs/ and docs/ only."""
  long, seeds = [], []
  for path in sorted((REPO / 'fpclass').rglob('*.py')):
    text = path.read_text()
    doc = ast.get_docstring(parsed(text), clean=False) or ''
    if len(doc.splitlines()) > 15:
      long.append(f'{path.relative_to(REPO)}: {len(doc.splitlines())} lines')
    if 'seed 00' in text.lower():
      seeds.append(str(path.relative_to(REPO)))
  assert long == [] and seeds == []


def module_graph(package_root) -> dict[str, set[str]]:
  """Each fpclass module -> the fpclass modules it imports (a package import counts as its __init__)."""
  root = pathlib.Path(package_root)
  names = {'.'.join(p.relative_to(root.parent).with_suffix('').parts).removesuffix('.__init__')
           for p in root.rglob('*.py')}
  graph = {}
  for path in root.rglob('*.py'):
    name = '.'.join(path.relative_to(root.parent).with_suffix('').parts).removesuffix('.__init__')
    graph[name] = {i for i in project_imports(path) if i in names and i != name}
  return graph


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
  memo = {}

  def chain(name, seen=()):
    if name not in memo:
      if name in seen:
        raise AssertionError(f'import cycle through {name}')
      memo[name] = [name] + max((chain(i, seen + (name,)) for i in graph[name]), key=len, default=[])
    return memo[name]
  return max((chain(name) for name in graph), key=len)


def test_the_longest_import_chain_is_at_most_9_modules():
  """A newcomer changing a module should not have to follow it through a long chain of importers. Nine: a mode,
  the search stage above training, then training's own chain down to the foundations (8 before the search
  stage existed)."""
  chain = longest_chain(module_graph(REPO / 'fpclass'))
  assert len(chain) <= 9, ' -> '.join(chain)


def test_the_chain_check_sees_a_planted_long_chain():
  graph = {f'm{i}': {f'm{i + 1}'} for i in range(9)} | {'m9': set()}
  assert len(longest_chain(graph)) == 10


def test_the_core_is_grouped_by_stage_and_no_module_is_over_400_lines():
  """Only the foundations (errors, fileio) sit flat in fpclass/; every other module belongs to a stage package."""
  root = REPO / 'fpclass'
  flat = sorted(p.name for p in root.glob('*.py'))
  assert flat == ['__init__.py', 'errors.py', 'fileio.py']
  long = {str(p.relative_to(REPO)): n for p in root.rglob('*.py') if (n := len(p.read_text().splitlines())) > 400}
  assert long == {}


def test_the_readme_stays_a_guide_and_the_licence_is_declared():
  """The README is a newcomer's guide (<= 300 lines; measured tables live in docs/). The code is Apache-2.0,
  in LICENSE and in pyproject's metadata."""
  assert len((REPO / 'README.md').read_text().splitlines()) <= 300
  assert 'Apache License' in (REPO / 'LICENSE').read_text() and 'Version 2.0' in (REPO / 'LICENSE').read_text()
  assert 'license = "Apache-2.0"' in (REPO / 'pyproject.toml').read_text()


def unnamed_modules(package_root, page) -> list[str]:
  """The modules of the package that docs/architecture.md does not name: a stage package's module in that
  package's row of the table (`stem`, `sub/stem` in a subpackage, or a family `prefix*`), errors and fileio
  anywhere on the page."""
  root, text = pathlib.Path(package_root), pathlib.Path(page).read_text()
  rows = {line.split('`')[1].rstrip('/'): set(line.split('`')[1::2]) for line in text.splitlines()
          if line.startswith('| `') and line.split('`')[1].endswith('/')}
  missing = []
  for path in sorted(root.rglob('*.py')):
    parts = path.relative_to(root).with_suffix('').parts
    if parts[-1] == '__init__':
      continue
    if len(parts) == 1:
      named = f'`{parts[0]}.py`' in text
    else:
      name, names = '/'.join(parts[1:]), rows.get(parts[0], set())
      named = name in names or any('*' in n and pathlib.PurePosixPath(name).match(n) for n in names)
    if not named:
      missing.append('/'.join(parts) + '.py')
  return missing


def test_the_architecture_page_names_every_module():
  """A newcomer finds every module on the page, in its package's row; a new module without a line fails here."""
  assert unnamed_modules(REPO / 'fpclass', REPO / 'docs' / 'architecture.md') == []


def test_the_module_list_check_sees_a_planted_module(tmp_path):
  """A flat foundation, a module, a subpackage's module and a family member the page names; one it does not."""
  for module in ('errors', 'runtime/__init__', 'runtime/process', 'runtime/sinks/sink', 'models/architectures/timm_resnet',
                 'runtime/unlisted_helper'):
    (tmp_path / f'{module}.py').parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / f'{module}.py').write_text('"""A module."""\n')
  assert unnamed_modules(tmp_path, REPO / 'docs' / 'architecture.md') == ['runtime/unlisted_helper.py']


if __name__ == '__main__':
  if sys.argv[1:] == ['--parses']:
    print(json.dumps(parse_counts(REPO / 'fpclass'), indent=1))
  else:
    print(package_graph(REPO / 'fpclass'))
