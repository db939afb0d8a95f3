"""Multi-label data: parsing tag and 0/1 CSVs (fpclass.data.multilabel), per-label stratified folds
(fpclass.data.multilabel_splits) and the synthetic shapes set (fpclass.data.synthetic_multilabel)."""
import csv
import json
import logging
import pathlib

import ml_collections
import numpy as np
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from PIL import Image

from fpclass.config.inputs import DataSettings
from fpclass.config.schema import base_config
from fpclass.data import multilabel_splits
from fpclass.data import synthetic_multilabel as sm
from fpclass.data.kaggle_csv import resolve_file
from fpclass.data.multilabel import read_multilabel_csv
from fpclass.errors import UserInputError

SMALL = sm.MultilabelSpec(seed=3, n_train=40, n_test=8)


def write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text, encoding='utf-8')
  return path


def tree(root: pathlib.Path) -> dict:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  return sm.write_dataset(tmp_path_factory.mktemp('ml') / 'shapes', SMALL)


# --- parsing -----------------------------------------------------------------------------------------------


def test_tags_give_the_sorted_union_and_count_untagged_images(tmp_path):
  path = write(tmp_path / 'train.csv', 'image_name,tags\ntrain_0,haze primary\ntrain_1,\ntrain_2, clear  primary \n'
               'train_10,primary primary\n')
  labels = read_multilabel_csv(path, 'image_name', label_column='tags')
  assert labels.ids == ['train_0', 'train_1', 'train_2', 'train_10']
  assert labels.class_names == ('clear', 'haze', 'primary')
  assert labels.indicator.dtype == np.uint8
  np.testing.assert_array_equal(labels.indicator, [[0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 1]])
  assert labels.untagged == 1 and labels.positives.tolist() == [1, 1, 3]
  assert labels.notes == ('1 of 4 images in train.csv have no class',)


def test_class_names_fix_the_order_and_may_name_classes_without_images(tmp_path, caplog):
  path = write(tmp_path / 'train.csv', 'image_name,tags\na,primary haze\nb,haze\n')
  with caplog.at_level(logging.WARNING):
    labels = read_multilabel_csv(path, 'image_name', label_column='tags', class_names=('primary', 'water', 'haze'))
  assert labels.class_names == ('primary', 'water', 'haze')
  np.testing.assert_array_equal(labels.indicator, [[1, 0, 1], [0, 0, 1]])
  assert "classes ['water'] have no image" in caplog.text and labels.notes == (
      "classes ['water'] have no image in train.csv",)


def test_an_unknown_tag_names_the_file_row_and_tag(tmp_path):
  path = write(tmp_path / 'train.csv', 'image_name,tags\na,primary\nb,primary clouds\nc,haze\n')
  with pytest.raises(UserInputError, match=r"train\.csv: 1 row\(s\) with a tag of 'tags' not in "
                     r"config\.data\.class_names=\['haze', 'primary'\]: row 3 \('clouds'\)"):
    read_multilabel_csv(path, 'image_name', label_column='tags', class_names=('haze', 'primary'))


@pytest.mark.parametrize('cell', ['"primary,haze"', 'primary;haze', 'primary|haze'])
def test_a_tag_cell_with_another_separator_is_an_error_naming_the_row(tmp_path, cell):
  path = write(tmp_path / 'train.csv', f'image_name,tags\na,primary\nb,haze\nc,{cell}\n')
  with pytest.raises(UserInputError, match=r"train\.csv: 1 row\(s\) with 'tags' holding .*tags are separated by "
                     r"spaces.*: row 4 \('primary.haze'\)"):
    read_multilabel_csv(path, 'image_name', label_column='tags')


def test_zero_one_columns_give_the_indicator_in_column_order(tmp_path):
  path = write(tmp_path / 'train.csv', 'id,water,cloudy,extra\nx, 1,0,7\ny,0,0,7\nz,1,1,7\n')
  labels = read_multilabel_csv(path, 'id', label_columns=('water', 'cloudy'))
  assert labels.class_names == ('water', 'cloudy') and labels.untagged == 1
  np.testing.assert_array_equal(labels.indicator, [[1, 0], [0, 0], [1, 1]])
  again = read_multilabel_csv(path, 'id', label_columns=('water', 'cloudy'), class_names=('cloudy', 'water'))
  assert again.class_names == ('cloudy', 'water')
  np.testing.assert_array_equal(again.indicator, labels.indicator[:, ::-1])
  with pytest.raises(UserInputError, match=r"config\.data\.class_names=\['cloudy', 'haze'\] must name the same "
                     r"classes as config\.data\.label_columns"):
    read_multilabel_csv(path, 'id', label_columns=('water', 'cloudy'), class_names=('cloudy', 'haze'))


