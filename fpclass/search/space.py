"""The search space of `--mode auto`: `config.auto.space` entries, or the task's defaults, sampled by Optuna.

An entry is `'key: kind(arguments)'` for a config key: `log(low, high)` and `float(low, high)` (a float, on a log
or linear scale), `int(low, high)`, `choice(a, b, ...)` (Python literals), and `'model.name: backbones'`, the
choice among the candidates the screen kept (each brings its transfer settings). A key the chosen model lacks
(drop path on a small CNN) is not sampled in that trial. Every entry is checked before any work: an unknown key,
kind or range is one line naming `config.auto.space`'s entry.
"""
import ast
import dataclasses
import re

from fpclass.config.model import ModelSettings
from fpclass.config.training import TrainSettings
from fpclass.errors import UserInputError
from fpclass.models import model_keys
from fpclass.train.plan import apply_changes

KINDS = ('log', 'float', 'int', 'choice', 'backbones')
ENTRY = re.compile(r'^\s*([A-Za-z0-9_.]+)\s*:\s*([a-z]+)\s*(?:\((.*)\))?\s*$')


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A model the search may choose: the config's own (no changes) or a screened backbone with its settings."""
  name: str
  changes: dict


@dataclasses.dataclass(frozen=True)
class Dimension:
  key: str          # a dotted config key
  kind: str         # one of KINDS
  args: tuple
  entry: str        # as written, for messages

  def sample(self, trial, candidates: list[Candidate]):
    """The trial's value (`backbones`: the candidate's name)."""
    if self.kind == 'backbones':
      return trial.suggest_categorical(self.key, [c.name for c in candidates])
    if self.kind in ('log', 'float'):
      return trial.suggest_float(self.key, float(self.args[0]), float(self.args[1]), log=self.kind == 'log')
    if self.kind == 'int':
      return trial.suggest_int(self.key, int(self.args[0]), int(self.args[1]))
    shown = [repr(v) for v in self.args]   # Optuna's choices are plain values: tuples travel as their repr
    return ast.literal_eval(trial.suggest_categorical(self.key, shown))


def baseline_params(dims: list[Dimension], config, candidates: list[Candidate]) -> dict:
  """The Optuna parameters that give back `config` itself, for the dimensions whose range holds its value: the
  search's first trial, so auto starts from the user's own recipe (as AutoGluon starts from its defaults) and
  never chooses worse than it on the search's evidence."""
  own = next((c.name for c in candidates if not c.changes), None)
  params = {}
  for dim in dims:
    if dim.kind == 'backbones':
      if own is not None:
        params[dim.key] = own
      continue
    node = config
    for part in dim.key.split('.'):
      node = node[part] if hasattr(node, 'keys') and part in node else None
    if node is None or isinstance(node, bool) and dim.kind != 'choice':
      continue
    if dim.kind in ('log', 'float', 'int') and dim.args[0] <= node <= dim.args[1]:
      params[dim.key] = int(node) if dim.kind == 'int' else float(node)
    elif dim.kind == 'choice':
      matching = [a for a in dim.args if a == node and type(a) is not bool or a is node]
      if matching:
        params[dim.key] = repr(matching[0])
  return params


def parse_space(entries, config, candidates: list[Candidate]) -> list[Dimension]:
  """`config.auto.space` checked against `config` and the candidates' models."""
  dims = []
  for i, entry in enumerate(entries):
    where = f'config.auto.space[{i}] ({entry!r})'
    match = ENTRY.match(str(entry))
    if not match:
      raise UserInputError(f"{where}: write 'key: kind(arguments)', e.g. 'train.learning_rate: log(1e-4, 1e-2)'")
    key, kind, text = match.group(1), match.group(2), match.group(3) or ''
    if kind not in KINDS:
      raise UserInputError(f'{where}: unknown kind {kind!r}; use one of {KINDS}')
    try:
      args = ast.literal_eval(f'({text},)') if text.strip() else ()
    except (ValueError, SyntaxError):
      raise UserInputError(f'{where}: its arguments are not Python literals') from None
    dims.append(_checked(Dimension(key, kind, tuple(args), str(entry)), where, config, candidates))
  keys = [d.key for d in dims]
  if len(set(keys)) < len(keys):
    raise UserInputError(f'config.auto.space: {sorted({k for k in keys if keys.count(k) > 1})[0]} is listed twice')
  return dims


