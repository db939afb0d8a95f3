"""The keys that decide when frozen-backbone features are shared (issue 47): a sweep's feature pass
(`fpclass.train.feature_cache.pass_key`, shared between the variants of one job) and the probe's cache entry on
disk (`fpclass.probe.pooled_features.cache_path`).

Each field that changes the features (the device resize, the channel repeat, the normalisation, the model's
settings, the weights, the images) is changed alone and must give another key, and the features it gives must
differ; a change of the head alone must keep the key, so that head-only sweep variants share one pass. A wrong
key is silent: the report prints figures of features computed for another variant.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fpclass.config.outputs import ProbeSettings
from fpclass.config.run import RunSettings
from fpclass.models import weights_ref
from fpclass.models.preprocessing import Normalisation
from fpclass.models.probe_backbones import Backbone
from fpclass.probe import pooled_features
from fpclass.train import feature_cache
from fpclass.train.task import build_task
from tests.conftest import load_config
from tests.timm_reference import offline_cache

AUGMENT_OFF = {f'augment.{k}': 0.0 for k in ('hflip', 'rotation', 'translate', 'zoom', 'brightness')}
SHAPE = (16, 16, 3)
IMAGES = np.random.default_rng(0).integers(0, 256, (2, *SHAPE), np.uint8)
BATCH = 8


def config_of(model=None, classes=2, backend=None, **overrides):
  """(config, task, split) of a frozen ResNet-18 with a new top: the cacheable setup a sweep variant has."""
  config = load_config('configs/cats_dogs.py:vgg16,quick', **AUGMENT_OFF, **overrides)
  with config.unlocked():
    config.model = ml_collections.ConfigDict({**dict(name='resnet18', head='softmax', top='avg', freeze_till=-1),
                                              **(model or {})})
  task = build_task(RunSettings.from_config(config), tuple('abcdefg'[:classes]), np.arange(classes), steps_per_epoch=1, backend=backend)
  variables = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), SHAPE))
  split, why = feature_cache.find_split(RunSettings.from_config(config), task, variables, SHAPE)
  assert split is not None, why
  return config, task, split


def key(task, split, images=IMAGES, digest='backbone'):
  return feature_cache.pass_key(task, split, digest, images, BATCH)


def features(task, split, variables, images=IMAGES):
  return np.asarray(jax.jit(feature_cache.FeaturePass(task, split).predict)(
      variables['params'], variables['batch_stats'], images), np.float32)


@pytest.fixture(scope='module')
def base():
  _, task, split = config_of()
  return task, split


@pytest.fixture(scope='module')
def variables(base):
  """Random variables of the base model's shapes (BN variances 1), drawn without compiling its init."""
  task, _ = base
  shapes = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), SHAPE))
  rng = np.random.default_rng(1)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if 'var' in name or 'scale' in name:
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_a_change_of_the_head_alone_shares_the_pass_and_its_features(base, variables):
  """Another top (pooling, hidden layer, dropout), another class count, another freeze_till: the frozen
  network before the head is the same, and so are its outputs."""
  task, split = base
  _, head_only, head_split = config_of(dict(top='max', top_hidden=(8,), top_dropout=0.5, freeze_till=5), classes=3)
  assert head_split.name == split.name and head_split.feature_shape == split.feature_shape
  assert key(head_only, head_split) == key(task, split)
  shapes = jax.eval_shape(lambda: head_only.init_variables(jax.random.PRNGKey(0), SHAPE))
  head = jax.tree_util.tree_map(lambda x: jnp.full(x.shape, 0.01, x.dtype), shapes['params'][head_split.name])
  shared = {'params': {**variables['params'], head_split.name: head},   # the same backbone, another head
            'batch_stats': variables['batch_stats']}
  assert feature_cache.backbone_digest(head_split, shared) == feature_cache.backbone_digest(split, variables)
  computed = features(task, split, variables)
  assert np.abs(computed).max() > 0 and not np.allclose(computed[0], computed[1])   # features worth comparing
  np.testing.assert_array_equal(features(head_only, head_split, shared), computed)


@pytest.mark.parametrize('field, value, images', [
    ('device_resize', (24, 24), IMAGES),
    ('repeat_rgb', True, IMAGES[..., :1]),
    ('normalisation', Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), IMAGES),
    ('normalisation', Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), bgr=True), IMAGES),
])
def test_each_preparation_field_gives_another_key_and_other_inputs(base, field, value, images):
  """What the frozen network sees changes, so its features do: the key must change with the field alone."""
  task, split = base
  changed = dataclasses.replace(task, **{field: value})
  assert getattr(task, field) != value
  assert key(changed, split, images) != key(task, split, images)
  before = np.asarray(task.prepare(jnp.asarray(images if field != 'repeat_rgb' else IMAGES)))
  after = np.asarray(changed.prepare(jnp.asarray(images)))
  assert before.shape != after.shape or not np.allclose(before, after)


