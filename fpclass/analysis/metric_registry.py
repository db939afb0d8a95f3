"""The one registry of metrics: each is defined once, here, and every place that scores a model reads it.

A `Metric` names its figure, its title in tables, whether higher is better, the tasks it applies to and how
it is computed from labels and probabilities on the host. Everyone reads the registry:
- training scores each validation pass with every metric of its task, and `train.monitor` may be
  `val_<name>` of any of them (`metrics.model_scores`, `monitor_mode`);
- a plan's members are scored with them as each epoch is, and those with `summarised` get a mean
  with a corrected 95% interval over the members and paired differences in sweep and auto tables, the first
  one the headline;
- evaluate's scores.json and `--mode compare` list every one of them.
Every metric is aggregated over folds the same way: the mean over a plan's members, with the Nadeau-Bengio
corrected interval (`fpclass.analysis.stats`). Adding a metric is one entry here and its test
(CONTRIBUTING.md, "Adding a metric").
"""
import dataclasses
import warnings
from typing import Callable

import numpy as np
from sklearn import metrics as skm

from fpclass.analysis import multilabel_metrics
from fpclass.errors import UserInputError

SINGLE, MULTI = 'single_label', 'multilabel'


@dataclasses.dataclass(frozen=True)
class Metric:
  name: str                    # the key in metrics rows and scores.json; monitored as val_<name>
  title: str                   # its name in tables and reports
  higher_is_better: bool
  compute: dict                # {task: fn(labels, probabilities) -> float | None}: the tasks it applies to
  summarised: tuple = ()       # tasks whose sweep and auto tables give it an interval (the first: the headline)
  decided: bool = False        # reads only each image's decision (its argmax, or each label at 0.5)

  @property
  def mode(self) -> str:
    return 'max' if self.higher_is_better else 'min'

  def applies_to(self, task: str) -> bool:
    return task in self.compute

  def __call__(self, labels, probs, task: str):
    return self.compute[task](np.asarray(labels), np.asarray(probs, np.float64))


def _log_loss(labels, probs) -> float:
  p = np.clip(probs[np.arange(len(labels)), labels.astype(int)], 1e-12, 1.0)
  return float(-np.mean(np.log(p)))


def _mean_binary_log_loss(labels, probs) -> float:
  p = np.clip(probs, 1e-12, 1 - 1e-12)
  y = labels.astype(np.float64)
  return float(np.mean(-(y * np.log(p) + (1 - y) * np.log1p(-p))))


def _accuracy(labels, probs) -> float:
  return float(np.mean(probs.argmax(1) == labels))


def _macro_f1(labels, probs) -> float:
  return float(skm.f1_score(labels, probs.argmax(1), average='macro', labels=np.arange(probs.shape[1]),
                            zero_division=0))


def _roc_auc(labels, probs) -> float | None:
  """Binary ROC AUC of the positive (second) class, or macro one-vs-rest; None if a class is absent."""
  k = probs.shape[1]
  if len(np.unique(labels)) < k:
    return None
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    if k == 2:
      return float(skm.roc_auc_score(labels, probs[:, 1]))
    return float(skm.roc_auc_score(labels, probs, multi_class='ovr', average='macro', labels=np.arange(k)))


def _at_half(fn: Callable):
  return lambda labels, probs: fn(labels, multilabel_metrics.predict(probs, 0.5))


REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric('loss', 'loss', False, {SINGLE: _log_loss, MULTI: _mean_binary_log_loss}),
    # Multi-label: subset accuracy (every label of an image right at 0.5).
    Metric('accuracy', 'accuracy', True, {SINGLE: _accuracy, MULTI: _at_half(multilabel_metrics.subset_accuracy)},
           summarised=(SINGLE,), decided=True),
    Metric('map', 'mAP', True, {MULTI: multilabel_metrics.mean_average_precision}, summarised=(MULTI,)),
    Metric('macro_f1', 'macro F1', True,
           {SINGLE: _macro_f1, MULTI: _at_half(lambda y, p: multilabel_metrics.f1(y, p, 'macro'))},
           summarised=(SINGLE, MULTI), decided=True),
    Metric('roc_auc', 'ROC AUC', True, {SINGLE: _roc_auc}, summarised=(SINGLE,)),
    Metric('micro_f1', 'micro F1', True, {MULTI: _at_half(lambda y, p: multilabel_metrics.f1(y, p, 'micro'))},
           decided=True),
)}


def task_of_head(head: str) -> str:
  return MULTI if head == 'multilabel' else SINGLE


def for_task(task: str) -> list[Metric]:
  """Every metric of `task`, in registry order."""
  return [m for m in REGISTRY.values() if m.applies_to(task)]


def summarised(task: str) -> tuple[str, ...]:
  """The names a table gives intervals for, in registry order: the first is the task's headline."""
  return tuple(m.name for m in REGISTRY.values() if task in m.summarised)


def score(labels, probs, task: str) -> dict:
  """{name: value} of every metric of `task`."""
  return {m.name: m(labels, probs, task) for m in for_task(task)}


def title(name: str) -> str:
  return REGISTRY[name].title if name in REGISTRY else name


def monitors() -> dict:
  """{'val_<name>': 'min' | 'max'} of every metric: what config.train.monitor may name."""
  return {f'val_{m.name}': m.mode for m in REGISTRY.values()}


def monitor_mode(monitor: str, task: str | None = None) -> str:
  """'min' or 'max' for config.train.monitor; an unknown monitor, or one `task` has no figure for, is an error."""
  name = monitor.removeprefix('val_')
  if not monitor.startswith('val_') or name not in REGISTRY:
    raise UserInputError(f'config.train.monitor={monitor!r}: must be one of {tuple(monitors())}')
  if task is not None and not REGISTRY[name].applies_to(task):
    valid = [f'val_{m.name}' for m in for_task(task)]
    raise UserInputError(f'config.train.monitor={monitor!r} has no figure for config.data.task={task!r}; '
                         f'monitor one of {valid}')
  return REGISTRY[name].mode