@pytest.mark.parametrize('cell', ['2', 'yes', '', '1.0'])
def test_a_malformed_zero_one_cell_names_the_row_and_column(tmp_path, cell):
  path = write(tmp_path / 'train.csv', f'id,water,cloudy\nx,1,0\ny,0,{cell}\n')
  with pytest.raises(UserInputError, match=rf"train\.csv: 1 row\(s\) with a cell of config\.data\.label_columns "
                     rf"that is not 0 or 1: row 3 \(cloudy='{cell}'\)"):
    read_multilabel_csv(path, 'id', label_columns=('water', 'cloudy'))


@pytest.mark.parametrize('kind', ['tags', 'columns'])
def test_a_missing_label_column_is_named_with_the_header(tmp_path, kind):
  path = write(tmp_path / 'train.csv', 'image_name,labels,water\na,primary,1\n')
  if kind == 'tags':
    expected = r"missing column 'tags' \(config\.data\.label_column\)"
    call = dict(label_column='tags')
  else:
    expected = r"missing column 'cloudy' \(config\.data\.label_columns\)"
    call = dict(label_columns=('water', 'cloudy'))
  with pytest.raises(UserInputError, match=rf"train\.csv: {expected}; its columns are \['image_name', 'labels', "
                     r"'water'\]"):
    read_multilabel_csv(path, 'image_name', **call)


def test_ids_must_be_present_and_unique_and_classes_at_least_two(tmp_path):
  dup = write(tmp_path / 'dup.csv', 'image_name,tags\na,x\nb,y\na,y\n')
  with pytest.raises(UserInputError, match=r"dup\.csv: 1 row\(s\) with duplicate 'image_name': row 4 \('a'\)"):
    read_multilabel_csv(dup, 'image_name', label_column='tags')
  empty = write(tmp_path / 'empty.csv', 'image_name,tags\na,x\n ,y\n')
  with pytest.raises(UserInputError, match=r"empty\.csv: 1 row\(s\) with empty 'image_name': row 3$"):
    read_multilabel_csv(empty, 'image_name', label_column='tags')
  one = write(tmp_path / 'one.csv', 'image_name,tags\na,x\nb,\n')
  with pytest.raises(UserInputError, match=r"one\.csv: 1 class\(es\) \['x'\]; multi-label classification needs "
                     'at least 2'):
    read_multilabel_csv(one, 'image_name', label_column='tags')
  with pytest.raises(UserInputError, match=r"config\.data\.label_columns=\['x', 'x'\] names \['x'\] more than once"):
    read_multilabel_csv(one, 'image_name', label_columns=('x', 'x'))


def load_multilabel_labels(data: DataSettings):
  """The labels CSV of the data section's root, read with its keys: id_column, label_column (tags) or
  label_columns (0/1 columns, when not empty), class_names."""
  files, label_columns = data.files, data.labels.label_columns
  return read_multilabel_csv(pathlib.Path(files.root) / files.labels_csv, files.id_column,
                             label_column='' if label_columns else files.label_column, label_columns=label_columns,
                             class_names=files.class_order)


def test_load_from_the_data_config_reads_the_synthetic_set(small):
  data = base_config().data
  data.root, data.id_column, data.label_column = str(small), 'image_name', 'tags'
  labels = load_multilabel_labels(DataSettings.from_config(data))
  train, _ = sm.labels_for(SMALL)
  assert labels.class_names == sm.SHAPES
  np.testing.assert_array_equal(labels.indicator, train)
  # the loader keeps resolving files itself: Planet's ids name no extension
  assert all(resolve_file(small / 'train', name) == small / 'train' / f'{name}.png' for name in labels.ids)
  columns = ml_collections.ConfigDict(dict(root=str(small), labels_csv='train.csv', id_column='image_name',
                                           label_column='unused', label_columns=('tags',), class_names=(),
                                           task='multilabel'))
  # label_columns set: 0/1 columns, which a tag column is not
  with pytest.raises(UserInputError, match=r"40 row\(s\) with a cell of config\.data\.label_columns that is not 0 or 1: "
                     r"row 2 \(tags="):
    load_multilabel_labels(DataSettings.from_config(columns))


