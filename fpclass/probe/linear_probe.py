"""Linear probes: an L2-regularised multinomial logistic regression on frozen features, its strength chosen by
inner cross-validation, fitted for every outer fold at once.

Multi-label labels ((N, K) 0/1): one-vs-rest, one binary logistic regression per class (scikit-learn's
`OneVsRestClassifier(LogisticRegressionCV(...))`), each with its own C from inner folds stratified per label.
The jax solver fits the K problems of every fold together (their objective is a sum of independent terms, so
the optimum is each one's own). A class with no positive (or no negative) among a fold's training rows cannot
be fitted there: its probability is that constant, as OneVsRestClassifier's, with a warning naming it.

Design notes: docs/modules.md (`fpclass/probe/linear_probe.py`).
"""
import dataclasses
import logging
import warnings

import jax
import numpy as np
import threadpoolctl
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold

from fpclass.errors import UserInputError
from fpclass.probe import lbfgs_path

SOLVERS = ('jax', 'sklearn')


@dataclasses.dataclass(frozen=True)
class OuterFold:
  """One outer split: `seed` (the repetition of k-fold), `fold`, and row indices into the features."""
  seed: int
  fold: int
  train_index: np.ndarray
  val_index: np.ndarray


@dataclasses.dataclass(frozen=True)
class FoldFit:
  """A fitted outer fold: the chosen C, the inner-CV mean log loss of every C, the validation rows'
  class probabilities, and the solver's iterations (the most any of this fold's problems took).
  Multi-label: `label_c` (K,) each class's C (nan: not fitted), `c` their median, `inner_log_loss` (C, K),
  `probabilities` (n_val, K) per-class sigmoids."""
  split: OuterFold
  c: float
  inner_log_loss: np.ndarray
  probabilities: np.ndarray
  iterations: int
  label_c: np.ndarray | None = None


