"""Tests for the synthetic footprint generator (fpclass.data.footprints)."""
import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from fpclass.data import footprints as fp

SMALL = fp.FootprintSpec(seed=3, n_class0=20, n_class1=16, n_test=10)
TINY = fp.FootprintSpec(seed=3, n_class0=3, n_class1=2, n_test=2)


def read_csv(path):
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


def tree(root: pathlib.Path) -> dict:
  """Relative path -> bytes for every file under root."""
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  return fp.write_kaggle_dataset(tmp_path_factory.mktemp('ds') / 'footprints', SMALL, progress=False)


def test_render_is_a_dark_print_on_light_paper():
  img = fp.render_footprint(np.random.default_rng(0), 1, 240, 160)
  assert img.dtype == np.uint8 and img.shape == (240, 160)
  corners = np.concatenate([img[:10, :10].ravel(), img[-10:, -10:].ravel()])
  assert corners.mean() > 170, 'background should be light paper'
  assert (img < corners.mean() - 60).mean() > 0.05, 'expected a dark footprint'


def test_render_is_deterministic_per_generator():
  a = fp.render_footprint(fp.image_rng(1, 0, 5), 0, 240, 160)
  b = fp.render_footprint(fp.image_rng(1, 0, 5), 0, 240, 160)
  c = fp.render_footprint(fp.image_rng(1, 0, 6), 0, 240, 160)
  d = fp.render_footprint(fp.image_rng(2, 0, 5), 0, 240, 160)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_bad_label_and_spec_are_rejected():
  with pytest.raises(ValueError):
    fp.render_footprint(np.random.default_rng(0), 2, 240, 160)
  with pytest.raises(ValueError):
    fp.FootprintSpec(n_class0=-1)


def test_labels_have_exact_counts_and_depend_on_the_seed():
  train, test = fp.labels_for(SMALL)
  assert (train == 0).sum() == 20 and (train == 1).sum() == 16
  assert len(test) == 10 and (test == 1).sum() == round(10 * 16 / 36)
  again, _ = fp.labels_for(SMALL)
  np.testing.assert_array_equal(train, again)
  other, _ = fp.labels_for(fp.FootprintSpec(seed=4, n_class0=20, n_class1=16, n_test=10))
  assert not np.array_equal(train, other)
  assert not np.array_equal(train, np.sort(train)), 'labels should be shuffled'


def test_kaggle_layout(small):
  header, rows = read_csv(small / 'train.csv')
  assert header == ['filename', 'SEX']
  assert [r[1] for r in rows].count('0') == 20 and [r[1] for r in rows].count('1') == 16
  assert sorted(r[0] for r in rows) == sorted(p.name for p in (small / 'train').iterdir())
  assert rows[0][0] == 'train_00001.png'

  test_files = sorted(p.name for p in (small / 'test').iterdir())
  header, sub = read_csv(small / 'sample_submission.csv')
  assert header == ['filename', 'SEX']
  assert [r[0] for r in sub] == test_files and test_files[0] == 'test_00001.png'
  assert {r[1] for r in sub} == {'0'}
  header, sol = read_csv(small / 'solution.csv')
  assert header == ['filename', 'SEX'] and [r[0] for r in sol] == test_files
  assert sorted(int(r[1]) for r in sol) == sorted(fp.labels_for(SMALL)[1].tolist())

  readme = (small / 'README.txt').read_text()
  assert 'SYNTHETIC' in readme and 'seed 3' in readme and f'version {fp.GENERATOR_VERSION}' in readme
  assert (small / 'COMPLETE').is_file()
  assert [p.name for p in small.parent.iterdir()] == ['footprints'], 'temporary folder left behind'


def test_pngs_are_grayscale_and_rebuildable_one_by_one(small):
  _, rows = read_csv(small / 'train.csv')
  for i in (0, 17, 35):
    with Image.open(small / 'train' / rows[i][0]) as im:
      assert im.mode == 'L' and im.size == (160, 240)
      stored = np.asarray(im)
    # Image i depends only on (seed, split, index) and its label: rebuild it alone.
    again = fp.render_footprint(fp.image_rng(SMALL.seed, 0, i), int(rows[i][1]), 240, 160)
    np.testing.assert_array_equal(stored, again)


def test_same_seed_same_bytes_other_seed_different(tmp_path):
  a = tree(fp.write_kaggle_dataset(tmp_path / 'a', TINY, progress=False))
  b = tree(fp.write_kaggle_dataset(tmp_path / 'b', TINY, progress=False))
  assert a == b
  other = fp.FootprintSpec(seed=4, n_class0=3, n_class1=2, n_test=2)
  c = tree(fp.write_kaggle_dataset(tmp_path / 'c', other, progress=False))
  assert a.keys() == c.keys()
  assert all(a[k] != c[k] for k in a if k.endswith('.png'))