def _checked(dim: Dimension, where: str, config, candidates: list[Candidate]) -> Dimension:
  if dim.kind == 'backbones':
    if dim.key != 'model.name' or dim.args:
      raise UserInputError(f"{where}: 'backbones' chooses model.name among the screened candidates: "
                           "'model.name: backbones'")
    return dim
  if not any(_has_key(config, c, dim.key) for c in candidates):
    raise UserInputError(f'{where}: {dim.key} is not a config key' + (
        f' of any candidate model ({", ".join(c.name for c in candidates)})' if dim.key.startswith('model.') else ''))
  if dim.kind in ('log', 'float', 'int'):
    ok = len(dim.args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in dim.args) \
        and dim.args[0] < dim.args[1] and (dim.kind != 'log' or dim.args[0] > 0) \
        and (dim.kind != 'int' or all(isinstance(a, int) for a in dim.args))
    if not ok:
      raise UserInputError(f'{where}: {dim.kind}(low, high) needs two {"whole " if dim.kind == "int" else ""}'
                           f'numbers, low < high{" and low > 0" if dim.kind == "log" else ""}')
  if dim.kind == 'choice' and not dim.args:
    raise UserInputError(f'{where}: choice(a, b, ...) needs at least one value')
  return dim


def _has_key(config, candidate: Candidate, key: str) -> bool:
  node = apply_changes(config, candidate.changes, f'candidate {candidate.name}')
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def default_space(config, candidates: list[Candidate]) -> list[str]:
  """The task's defaults: the candidate, the learning rate around the config's, label smoothing, mixup,
  TrivialAugment, the average of the weights, and for models that have them drop path, layer decay and
  freezing. Epochs stay the config's (early stopping, where it sets it, ends a run sooner)."""
  lr = TrainSettings.from_config(config.train).learning_rate
  entries = [f'train.learning_rate: log({lr / 10:.3g}, {lr * 3:.3g})', 'train.label_smoothing: float(0.0, 0.15)',
             'augment.mixup_alpha: choice(0.0, 0.2)', "augment.policy: choice('', 'trivialaugment')",
             'train.ema_decay: choice(0.0, 0.999)']
  if len(candidates) > 1:
    entries.insert(0, 'model.name: backbones')
  keys = {k for c in candidates
          for k in model_keys.model_keys(ModelSettings.from_config(apply_changes(config, c.changes, c.name).model).name)}
  if 'drop_path_rate' in keys:
    entries.append('model.drop_path_rate: float(0.0, 0.2)')
  if any(c.changes for c in candidates):   # screened backbones: fine-tune them whole or train their head alone
    entries += ['train.layer_decay: float(0.65, 1.0)', 'model.freeze_till: choice(-1, 0)']
  return entries


def sample(trial, dims: list[Dimension], config, candidates: list[Candidate]) -> tuple[str, dict]:
  """(candidate name, the trial's config changes): the candidate's settings, then each dimension the chosen
  model has (the others are not asked, so Optuna does not record them)."""
  by_name = {c.name: c for c in candidates}
  chosen = candidates[0]
  for dim in dims:
    if dim.kind == 'backbones':
      chosen = by_name[dim.sample(trial, candidates)]
  changes = dict(chosen.changes)
  for dim in dims:
    if dim.kind != 'backbones' and _has_key(config, chosen, dim.key):
      changes[dim.key] = dim.sample(trial, candidates)
  return chosen.name, changes
