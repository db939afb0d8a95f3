"""Classification figures from labels and logits or probabilities, computed with scikit-learn: each epoch's
validation figures and scores.json. The metrics themselves are defined once, in `metric_registry`."""

import numpy as np
from sklearn import metrics as skm

from fpclass.analysis import metric_registry
from fpclass.models.heads import probabilities


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
  return metric_registry.REGISTRY['loss'](labels, probs, metric_registry.SINGLE)


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
  return metric_registry.REGISTRY['roc_auc'](labels, probs, metric_registry.SINGLE)


def model_scores(labels: np.ndarray, logits: np.ndarray, head: str) -> dict:
  """A model's figures on its validation split, each epoch's and a plan member's row alike: every registered
  metric of the head's task (single-label: loss, accuracy, macro F1, ROC AUC; multi-label: the mean binary
  cross-entropy, subset accuracy and macro F1 at 0.5, and mAP)."""
  return metric_registry.score(labels, probabilities(logits, head), metric_registry.task_of_head(head))


def binary_log_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """(N, K) binary cross-entropy of each image and class from multi-label 0/1 labels and probabilities."""
  p = np.clip(probs, 1e-12, 1 - 1e-12)
  y = np.asarray(labels, np.float64)
  return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def multilabel_epoch_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
  """`model_scores` of a multi-label head from its (N, K) probabilities."""
  return metric_registry.score(labels, probs, metric_registry.MULTI)


def scores(labels: np.ndarray, probs: np.ndarray, class_names, predictions: np.ndarray | None = None) -> dict:
  """Everything scores.json holds: accuracy, per-class precision/recall/F1, macro F1, confusion, ROC AUC, and
  every other registered metric. Accuracy and macro F1 count `predictions` (the stored decision) when given."""
  k = len(class_names)
  pred = probs.argmax(1) if predictions is None else predictions
  index = np.arange(k)
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=index,
                                                                       zero_division=0)
  return dict(
      n=int(len(labels)),
      loss=log_loss(labels, probs),
      accuracy=float(skm.accuracy_score(labels, pred)),
      balanced_accuracy=float(skm.balanced_accuracy_score(labels, pred)) if len(np.unique(labels)) > 1 else None,
      macro_f1=float(skm.f1_score(labels, pred, average='macro', labels=index, zero_division=0)),
      roc_auc=roc_auc(labels, probs),
      per_class={name: dict(precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
                            support=int(support[i])) for i, name in enumerate(class_names)},
      confusion_matrix=skm.confusion_matrix(labels, pred, labels=index).tolist(),
      class_names=list(class_names),
  ) | {k: v for k, v in metric_registry.score(labels, probs, metric_registry.SINGLE).items()
       if k not in ('accuracy', 'macro_f1', 'loss', 'roc_auc')}


def classification_report(labels, pred, class_names) -> str:
  return skm.classification_report(labels, pred, labels=np.arange(len(class_names)),
                                    target_names=[str(c) for c in class_names], digits=4, zero_division=0)
