"""Out-of-distribution scores of a classifier: how unlike the training images an image is.

Each score is higher for an image less like the training data (docs/deploy.md has the table and the study):
'energy' (Liu et al. 2020; multi-label: joint energy), 'max_softmax' (Hendrycks & Gimpel 2017), 'mahalanobis'
on the pooled features under a shrunk shared covariance (Lee et al. 2018), 'knn' on normalised features (Sun et
al. 2022), its relative (Ren et al. 2021) and class-conditional forms, 'vim' (Wang et al. 2022) and 'react'
(Sun et al. 2021) on the model's own last layer, 'inputs' (the image's own contrast, roughness and brightness
against the training images', robust z-scores: a flat frame has no contrast, sensor noise is rough as no
photograph is, and both can sit among the training features), and two made of standardised parts:
'mahalanobis_energy', and 'combined' (the default, chosen by the worst case over foreign sets), the largest of
'mahalanobis', 'energy' and 'inputs'.
`scores` is written once for numpy and jax.numpy, so the exported graph computes exactly fpclass's score. The
threshold that turns a score into a flag is `fpclass.deploy.ood_threshold`'s.
"""
import dataclasses

import jax
import numpy as np
from sklearn.covariance import LedoitWolf

SCORES = ('combined', 'mahalanobis_energy', 'mahalanobis', 'relative_mahalanobis', 'class_mahalanobis', 'knn',
          'vim', 'react', 'energy', 'max_softmax', 'inputs')
FEATURE_SCORES = ('combined', 'mahalanobis_energy', 'mahalanobis', 'relative_mahalanobis', 'class_mahalanobis',
                  'knn', 'vim', 'react')   # need the pooled features
HEAD_SCORES = ('vim', 'react')   # need the last layer on the features, its kernel and bias (`linear`)
MAHALANOBIS = ('mahalanobis', 'relative_mahalanobis', 'class_mahalanobis')
REACT_PERCENTILE = 90   # ReAct clips features at this percentile of the training features' nonzero values
VIM_SHARE = 0.99        # ViM's principal space holds at most this share of the features' variance (`_principal`)
INPUT_SCORES = ('combined', 'inputs')   # need the images and the training images' input statistics
PARTS = {'mahalanobis_energy': ('mahalanobis', 'energy'),     # a combined score's parts, each standardised
         'combined': ('mahalanobis', 'energy', 'inputs')}
SAMPLE_IMAGES = 4096   # training images whose input statistics are kept (a fixed random subset beyond it)


@dataclasses.dataclass
class Statistics:
  """What a score needs beyond one image's logits and features: the class means and the shared precision's
  Cholesky factor L, precision = L L' (mahalanobis), the normalised training features (knn) and k, and a
  combined score's (centre, scale) per part, from held-out images (`standardised`). Arrays are float32."""
  score: str
  head: str
  means: np.ndarray | None = None       # (C, D)
  whitening: np.ndarray | None = None   # (D, D): W W' is the inverse covariance
  bank: np.ndarray | None = None        # (B, D), rows of unit length
  k: int = 1
  standardise: np.ndarray | None = None   # (parts, 2): centre and scale of each part's held-out scores
  inputs: np.ndarray | None = None        # (3, 2): median and scale of each input statistic on training images
  background: np.ndarray | None = None    # (1, D) relative_mahalanobis: the mean of every training feature
  background_whitening: np.ndarray | None = None   # (D, D): of their covariance about it
  class_whitening: np.ndarray | None = None   # (C, D, D) class_mahalanobis: each class's own covariance
  linear: np.ndarray | None = None        # (D + 1, L) vim, react: the last layer, kernel rows then the bias row
  clip: np.ndarray | None = None          # (1,) react: the features' clip level
  origin: np.ndarray | None = None        # (D,) vim: the features' point the last layer maps to zero logits
  residual: np.ndarray | None = None      # (D, R) vim: the basis of the features' least-used directions
  alpha: np.ndarray | None = None         # (1,) vim: the virtual logit's scale

  def arrays(self) -> dict:
    return {name: value for name in ARRAYS if (value := getattr(self, name)) is not None}


ARRAYS = ('means', 'whitening', 'bank', 'standardise', 'inputs', 'background', 'background_whitening',
          'class_whitening', 'linear', 'clip', 'origin', 'residual', 'alpha')


