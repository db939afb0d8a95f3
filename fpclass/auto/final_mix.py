"""The final mix of `--mode auto`: a Caruana selection over everything the search trained, at the fidelity each
configuration reached, cross-fitted, against the chosen configuration's own fold models.

A candidate is a configuration with the out-of-fold rows of its fold models: the choice (its pieces: the search's
or the confirmation's folds, and the seeds the budget's rest added), the config as given and the runners-up the
final stage trained on every fold, and every other configuration at the highest rung it reached (often one fold
at the bottom rung's epochs). Each one's probabilities are the mean over its models of each example
(`fpclass.train.oof.mean_by_id`). The comparison runs on the pool: the examples every candidate predicted (a
bottom-rung trial's fold; every example when all covered every fold). There the selection
(`fpclass.ensemble.caruana.caruana`) and the choice's fixed, equal-weight mix are both scored per fold of the
examples, or per random part of a single fold, the selection chosen on the other groups each time (`cross_fit`),
so neither score chose anything. The final model is the mix when it is ahead beyond the paired interval (its
lower end above 0: a tie is not a lead), scored on the pool alone; else the choice's models, scored on every
example they predicted. The report says which by how much, with the paired interval. A candidate that predicted
an example the choice did not, or would leave the pool fewer than `MIN_POOL` examples, is left out, named.
"""
import dataclasses
import pathlib

import numpy as np
import pandas as pd

from fpclass.ensemble import caruana
from fpclass.train import oof

MIN_POOL = 100   # fewer shared examples than this, and a candidate's rows cannot rank a mix: it is left out


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A configuration of the mix: its name and the folders whose kept fold models it is."""
  name: str
  frames: tuple          # its folders' out-of-fold rows (kept models only), one DataFrame each
  folders: tuple


@dataclasses.dataclass
class Mix:
  """What the final stage keeps: the mix's members as (folder, weight) pairs, its out-of-fold probabilities
  (cross-fitted where chosen), and the record the report reads."""
  members: list          # (folder, weight of the folder): every fold model in it shares the folder's weight
  predictions: pd.DataFrame
  score: float
  record: dict


def _mean(frames) -> pd.DataFrame:
  return oof.mean_by_id(pd.concat(frames, ignore_index=True), keep=('split',)).drop(columns='models')


def choose(candidates: list[Candidate], choice: str, metric, max_size: int = 25) -> Mix:
  """The mix or the choice's models alone, whichever the cross-fitted comparison on the pool supports (see the
  docstring). `choice` names the candidate whose fold models are the alternative; its examples, folds and labels
  are the reference. The choice comes first, then the others by how many examples they predicted (in their given
  order among equals), so that those of every fold keep the pool wide."""
  means = {c.name: _mean(c.frames) for c in candidates}
  reference = means[choice]
  everything = list(reference.index)
  notes, kept, pool = [], [], set(everything)
  known = frozenset(everything)
  for c in sorted(candidates, key=lambda c: (c.name != choice, -len(means[c.name]))):
    rows = set(means[c.name].index)
    shared = pool & rows
    if not rows <= known:
      notes.append(f'{c.name}: predicted {len(rows - known)} examples the choice did not')
    elif len(shared) < min(MIN_POOL, len(everything)):
      notes.append(f'{c.name}: predicted {len(rows)} examples, {len(shared)} of them shared with the others')
    else:
      kept.append(c)
      pool = shared
  ids = [i for i in everything if i in pool]
  labels, _, task = oof.labels_and_probabilities(reference.loc[ids].reset_index())
  probs = np.stack([oof.labels_and_probabilities(means[c.name].loc[ids].reset_index())[1] for c in kept])
  names = [c.name for c in kept]
  groups = caruana.crossfit_groups(reference['split'].loc[ids].to_numpy(np.int64))
  alone = probs[names.index(choice)]
  alone_scores = caruana.group_scores(metric, labels, alone, groups, task)
  record = dict(candidates=names, left_out=notes, groups=len(np.unique(groups)), pool=len(ids),
                examples=len(everything))
  if len(kept) > 1:
    crossfit = caruana.cross_fit(probs, labels, groups, task, metric, max_size, names)
    mixed_scores = [r['ensemble'] for r in crossfit.rows]
    difference = caruana.paired(mixed_scores, alone_scores, crossfit.ratio)
    final = caruana.caruana(probs, labels, task, metric, max_size)
    weights = {n: float(w) for n, w in zip(names, final.weights) if w > 0}
    record.update(mixed=float(np.nanmean(mixed_scores)), alone=float(np.nanmean(alone_scores)),
                  difference=dict(mean=difference.mean, low=difference.low, high=difference.high),
                  weights=weights, rows=crossfit.rows)
    # A tie is not a lead: a mix ahead on the mean alone weighs one-fold bottom-rung models on noise (docs/auto.md).
    if difference.low > 0 and set(weights) != {choice}:
      members = [(folder, weights[c.name] * _share(c, folder)) for c in kept if c.name in weights
                 for folder in c.folders]
      record['kept'] = 'mix'
      return Mix(members, _frame(reference, ids, crossfit.ensemble, task), record['mixed'], record)
  record['kept'] = 'choice'
  choice_candidate = kept[names.index(choice)]
  members = [(folder, _share(choice_candidate, folder)) for folder in choice_candidate.folders]
  record.setdefault('alone', float(np.nanmean(alone_scores)))
  # The choice alone is scored and written on every example it predicted, the pool's or more.
  every_label, every, _ = oof.labels_and_probabilities(reference.loc[everything].reset_index())
  every_group = caruana.crossfit_groups(reference['split'].loc[everything].to_numpy(np.int64))
  score = float(np.nanmean(caruana.group_scores(metric, every_label, every, every_group, task)))
  return Mix(members, _frame(reference, everything, every, task), score, record)


def _share(candidate: Candidate, folder: pathlib.Path) -> float:
  """A folder's share of its candidate: its fold models' share of the candidate's (each model weighs alike)."""
  counts = {f: len(frame.groupby(['split', 'seed'])) for f, frame in zip(candidate.folders, candidate.frames)}
  return counts[folder] / sum(counts.values())


