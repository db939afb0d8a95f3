"""config.data.exclude_csv and relabel_csv name an image by its id or its path below the data root, never by its
bare file name: in an ImageFolder with the same file name in every class folder and in both splits, each row
reaches exactly the image it names, a bare file name is refused, and curation.csv records the names given."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fpclass.config.inputs import DataSettings
from fpclass.data import curation, pipeline
from fpclass.errors import UserInputError
from tests.conftest import load_config

NAMES = ('a.png', 'b.png')


def same_names_everywhere(root):
  """<root>/train/{cat,dog}/{a,b}.png and <root>/val/{cat,dog}/{a,b}.png: every file name four times."""
  for split in ('train', 'val'):
    for k, cls in enumerate(('cat', 'dog')):
      (root / split / cls).mkdir(parents=True)
      for i, name in enumerate(NAMES):
        Image.fromarray(np.full((6, 6), 30 * (4 * k + i) + 10, np.uint8)).save(root / split / cls / name)
  return root


def listed(root, **curation_keys):
  """The listed source under `curation_keys` (config.data.exclude_csv / relabel_csv)."""
  config = load_config('configs/digits.py:quick', **{'data.source': 'image_folder', 'data.root': str(root),
                                                     **{f'data.{k}': v for k, v in curation_keys.items()}})
  return pipeline.list_source(DataSettings.from_config(config.data))


def labels_by_id(source) -> dict:
  return {i: source.class_names[int(k)] for split in (source.train, source.val) for i, k in zip(split.ids, split.labels)}


@pytest.fixture
def root(tmp_path):
  return same_names_everywhere(tmp_path / 'data')


def test_an_exclude_row_reaches_only_the_image_at_its_path(root, tmp_path):
  before = labels_by_id(listed(root))
  assert sorted(before) == sorted(f'{s}/{c}/{n}' for s in ('train', 'val') for c in ('cat', 'dog') for n in NAMES)
  (tmp_path / 'drop.csv').write_text('file\ntrain/dog/a.png\nval/cat/b.png\n')
  source = listed(root, exclude_csv=str(tmp_path / 'drop.csv'))
  after = labels_by_id(source)
  assert set(before) - set(after) == {'train/dog/a.png', 'val/cat/b.png'}
  assert all(after[i] == before[i] for i in after)
  # The record names each example as the CSV did, in its split, with its CSV row.
  assert [(r['file'], r['split'], r['action'], r['label_before'], r['csv_row']) for r in source.curation] == [
      ('train/dog/a.png', 'train', 'excluded', 'dog', 2), ('val/cat/b.png', 'val', 'excluded', 'cat', 3)]
  # The images left are the files at their ids: a path swap between classes would show here.
  for split in (source.train, source.val):
    assert [str(p.relative_to(root).as_posix()) for p in split.paths] == list(split.ids)


def test_a_relabel_row_changes_only_the_image_at_its_path(root, tmp_path):
  before = labels_by_id(listed(root))
  (tmp_path / 'fix.csv').write_text('file,suggested_label\ntrain/cat/b.png,dog\nval/dog/a.png,cat\n')
  source = listed(root, relabel_csv=str(tmp_path / 'fix.csv'))
  after = labels_by_id(source)
  assert {i for i in before if after[i] != before[i]} == {'train/cat/b.png', 'val/dog/a.png'}
  assert after['train/cat/b.png'] == 'dog' and after['val/dog/a.png'] == 'cat'
  record = pd.DataFrame(source.curation)
  assert record[['file', 'label_before', 'label_after']].values.tolist() == [
      ['train/cat/b.png', 'cat', 'dog'], ['val/dog/a.png', 'dog', 'cat']]
  (tmp_path / 'run').mkdir()
  curation.write_record(tmp_path / 'run', source.curation)
  written = pd.read_csv(tmp_path / 'run' / curation.RECORD, dtype=str)
  assert list(written.columns) == list(curation.RECORD_COLUMNS) and written['file'].tolist() == record['file'].tolist()


@pytest.mark.parametrize('key, text', [('exclude_csv', 'file\na.png\n'),
                                       ('relabel_csv', 'file,label\nb.png,cat\n'),
                                       ('exclude_csv', 'file\ncat/a.png\n')])
def test_a_name_shared_by_several_images_is_refused_not_guessed(root, tmp_path, key, text):
  """A bare file name (or a path below the train folder, not below the root) is four (two) images here: the
  row is an error naming it, never one of them picked."""
  path = tmp_path / 'curation.csv'
  path.write_text(text)
  value = text.splitlines()[1].split(',')[0]
  with pytest.raises(UserInputError, match=rf"{path} row 2, column 'file': '{value}' is no labelled example of "
                                           rf"the data \(config.data.{key}\); name it by its id or its path below"):
    listed(root, **{key: str(path)})


def test_a_kaggle_csv_example_is_named_by_its_id_or_its_path_below_the_root(kaggle_root, tmp_path):
  """Where the id is not the path (a Kaggle CSV's file name, its file in train/), either names the one image."""
  config = load_config('configs/footprint.py:exp4,quick', **{'data.root': str(kaggle_root)})
  plain = pipeline.list_source(DataSettings.from_config(config.data))
  (tmp_path / 'drop.csv').write_text('id\nimg_03.png\ntrain/img_10.png\n')
  config = load_config('configs/footprint.py:exp4,quick', **{'data.root': str(kaggle_root),
                                                             'data.exclude_csv': str(tmp_path / 'drop.csv')})
  curated = pipeline.list_source(DataSettings.from_config(config.data))
  assert set(plain.train.ids) - set(curated.train.ids) == {'img_03.png', 'img_10.png'}
  assert len(curated.train.ids) == len(plain.train.ids) - 2


def test_both_lists_together_leave_out_first_record_only_changes_and_say_so(root, tmp_path):
  (tmp_path / 'drop.csv').write_text('file\n val/dog/b.png \n')
  (tmp_path / 'fix.csv').write_text('id,label\nval/dog/b.png,cat\ntrain/cat/a.png,cat\ntrain/dog/b.png,cat\n'
                                    'train/dog/b.png,cat\n')
  plain = listed(root)
  source = listed(root, exclude_csv=str(tmp_path / 'drop.csv'), relabel_csv=str(tmp_path / 'fix.csv'))
  # The excluded image is not relabelled too, an unchanged label is no change, a repeated row is one change.
  assert [(r['file'], r['action'], r['label_after'], r['csv'], r['csv_row']) for r in source.curation] == [
      ('train/dog/b.png', 'relabelled', 'cat', str(tmp_path / 'fix.csv'), 4),
      ('val/dog/b.png', 'excluded', '', str(tmp_path / 'drop.csv'), 2)]
  assert source.notes[-1] == (f'curation: 1 example(s) left out by config.data.exclude_csv ({tmp_path / "drop.csv"}); '
                              f'1 relabelled by config.data.relabel_csv ({tmp_path / "fix.csv"}) (the files are '
                              'unchanged; curation.csv lists each example)')
  assert source.notes[:-1] == plain.notes and source.class_names == plain.class_names
  assert len(source.val) == len(plain.val) - 1 and len(source.train) == len(plain.train)
  alone = listed(root, relabel_csv=str(tmp_path / 'fix.csv'))
  assert alone.notes[-1].startswith('curation: 2 relabelled by config.data.relabel_csv') and len(alone.val) == 4


def test_without_a_list_the_source_is_untouched_and_no_record_is_written(root, tmp_path):
  plain = pipeline.list_source(DataSettings.from_config(load_config(
      'configs/digits.py:quick', **{'data.source': 'image_folder', 'data.root': str(root)}).data))
  assert plain.curation == [] and not any(n.startswith('curation') for n in plain.notes)
  assert curation.apply_curation(plain, curation.CurationSettings()) is plain
  assert curation.write_record(tmp_path, []) is None and not (tmp_path / curation.RECORD).exists()


BAD = [
    ('exclude_csv', None, r"config.data.exclude_csv='{path}': no such file"),
    ('relabel_csv', None, r"config.data.relabel_csv='{path}': no such file"),
    ('relabel_csv', '', r'{path} \(config.data.relabel_csv\): not a readable CSV \(EmptyDataError: '),
    ('exclude_csv', b'\xff\xfe\x00bad', r'{path} \(config.data.exclude_csv\): not a readable CSV \(UnicodeDecodeError: '),
    ('relabel_csv', 'path,label\ncat/a.png,dog\n',
     r"{path} \(config.data.relabel_csv\): missing column naming the examples: give one of \['file', 'id', "
     r"'filename'\]; its columns are \['path', 'label'\]$"),   # the configs' default id column, filename
    ('relabel_csv', 'file,given_label\ntrain/cat/a.png,cat\n',
     r"{path} \(config.data.relabel_csv\): missing column giving the new labels: give one of \['label', "
     r"'suggested_label'\]; its columns are \['file', 'given_label'\]$"),
    ('relabel_csv', 'file,label\ntrain/cat/a.png,dog\ntrain/cat/b.png,cow\n',
     r"{path} row 3, column 'label': 'cow' is not a class of the data; its classes are \['cat', 'dog'\]$"),
    ('relabel_csv', 'file,label\ntrain/cat/a.png, \n', r"{path} row 2, column 'label': '' is not a class of the data"),
    ('relabel_csv', 'file,label\ntrain/cat/a.png,dog\ntrain/cat/a.png,cat\n',
     r"{path} row 3, column 'label': 'train/cat/a.png' was given another label in row 2$"),
    ('relabel_csv', 'file,label\ntrain/cat/nowhere.png,dog\n',
     r"{path} row 2, column 'file': 'train/cat/nowhere.png' is no labelled example of the data "
     r"\(config.data.relabel_csv\); name it by its id or its path below the data root$"),
]


@pytest.mark.parametrize('key, text, message', BAD, ids=[f'{key}-{n}' for n, (key, _, _) in enumerate(BAD)])
def test_each_bad_list_is_one_line_naming_the_file_row_and_column(root, tmp_path, key, text, message):
  path = tmp_path / 'list.csv'
  if isinstance(text, bytes):
    path.write_bytes(text)
  elif text is not None:
    path.write_text(text)
  with pytest.raises(UserInputError, match=message.format(path=path)) as error:
    listed(root, **{key: str(path)})
  assert '\n' not in str(error.value)


def test_the_source_s_own_id_column_names_examples_too(kaggle_root, tmp_path):
  """A Kaggle CSV's id column (here `filename`) is a key column beside `file` and `id`."""
  (tmp_path / 'fix.csv').write_text('filename,label\nimg_04.png,1\n')
  config = load_config('configs/footprint.py:exp4,quick', **{'data.root': str(kaggle_root),
                                                             'data.relabel_csv': str(tmp_path / 'fix.csv')})
  source = pipeline.list_source(DataSettings.from_config(config.data))
  (row,) = source.curation
  assert (row['file'], row['label_before'], row['label_after']) == ('img_04.png', '0', '1')
  (tmp_path / 'bad.csv').write_text('name\nimg_04.png\n')
  config = load_config('configs/footprint.py:exp4,quick', **{'data.root': str(kaggle_root),
                                                             'data.exclude_csv': str(tmp_path / 'bad.csv')})
  with pytest.raises(UserInputError, match=r"give one of \['file', 'id', 'filename'\]; its columns are \['name'\]"):
    pipeline.list_source(DataSettings.from_config(config.data))


def test_a_multilabel_relabel_replaces_the_tags_and_refuses_unknown_ones(tmp_path):
  root = tmp_path / 'data'
  (root / 'train').mkdir(parents=True)
  for i in range(4):
    Image.fromarray(np.full((6, 6), 50 * i, np.uint8)).save(root / 'train' / f'im{i}.png')
  (root / 'train.csv').write_text('image_name,tags\nim0.png,sun\nim1.png,sun rain\nim2.png,rain\nim3.png,\n')

  def multilabel(**keys):
    config = load_config('configs/digits.py:quick', **{
        'data.source': 'kaggle_csv', 'data.root': str(root), 'data.task': 'multilabel', 'data.id_column': 'image_name',
        'data.label_column': 'tags', **{f'data.{k}': v for k, v in keys.items()}})
    return pipeline.list_source(DataSettings.from_config(config.data))

  (tmp_path / 'fix.csv').write_text('file,suggested_label\nim1.png,rain\nim3.png,rain sun\nim2.png,rain\n')
  source = multilabel(relabel_csv=str(tmp_path / 'fix.csv'))
  assert [(r['file'], r['label_before'], r['label_after']) for r in source.curation] == [
      ('im1.png', 'rain sun', 'rain'), ('im3.png', '', 'rain sun')]   # im2 unchanged: no record
  assert source.train.labels.dtype == multilabel().train.labels.dtype
  (tmp_path / 'bad.csv').write_text('file,label\nim1.png,sun snow\n')
  with pytest.raises(UserInputError, match=r"row 2, column 'label': 'sun snow' is not a list of classes of the data; "
                                           r"its classes are \['rain', 'sun'\]"):
    multilabel(relabel_csv=str(tmp_path / 'bad.csv'))