# --- folds -------------------------------------------------------------------------------------------------


def indicator_for_folds(n=60, seed=0):
  rng = np.random.default_rng(seed)
  y = (rng.random((n, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(np.uint8)
  y[:3, 3] = 1  # every label has a few positives
  return y


@pytest.mark.parametrize('seed', [0, 7])
def test_folds_are_iterstrat_folds_sorted_and_partition_the_images(seed):
  y = indicator_for_folds()
  folds = multilabel_splits.multilabel_kfold_indices(y, 5, seed)
  expected = list(MultilabelStratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
  assert len(folds) == 5
  for (train, val), (t, v) in zip(folds, expected):
    np.testing.assert_array_equal(train, np.sort(t))
    np.testing.assert_array_equal(val, np.sort(v))
    assert np.all(np.diff(val) > 0) and not np.intersect1d(train, val).size
  np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in folds])), np.arange(len(y)))
  # stratified per label: each label's positives split as evenly as the folds allow
  per_fold = np.array([y[v].sum(0) for _, v in folds])
  assert (per_fold.max(0) - per_fold.min(0) <= 1).all(), per_fold
  other = multilabel_splits.multilabel_kfold_indices(y, 5, seed + 1)
  assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_holdout_is_iterstrat_shuffle_split():
  y = indicator_for_folds()
  train, val = multilabel_splits.multilabel_holdout_indices(y, 0.25, 3)
  t, v = next(MultilabelStratifiedShuffleSplit(n_splits=1, test_size=0.25, random_state=3).split(y, y))
  np.testing.assert_array_equal(train, np.sort(t))
  np.testing.assert_array_equal(val, np.sort(v))
  assert len(val) == 15


def test_a_label_missing_from_a_training_fold_is_a_warning_naming_it_and_the_fold(caplog):
  y = indicator_for_folds()
  with caplog.at_level(logging.WARNING):
    multilabel_splits.multilabel_kfold_indices(y, 5, 0, class_names=('a', 'b', 'c', 'd'))
  assert caplog.text == ''
  y[:, 3] = 0
  y[10, 3] = 1  # one positive: the fold validating on it trains without any
  with caplog.at_level(logging.WARNING):
    folds = multilabel_splits.multilabel_kfold_indices(y, 5, 0, class_names=('a', 'b', 'c', 'd'))
  fold = next(f for f, (_, val) in enumerate(folds) if 10 in val)
  assert (f"label 'd' has no positive image in the training part of fold(s) [{fold}] (1 positive(s) in all)"
          in caplog.text)
  assert "'a'" not in caplog.text and "'c'" not in caplog.text


def test_fold_settings_are_checked():
  y = indicator_for_folds(n=6)
  with pytest.raises(UserInputError, match=r'config\.data\.num_folds=1: must be at least 2'):
    multilabel_splits.multilabel_kfold_indices(y, 1, 0)
  with pytest.raises(UserInputError, match=r'config\.data\.num_folds=7: more folds than the 6 images'):
    multilabel_splits.multilabel_kfold_indices(y, 7, 0)
  with pytest.raises(UserInputError, match=r'config\.data\.val_fraction=1\.0'):
    multilabel_splits.multilabel_holdout_indices(y, 1.0, 0)


# --- the synthetic set -------------------------------------------------------------------------------------


def test_labels_have_exact_counts_rare_shapes_and_untagged_images():
  big = sm.MultilabelSpec(seed=1, n_train=2000, n_test=500)
  train, test = sm.labels_for(big)
  np.testing.assert_array_equal(train.sum(0), [900, 100, 120, 800, 700])
  np.testing.assert_array_equal(test.sum(0), [225, 25, 30, 200, 175])
  assert 0.05 < np.mean(~train.any(1).astype(bool)) < 0.25  # some images hold no shape
  tiny_train, tiny_test = sm.labels_for(SMALL)
  assert tiny_train.sum(0).min() >= 2 and tiny_test.sum(0).min() >= 1  # a rare shape still appears
  again, _ = sm.labels_for(SMALL)
  np.testing.assert_array_equal(tiny_train, again)
  other, _ = sm.labels_for(sm.MultilabelSpec(seed=4, n_train=40, n_test=8))
  assert not np.array_equal(tiny_train, other)