def test_other_images_weights_batch_or_split_give_another_key(base):
  task, split = base
  one_pixel = IMAGES.copy()
  one_pixel[1, 5, 7, 2] ^= 1
  reordered = IMAGES[::-1].copy()
  keys = {key(task, split), key(task, split, one_pixel), key(task, split, reordered),
          key(task, split, digest='other backbone'), feature_cache.pass_key(task, split, 'backbone', IMAGES, 4),
          key(task, dataclasses.replace(split, name='fc')),
          key(task, dataclasses.replace(split, feature_shape=(2, 2, 512)))}
  assert len(keys) == 7
  assert feature_cache.images_digest(IMAGES) == feature_cache.images_digest(IMAGES.copy())
  assert len({feature_cache.images_digest(a) for a in (IMAGES, one_pixel, reordered, IMAGES.astype(np.int16),
                                                       IMAGES.reshape(4, 8, 16, 3))}) == 5


def test_a_change_of_the_models_own_settings_gives_another_key(base):
  """The model's settings before the head are in the key even where the backbone digest and the feature
  shape happen to agree: a cut at an earlier stage, bf16 compute (train.precision on an accelerator), a
  grayscale-folded stem."""
  task, split = base
  _, cut, cut_split = config_of(dict(cut='layer3'))
  assert cut_split.feature_shape != split.feature_shape
  assert key(cut, dataclasses.replace(cut_split, feature_shape=split.feature_shape)) != key(task, split)
  _, bf16, bf16_split = config_of(backend='gpu', **{'train.precision': 'bf16'})
  assert key(bf16, bf16_split) != key(task, split)
  _, gray, gray_split = config_of(dict(in_channels=1), **{'data.channels': 1})
  assert key(gray, gray_split) != key(task, split)


def test_the_backbone_digest_covers_every_variable_before_the_head_and_none_of_the_head(base, variables):
  _, split = base
  digest = feature_cache.backbone_digest(split, variables)
  for kind, path in (('params', ('conv1', 'kernel')), ('batch_stats', ('layer4_1', 'bn2', 'mean'))):
    changed = jax.tree_util.tree_map(lambda x: x, variables)
    leaf = changed[kind]
    for name in path[:-1]:
      leaf = leaf[name]
    leaf[path[-1]] = leaf[path[-1]].at[(0,) * leaf[path[-1]].ndim].add(1.0)
    assert feature_cache.backbone_digest(split, changed) != digest, path
  head = jax.tree_util.tree_map(lambda x: x, variables)
  head['params'][split.name] = jax.tree_util.tree_map(lambda x: x + 1.0, head['params'][split.name])
  assert feature_cache.backbone_digest(split, head) == digest


# --- the probe's cache on disk ----------------------------------------------------------------------------------


def probe_path(backbone=Backbone('resnet18', '', 'resnet18'), digest='pixels', task_change=None, **overrides):
  config = load_config('configs/cats_dogs.py:vgg16,quick', **{'probe.backbones': ('resnet18',), **overrides})
  run, probe = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  model_run = pooled_features.backbone_settings(run, probe, backbone)
  task = build_task(model_run, ('a', 'b'), np.arange(2), steps_per_epoch=1)
  if task_change:
    task = dataclasses.replace(task, **task_change)
  return pooled_features.cache_path(model_run, probe, pooled_features.backbone_weights(run, backbone), task, digest)