def test_existing_non_empty_root_is_never_touched(tmp_path):
  root = tmp_path / 'mine'
  root.mkdir()
  (root / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='mine'):
    fp.write_kaggle_dataset(root, TINY, progress=False)
  assert tree(root) == {'notes.txt': b'keep me'}
  assert [p.name for p in tmp_path.iterdir()] == ['mine']

  a_file = tmp_path / 'file'
  a_file.write_text('x')
  with pytest.raises(FileExistsError):
    fp.write_kaggle_dataset(a_file, TINY, progress=False)
  assert a_file.read_text() == 'x'


def test_empty_existing_root_is_filled(tmp_path):
  root = tmp_path / 'empty'
  root.mkdir()
  fp.write_kaggle_dataset(root, TINY, progress=False)
  assert (root / 'COMPLETE').is_file()


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
  calls = []

  def broken(rng, label, height, width):
    calls.append(1)
    if len(calls) > 3:
      raise RuntimeError('killed')
    return np.zeros((height, width), np.uint8)

  monkeypatch.setattr(fp, 'render_footprint', broken)
  with pytest.raises(RuntimeError, match='killed'):
    fp.write_kaggle_dataset(tmp_path / 'ds', TINY, progress=False)
  assert list(tmp_path.iterdir()) == []


def test_ensure_is_named_by_spec_and_idempotent(tmp_path, monkeypatch):
  root = fp.ensure_synthetic_footprints(tmp_path, TINY, progress=False)
  assert root == tmp_path / 'synthetic_footprints' / f'v{fp.GENERATOR_VERSION}-seed3-3-2-2-160x240'
  before = {p: p.stat().st_mtime_ns for p in root.rglob('*')}

  def no_regeneration(*args):
    raise AssertionError('regenerated a complete dataset')

  monkeypatch.setattr(fp, '_generate_into', no_regeneration)
  assert fp.ensure_synthetic_footprints(tmp_path, TINY, progress=False) == root
  assert {p: p.stat().st_mtime_ns for p in root.rglob('*')} == before


def test_ensure_race_loser_uses_the_winners_folder(tmp_path, monkeypatch):
  generate = fp._generate_into
  root = tmp_path / 'synthetic_footprints' / TINY.folder_name

  def slow_loser(folder, spec, progress):
    # Another process finishes first while this one is still generating.
    monkeypatch.setattr(fp, '_generate_into', generate)
    fp.write_kaggle_dataset(root, spec, progress=False)
    winner_files = tree(root)
    generate(folder, spec, progress)
    slow_loser.winner = winner_files

  monkeypatch.setattr(fp, '_generate_into', slow_loser)
  assert fp.ensure_synthetic_footprints(tmp_path, TINY, progress=False) == root
  assert tree(root) == slow_loser.winner
  assert [p.name for p in root.parent.iterdir()] == [root.name], 'loser left its temporary folder'


def test_ensure_refuses_an_incomplete_foreign_folder(tmp_path):
  root = tmp_path / 'synthetic_footprints' / TINY.folder_name
  root.mkdir(parents=True)
  (root / 'half.png').write_bytes(b'x')
  with pytest.raises(FileExistsError, match='COMPLETE'):
    fp.ensure_synthetic_footprints(tmp_path, TINY, progress=False)
  assert tree(root) == {'half.png': b'x'}


def test_classes_differ_on_average_but_overlap():
  # Ink area (a foot-size proxy) over 80 renders per class, at half size to stay fast.
  area = {0: [], 1: []}
  for i in range(160):
    img = fp.render_footprint(np.random.default_rng([7, i]), i % 2, 120, 80).astype(np.float64)
    paper = np.median(np.concatenate([img[:, :4], img[:, -4:]], axis=1))
    area[i % 2].append((img < paper - 40).mean())
  a0, a1 = np.array(area[0]), np.array(area[1])
  pooled_sd = np.sqrt((a0.var() + a1.var()) / 2)
  assert (a1.mean() - a0.mean()) / pooled_sd > 0.6, 'class 1 feet should be larger on average'
  # No threshold separates the classes: the task must stay hard.
  values = np.concatenate([a0, a1])
  truth = np.r_[np.zeros(len(a0)), np.ones(len(a1))]
  best = max(max(((values > t) == truth).mean(), ((values <= t) == truth).mean()) for t in values)
  assert 0.6 < best < 0.95


def test_shape_parameters_overlap_between_classes():
  rng = np.random.default_rng(0)
  shapes = {y: [fp.sample_shape(rng, y) for _ in range(400)] for y in (0, 1)}
  for name in fp.SHAPE_NAMES:
    a = np.array([s[name] for s in shapes[0]])
    b = np.array([s[name] for s in shapes[1]])
    assert a.mean() != b.mean()
    assert max(a.min(), b.min()) < min(a.max(), b.max()), f'{name} classes do not overlap'
