"""The out-of-distribution score and its `unknown` threshold: each score from its definition, the host and the traced
form equal, the conformal threshold's false-rejection rate on held-out data, the fit stored once per checkpoint,
predict's columns through launch.py, an ensemble's threshold over its out-of-fold examples, multi-label."""
import dataclasses
import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial import distance
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf

from bench.deploy import near_sets
from fpclass.config.inputs import DecodeSettings
from fpclass.config.outputs import OOD_SCORES, OodSettings
from fpclass.deploy import ood, ood_threshold
from fpclass.deploy import ood_scores as ood_math
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.modes import predict as predict_mode
from fpclass.train import sidecar
from tests.conftest import QUICK, launch, load_config, trained_once
from tests.test_serve import checkerboard_png

DIGITS = '--config=configs/digits.py:quick'


@pytest.fixture(scope='module')
def trained_digits(tmp_path_factory):
  """scikit-learn's digits, 2 epochs at 16 x 16 (1,437 training and 360 validation images): enough held-out
  images to measure a 5% rate."""
  return trained_once(tmp_path_factory, 'digits-quick', DIGITS)


def random_problem(classes=3, n=60, d=5, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  features = rng.normal(size=(n, d)) + 3.0 * np.eye(classes, d)[labels]
  return features, labels, rng.normal(size=(7, classes)), rng.normal(size=(7, d)) * 2


def test_a_collapsed_model_s_features_still_fit_and_an_image_that_moves_them_scores_higher():
  """A fold model that collapsed to the majority class (2 of a footprint sweep's 15, measured) has every ReLU
  dead: zero features, a zero covariance, no Cholesky factor of its precision. It still fits, and scores."""
  features, labels, logits, queries = random_problem()
  maha = ood_math.fit_statistics('mahalanobis', 'softmax', np.zeros_like(features), labels)
  inside = ood_math.scores(maha, logits, np.zeros_like(queries))
  assert np.isfinite(inside).all() and (inside == 0).all()
  assert (ood_math.scores(maha, logits, queries) > 0).all()


def test_each_score_from_its_definition():
  features, labels, logits, queries = random_problem()
  maha = ood_math.fit_statistics('mahalanobis', 'softmax', features, labels)
  means = np.stack([features[labels == c].mean(0) for c in range(3)])
  precision = np.asarray(maha.whitening, np.float64) @ np.asarray(maha.whitening, np.float64).T
  centred = features - means[labels]
  np.testing.assert_allclose(precision, LedoitWolf(assume_centered=True).fit(centred).precision_, rtol=1e-4)
  expected = [min(distance.mahalanobis(q, m, precision) ** 2 for m in means) for q in queries]
  np.testing.assert_allclose(ood_math.scores(maha, logits, queries), expected, rtol=1e-5)
  np.testing.assert_allclose(maha.means, means, rtol=1e-6)

  knn = ood_math.fit_statistics('knn', 'softmax', features, labels, k=4)
  cosine = 1 - distance.cdist(queries, features, 'cosine')
  np.testing.assert_allclose(ood_math.scores(knn, logits, queries), -np.sort(cosine, axis=1)[:, -4], atol=1e-6)

  energy = ood_math.Statistics('energy', 'softmax')
  np.testing.assert_allclose(ood_math.scores(energy, logits, None), -logsumexp(logits, axis=1), rtol=1e-12)
  softmax = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
  np.testing.assert_allclose(ood_math.scores(ood_math.Statistics('max_softmax', 'softmax'), logits, None),
                             -softmax.max(1), rtol=1e-12)
  # A one-logit head is the two-class softmax over (0, logit); multi-label's joint energy sums softplus.
  one = logits[:, :1]
  np.testing.assert_allclose(ood_math.scores(ood_math.Statistics('energy', 'sigmoid'), one, None),
                             -logsumexp(np.concatenate([np.zeros_like(one), one], 1), axis=1), rtol=1e-12)
  np.testing.assert_allclose(ood_math.scores(ood_math.Statistics('energy', 'multilabel'), logits, None),
                             -np.log1p(np.exp(logits)).sum(1), rtol=1e-12)
  # Multi-label Mahalanobis: one mean of every image.
  tags = (np.random.default_rng(1).random((60, 3)) > 0.5).astype(int)
  assert ood_math.fit_statistics('mahalanobis', 'multilabel', features, tags).means.shape == (1, 5)


def test_the_other_feature_scores_from_their_definitions():
  """Relative Mahalanobis (a class's distance less the distance under one Gaussian of every training feature),
  class-conditional Mahalanobis (each class its own shrunk covariance), ReAct (energy of the last layer on the
  features clipped at their 90th percentile) and ViM (the virtual logit, alpha times the norm of the features'
  part outside their principal half about the origin the last layer maps to zero, plus energy)."""
  features, labels, _, queries = random_problem(n=90, d=6)
  rng = np.random.default_rng(4)
  linear = rng.normal(size=(7, 3))
  logits = queries @ linear[:-1] + linear[-1]
  means = np.stack([features[labels == c].mean(0) for c in range(3)])
  centred = features - means[labels]
  shared = LedoitWolf(assume_centered=True).fit(centred).precision_
  background = LedoitWolf().fit(features)
  relative = [min(distance.mahalanobis(q, m, shared) ** 2 - distance.mahalanobis(q, background.location_,
                                                                                 background.precision_) ** 2
                  for m in means) for q in queries]
  fitted = ood_math.fit_statistics('relative_mahalanobis', 'softmax', features, labels)
  np.testing.assert_allclose(ood_math.scores(fitted, logits, queries), relative, rtol=1e-4)
  own = [LedoitWolf(assume_centered=True).fit(centred[labels == c]).precision_ for c in range(3)]
  conditional = [min(distance.mahalanobis(q, means[c], own[c]) ** 2 for c in range(3)) for q in queries]
  fitted = ood_math.fit_statistics('class_mahalanobis', 'softmax', features, labels)
  np.testing.assert_allclose(ood_math.scores(fitted, logits, queries), conditional, rtol=1e-4)

  clipped = np.minimum(queries, np.percentile(features, 90)) @ linear[:-1] + linear[-1]
  fitted = ood_math.fit_statistics('react', 'softmax', features, labels, linear=linear)
  np.testing.assert_allclose(ood_math.scores(fitted, logits, queries), -logsumexp(clipped, axis=1), rtol=1e-5)
  sparse = np.where(features > 3.0, features, 0.0)   # a ReLU's features, mostly zero: the nonzero ones' percentile
  assert np.mean(sparse == 0) > 0.9 and np.percentile(sparse, 90) == 0
  fitted = ood_math.fit_statistics('react', 'softmax', sparse, labels, linear=linear)
  assert fitted.clip[0] == pytest.approx(np.percentile(sparse[sparse != 0], 90), rel=1e-6)

  origin = np.linalg.lstsq(linear[:-1].T, -linear[-1], rcond=None)[0]   # o W + b = 0
  _, _, right = np.linalg.svd(features - origin, full_matrices=False)
  principal = right[:3].T                                               # half of the 6 directions
  outside = lambda x: np.linalg.norm((x - origin) - (x - origin) @ principal @ principal.T, axis=1)  # noqa: E731
  alpha = np.mean((features @ linear[:-1] + linear[-1]).max(1)) / np.mean(outside(features))
  fitted = ood_math.fit_statistics('vim', 'softmax', features, labels, linear=linear)
  np.testing.assert_allclose(ood_math.scores(fitted, logits, queries),
                             alpha * outside(queries) - logsumexp(logits, axis=1), rtol=1e-4)
  # Features of rank 2 (4 dead units): about the origin they span 3 directions (the 2 and the origin's offset).
  # Half of the 6 would be those 3, and the residual, the 3 directions no training image moves, zero on every
  # training image (alpha ~ 1e12): the principal space keeps fewer than the 3, so the residual holds one of them.
  low = np.concatenate([features[:, :2], np.zeros((90, 4))], axis=1)
  fitted = ood_math.fit_statistics('vim', 'softmax', low, labels, linear=linear)
  assert fitted.residual.shape == (6, 4) and 1e-3 < fitted.alpha[0] < 1e3
  with pytest.raises(ValueError, match='last layer'):
    ood_math.fit_statistics('vim', 'softmax', features, labels)


@pytest.mark.parametrize('score', ood_math.SCORES)
@pytest.mark.parametrize('head', ['softmax', 'sigmoid', 'multilabel'])
def test_the_traced_score_is_the_host_score(score, head):
  """The program serve runs and export writes computes the score with jax.numpy in float32."""
  features, labels, logits, queries = random_problem()
  logits = logits[:, :1] if head == 'sigmoid' else logits
  rng = np.random.default_rng(2)
  train_images = rng.integers(0, 256, (len(features), 8, 6, 3)).astype(np.uint8)
  images = rng.integers(0, 256, (len(queries), 8, 6, 3)).astype(np.uint8)
  linear = rng.normal(size=(features.shape[1] + 1, logits.shape[1]))   # vim and react: a last layer
  statistics = ood_math.standardised(ood_math.fit_statistics(score, head, features, labels, k=3, images=train_images,
                                                             linear=linear), logits, queries, images)
  host = ood_math.scores(statistics, logits, queries, images=images)
  traced = np.asarray(ood_math.scores(statistics, jnp.asarray(logits), jnp.asarray(queries), xp=jnp,
                                      images=jnp.asarray(images)))
  np.testing.assert_allclose(traced, host, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize('score', ['mahalanobis', 'class_mahalanobis', 'knn', 'vim', 'react'])
def test_the_traced_score_multiplies_at_float32_full_precision(score):
  """On a GPU, XLA's default float32 product is TF32, which moved the traced scores 0.2% from the host's that set
  the threshold (an H200, 2026-11-28). Each product of the traced score asks for full precision."""
  features, labels, logits, queries = random_problem()
  linear = np.random.default_rng(2).normal(size=(features.shape[1] + 1, logits.shape[1]))
  statistics = ood_math.fit_statistics(score, 'softmax', features, labels, k=3, linear=linear)
  jaxpr = jax.make_jaxpr(lambda l, f: ood_math.scores(statistics, l, f, xp=jnp))(logits, queries)
  products = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  assert products and all(e.params['precision'] is not None and 'HIGHEST' in str(e.params['precision'])
                          for e in products), [e.params['precision'] for e in products]


def test_the_input_statistics_from_their_definition_flag_flat_frames_and_pixel_noise():
  """Contrast, roughness and brightness of an image, recomputed with loops; fitted on smooth training images
  (gradients with a little texture), the 'inputs' score puts flat frames and pixel noise far above them."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (1, 5, 4, 2)).astype(np.uint8)
  x = image[0].astype(np.float64)
  contrast = x.std()
  across = np.mean([abs(x[i, j + 1, c] - x[i, j, c]) for i in range(5) for j in range(3) for c in range(2)])
  down = np.mean([abs(x[i + 1, j, c] - x[i, j, c]) for i in range(4) for j in range(4) for c in range(2)])
  np.testing.assert_allclose(ood_math.input_statistics(image)[0],
                             [np.log1p(contrast), (across + down) / 2 / (1 + contrast), x.mean() / 255], rtol=1e-12)
  ramp = np.linspace(0, 1, 32)
  smooth = np.stack([np.clip(255 * (a * ramp[:, None] + (1 - a) * ramp[None, :]) + rng.normal(0, 4, (32, 32)), 0, 255)
                     for a in rng.random(300)]).astype(np.uint8)[..., None]
  statistics = ood_math.fit_statistics('inputs', 'softmax', None, None, images=smooth)
  inside = ood_math.scores(statistics, np.zeros((300, 2)), None, images=smooth)
  flat = np.full((20, 32, 32, 1), 128, np.uint8)
  noise = rng.integers(0, 256, (20, 32, 32, 1)).astype(np.uint8)
  assert ood_math.scores(statistics, np.zeros((20, 2)), None, images=flat).min() > np.quantile(inside, 0.99) + 3
  assert ood_math.scores(statistics, np.zeros((20, 2)), None, images=noise).min() > np.quantile(inside, 0.99) + 3


def test_the_combined_score_catches_what_either_part_misses_and_is_stored_whole(tmp_path):
  """Far features with confident logits (Mahalanobis sees them, energy does not) and usual features with flat
  logits (the other way round): the larger standardised part flags both, as neither part does alone. Its
  standardisation round-trips through ood.npz."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 600)
  features = rng.normal(size=(600, 5)) + 4.0 * np.eye(3, 5)[labels]
  confident = lambda n, c: 6.0 * np.eye(3)[c] + rng.normal(size=(n, 3))   # noqa: E731
  held_logits, held_features = confident(300, labels[:300]), features[:300]
  statistics = ood_math.standardised(ood_math.fit_statistics('mahalanobis_energy', 'softmax', features, labels),
                                     held_logits, held_features)
  inside = ood_math.scores(statistics, held_logits, held_features)
  far_images = confident(200, labels[:200]), features[:200] + 25.0           # (logits, features)
  flat_images = rng.normal(size=(200, 3)) * 0.1, features[:200]
  far, flat = ood_math.scores(statistics, *far_images), ood_math.scores(statistics, *flat_images)
  parts = {p: ood_math.scores(dataclasses.replace(statistics, score=p), held_logits, held_features) for p in
           ('mahalanobis', 'energy')}
  expected = np.maximum(*[(parts[p] - c) / s for p, (c, s) in zip(parts, statistics.standardise.tolist())])
  np.testing.assert_allclose(inside, expected, rtol=1e-6)
  for p, (centre, scale) in zip(parts, statistics.standardise.tolist()):   # each part's mean and standard deviation
    assert (centre, scale) == pytest.approx((parts[p].mean(), parts[p].std()), rel=1e-5)
  assert max(abs(part.std() - 1) for part in parts.values()) > 0.05   # where a variance differs from it
  assert ood_threshold.auroc(inside, far) > 0.99 and ood_threshold.auroc(inside, flat) > 0.99
  for part, missed in (('mahalanobis', flat_images), ('energy', far_images)):   # each part alone misses one kind
    alone = dataclasses.replace(statistics, score=part)
    assert ood_threshold.auroc(ood_math.scores(alone, held_logits, held_features), ood_math.scores(alone, *missed)) < 0.8
  fit = ood.ModelOod(statistics, 1.0, np.asarray(['a'], str), np.zeros(1),
                     {'score': 'mahalanobis_energy', 'threshold': 1.0})
  ood.save(tmp_path / ood.FILE, fit)
  loaded = ood.load(tmp_path / ood.FILE, 'softmax')
  np.testing.assert_array_equal(loaded.statistics.standardise, statistics.standardise)
  np.testing.assert_allclose(ood_math.scores(loaded.statistics, held_logits, held_features), inside, rtol=1e-6)
  with pytest.raises(ValueError, match='standardised on held-out images'):
    ood_math.scores(ood_math.fit_statistics('mahalanobis_energy', 'softmax', features, labels), held_logits,
                    held_features)


def test_the_conformal_threshold_reaches_its_rate_on_fresh_data():
  rng = np.random.default_rng(0)
  for rate in (0.05, 0.2):
    reached = [np.mean(rng.gamma(2.0, size=4000) > ood_threshold.conformal_threshold(rng.gamma(2.0, size=400), rate))
               for _ in range(40)]
    assert abs(np.mean(reached) - rate) < 0.006, (rate, np.mean(reached))
  # Too few held-out images for the rate: nothing is flagged rather than more than asked.
  assert ood_threshold.conformal_threshold(np.arange(18.0), 0.05) == math.inf
  assert ood_threshold.conformal_threshold(np.arange(19.0), 0.05) == 18.0


def test_the_threshold_reaches_its_target_rate_on_held_out_digits(trained_digits, monkeypatch):
  """The digits model's Mahalanobis scores of its 360 validation images: a threshold fitted on one half flags about
  5% of the other half, both ways round (a threshold that ignored the rate, or a plain quantile of the wrong
  tail, misses by far more than the 2 points allowed); far-off images (faces) are flagged."""
  workdir, env, _ = trained_digits
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = sidecar.stored_config(workdir)
  trained = load_trained(config, workdir)
  fit = ood.fit_model(trained, trained.settings, OodSettings())
  assert fit.record['held_out'] == 360 and fit.record['train_images'] == 1437 and fit.record['score'] == OodSettings().score
  assert fit.record['reached'] <= 0.05
  scores = fit.held_out_scores
  halves = np.array_split(np.random.default_rng(0).permutation(len(scores)), 2)
  reached = [np.mean(scores[b] > ood_threshold.conformal_threshold(scores[a], 0.05)) for a, b in (halves, halves[::-1])]
  assert abs(np.mean(reached) - 0.05) <= 0.02, reached
  skimage_data = pytest.importorskip('skimage.data')
  faces = ood.Scorer(trained, fit).scores(resized(skimage_data.lfw_subset()[:100], 16), 100)
  assert ood_threshold.auroc(scores, faces) > 0.95 and np.mean(faces > fit.threshold) > 0.8


@pytest.mark.parametrize('score', ['vim', 'react', 'relative_mahalanobis', 'class_mahalanobis'])
def test_the_other_feature_scores_fit_on_a_trained_model_and_flag_faces(trained_digits, monkeypatch, score):
  """Each fits on the digits model (vim and react with its own last layer, read from its parameters) and flags
  far-off images (faces) above its threshold."""
  workdir, env, _ = trained_digits
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  trained = load_trained(sidecar.stored_config(workdir), workdir)
  fit = ood.fit_model(trained, trained.settings, OodSettings(score=score))
  assert np.isfinite(fit.threshold) and fit.record['reached'] <= 0.1
  skimage_data = pytest.importorskip('skimage.data')
  faces = ood.Scorer(trained, fit).scores(resized(skimage_data.lfw_subset()[:100], 16), 100)
  assert ood_threshold.auroc(fit.held_out_scores, faces) > 0.9, score
  if score in ood_math.HEAD_SCORES:   # the layer read is the logits' own: the host score from it is the traced one
    logits, features = ood.outputs(trained, resized(skimage_data.lfw_subset()[:8], 16), 8)
    # (the model's own head on a GPU multiplies in TF32, XLA's default for float32 there: 8e-4 on an H200)
    tolerance = 1e-4 if jax.default_backend() == 'cpu' else 5e-3
    np.testing.assert_allclose(features @ fit.statistics.linear[:-1] + fit.statistics.linear[-1], logits,
                               rtol=tolerance, atol=tolerance)


def test_a_model_whose_logits_no_layer_of_its_gives_is_refused_vim_and_react():
  features = np.random.default_rng(0).normal(size=(20, 4))
  params = {'logits': {'kernel': np.ones((4, 3)), 'bias': np.zeros(3)}, 'other': {'kernel': np.ones((4, 2))}}
  np.testing.assert_array_equal(ood.last_layer(params, features, features @ np.ones((4, 3)), 'vim'),
                                np.concatenate([np.ones((4, 3)), np.zeros((1, 3))]))
  with pytest.raises(UserInputError, match=r"config.ood.score='react': the model has no last Dense layer from its 4 "
                                           r'pooled features to its 3 logits'):
    ood.last_layer(params, features, features @ np.ones((4, 3)) + 1.0, 'react')


def resized(gray: np.ndarray, size: int) -> np.ndarray:
  """Float images in [0, 1] as uint8 (N, size, size, 1), resized as decoding would."""
  return np.stack([np.asarray(Image.fromarray((255 * g).astype(np.uint8)).resize((size, size), Image.BILINEAR))
                   for g in gray])[..., None]


def test_predict_writes_the_score_and_unknown_and_stores_the_fit_once(trained_quick, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  shutil.copytree(trained_quick[0], workdir)
  env = trained_quick[1]
  folder = tmp_path / 'inputs'
  folder.mkdir()
  test_split = next(pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/test'))
  for path in sorted(test_split.glob('*.png'))[:4]:
    shutil.copy(path, folder / path.name)
  (folder / 'checker.png').write_bytes(checkerboard_png())
  launch(f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={folder}',
         '--config.ood.false_rejection=0.25', env=env)
  frame = pd.read_csv(workdir / 'predictions.csv')
  assert list(frame.columns) == ['path', 'predicted', 'p_0', 'p_1', 'ood_score', 'unknown']
  stored = ood.load(workdir / ood.FILE, 'softmax')
  assert stored.record['false_rejection'] == 0.25 and stored.record['held_out'] == 15
  assert list(frame['unknown']) == list(frame['ood_score'] > stored.threshold)
  assert bool(frame.set_index('path').loc[str(folder / 'checker.png'), 'unknown'])
  assert 'Unknown (none of 0, 1)' in (workdir / 'report.d' / '45-predictions.md').read_text()

  # Reused while the checkpoint and settings stay; fitted again (and stored) when they change.
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = load_config(QUICK.split('=', 1)[1], **{'predict.inputs': str(folder), 'ood.false_rejection': 0.25})
  before = (workdir / ood.FILE).stat().st_mtime_ns
  predict_mode.predict(config, workdir)
  assert (workdir / ood.FILE).stat().st_mtime_ns == before
  config.ood.score = 'knn'
  predict_mode.predict(config, workdir)
  assert ood.load(workdir / ood.FILE, 'softmax').record['score'] == 'knn'
  config.ood.enabled = False
  predict_mode.predict(config, workdir)
  assert list(pd.read_csv(workdir / 'predictions.csv').columns) == ['path', 'predicted', 'p_0', 'p_1']


def test_a_multilabel_model_gets_a_score_and_threshold(trained_multilabel, monkeypatch):
  """Multi-label OOD works: the training images' one mean (Mahalanobis), or their features (kNN)."""
  workdir, env, _ = trained_multilabel
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = sidecar.stored_config(workdir)
  trained = load_trained(config, workdir)
  for score in ('knn', 'mahalanobis'):
    fit = ood.for_model(trained, workdir, OodSettings(score=score), store=False)
    assert np.isfinite(fit.threshold) and fit.record['held_out'] == 48 and fit.record['reached'] <= 0.05
    height, width = trained.metadata['image_size']
    noise = np.random.default_rng(0).integers(0, 256, (4, height, width, trained.metadata['channels']), np.uint8)
    assert ood.Scorer(trained, fit).scores(noise, 4).shape == (4,)


class FakeEnsemble:
  """The members and weights `ensemble_ood` reads; their fits are planted below."""

  def __init__(self, weights):
    self.members = [type('Member', (), {'trained': None, 'settings': None, 'path': f'm{i}'})() for i in range(len(weights))]
    self.weights = list(weights)


def test_an_ensemble_threshold_is_over_each_example_s_held_out_models(monkeypatch):
  """Each example's ensemble score is the weighted mean of the standardised scores of the models that held it
  out (two folds of one variant, and one model of another that saw every example)."""
  rng = np.random.default_rng(0)
  ids = np.array([f'img{i:03d}' for i in range(120)])
  fits = {
      'm0': ood.ModelOod(None, 0.0, ids[:60], rng.normal(5, 2, 60), {}),
      'm1': ood.ModelOod(None, 0.0, ids[60:], rng.normal(5, 2, 60), {}),
      'm2': ood.ModelOod(None, 0.0, ids, rng.normal(-3, 0.5, 120), {}),
  }
  monkeypatch.setattr(ood, 'model_ood', lambda trained, run, path, settings, store: fits[path])
  settings = OodSettings(false_rejection=0.1)
  fitted = ood.ensemble_ood(FakeEnsemble([0.35, 0.35, 0.3]), settings)
  z = {k: (f.held_out_scores - f.held_out_scores.mean()) / f.held_out_scores.std() for k, f in fits.items()}
  expected = np.concatenate([(0.35 * z['m0'] + 0.3 * z['m2'][:60]) / 0.65, (0.35 * z['m1'] + 0.3 * z['m2'][60:]) / 0.65])
  assert fitted.threshold == pytest.approx(ood_threshold.conformal_threshold(expected, 0.1))
  assert fitted.record['held_out'] == 120 and fitted.record['reached'] <= 0.1


def test_bad_settings_and_a_model_without_features_get_one_line():
  with pytest.raises(Exception, match=r"config.ood.score='cosine': must be one of"):
    OodSettings(score='cosine')
  assert OOD_SCORES == ood_math.SCORES   # the settings' list (config reads no deploy module) is the scores'
  with pytest.raises(Exception, match=r'config.ood.false_rejection=1.5: must be a rate in \(0, 1\)'):
    OodSettings(false_rejection=1.5)

  class NoFeatures:
    def prepare(self, images):
      return images

    def apply(self, params, batch_stats, x, train=False):
      return jnp.zeros((len(x), 2)), {}, {}
  with pytest.raises(UserInputError, match="records no 'pre_logits' features"):
    ood.model_outputs(NoFeatures(), {}, {}, jnp.zeros((1, 4, 4, 1)))
  assert json.dumps(ood.describe(ood.ModelOod(None, math.inf, np.zeros(0), np.zeros(3), {
      'score': 'knn', 'false_rejection': 0.05, 'held_out': 3, 'reached': 0.0})))   # no threshold: null, valid JSON


@pytest.mark.parametrize('score', ['combined', 'mahalanobis_energy', 'energy'])
def test_no_held_out_image_both_standardises_and_sets_the_threshold_and_the_rate_is_from_images_that_set_nothing(
    score):
  """A combined score's threshold is the conformal quantile of held-out scores each standardised on the other
  half of the images (new images: on all of them); the rate reported is each image's flag under a fit made
  without it (5 folds), recomputed here from the definitions."""
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 400)
  features = rng.normal(size=(400, 5)) + 3.0 * np.eye(3, 5)[labels]
  logits = 4.0 * np.eye(3)[labels[:200]] + rng.normal(size=(200, 3))
  images = rng.integers(0, 256, (400, 6, 6, 1)).astype(np.uint8)
  statistics = ood_math.fit_statistics(score, 'softmax', features, labels, images=images)
  held_logits, held_features = logits, features[:200] + rng.normal(0, 0.5, (200, 5))
  held_images = images[200:]
  fit = ood_threshold.fit_held_out(statistics, held_logits, held_features, 0.1, seed=3, images=held_images)
  order = np.random.default_rng(3).permutation(200)

  def by_hand(index):
    if score == 'energy':
      return statistics, ood_threshold.conformal_threshold(ood_math.scores(statistics, held_logits[index], None), 0.1)
    score_of = lambda fitted, part: ood_math.scores(fitted, held_logits[part], held_features[part],  # noqa: E731
                                                    images=held_images[part])
    half = len(index) // 2
    on = lambda part: ood_math.standardised(statistics, held_logits[part], held_features[part],  # noqa: E731
                                            held_images[part])
    first, second = index[:half], index[half:]
    crossed = np.concatenate([score_of(on(second), first), score_of(on(first), second)])
    return on(index), ood_threshold.conformal_threshold(crossed, 0.1)

  standard, threshold = by_hand(order)
  assert fit.threshold == threshold
  if score != 'energy':
    np.testing.assert_array_equal(fit.statistics.standardise, standard.standardise)
  if score == 'combined':
    np.testing.assert_array_equal(fit.statistics.inputs, ood_math.fit_inputs(images))
  flags = np.zeros(200, bool)
  for fold in np.array_split(order, 5):
    fitted, cut = by_hand(order[~np.isin(order, fold)])
    flags[fold] = ood_math.scores(fitted, held_logits[fold], held_features[fold], images=held_images[fold]) > cut
  assert fit.rate == pytest.approx(flags.mean())
  in_sample = np.mean(ood_math.scores(standard, held_logits, held_features, images=held_images) > threshold)
  assert 'cross-fitted' in fit.roles and ('other half' in fit.roles) == (score != 'energy')
  assert in_sample <= 0.1   # the in-sample rate, which the record no longer gives


@pytest.mark.parametrize('held_out', [0, 1, 3, 18])
def test_too_few_held_out_images_for_the_rate_fit_with_no_threshold(held_out):
  """Under 1/rate - 1 held-out images (19 at 5%) no conformal quantile reaches the rate: the fit says so (an infinite
  threshold, nothing flagged) instead of cross-fitting halves and folds too small to score (a run validated on 3
  images failed submit's shift check with a reshape error)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 40)
  features = rng.normal(size=(40, 4)) + 3.0 * np.eye(2, 4)[labels]
  images = rng.integers(0, 256, (40, 6, 6, 1)).astype(np.uint8)
  statistics = ood_math.fit_statistics('combined', 'softmax', features, labels, images=images)
  fit = ood_threshold.fit_held_out(statistics, rng.normal(size=(held_out, 2)), features[:held_out], 0.05, seed=0,
                              images=images[:held_out])
  assert fit.threshold == math.inf and fit.rate == 0.0 and 'too few' in fit.roles
  assert ood_threshold.cross_fitted_rate(rng.normal(size=held_out), 0.05, seed=0) == 0.0
  assert math.isfinite(ood_threshold.fit_held_out(statistics, rng.normal(size=(19, 2)), features[:19], 0.05, seed=0,
                                             images=images[:19]).threshold)


def test_the_bench_s_near_class_images_keep_the_pixels_and_break_the_content():
  """bench/deploy.py's near-class sets, from in-distribution images: two overlaid half each, turned a quarter
  (decoded back to the model's size), the quadrants swapped across the diagonal."""
  images = np.random.default_rng(0).integers(0, 256, (6, 8, 4, 1)).astype(np.uint8)
  near = near_sets(images, DecodeSettings(image_size=(8, 4)), count=5)
  assert all(v.shape == (5, 8, 4, 1) and v.dtype == np.uint8 for v in near.values())
  overlaid = near['near: two overlaid'].astype(int)
  assert all(any(np.array_equal(overlaid[i], (images[i].astype(int) + images[j]) // 2) for j in range(5))
             for i in range(5))
  swapped = near['near: quadrants swapped']
  np.testing.assert_array_equal(swapped[:, :4, :2], images[:5, 4:, 2:])
  np.testing.assert_array_equal(swapped[:, :4, 2:], images[:5, 4:, :2])
  turned = near['near: turned a quarter']
  assert not np.array_equal(turned, images[:5])
