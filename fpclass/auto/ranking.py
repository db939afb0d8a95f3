"""How `--mode auto` ranks its trials, like with like: by the fidelity (folds x epochs) of the highest rung each
reached, read from the brackets the search ran, then by its value there. The confirmation's finalists and the
final mix's runners-up are read in this order."""
import math

from fpclass.auto import study as study_lib
from fpclass.auto.study import changes_of


def fidelities(ctx) -> dict[int, dict]:
  """{trial number: {rung level: (folds, epochs)}} from the brackets the search ran (auto_state.json): what each
  of its values was measured at. A trial outside every bracket (the measurement adopted as the one trial) ranks
  by its rung alone, below them."""
  out = {}
  for bracket in ctx.budget.brackets:
    for n in bracket['trials']:
      out[int(n)] = {level: (int(r['folds']), int(r['epochs'])) for level, r in enumerate(bracket['rungs'])}
  return out


def ranked_trials(ctx) -> list:
  """Every trial that reported, best first: by the fidelity of the highest rung it reached (its folds x epochs:
  rung 1 of a three-rung bracket is not rung 1 of a two-rung one), then by its value there, so that two values are
  compared only at the same fidelity."""
  sign, known = (1.0 if ctx.higher else -1.0), fidelities(ctx)

  def key(t):
    level = max(t.intermediate_values) if t.intermediate_values else -1
    value = t.intermediate_values.get(level, t.value if t.value is not None else math.nan)
    folds, epochs = known.get(t.number, {}).get(level, (0, 0))
    return (folds * epochs, folds, level, sign * value if math.isfinite(value) else -math.inf)
  return sorted(study_lib.searched(ctx.study), key=key, reverse=True)


def configuration_key(changes: dict) -> str:
  """One configuration's identity, whatever trial trained it: its config changes, sorted."""
  return repr(sorted(changes.items()))


def best_per_configuration(ctx) -> list:
  """`ranked_trials`, each configuration's best trial only (several trials may draw one configuration)."""
  out, seen = [], set()
  for t in ranked_trials(ctx):
    key = configuration_key(changes_of(t))
    if key not in seen:
      seen.add(key)
      out.append(t)
  return out
