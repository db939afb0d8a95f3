"""The search space of `--mode auto`: `config.auto.space` entries, or the task's defaults, sampled by Optuna.

An entry is `'key: kind(arguments)'`, optionally followed by `for name, ...` (only those candidates): `log(low,
high)`, `float(low, high)`, `int(low, high)`, `choice(a, b, ...)` (Python literals), `factor(low, high[, {name:
centre}])` (the candidate's centre, from the dict or else its own config value, times a factor drawn log-uniformly:
one learning-rate factor for a from-scratch CNN and a fine-tuned backbone, each around its own rate), and
`'model.name: backbones'`, the candidates the screen kept. A key the chosen candidate lacks or that its `for`
leaves out is not sampled in that trial. Before any work, each value an entry can give (a choice's values, a
range's ends) is applied to each candidate's config and put through the checks a launch runs
(`fpclass.train.validation`): a value no trial can train is one line naming the entry. The defaults, and why:
`fpclass.auto.space_defaults` and docs/auto.md.
"""
import ast
import dataclasses
import math
import re

from fpclass.auto.space_defaults import default_space
from fpclass.config.variants import MISSING, value_at
from fpclass.errors import UserInputError
from fpclass.train.plan import apply_changes
from fpclass.train.validation import validate

__all__ = ['Candidate', 'Dimension', 'parse_space', 'baseline_params', 'sample', 'default_space']

KINDS = ('log', 'float', 'int', 'choice', 'factor', 'backbones')
ENTRY = re.compile(r'^\s*([A-Za-z0-9_.]+)\s*:\s*([a-z]+)\s*(?:\((.*)\))?\s*(?:\bfor\s+(.+?))?\s*$')
# Values the config accepts but no trial learns from: the search refuses them as it refuses what validate does.
TRAINS_NOTHING = {'train.learning_rate': (lambda v: v > 0, 'a learning rate must be > 0 (0 trains nothing)')}


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
  only: tuple = ()  # the candidates it applies to; () -> every candidate that has the key

  @property
  def param(self) -> str:
    """Optuna's name for it: the key, `<key>/centre` for a factor, and the candidates a `for` names."""
    name = f'{self.key}/centre' if self.kind == 'factor' else self.key
    return f'{name} for {", ".join(self.only)}' if self.only else name

  def applies(self, candidate: Candidate, candidate_config) -> bool:
    return (not self.only or candidate.name in self.only) and value_at(candidate_config, self.key) is not MISSING

  def centre(self, candidate: Candidate, candidate_config) -> float:
    """A factor's centre for `candidate`: the entry's dict, else the candidate's own value of the key."""
    centres = self.args[2] if len(self.args) > 2 else {}
    return centres[candidate.name] if candidate.name in centres else value_at(candidate_config, self.key)

  def ends(self, candidate: Candidate, candidate_config) -> tuple:
    """The values checked before any work: a choice's values, a range's ends (a factor's times the centre)."""
    if self.kind == 'choice':
      return self.args
    if self.kind == 'factor':
      centre = self.centre(candidate, candidate_config)
      return centre * self.args[0], centre * self.args[1]
    return self.args[:2]

  def draw(self, trial, candidate: Candidate, candidate_config):
    """The trial's value of the key for `candidate` (a factor: its centre times the drawn factor)."""
    if self.kind in ('log', 'float'):
      return trial.suggest_float(self.param, float(self.args[0]), float(self.args[1]), log=self.kind == 'log')
    if self.kind == 'int':
      return trial.suggest_int(self.param, int(self.args[0]), int(self.args[1]))
    if self.kind == 'factor':
      value = self.centre(candidate, candidate_config) * trial.suggest_float(
          self.param, float(self.args[0]), float(self.args[1]), log=True)
      own = value_at(candidate_config, self.key)   # the factor of the config's own value gives it back exactly
      return own if math.isclose(value, own, rel_tol=1e-9) else value
    shown = [repr(v) for v in self.args]   # Optuna's choices are plain values: tuples travel as their repr
    return ast.literal_eval(trial.suggest_categorical(self.param, shown))


def _configs(config, candidates: list[Candidate]) -> dict:
  return {c.name: apply_changes(config, c.changes, f'candidate {c.name}') for c in candidates}


