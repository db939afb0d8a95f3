"""Weight files: download-and-cache with checksums (over file:// URLs, never the network), strict mapping."""
import hashlib

import numpy as np
import pytest

from fpclass import models
from fpclass.errors import UserInputError
from fpclass.models import preprocessing, transfer, weights


def published(tmp_path, payload=b'weights-bytes' * 1000):
  source = tmp_path / 'published' / 'model-abc.pth'
  source.parent.mkdir()
  source.write_bytes(payload)
  return source, hashlib.sha256(payload).hexdigest()


def test_fetch_downloads_verifies_and_caches(tmp_path):
  source, digest = published(tmp_path)
  spec = weights.WeightsFile(source.as_uri(), f'sha256:{digest[:8]}')
  path = spec.fetch_to(spec.cached_path(tmp_path / 'cache'))
  assert path == tmp_path / 'cache' / 'weights' / 'model-abc.pth' and path.read_bytes() == source.read_bytes()
  source.unlink()  # a second fetch must come from the cache
  assert spec.fetch_to(spec.cached_path(tmp_path / 'cache')) == path


def test_fetch_rejects_a_bad_checksum_and_keeps_nothing(tmp_path):
  source, _ = published(tmp_path)
  spec = weights.WeightsFile(source.as_uri(), 'md5:0123456789abcdef0123456789abcdef')
  with pytest.raises(UserInputError, match='fails its checksum'):
    spec.fetch_to(spec.cached_path(tmp_path / 'cache'))
  assert not list((tmp_path / 'cache' / 'weights').glob('*'))


def test_a_corrupted_cache_is_reported_not_deleted(tmp_path):
  source, digest = published(tmp_path)
  spec = weights.WeightsFile(source.as_uri(), f'sha256:{digest}')
  path = spec.fetch_to(spec.cached_path(tmp_path / 'cache'))
  path.write_bytes(b'tampered')
  with pytest.raises(UserInputError, match='cached weights fail their checksum'):
    spec.fetch_to(spec.cached_path(tmp_path / 'cache'))
  assert path.read_bytes() == b'tampered'


def test_an_unreachable_url_says_how_to_work_offline(tmp_path):
  spec = weights.WeightsFile((tmp_path / 'absent.pth').as_uri(), 'sha256:00')
  with pytest.raises(UserInputError, match=r'--config.model.pretrained=/path/to/absent.pth'):
    spec.fetch_to(spec.cached_path(tmp_path / 'cache'))


def test_assign_is_strict():
  variables = {'params': {'a': {'kernel': np.zeros((2, 3))}, 'b': {'bias': np.zeros(3)}}}
  good = {('params', 'a', 'kernel'): np.ones((2, 3)), ('params', 'b', 'bias'): np.ones(3)}
  out = weights.assign(variables, good, source='f')
  assert out['params']['a']['kernel'].sum() == 6
  with pytest.raises(UserInputError, match=r'\[1 missing: params/b/bias\]'):
    weights.assign(variables, {('params', 'a', 'kernel'): np.ones((2, 3))}, source='f')
  with pytest.raises(UserInputError, match=r'\[2 unexpected: params/c/kernel, extra.weight\]'):
    weights.assign(variables, {**good, ('params', 'c', 'kernel'): np.ones(1)}, source='f', unmatched=['extra.weight'])
  with pytest.raises(UserInputError, match=r'shape mismatch: params/a/kernel: file \(3, 2\), model \(2, 3\)'):
    weights.assign(variables, {**good, ('params', 'a', 'kernel'): np.ones((3, 2))}, source='f')
  kept = weights.assign(variables, {('params', 'a', 'kernel'): np.ones((2, 3))}, source='f', keep='^params/b/')
  assert kept['params']['b']['bias'].sum() == 0


def test_assign_keeps_an_empty_collection():
  """AlexNet and VGG have no BatchNorm: their empty batch_stats must survive loading (the train state reads it)."""
  variables = {'params': {'a': {'kernel': np.zeros((2, 3))}}, 'batch_stats': {}}
  out = weights.assign(variables, {('params', 'a', 'kernel'): np.ones((2, 3))}, source='f')
  assert out['batch_stats'] == {} and out['params']['a']['kernel'].sum() == 6


def test_fold_rgb_stem_matches_the_rgb_convolution():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 3, 4))
  norm = preprocessing.TORCH_IMAGENET
  folded, offset = weights.fold_rgb_stem(kernel, norm)
  g = rng.uniform(size=(3, 3))  # one receptive field, no padding involved
  rgb = (np.repeat(g[:, :, None], 3, -1) - np.array(norm.mean)) / np.array(norm.std)
  gray_norm = norm.to_grayscale()
  gray = (g[:, :, None] - gray_norm.mean[0]) / gray_norm.std[0]
  np.testing.assert_allclose(np.einsum('hwc,hwco->o', rgb, kernel),
                             np.einsum('hwc,hwco->o', gray, folded) + offset, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('offset_path', ['batch_stats/bn/mean', 'params/conv/bias'])
def test_fold_stem_moves_the_offset_with_the_right_sign(offset_path):
  """transfer.fold_stem on a stem whose offset goes to the following BN mean (subtracted there) or to the
  conv bias (added): on one receptive field inside the image, conv + bias - mean on the RGB copy [g, g, g]
  under torch's per-channel normalisation equals the folded one-channel stem's on g."""
  norm = preprocessing.TORCH_IMAGENET
  spec = models.ModelSpec('stem_only', object, 'torchvision', cam_layer='', preprocessing=norm,
                          stem=f'conv|{offset_path}')
  rng = np.random.default_rng(0)
  mapped = {('params', 'conv', 'kernel'): rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
            ('params', 'conv', 'bias'): rng.normal(size=4).astype(np.float32),
            ('batch_stats', 'bn', 'mean'): rng.normal(size=4).astype(np.float32)}
  folded = transfer.fold_stem(spec, mapped)

  def stem(variables, x):
    conv = np.einsum('hwc,hwco->o', x, variables[('params', 'conv', 'kernel')])
    return conv + variables[('params', 'conv', 'bias')] - variables[('batch_stats', 'bn', 'mean')]
  g = rng.uniform(size=(3, 3, 1))
  rgb = stem(mapped, np.asarray(norm(np.repeat(g, 3, axis=-1))))
  gray = stem(folded, np.asarray(norm.to_grayscale()(g)))
  np.testing.assert_allclose(gray, rgb, rtol=1e-5, atol=1e-5)
  key = tuple(offset_path.split('/'))
  assert np.abs(folded[key] - mapped[key]).min() > 1e-2  # the offset is there: a wrong sign would show