def _frame(reference: pd.DataFrame, ids: list, probs: np.ndarray, task: str) -> pd.DataFrame:
  """One row per example: id, split, label column(s) and the mix's probabilities (`p_<class>`)."""
  rows = reference.loc[ids].reset_index()
  columns = [c for c in rows.columns if c.startswith('p_')]
  out = rows.drop(columns=columns).copy()
  for k, column in enumerate(columns):
    out[column] = probs[:, k]
  return out


def describe(record: dict, metric_title: str) -> str:
  """One sentence for the report: which the final stage kept, and by what cross-fitted evidence."""
  if len(record['candidates']) < 2:
    return 'no other configuration shared enough examples with the choice, so its fold models are the final model'
  d = record['difference']
  weights = ', '.join(f'{n} x{w:.2f}' for n, w in sorted(record['weights'].items(), key=lambda kv: -kv[1]))
  verdict = ('the mix is kept' if record['kept'] == 'mix' else
             'the choice\'s fold models are kept (the mix is not ahead beyond the interval)')
  pool = record.get('pool', record.get('examples'))
  where = ('every example' if pool == record.get('examples', pool) else
           f'the {pool} of {record["examples"]} examples every candidate held out')
  return (f'a Caruana mix over {len(record["candidates"])} configurations, each at the highest fidelity it reached '
          f'({weights}), scored {record["mixed"]:.4f} {metric_title} cross-fitted over {record["groups"]} groups of '
          f'{where}, the choice\'s fold models {record["alone"]:.4f} there '
          f'(mix - choice {d["mean"]:+.4f} [{d["low"]:+.4f}, {d["high"]:+.4f}]): {verdict}')