def input_statistics(images_u8, xp=np):
  """(N, 3) statistics of uint8 images (N, H, W, C) as the model receives them: log(1 + contrast) (the pixels'
  standard deviation), roughness (the mean absolute difference of neighbouring pixels over 1 + the contrast:
  near 1 for pixel noise, far less for a photograph or a drawing) and brightness (the mean, 0 to 1)."""
  # Written with the ops every exporter knows (no stack, std or log1p: jax2onnx has no converter for them).
  dtype = xp.float64 if xp is np else xp.float32
  x = xp.asarray(images_u8, dtype)
  x = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1)
  flat = x.reshape(x.shape[0], -1)
  mean = flat.mean(axis=1, keepdims=True)
  contrast = xp.sqrt(((flat - mean) * (flat - mean)).mean(axis=1, keepdims=True))
  across = xp.abs(x[:, :, 1:] - x[:, :, :-1]).mean(axis=(1, 2, 3)) if x.shape[2] > 1 else 0.0 * contrast[:, 0]
  down = xp.abs(x[:, 1:] - x[:, :-1]).mean(axis=(1, 2, 3)) if x.shape[1] > 1 else 0.0 * contrast[:, 0]
  rough = ((across + down) / 2.0)[:, None] / (1.0 + contrast)
  return xp.concatenate([xp.log(1.0 + contrast), rough, mean / 255.0], axis=1)


def fit_inputs(images_u8: np.ndarray, seed: int = 0) -> np.ndarray:
  """(3, 2): each input statistic's median and robust scale (1.4826 MAD, floored at 2% of the median's size plus
  0.01, so that a set of near-identical images does not flag every small change) over the training images."""
  index = np.arange(len(images_u8))
  if len(index) > SAMPLE_IMAGES:   # chosen before reading: a streamed split reads only these
    index = np.sort(np.random.default_rng(seed).choice(len(index), SAMPLE_IMAGES, replace=False))
  values = np.concatenate([input_statistics(np.asarray(images_u8[index[i:i + 512]]))
                           for i in range(0, len(index), 512)])
  median = np.median(values, axis=0)
  scale = np.maximum(1.4826 * np.median(np.abs(values - median), axis=0), 0.02 * np.abs(median) + 0.01)
  return np.stack([median, scale], axis=1).astype(np.float32)


def fit_statistics(score: str, head: str, features: np.ndarray, labels: np.ndarray, k: int = 10,
                   max_bank: int = 4096, seed: int = 0, images: np.ndarray | None = None,
                   linear: np.ndarray | None = None) -> Statistics:
  """The statistics of `score` from the training images' pooled `features` (N, D) and `labels` (class indices,
  or a multi-label 0/1 matrix: one mean of every image), their uint8 `images` for the 'inputs' part, and the
  model's last layer (`linear`, (D + 1, L)) for vim and react."""
  if score not in SCORES:
    raise ValueError(f'unknown OOD score {score!r}; one of {SCORES}')
  if score in HEAD_SCORES:
    if linear is None:
      raise ValueError(f"the {score!r} score needs the model's last layer on its features")
    return _fit_head_score(score, head, np.asarray(features, np.float64), np.asarray(linear, np.float64))
  if score in INPUT_SCORES:
    if images is None:
      raise ValueError(f'the {score!r} score needs the training images')
    inputs = fit_inputs(images, seed)
    if score == 'inputs':
      return Statistics(score, head, inputs=inputs)
    return dataclasses.replace(fit_statistics('mahalanobis', head, features, labels), score=score, inputs=inputs)
  if score not in FEATURE_SCORES:
    return Statistics(score, head)
  features = np.asarray(features, np.float64)
  if score == 'knn':
    bank = _unit_rows(features)
    if len(bank) > max_bank:   # a fixed random subset: the graph holds the bank as a constant
      bank = bank[np.sort(np.random.default_rng(seed).choice(len(bank), max_bank, replace=False))]
    return Statistics(score, head, bank=bank.astype(np.float32), k=int(min(k, len(bank))))
  labels = np.asarray(labels)
  groups = np.zeros(len(features), np.int64) if labels.ndim == 2 else labels.astype(np.int64)
  classes = np.unique(groups)
  means = np.stack([features[groups == c].mean(0) for c in classes])
  centred = features - means[np.searchsorted(classes, groups)]
  shared = _whitening(LedoitWolf(assume_centered=True).fit(centred).covariance_)
  statistics = Statistics(score, head, means=means.astype(np.float32), whitening=shared.astype(np.float32))
  if score == 'relative_mahalanobis':   # minus the distance under one Gaussian of every training feature
    background = features.mean(0, keepdims=True)
    covariance = LedoitWolf(assume_centered=True).fit(features - background).covariance_
    statistics.background = background.astype(np.float32)
    statistics.background_whitening = _whitening(covariance).astype(np.float32)
  if score == 'class_mahalanobis':   # each class's own shrunk covariance; the shared one for a class of one image
    statistics.class_whitening = np.stack([
        _whitening(LedoitWolf(assume_centered=True).fit(centred[groups == c]).covariance_)
        if np.sum(groups == c) > 1 else shared for c in classes]).astype(np.float32)
  return statistics