def test_planet_layout_and_manifest(small):
  with open(small / 'train.csv', newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['image_name', 'tags'] and rows[1][0] == 'train_00001'
  train, test = sm.labels_for(SMALL)
  assert [r[1] for r in rows[1:]] == [sm.tags_text(t) for t in train]
  assert sorted(p.name for p in (small / 'train').iterdir()) == [f'{r[0]}.png' for r in rows[1:]]
  with open(small / 'sample_submission.csv', newline='') as f:
    sub = list(csv.reader(f))
  assert sub[0] == ['image_name', 'tags'] and [r[0] for r in sub[1:]] == [f'test_{i:05d}' for i in range(1, 9)]
  assert sorted(p.name for p in (small / 'test').iterdir()) == [f'{r[0]}.png' for r in sub[1:]]
  manifest = json.loads((small / sm.MANIFEST).read_text())
  assert manifest['class_names'] == list(sm.SHAPES) and manifest['spec']['n_train'] == 40
  assert manifest['train']['positives'] == dict(zip(sm.SHAPES, train.sum(0).tolist()))
  assert manifest['train']['untagged'] == int((~train.any(1).astype(bool)).sum())
  image = Image.open(small / 'train' / 'train_00001.png')
  assert image.mode == 'RGB' and image.size == (64, 64)
  assert 'SYNTHETIC' in (small / 'README.txt').read_text()


def test_generation_is_deterministic_and_never_overwrites(small, tmp_path):
  again = sm.write_dataset(tmp_path / 'again', SMALL)
  assert tree(again) == tree(small)
  other = sm.write_dataset(tmp_path / 'other', sm.MultilabelSpec(seed=4, n_train=40, n_test=8))
  assert tree(other)['train/train_00001.png'] != tree(small)['train/train_00001.png']
  with pytest.raises(FileExistsError):
    sm.write_dataset(again, SMALL)
  assert not list(tmp_path.glob('*.tmp-*'))


def test_the_cache_generates_once_and_refuses_a_partial_folder(tmp_path):
  spec = sm.MultilabelSpec(seed=2, n_train=10, n_test=2)
  root = sm.ensure_synthetic_multilabel(tmp_path, spec)
  assert root == tmp_path / 'synthetic_multilabel' / spec.folder_name and (root / sm.MANIFEST).is_file()
  stamp = (root / 'train.csv').stat().st_mtime_ns
  assert sm.ensure_synthetic_multilabel(tmp_path, spec) == root
  assert (root / 'train.csv').stat().st_mtime_ns == stamp
  (root / sm.MANIFEST).unlink()
  with pytest.raises(FileExistsError, match='no manifest.json'):
    sm.ensure_synthetic_multilabel(tmp_path, spec)


def test_the_shapes_are_drawn_where_tagged():
  """An untagged image is background and noise; each tag adds pixels far from that background."""
  for k, name in enumerate(sm.SHAPES):
    tags = np.zeros(5, np.uint8)
    plain = sm.render(sm.image_rng(0, 0, k), tags, 64).astype(float)
    tags[k] = 1
    drawn = sm.render(sm.image_rng(0, 0, k), tags, 64).astype(float)
    # same generator: same background colour and gradient; the shape's pixels move far from it
    far = np.linalg.norm(drawn - plain, axis=-1) > 60
    assert 20 < far.sum() < 0.5 * 64 * 64, (name, far.sum())
  assert sm.render(sm.image_rng(0, 0, 9), np.ones(5, np.uint8), 64).std() > 0


def test_shapes_drawn_over_others_leave_at_least_half_of_them_visible():
  for i in range(40):
    placed = sm.place_shapes(sm.image_rng(5, 0, i), np.ones(5, np.uint8), 64)
    assert sorted(k for k, _ in placed) == [0, 1, 2, 3, 4]
    for j, (k, alpha) in enumerate(placed):
      visible = alpha * np.prod([1 - later for _, later in placed[j + 1:]], axis=0)
      assert visible.sum() >= sm.MIN_VISIBLE * alpha.sum(), (i, sm.SHAPES[k])


def test_inferred_classes_sort_naturally_and_case_apart(tmp_path):
  path = write(tmp_path / 'train.csv', 'image_name,tags\na,level10 level2\nb,Haze haze\n')
  labels = read_multilabel_csv(path, 'image_name', label_column='tags')
  assert labels.class_names == ('Haze', 'haze', 'level2', 'level10')