def baseline_params(dims: list[Dimension], config, candidates: list[Candidate],
                    target: Candidate | None = None) -> dict:
  """The Optuna parameters that give back `config` itself, for the dimensions whose range holds its value (a
  range's ends included): the search's first trial, so auto starts from the user's own recipe (as AutoGluon
  starts from its defaults) and never chooses worse than it on the search's evidence. `target`: another
  candidate's, as its config (with its changes) gives it."""
  chosen = target or next((c for c in candidates if not c.changes), None)
  target = chosen or candidates[0]
  target_config = _configs(config, [target])[target.name]
  params = {}
  for dim in dims:
    if dim.kind == 'backbones':
      if chosen is not None:
        params[dim.param] = chosen.name
      continue
    if not dim.applies(target, target_config):
      continue
    node = value_at(target_config, dim.key)
    if isinstance(node, bool) and dim.kind != 'choice':
      continue
    if dim.kind in ('log', 'float', 'int') and dim.args[0] <= node <= dim.args[1]:
      params[dim.param] = int(node) if dim.kind == 'int' else float(node)
    elif dim.kind == 'factor':
      ratio = node / dim.centre(target, target_config)
      if dim.args[0] * (1 - 1e-12) <= ratio <= dim.args[1] * (1 + 1e-12):
        params[dim.param] = min(max(ratio, float(dim.args[0])), float(dim.args[1]))
    elif dim.kind == 'choice':
      matching = [a for a in dim.args if a == node and type(a) is not bool or a is node]
      if matching:
        params[dim.param] = repr(matching[0])
  return params


def parse_space(entries, config, candidates: list[Candidate]) -> list[Dimension]:
  """`config.auto.space` checked against `config` and the candidates' models, every value it can give tried."""
  configs = _configs(config, candidates)
  dims, wheres = [], []
  for i, entry in enumerate(entries):
    wheres.append(f'config.auto.space[{i}] ({entry!r})')
    dims.append(_parsed(str(entry), wheres[-1]))
    _check_form(dims[-1], wheres[-1], candidates, configs)
  for c in candidates:
    keys = [d.key for d in dims if d.kind == 'backbones' or d.applies(c, configs[c.name])]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
      raise UserInputError(f'config.auto.space: {twice[0]} is listed twice'
                           + (f' for candidate {c.name}' if len(candidates) > 1 else ''))
  _check_values(dims, wheres, candidates, configs)
  return dims


def _parsed(entry: str, where: str) -> Dimension:
  match = ENTRY.match(entry)
  if not match:
    raise UserInputError(f"{where}: write 'key: kind(arguments)', e.g. 'train.learning_rate: log(1e-4, 1e-2)'")
  key, kind, text, only = match.group(1), match.group(2), match.group(3) or '', match.group(4)
  if kind not in KINDS:
    raise UserInputError(f'{where}: unknown kind {kind!r}; use one of {KINDS}')
  try:
    args = ast.literal_eval(f'({text},)') if text.strip() else ()
  except (ValueError, SyntaxError):
    raise UserInputError(f'{where}: its arguments are not Python literals') from None
  names = tuple(n.strip() for n in only.split(',')) if only else ()
  return Dimension(key, kind, tuple(args), entry, names)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_form(dim: Dimension, where: str, candidates: list[Candidate], configs: dict) -> None:
  """The entry's shape: its key, kind, arguments and the candidates it names."""
  names = [c.name for c in candidates]
  if dim.kind == 'backbones':
    if dim.key != 'model.name' or dim.args or dim.only:
      raise UserInputError(f"{where}: 'backbones' chooses model.name among the screened candidates: "
                           "'model.name: backbones'")
    return
  unknown = [n for n in dim.only if n not in names]
  if unknown or '' in dim.only:
    raise UserInputError(f'{where}: `for` names {unknown[0] if unknown else "no candidate"!r}; the candidates '
                         f'are {", ".join(names)}')
  if not any(dim.applies(c, configs[c.name]) for c in candidates):
    raise UserInputError(f'{where}: {dim.key} is not a config key' + (
        f' of any candidate model ({", ".join(c.name for c in candidates if not dim.only or c.name in dim.only)})'
        if dim.key.startswith('model.') else ''))
  if dim.kind in ('log', 'float', 'int'):
    ok = len(dim.args) == 2 and all(_is_number(a) for a in dim.args) and dim.args[0] < dim.args[1] \
        and (dim.kind != 'log' or dim.args[0] > 0) and (dim.kind != 'int' or all(isinstance(a, int) for a in dim.args))
    if not ok:
      raise UserInputError(f'{where}: {dim.kind}(low, high) needs two {"whole " if dim.kind == "int" else ""}'
                           f'numbers, low < high{" and low > 0" if dim.kind == "log" else ""}')
  if dim.kind == 'choice' and not dim.args:
    raise UserInputError(f'{where}: choice(a, b, ...) needs at least one value')
  if dim.kind == 'factor':
    _check_factor(dim, where, candidates, configs)


