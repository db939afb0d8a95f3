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
