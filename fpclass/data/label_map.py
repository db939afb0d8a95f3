"""`config.data.label_map`: group a source's classes into new ones, keeping each example's source class.

    'vehicle:airplane,automobile,ship,truck;animal:*'

maps CIFAR-10 to vehicles and animals. The new classes follow the group order; '*' takes every source
class not named before it. Each labelled split gains extras['fine_label'], the source class name per
example, which evaluation turns into a confusion table by source class (which originals get confused).
"""
import dataclasses

import numpy as np

from fpclass.data.source import Source, Split
from fpclass.errors import UserInputError

FINE_LABEL = 'fine_label'


def parse_label_map(spec: str, fine_names) -> tuple[tuple, np.ndarray]:
  """(new class names, index of the new class for each source class)."""
  fine_names = tuple(str(n) for n in fine_names)
  groups, wildcard = [], None
  for part in (p.strip() for p in spec.split(';')):
    name, sep, members = part.partition(':')
    members = [m.strip() for m in members.split(',') if m.strip()]
    if not sep or not name.strip() or not members:
      raise _error(spec, f'{part!r} is not "class:source_class,source_class"')
    if name.strip() in [g for g, _ in groups]:
      raise _error(spec, f'class {name.strip()!r} is named twice')
    if '*' in members:
      if members != ['*'] or wildcard is not None:
        raise _error(spec, "'*' must stand alone, in one group")
      wildcard = len(groups)
    groups.append((name.strip(), members))
  target = np.full(len(fine_names), -1)
  for index, (_, members) in enumerate(groups):
    for member in members:
      if member == '*':
        continue
      if member not in fine_names:
        raise _error(spec, f'{member!r} is not a class of the source; its classes are {list(fine_names)}')
      if target[fine_names.index(member)] >= 0:
        raise _error(spec, f'{member!r} is mapped twice')
      target[fine_names.index(member)] = index
  if wildcard is not None:
    target[target < 0] = wildcard
  unmapped = [fine_names[i] for i in np.flatnonzero(target < 0)]
  if unmapped:
    raise _error(spec, f'source classes {unmapped} are not mapped (add them to a group, or use "name:*")')
  empty = [groups[i][0] for i in range(len(groups)) if not (target == i).any()]
  if empty:
    raise _error(spec, f'classes {empty} receive no source class')
  if len(groups) < 2:
    raise _error(spec, 'classification needs at least 2 classes')
  return tuple(name for name, _ in groups), target


def source_class_order(spec: str, present) -> list:
  """The source classes in `present`, in the order `spec` names them; those it leaves to '*' after, sorted."""
  named = [m.strip() for group in spec.split(';') for m in group.partition(':')[2].split(',')
           if m.strip() and m.strip() != '*']
  present = {str(p) for p in present}
  return [n for n in named if n in present] + sorted(present - set(named))


def apply_label_map(source: Source, spec: str) -> Source:
  names, target = parse_label_map(spec, source.class_names)

  def remap(split: Split | None) -> Split | None:
    if split is None or split.labels is None:
      return split
    fine = np.asarray(source.class_names, dtype=str)[split.labels]
    return dataclasses.replace(split, labels=target[split.labels], extras={**split.extras, FINE_LABEL: fine})

  groups = '; '.join(f'{n}: {", ".join(f for f, t in zip(source.class_names, target) if t == i)}'
                     for i, n in enumerate(names))
  return dataclasses.replace(source, class_names=names, train=remap(source.train), val=remap(source.val),
                             test=remap(source.test),
                             notes=[*source.notes, f'classes mapped by config.data.label_map ({groups})'])


def _error(spec, why):
  return UserInputError(f'config.data.label_map={spec!r}: {why}')