def _fit_head_score(score: str, head: str, features: np.ndarray, linear: np.ndarray) -> Statistics:
  """ReAct: the clip level, the REACT_PERCENTILE-th percentile of the features' nonzero values. ViM: the origin o
  with o W + b = 0, the residual space (the directions of least variance of the features about o, all but the
  principal ones: `_principal`), and the virtual logit's scale alpha, the training images' mean largest logit over
  their mean residual norm (Wang et al. 2022)."""
  statistics = Statistics(score, head, linear=linear.astype(np.float32))
  if score == 'react':
    active = features[features != 0]   # a ReLU's sparse features: the plain percentile is 0 and clips them all
    statistics.clip = np.asarray([np.percentile(active if active.size else features, REACT_PERCENTILE)], np.float32)
    return statistics
  kernel, bias = linear[:-1], linear[-1]
  origin = -bias @ np.linalg.pinv(kernel)
  centred = features - origin
  values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))   # ascending
  residual = vectors[:, :features.shape[1] - _principal(values[::-1])]
  norms = np.linalg.norm(centred @ residual, axis=1)
  logits = features @ kernel + bias
  alpha = float(np.mean(logits.max(axis=1)) / max(float(np.mean(norms)), 1e-12))
  statistics.origin, statistics.residual = origin.astype(np.float32), residual.astype(np.float32)
  statistics.alpha = np.asarray([alpha], np.float32)
  return statistics


def standardised(statistics: Statistics, logits, features, images=None) -> Statistics:
  """A combined score's statistics with each part's centre and scale taken from held-out in-distribution images
  (their logits, features and, for the 'inputs' part, the images); other scores unchanged."""
  if statistics.score not in PARTS:
    return statistics
  parts = [np.asarray(scores(dataclasses.replace(statistics, score=part), logits, features, images=images))
           for part in PARTS[statistics.score]]
  centre_scale = [(part.mean(), max(part.std(), 1e-6)) for part in parts]
  return dataclasses.replace(statistics, standardise=np.asarray(centre_scale, np.float32))


def _whitening(covariance: np.ndarray) -> np.ndarray:
  """W with W W' = the inverse covariance, from its eigenvectors. A feature no training image moves (a ReLU unit
  dead on this data) leaves the shrunk covariance singular, where a Cholesky factor of the precision fails
  (measured: a footprint ensemble's member); its eigenvalues are floored at 1e-6 of the largest, so such a
  direction weighs a million times the main one: in-distribution images never move it."""
  values, vectors = np.linalg.eigh(covariance)
  floor = max(float(values.max()), 1e-12) * 1e-6
  return vectors / np.sqrt(np.maximum(values, floor))