def _check_factor(dim: Dimension, where: str, candidates: list[Candidate], configs: dict) -> None:
  args, names = dim.args, [c.name for c in candidates]
  if not (len(args) in (2, 3) and all(_is_number(a) for a in args[:2]) and 0 < args[0] < args[1]
          and (len(args) == 2 or isinstance(args[2], dict))):
    raise UserInputError(f'{where}: factor(low, high) or factor(low, high, {{candidate: centre, ...}}) needs '
                         '0 < low < high')
  for name, centre in (args[2] if len(args) == 3 else {}).items():
    if name not in names:
      raise UserInputError(f'{where}: the centre of {name!r}: no such candidate; the candidates are '
                           f'{", ".join(names)}')
    if not _is_number(centre) or centre <= 0:
      raise UserInputError(f'{where}: the centre of {name!r} is {centre!r}; a factor needs a centre > 0')
  for c in candidates:
    if dim.applies(c, configs[c.name]):
      centre = dim.centre(c, configs[c.name])
      if not _is_number(centre) or centre <= 0:
        raise UserInputError(f"{where}: {c.name}'s {dim.key} is {centre!r}; a factor needs a centre > 0 "
                             "(give one: factor(low, high, {name: centre}))")


def _check_values(dims: list[Dimension], wheres: list[str], candidates: list[Candidate], configs: dict) -> None:
  """Each value the entries can give, applied to each candidate they apply to, through the launch's checks. The
  values are tried together (every entry's first value, then its second, ...), and one by one only when such a
  combination fails, to name the entry: a few launches' checks for the whole space instead of one per value."""
  for c in candidates:
    mine = [(d, w, d.ends(c, configs[c.name])) for d, w in zip(dims, wheres)
            if d.kind != 'backbones' and d.applies(c, configs[c.name])]
    for j in range(max((len(ends) for _, _, ends in mine), default=0)):
      together = {d.key: ends[min(j, len(ends) - 1)] for d, _, ends in mine}
      if _cannot_train(configs[c.name], together) is None:
        continue
      for d, where, _ends in mine:
        problem = _cannot_train(configs[c.name], {d.key: together[d.key]})
        if problem:
          whom = f' for candidate {c.name}' if len(candidates) > 1 else ''
          raise UserInputError(f'{where}: {d.key}={together[d.key]!r}{whom} cannot train: {problem}')


def _cannot_train(candidate_config, changes: dict) -> str | None:
  """Why `candidate_config` with `changes` cannot train (one line), or None."""
  for key, value in changes.items():
    rule = TRAINS_NOTHING.get(key)
    if rule is not None and _is_number(value) and not rule[0](value):
      return rule[1]
  tag = 'the search value'
  try:
    validate(apply_changes(candidate_config, changes, tag))
  except (UserInputError, TypeError, ValueError) as e:
    return ' '.join(str(e).removeprefix(f'{tag}: ').split())
  return None


def sample(trial, dims: list[Dimension], config, candidates: list[Candidate]) -> tuple[str, dict]:
  """(candidate name, the trial's config changes): the candidate's settings, then each dimension that applies to
  the chosen candidate (the others are not asked, so Optuna does not record them)."""
  by_name = {c.name: c for c in candidates}
  chosen = candidates[0]
  for dim in dims:
    if dim.kind == 'backbones':
      chosen = by_name[trial.suggest_categorical(dim.param, [c.name for c in candidates])]
  chosen_config = _configs(config, [chosen])[chosen.name]
  changes = dict(chosen.changes)
  for dim in dims:
    if dim.kind != 'backbones' and dim.applies(chosen, chosen_config):
      changes[dim.key] = dim.draw(trial, chosen, chosen_config)
  return chosen.name, changes