def test_the_probe_cache_key_changes_with_each_field_that_changes_the_features(tmp_path):
  base = probe_path()
  changed = {
      'the images': probe_path(digest='other pixels'),
      'device resize': probe_path(**{'data.device_resize': (24, 24)}),
      'channel repeat': probe_path(**{'data.channels': 1}),
      'normalisation': probe_path(task_change=dict(normalisation=Normalisation((0.5,) * 3, (0.5,) * 3))),
      'pooling': probe_path(**{'probe.pooling': 'max'}),
      'flip TTA': probe_path(**{'probe.flip_tta': True}),
      'precision': probe_path(**{'train.precision': 'bf16'}),
      'the seed of a random init': probe_path(**{'seed': 3}),
      'the weights': probe_path(Backbone('resnet18', str(tmp_path / 'w.pth'), 'resnet18=w')),
      'the model': probe_path(Backbone('resnet50', '', 'resnet50')),
  }
  assert all(path != base for path in changed.values()), [k for k, p in changed.items() if p == base]
  assert len(set(changed.values())) == len(changed)
  # the linear probe fitted on the features (the head) and the batch they are computed in share the entry
  assert probe_path(**{'probe.c_values': (1.0,), 'probe.inner_folds': 3, 'probe.batch_size': 4,
                       'probe.seeds': (0, 1), 'model.top_dropout': 0.5}) == base
  assert pooled_features.images_digest(IMAGES) != pooled_features.images_digest(IMAGES[::-1].copy())
  assert pooled_features.images_digest(IMAGES) == pooled_features.images_digest(IMAGES.copy())


def test_the_probe_cache_key_follows_the_weights_content_and_lives_in_the_cache_folder(tmp_path, monkeypatch):
  """A weights file rewritten in place (another size) is other weights; a named set is identified by its
  source and checksum, so another URL for the same name is another entry; the entry lives in
  config.data.cache_dir."""
  weights = tmp_path / 'w.pth'
  backbone = Backbone('resnet18', str(weights), 'resnet18=w')
  missing = probe_path(backbone)
  weights.write_bytes(b'1234')
  first = probe_path(backbone)
  weights.write_bytes(b'123456')
  assert len({missing, first, probe_path(backbone)}) == 3
  named = Backbone('resnet18', 'imagenet', 'resnet18=imagenet')
  spec = pooled_features.models.get_spec('resnet18')
  assert weights_ref.resolve(str(weights), spec).cache_key(0)[:3] == ['file', str(weights.resolve()), 6]
  assert weights_ref.resolve(str(tmp_path / 'gone.pth'), spec).cache_key(0) == [
      'file', str(tmp_path / 'gone.pth'), 'missing']
  source = spec.weights['imagenet']
  assert weights_ref.resolve('imagenet', spec).cache_key(0) == ['named', 'imagenet', source.url, source.checksum]
  assert weights_ref.resolve('', spec).cache_key(4) == ['random init', 4]
  before = probe_path(named)
  monkeypatch.setitem(spec.weights, 'imagenet', dataclasses.replace(source, checksum='sha256:00000000'))
  assert probe_path(named) != before
  cache = tmp_path / 'cache'
  path = probe_path(**{'data.cache_dir': str(cache)})
  assert path.parent == cache / pooled_features.FOLDER and path.name.startswith('resnet18-')


@pytest.mark.parametrize('digest', [pooled_features.images_digest, feature_cache.images_digest])
def test_an_images_digest_covers_every_image_its_shape_and_its_dtype(digest):
  """The probe reads a memory-mapped cache in pieces of 256 images: a change in the first image, in the 257th
  or in the last of 600 must show, as must the same bytes under another shape or dtype."""
  images = np.zeros((600, 1, 1, 1), np.uint8)
  digests = {digest(images)}
  for row in (0, 256, 599):
    changed = images.copy()
    changed[row] = 1
    digests.add(digest(changed))
  digests |= {digest(images.reshape(300, 2, 1, 1)), digest(images.view(np.int8))}
  assert len(digests) == 6


def test_an_unread_view_of_a_mapped_cache_is_keyed_by_its_file_and_rows(tmp_path):
  """A view of a memory-mapped decode cache is keyed without reading it: by its file and its rows. Two files of
  the same pixels are two keys (the file is the identity); an in-memory view is keyed by its pixels."""
  from fpclass.data.rows import ImageRows
  for name in ('a.npy', 'b.npy'):
    np.save(tmp_path / name, IMAGES)
  first, second = (np.load(tmp_path / name, mmap_mode='r') for name in ('a.npy', 'b.npy'))
  digest = feature_cache.images_digest
  assert digest(ImageRows(first, [0, 1])) == digest(ImageRows(np.load(tmp_path / 'a.npy', mmap_mode='r'), [0, 1]))
  assert len({digest(ImageRows(first, [0, 1])), digest(ImageRows(first, [1, 0])), digest(ImageRows(first, [0])),
              digest(ImageRows(second, [0, 1])), digest(IMAGES)}) == 5
  other = IMAGES.copy()
  other[0, 0, 0, 0] ^= 1
  assert digest(ImageRows(IMAGES, [0, 1])) == digest(IMAGES) != digest(ImageRows(other, [0, 1]))