def inner_folds(labels: np.ndarray, count: int, seed: int, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Stratified inner folds of an outer fold's training rows (indices into them)."""
  smallest = int(np.bincount(labels, minlength=num_classes).min())
  if smallest < count:
    raise UserInputError(f'config.probe.inner_folds={count}: an outer fold\'s training rows hold a class with '
                         f'only {smallest} examples, too few for {count} stratified inner folds; lower it '
                         '(at least 2) or config.data.num_folds')
  splitter = StratifiedKFold(count, shuffle=True, random_state=seed)
  return [(np.sort(t), np.sort(v)) for t, v in splitter.split(np.zeros(len(labels)), labels)]


def multilabel_inner_folds(labels: np.ndarray, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Inner folds of an outer fold's multi-label training rows, stratified per label (indices into them)."""
  if len(labels) < count:
    raise UserInputError(f'config.probe.inner_folds={count}: an outer fold has only {len(labels)} training rows')
  from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # lazy: multi-label probes only
  splitter = MultilabelStratifiedKFold(count, shuffle=True, random_state=seed)
  return [(np.sort(t), np.sort(v)) for t, v in splitter.split(np.zeros(len(labels)), labels)]


def check_inner_folds(labels: np.ndarray, folds: list[OuterFold], count: int, num_classes: int) -> None:
  """Raises before any work when an outer fold's training rows cannot be split into `count` inner folds."""
  for split in folds:
    if labels.ndim == 2:
      multilabel_inner_folds(labels[split.train_index], count, split.seed)
    else:
      inner_folds(labels[split.train_index], count, split.seed, num_classes)


def constant_labels(train_labels: np.ndarray, split: OuterFold, class_names=None) -> np.ndarray:
  """(K,) bool: the multi-label classes a fold's training rows hold no positive (or no negative) of, each
  logged by name: their probe cannot be fitted there."""
  positives = train_labels.sum(0)
  constant = (positives == 0) | (positives == len(train_labels))
  names = list(class_names) if class_names is not None else [str(k) for k in range(train_labels.shape[1])]
  for k in np.flatnonzero(constant):
    logging.warning('probe: class %r has %s in the training rows of outer fold %d (seed %d): its probability '
                    'there is %d, not fitted', names[k], 'no positive' if positives[k] == 0 else 'no negative',
                    split.fold, split.seed, int(positives[k] > 0))
  return constant


def reduce(train: np.ndarray, val: np.ndarray):
  """(train, val, variances): standardised by the training rows, in the coordinates of their principal axes
  (min(n_train, d) of them at most: the rows' rank), and each axis's variance over the training rows.

  The axes come from the smaller of the two Gram matrices, the n x n one (rows) or the d x d one (features),
  rather than an SVD of the n x d rows: the same coordinates (U·S = train·V, and val·V) at a tenth of the cost
  for n = 240, d = 2048. BLAS runs on one thread here: these matrices are small, and OpenBLAS's two threads ran
  them several times slower than one on this project's busy 2-core machine."""
  train = np.asarray(train, np.float64)
  mean, std = train.mean(0), train.std(0)
  std = np.where(std > 0, std, 1.0)   # a constant feature stays 0 after centring
  train = (train - mean) / std
  val = (np.asarray(val, np.float64) - mean) / std
  rows, features = train.shape
  with threadpoolctl.threadpool_limits(1, user_api='blas'):
    by_rows = features > rows
    eigenvalues, eigenvectors = np.linalg.eigh(train @ train.T if by_rows else train.T @ train)
    keep = eigenvalues > 1e-10 * max(float(eigenvalues[-1]), 1e-300)     # ascending order
    eigenvalues, eigenvectors = eigenvalues[keep][::-1], eigenvectors[:, keep][:, ::-1]
    if by_rows:
      singular = np.sqrt(eigenvalues)
      return eigenvectors * singular, (val @ train.T) @ eigenvectors / singular, eigenvalues / rows
    return train @ eigenvectors, val @ eigenvectors, eigenvalues / rows


# ----------------------------------------------------------------------------------------------------- folds

def _log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def fit_folds(features: np.ndarray, labels: np.ndarray, folds: list[OuterFold], *, num_classes: int, c_values,
              inner: int, solver: str = 'jax', max_iter: int = 500, tol: float = 1e-4,
              class_names=None) -> list[FoldFit]:
  """Fits every outer fold (see the module docstring); `labels` are class indices in [0, num_classes), or
  an (N, num_classes) 0/1 matrix for one-vs-rest multi-label probes (`class_names` name them in warnings)."""
  c_values = np.sort(np.asarray(c_values, np.float64))
  multilabel = labels.ndim == 2
  prepared = []
  for split in folds:
    train_labels = labels[split.train_index]
    z_train, z_val, variances = reduce(features[split.train_index], features[split.val_index])
    prepared.append((split, train_labels, z_train, z_val, variances,
                     multilabel_inner_folds(train_labels, inner, split.seed) if multilabel
                     else inner_folds(train_labels, inner, split.seed, num_classes)))
  if solver not in SOLVERS:
    raise UserInputError(f'config.probe.solver={solver!r}: choose one of {SOLVERS}')
  if multilabel:
    constant = [constant_labels(p[1], p[0], class_names) for p in prepared]
    fits = ([_fit_sklearn_multilabel(*p, c_values=c_values, max_iter=max_iter, constant=k)
             for p, k in zip(prepared, constant)] if solver == 'sklearn' else
            _fit_jax(prepared, features, num_classes, c_values, inner, max_iter, tol, multilabel=True))
    return [_constant_columns(fit, p[1], k) for fit, p, k in zip(fits, prepared, constant)]
  if solver == 'sklearn':
    return [_fit_sklearn(*p, num_classes=num_classes, c_values=c_values, max_iter=max_iter) for p in prepared]
  return _fit_jax(prepared, features, num_classes, c_values, inner, max_iter, tol)


def _constant_columns(fit: FoldFit, train_labels: np.ndarray, constant: np.ndarray) -> FoldFit:
  """A multi-label fit with each class its training rows hold one value of predicted as that value (its
  C nan), as scikit-learn's OneVsRestClassifier does."""
  probs, label_c = fit.probabilities.copy(), fit.label_c.copy()
  probs[:, constant] = train_labels[0, constant]
  label_c[constant] = np.nan
  fitted = label_c[~constant]
  return dataclasses.replace(fit, probabilities=probs, label_c=label_c,
                             c=float(np.median(fitted)) if fitted.size else float('nan'))


def _fit_jax(prepared, features, num_classes, c_values, inner, max_iter, tol, multilabel=False) -> list[FoldFit]:
  rows = max(len(p[1]) for p in prepared)
  # Every backbone with as many features as training rows gets the same shapes, so one compiled program serves
  # them all (a rank-deficient fold's extra coordinates are zero, and stay so: only the penalty acts on them).
  rank = min(rows, features.shape[1])
  g, problems = len(prepared), inner + 1
  z = np.zeros((g, rows, rank))
  onehot = np.zeros((g, rows, num_classes))
  masks = np.zeros((g, problems, rows))
  variances = np.zeros((g, rank))
  for i, (_, train_labels, z_train, _, var, cv) in enumerate(prepared):
    n, r = z_train.shape
    z[i, :n, :r] = z_train
    if multilabel:
      onehot[i, :n] = train_labels
    else:
      onehot[i, np.arange(n), train_labels] = 1.0
    for j, (fit_rows, _) in enumerate(cv):
      masks[i, j, fit_rows] = 1.0
    masks[i, inner, :n] = 1.0                    # the refit on every training row
    variances[i, :r] = var
  weights, biases, iters = jax.device_get(lbfgs_path.fit_path(z, onehot, masks, variances, c_values, max_iter, tol,
                                                    sigmoid=multilabel))
  out = []
  for i, (split, train_labels, z_train, z_val, _, cv) in enumerate(prepared):
    n, r = z_train.shape
    w, b = weights[:, i, :, :r].astype(np.float64), biases[:, i].astype(np.float64)    # (C, M, r, f), (C, M, f)
    if multilabel:
      out.append(_choose_multilabel(split, train_labels, z_train, z_val, cv, w, b, c_values, int(iters[:, i].max())))
      continue

    def log_probabilities(rows, w, b):
      return _log_softmax(lbfgs_path.with_fixed_logit(rows @ w + b[..., None, :], num_classes, np, axis=-1))

    losses = np.zeros((len(c_values), inner))
    for j, (_, held_out) in enumerate(cv):
      logp = log_probabilities(z_train[held_out], w[:, j], b[:, j])                   # (C, n_held_out, k)
      losses[:, j] = -np.take_along_axis(logp, train_labels[held_out][None, :, None], -1).mean((1, 2))
    mean_loss = losses.mean(1)
    best = int(np.argmin(mean_loss))             # the first minimum: the smallest C among ties
    logp = log_probabilities(z_val, w[best, inner], b[best, inner])
    out.append(FoldFit(split, float(c_values[best]), mean_loss, np.exp(logp), int(iters[:, i].max())))
  return out


def _choose_multilabel(split, train_labels, z_train, z_val, cv, w, b, c_values, iterations) -> FoldFit:
  """Each class's C by its mean held-out binary log loss over the inner folds (the smallest C among ties),
  and the validation rows' probabilities of the refit on every training row at that C."""
  inner = len(cv)
  losses = np.zeros((len(c_values), inner, train_labels.shape[1]))
  for j, (_, held_out) in enumerate(cv):
    logits = z_train[held_out] @ w[:, j] + b[:, j, None, :]                             # (C, n_held_out, k)
    y = train_labels[held_out][None]
    losses[:, j] = (np.logaddexp(0.0, logits) - y * logits).mean(1)
  mean_loss = losses.mean(1)                                                             # (C, k)
  best = np.argmin(mean_loss, 0)
  columns = np.arange(train_labels.shape[1])
  logits = np.einsum('nr,rk->nk', z_val, w[best, inner, :, columns].T) + b[best, inner, columns]
  probs = np.exp(-np.logaddexp(0.0, -logits))                                          # the sigmoid, overflow-free
  return FoldFit(split, float(np.median(c_values[best])), mean_loss, probs, iterations, c_values[best])


def _fit_sklearn_multilabel(split, train_labels, z_train, z_val, variances, cv, *, c_values, max_iter,
                            constant) -> FoldFit:
  """One LogisticRegressionCV per class that varies in the training rows (the others: `_constant_columns`)."""
  k = train_labels.shape[1]
  probs, label_c = np.zeros((len(z_val), k)), np.full(k, np.nan)
  mean_loss, iterations = np.full((len(c_values), k), np.nan), 0
  for c in np.flatnonzero(~constant):
    fit = _fit_sklearn(split, train_labels[:, c], z_train, z_val, variances, cv, num_classes=2, c_values=c_values,
                       max_iter=max_iter)
    probs[:, c], label_c[c], mean_loss[:, c] = fit.probabilities[:, 1], fit.c, fit.inner_log_loss
    iterations = max(iterations, fit.iterations)
  return FoldFit(split, float('nan'), mean_loss, probs, iterations, label_c)


def _fit_sklearn(split, train_labels, z_train, z_val, _, cv, *, num_classes, c_values, max_iter) -> FoldFit:
  if len(np.unique(train_labels)) != num_classes:
    raise UserInputError(f'outer fold {split.fold} (seed {split.seed}) lacks a class in its training rows')
  model = LogisticRegressionCV(Cs=list(c_values), cv=cv, scoring='neg_log_loss', l1_ratios=(0.0,),
                               max_iter=max_iter, use_legacy_attributes=False)
  # One BLAS thread, as in `reduce`: two ran these small products several times slower on the busy machine.
  with warnings.catch_warnings(), threadpoolctl.threadpool_limits(1, user_api='blas'):
    warnings.simplefilter('ignore', ConvergenceWarning)   # the large C of a separable fold never converge
    model.fit(z_train, train_labels)
  scores = np.asarray(model.scores_).reshape(len(cv), len(c_values))
  return FoldFit(split, float(model.C_), -scores.mean(0), model.predict_proba(z_val), int(np.max(model.n_iter_)))
