"""Sources: the Kaggle layout and ImageFolder list what they should and name what is wrong."""
import numpy as np
import pytest

from fpclass.config.inputs import DataSettings
from fpclass.config.schema import base_config
from fpclass.data.image_folder import load_image_folder
from fpclass.data.kaggle_csv import load_kaggle_csv
from fpclass.data.pipeline import decode_source, load_dataset
from fpclass.errors import UserInputError
from tests.conftest import save_image


def data_cfg(root, **kw):
  c = base_config()
  c.data.root = str(root)
  c.data.update(kw)
  return DataSettings.from_config(c.data)


def test_kaggle_layout_lists_train_and_test_in_sample_order(kaggle_root):
  source = load_kaggle_csv(data_cfg(kaggle_root))
  assert source.class_names == ('0', '1')
  assert len(source.train) == 12 and source.train.labels.tolist() == [0, 1] * 6
  assert source.test.ids == ['test_3.png', 'test_1.png', 'test_0.png', 'test_2.png']


def test_missing_column_names_the_column_and_the_flag(kaggle_root):
  (kaggle_root / 'train.csv').write_text('file,SEX\na.png,0\n')
  with pytest.raises(UserInputError, match=r"missing column 'filename' \(config.data.id_column\)"):
    load_kaggle_csv(data_cfg(kaggle_root))


def test_unknown_label_names_the_row(kaggle_root):
  text = (kaggle_root / 'train.csv').read_text().replace('img_03.png,1', 'img_03.png,2')
  (kaggle_root / 'train.csv').write_text(text)
  with pytest.raises(UserInputError, match=r"row 5 \('2'\)"):
    load_kaggle_csv(data_cfg(kaggle_root, class_names=('0', '1')))


def test_empty_label_is_an_error(kaggle_root):
  text = (kaggle_root / 'train.csv').read_text().replace('img_04.png,0', 'img_04.png,')
  (kaggle_root / 'train.csv').write_text(text)
  with pytest.raises(UserInputError, match="row 6"):
    load_kaggle_csv(data_cfg(kaggle_root))


def test_rows_without_a_file_are_quarantined(kaggle_root):
  (kaggle_root / 'train' / 'img_05.png').unlink()
  source = load_kaggle_csv(data_cfg(kaggle_root))
  assert len(source.train) == 11
  assert [p.reason for p in source.problems] == ['no such file (row 7 of train.csv)']


def test_ids_without_extension_resolve(kaggle_root):
  text = (kaggle_root / 'train.csv').read_text().replace('.png', '')
  (kaggle_root / 'train.csv').write_text(text)
  assert len(load_kaggle_csv(data_cfg(kaggle_root)).train) == 12


def test_test_list_not_matching_files_is_an_error(kaggle_root):
  (kaggle_root / 'test' / 'test_1.png').unlink()
  with pytest.raises(UserInputError, match=r"1 of 4 test ids have no file.*row 3: 'test_1.png'"):
    load_kaggle_csv(data_cfg(kaggle_root))


def test_extra_test_files_are_noted(kaggle_root):
  save_image(kaggle_root / 'test' / 'stray.png')
  source = load_kaggle_csv(data_cfg(kaggle_root))
  assert len(source.test) == 4 and any('stray.png' in n for n in source.notes)


def test_test_folder_without_sample_submission(kaggle_root):
  (kaggle_root / 'sample_submission.csv').unlink()
  assert load_kaggle_csv(data_cfg(kaggle_root)).test.ids == [f'test_{i}.png' for i in range(4)]


def test_explicit_class_with_no_rows_is_an_error(kaggle_root):
  with pytest.raises(UserInputError, match=r"classes \['2'\]"):
    load_kaggle_csv(data_cfg(kaggle_root, class_names=('0', '1', '2')))


def make_folder(root, layout):
  for rel, count in layout.items():
    for i in range(count):
      save_image(root / rel / f'{i}.png')


def test_image_folder_with_split_folders(tmp_path):
  make_folder(tmp_path, {'train/cat': 4, 'train/dog': 3, 'valid/cat': 2, 'valid/dog': 2, 'test': 3})
  source = load_image_folder(data_cfg(tmp_path))
  assert source.class_names == ('cat', 'dog')
  assert len(source.train) == 7 and len(source.val) == 4 and source.test.labels is None
  assert source.train.ids[0] == 'train/cat/0.png'


def test_image_folder_flat_with_labelled_test(tmp_path):
  make_folder(tmp_path, {'a': 3, 'b': 3, 'test/a': 1, 'test/b': 1})
  source = load_image_folder(data_cfg(tmp_path))
  assert source.class_names == ('a', 'b') and source.val is None and source.test.labels.tolist() == [0, 1]


def test_empty_class_folder_is_an_error(tmp_path):
  make_folder(tmp_path, {'a': 3})
  (tmp_path / 'b').mkdir()
  with pytest.raises(UserInputError, match=r"class 'b' has no images"):
    load_image_folder(data_cfg(tmp_path))


def test_non_image_files_are_skipped_and_reported(tmp_path):
  make_folder(tmp_path, {'a': 3, 'b': 3})
  (tmp_path / 'a' / 'notes.txt').write_text('hello')
  (tmp_path / 'a' / '.DS_Store').write_text('x')
  source = load_image_folder(data_cfg(tmp_path))
  assert len(source.train) == 6
  assert [p.file.endswith('notes.txt') for p in source.problems] == [True]


def test_pipeline_quarantines_corrupt_images_and_splits_stratified(tmp_path):
  make_folder(tmp_path, {'a': 10, 'b': 10})
  (tmp_path / 'a' / '3.png').write_bytes(b'')
  c = base_config()
  c.data.update(source='image_folder', root=str(tmp_path), image_size=(16, 16))
  dataset = load_dataset(DataSettings.from_config(c.data), progress=False)
  assert len(dataset.train) + len(dataset.val) == 19
  assert np.bincount(dataset.val.labels).tolist() == [2, 2]
  assert [(p.split, p.reason) for p in dataset.quarantine] == [('train', 'zero-byte file')]
  assert (tmp_path / 'a' / '3.png').exists()


def test_corrupt_test_image_stops_submission_data_unless_prior(kaggle_root):
  (kaggle_root / 'test' / 'test_2.png').write_bytes(b'broken')
  c = base_config()
  c.data.update(source='kaggle_csv', root=str(kaggle_root), image_size=(16, 16))
  with pytest.raises(UserInputError, match='test_2.png'):
    decode_source(DataSettings.from_config(c.data), progress=False)
  c.data.bad_test_images = 'prior'
  decoded = decode_source(DataSettings.from_config(c.data), progress=False)
  assert decoded.test.extras['decoded'].tolist() == [True, True, True, False]


def test_a_csv_id_outside_the_training_folder_is_quarantined(kaggle_root):
  """'../test/x.png' or an absolute path would let test images into training: listed, never loaded."""
  csv = kaggle_root / 'train.csv'
  csv.write_text(csv.read_text() + f'../test/test_0.png,1\n{kaggle_root / "test" / "test_1.png"},0\n')
  source = load_kaggle_csv(data_cfg(kaggle_root))
  assert all('test' not in str(p.parent.name) for p in source.train.paths)
  outside = [p for p in source.problems if 'outside' in p.reason]
  assert [p.file for p in outside] == ['../test/test_0.png', str(kaggle_root / 'test' / 'test_1.png')]
  assert 'row 14 of train.csv' in outside[0].reason
