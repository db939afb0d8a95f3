"""Classification metrics from labels and logits or probabilities, computed with scikit-learn."""
import warnings

import numpy as np
from sklearn import metrics as skm

from fpclass.analysis import multilabel_metrics
from fpclass.models.heads import probabilities


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
  p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
  return float(-np.mean(np.log(p)))


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
  """Binary ROC AUC of the positive (second) class, or macro one-vs-rest; None if a class is absent."""
  k = probs.shape[1]
  if len(np.unique(labels)) < k:
    return None
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    if k == 2:
      return float(skm.roc_auc_score(labels, probs[:, 1]))
    return float(skm.roc_auc_score(labels, probs, multi_class='ovr', average='macro', labels=np.arange(k)))


def epoch_metrics(labels: np.ndarray, logits: np.ndarray, head: str, num_classes: int) -> dict:
  """The per-epoch validation numbers: loss, accuracy, macro F1, ROC AUC. Multi-label: the mean binary
  cross-entropy, subset accuracy and macro F1 at 0.5, and mAP (`fpclass.analysis.multilabel_metrics`)."""
  probs = probabilities(logits, head)
  if head == 'multilabel':
    return multilabel_epoch_metrics(labels, probs)
  pred = probs.argmax(1)
  return dict(loss=log_loss(labels, probs), accuracy=float(np.mean(pred == labels)),
              macro_f1=float(skm.f1_score(labels, pred, average='macro', labels=np.arange(num_classes),
                                          zero_division=0)),
              roc_auc=roc_auc(labels, probs))


def binary_log_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """(N, K) binary cross-entropy of each image and class from multi-label 0/1 labels and probabilities."""
  p = np.clip(probs, 1e-12, 1 - 1e-12)
  y = np.asarray(labels, np.float64)
  return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def multilabel_epoch_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
  """`epoch_metrics` of a multi-label head from its (N, K) probabilities."""
  pred = multilabel_metrics.predict(probs, 0.5)
  return dict(loss=float(np.mean(binary_log_losses(labels, probs))),
              accuracy=multilabel_metrics.subset_accuracy(labels, pred),
              macro_f1=multilabel_metrics.f1(labels, pred, 'macro'),
              map=multilabel_metrics.mean_average_precision(labels, probs))


def scores(labels: np.ndarray, probs: np.ndarray, class_names, predictions: np.ndarray | None = None) -> dict:
  """Everything scores.json holds: accuracy, per-class precision/recall/F1, macro F1, confusion, ROC AUC."""
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
  )


def classification_report(labels, pred, class_names) -> str:
  return skm.classification_report(labels, pred, labels=np.arange(len(class_names)),
                                    target_names=[str(c) for c in class_names], digits=4, zero_division=0)
