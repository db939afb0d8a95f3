"""A value that failed at run time is not drawn again in the same neighbourhood.

A trial that fails in training (out of memory, a shape that does not trace, a loss that is not a number) is told
FAIL, and Optuna's TPE then ignores it: the next draw can land beside it and fail the same way, each time costing
a trial and its seconds. So a drawn trial whose parameters lie **near** a failed one (the same candidate and
choices, every number within `RADIUS` of its range, on a log scale for log ranges and factors) is set aside
before any work (told FAIL and marked `SKIPPED`, which no count and no report row takes as a trial) and drawn
again, up to `REDRAWS` times. Enqueued trials (the config as given, the portfolio, the neighbours) are the
user's or the design's and are never set aside.
"""
import math

RADIUS = 0.1     # share of a dimension's range (of its logarithm for log ranges) that counts as near
REDRAWS = 10     # draws set aside before the last one is kept whatever it is near
SKIPPED = 'skipped_near_failed'   # a trial's user attribute: the failed trial it was near


def _near_value(dim, a, b) -> bool:
  if dim.kind in ('float', 'int'):
    low, high = float(dim.args[0]), float(dim.args[1])
    return abs(float(a) - float(b)) <= RADIUS * max(high - low, 1e-12)
  if dim.kind in ('log', 'factor'):
    low, high = float(dim.args[0]), float(dim.args[1])
    if min(float(a), float(b)) <= 0:
      return float(a) == float(b)
    return abs(math.log(float(a)) - math.log(float(b))) <= RADIUS * max(math.log(high / low), 1e-12)
  return a == b   # choices and backbones: the same value


def near(params: dict, failed: dict, dims: list) -> bool:
  """Whether `params` lie near `failed` (Optuna's parameters of two trials) along every dimension both have, and
  both have the same ones (another candidate's trial has other dimensions: not near)."""
  if set(params) != set(failed):
    return False
  by_param = {d.param: d for d in dims}
  return all(_near_value(by_param[k], params[k], failed[k]) if k in by_param else params[k] == failed[k]
             for k in params)


def failed_near(trial, study, dims: list):
  """The number of a trial that failed at run time near `trial`'s parameters, or None; an enqueued trial (its
  parameters fixed before the draw) is never near anything."""
  trials = study.get_trials(deepcopy=False)
  if any(t.number == trial.number and 'fixed_params' in t.system_attrs for t in trials):
    return None
  for other in trials:
    if (other.number != trial.number and other.state.name == 'FAIL' and 'error' in other.user_attrs
        and near(trial.params, other.params, dims)):
      return other.number
  return None