def test_the_backbone_digest_tells_apart_the_same_bytes_under_another_shape_or_dtype(base):
  _, split = base
  zeros = np.zeros((2, 3), np.float32)

  def variables(kernel):
    return {'params': {'conv1': {'kernel': kernel}, split.name: {'kernel': np.ones((3, 2), np.float32)}}}
  digests = {feature_cache.backbone_digest(split, variables(k)) for k in (zeros, zeros.reshape(3, 2),
                                                                         zeros.view(np.int32))}
  assert len(digests) == 3


def test_the_probe_cache_name_is_32_hex_digits_of_its_settings_of_any_value_type():
  """A setting json cannot write (a NumPy scalar) is keyed by its text; the entry's name is the backbone and 32
  hex digits of the key's SHA-256."""
  backbone = Backbone('resnet18', '', 'resnet18')
  config = load_config('configs/cats_dogs.py:vgg16,quick', **{'probe.backbones': ('resnet18',)})
  run, probe = RunSettings.from_config(config), ProbeSettings.from_config(config.probe)
  model_run = pooled_features.backbone_settings(run, probe, backbone)
  task = build_task(model_run, ('a', 'b'), np.arange(2), steps_per_epoch=1)
  weights = pooled_features.backbone_weights(run, backbone)
  path = pooled_features.cache_path(model_run, probe, weights, task, 'pixels')
  assert path.suffix == '.npz' and len(path.stem) == len('resnet18-') + 32
  int(path.stem.removeprefix('resnet18-'), 16)

  def with_top_dropout(value):
    return dataclasses.replace(model_run, model=model_run.model.replace(top_dropout=value))
  other = pooled_features.cache_path(with_top_dropout(np.float32(0.25)), probe, weights, task, 'pixels')
  third = pooled_features.cache_path(with_top_dropout(np.float32(0.5)), probe, weights, task, 'pixels')
  assert len({path, other, third}) == 3


def test_the_probe_images_digest_is_the_hash_of_the_whole_array_read_in_pieces():
  """Reading 600 images in pieces of 256 hashes each byte once, in order: the digest is that of the whole."""
  import hashlib
  import json
  images = np.random.default_rng(2).integers(0, 256, (600, 2, 2, 1), np.uint8)
  whole = hashlib.sha256(json.dumps([list(images.shape), str(images.dtype)]).encode() + images.tobytes())
  assert pooled_features.images_digest(images) == whole.hexdigest()


def _hub_cache(cache, commit: str, weights: bytes):
  """A huggingface_hub cache holding timm/resnet10t.probe at `commit` (refs/main), its weights `weights`."""
  root = cache / 'models--timm--resnet10t.probe'
  snapshot = root / 'snapshots' / commit
  snapshot.mkdir(parents=True)
  (snapshot / 'config.json').write_text(json.dumps({'architecture': 'resnet10t', 'num_classes': 1000}))
  (snapshot / 'model.safetensors').write_bytes(weights)
  (root / 'refs').mkdir()
  (root / 'refs' / 'main').write_text(commit)
  return snapshot


def test_the_probe_cache_key_of_a_hub_checkpoint_follows_the_snapshot_it_resolves_to(tmp_path):
  """The same reference, once the repository's main has moved to another commit, is other weights: keyed by
  the reference alone, the probe would serve the old commit's features. A Hub-layout folder rewritten in place
  is other weights too."""
  reference = 'hf-hub:timm/resnet10t.probe'
  backbone = Backbone('timm_resnet10t', reference, reference)
  spec = pooled_features.models.get_spec('timm_resnet10t')
  identities, paths = [], []
  for commit, weights in (('a' * 40, b'old weights'), ('b' * 40, b'new weights')):
    cache = tmp_path / commit[:1]
    snapshot = _hub_cache(cache, commit, weights)
    with offline_cache(cache):
      identities.append(weights_ref.resolve(reference, spec).cache_key(0))
      paths.append(probe_path(backbone))
    assert identities[-1][:3] == ['hub', reference, str((snapshot / 'model.safetensors').resolve())]
  assert identities[0] != identities[1] and paths[0] != paths[1]
  folder = _hub_cache(tmp_path / 'folder', 'c' * 40, b'weights')
  before = weights_ref.resolve(str(folder), spec).cache_key(0)
  (folder / 'model.safetensors').write_bytes(b'other weights')
  assert before[0] == 'hub' and weights_ref.resolve(str(folder), spec).cache_key(0) != before