def scores(statistics: Statistics, logits, features, xp=np, images=None):
  """(N,) scores of a batch, higher = less like the training data; numpy on the host (float64) or traced with
  jax.numpy (float32: the serve program and the exported graph). `images` (uint8, as the model receives them):
  for the scores with an 'inputs' part."""
  dtype = xp.float64 if xp is np else xp.float32
  logits = xp.asarray(logits, dtype)
  score = statistics.score
  if score in PARTS:
    if statistics.standardise is None:
      raise ValueError(f'the {score!r} score needs its parts standardised on held-out images (`standardised`)')
    parts = [(scores(dataclasses.replace(statistics, score=part), logits, features, xp, images) - centre) / scale
             for part, (centre, scale) in zip(PARTS[score], statistics.standardise.tolist())]
    out = parts[0]
    for part in parts[1:]:
      out = xp.maximum(out, part)
    return out
  if score == 'inputs':
    if images is None or statistics.inputs is None:
      raise ValueError("the 'inputs' score needs the images and the training images' input statistics")
    median, scale = xp.asarray(statistics.inputs[:, 0], dtype), xp.asarray(statistics.inputs[:, 1], dtype)
    return (xp.abs(input_statistics(images, xp) - median) / scale).max(axis=1)
  if score == 'energy':
    return _energy(statistics.head, logits, xp)
  if score == 'max_softmax':
    if statistics.head == 'multilabel':
      return -(1.0 / (1.0 + xp.exp(-logits.max(axis=1))))
    if statistics.head == 'sigmoid':
      return -(1.0 / (1.0 + xp.exp(-xp.abs(logits[:, 0]))))
    z = xp.exp(logits - logits.max(axis=1, keepdims=True))
    return -(1.0 / z.sum(axis=1))
  features = xp.asarray(features, dtype).reshape(features.shape[0], -1)
  array = lambda name: xp.asarray(getattr(statistics, name), dtype)   # noqa: E731
  if score in MAHALANOBIS:
    whitening = array('class_whitening' if score == 'class_mahalanobis' else 'whitening')
    distances = _squared_distances(features, array('means'), whitening, xp)
    if score == 'relative_mahalanobis':
      distances = distances - _squared_distances(features, array('background'), array('background_whitening'), xp)
    return distances.min(axis=1)
  if score in HEAD_SCORES:
    linear = array('linear')
    if score == 'react':
      clipped = xp.minimum(features, array('clip')[0])
      return _energy(statistics.head, _matmul(clipped, linear[:-1], xp) + linear[-1], xp)
    residual = _matmul(features - array('origin'), array('residual'), xp)
    return array('alpha')[0] * xp.sqrt((residual * residual).sum(axis=1)) + _energy(statistics.head, logits, xp)
  bank = xp.asarray(statistics.bank, dtype)
  unit = features / xp.sqrt(xp.maximum((features * features).sum(axis=1, keepdims=True), 1e-12))
  similarity = _matmul(unit, bank.T, xp)                  # (N, B)
  if xp is np:
    kth = -np.partition(-similarity, statistics.k - 1, axis=1)[:, statistics.k - 1]
  else:
    kth = jax.lax.top_k(similarity, statistics.k)[0][:, -1]
  return -kth


def _principal(descending: np.ndarray) -> int:
  """ViM's principal dimension: half the features (the paper's ratio), or fewer where fewer directions hold
  VIM_SHARE of the variance, and always fewer than the directions training moves at all. Features of a lower
  rank (dead ReLU units) leave directions no training image moves; a residual of those alone is zero on every
  training image, and alpha grows without bound."""
  share = np.cumsum(descending) / max(float(descending.sum()), 1e-300)
  rank = int(np.sum(descending > 1e-9 * max(float(descending[0]), 1e-300)))
  return int(max(1, min(len(descending) // 2, np.searchsorted(share, VIM_SHARE) + 1, rank - 1)))


def _energy(head: str, logits, xp):
  """-logsumexp of the logits (Liu et al. 2020); multi-label: the joint energy."""
  if head == 'multilabel':
    return -xp.sum(xp.logaddexp(0.0, logits), axis=1)
  if head == 'sigmoid':   # one logit l: the two-class softmax over (0, l)
    return -xp.logaddexp(0.0, logits[:, 0])
  top = logits.max(axis=1)
  return -(top + xp.log(xp.exp(logits - top[:, None]).sum(axis=1)))


def _matmul(a, b, xp):
  """a @ b; in jax.numpy at float32's full precision. On a GPU, XLA's default for a float32 product is TF32 (10
  bits of mantissa), which moved a traced score 0.2% from the host's on an H200 (2026-11-28): enough to move an
  image across the threshold the host's scores set. The products here are a few features wide: cheap either way."""
  if xp is np:
    return a @ b
  return xp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _squared_distances(features, means, whitening, xp):
  """(N, C): each feature's squared Mahalanobis distance to each mean, under one whitening (D, D) or one per
  mean (C, D, D). (f - m)' L L' (f - m) = |(f - m) L|^2: a sum of squares, which float32 keeps to its relative
  precision (the expanded f'Pf - 2 f'Pm + m'Pm cancels catastrophically far from every mean)."""
  centred = features[:, None, :] - means[None, :, :]   # (N, C, D)
  if whitening.ndim == 2:
    white = _matmul(centred, whitening, xp)
    return (white * white).sum(axis=2)
  white = _matmul(xp.swapaxes(centred, 0, 1), whitening, xp)   # (C, N, D): a batched product, each class its own
  return xp.swapaxes((white * white).sum(axis=2), 0, 1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
