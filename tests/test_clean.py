"""--mode clean on a planted ImageFolder: corrupt files, exact and near duplicates (within and across splits,
with conflicting labels), what it keeps, that it never touches user files, --apply, and the file list."""
import hashlib

import pandas as pd
import pytest

from bench.clean_planted import plant_folder, score
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.modes.clean import clean
from tests.conftest import load_config, save_image


def digests(root):
  return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  root = tmp_path_factory.mktemp('planted') / 'root'
  truth, corrupt, copies = plant_folder(root, originals=45, copies_per_kind=3)
  return root, truth, corrupt, copies


def climbing(root, **overrides):
  return load_config('configs/climbing.py:quick', **{'data.root': str(root), **overrides})


def test_clean_finds_what_was_planted_and_changes_nothing(planted, tmp_path):
  root, truth, corrupt, copies = planted
  before = digests(root)
  files = clean(climbing(root, **{'clean.phash_threshold': 12}), tmp_path)
  assert digests(root) == before  # no user file moved, deleted or rewritten

  assert set(files.loc[files['reason'].str.startswith('corrupt'), 'path']) == corrupt
  pairs = pd.read_csv(tmp_path / 'clean_duplicates.csv')
  result = score(pairs, truth, copies)
  assert result['precision'] == 1.0 and result['recall'] == 1.0, result
  assert set(pairs.loc[pairs['kind'] == 'exact', 'distance']) == {0}
  exact = {frozenset(p) for p in zip(copies.loc[copies['kind'] == 'exact', 'original'],
                                     copies.loc[copies['kind'] == 'exact', 'copy'])}
  assert {frozenset(p) for p in pairs.loc[pairs['kind'] == 'exact', ['path_a', 'path_b']].values} == exact

  # One copy of each duplicate group stays, from the evaluation split where there is one; a group whose
  # copies disagree on the label keeps none of its training copies.
  keep = dict(zip(files['path'], files['keep']))
  priority = lambda path: {'test': 0, 'val': 1, 'train': 2}[path.split('/')[0]]
  for original, group in copies.groupby('original'):
    members = [original, *group['copy']]
    kept = [p for p in members if keep[p]]
    if group['conflict'].any():
      assert not [p for p in kept if p.startswith('train/')], members
    else:
      assert len(kept) == 1 and priority(kept[0]) == min(map(priority, members)), members

  report = (tmp_path / 'report.md').read_text()
  assert '## Data cleaning' in report and '| split | files | corrupt |' in report and '| JPEG | PNG |' in report
  assert set(pd.read_csv(tmp_path / 'clean_files.csv').columns) >= {
      'path', 'split', 'label', 'keep', 'reason', 'format', 'mode', 'width', 'height', 'bytes', 'sha256', 'phash'}


def test_threshold_trades_recall_of_crops(planted, tmp_path):
  root, truth, _, copies = planted
  clean(climbing(root, **{'clean.phash_threshold': 0}), tmp_path)
  result = score(pd.read_csv(tmp_path / 'clean_duplicates.csv'), truth, copies)
  assert result['recall_exact'] == 1.0 and result['recall_cropped'] < 1.0 and result['precision'] == 1.0


def test_training_reads_only_the_kept_files(planted, tmp_path):
  root, _, corrupt, _ = planted
  files = clean(climbing(root), tmp_path)
  source = pipeline.list_source(DataSettings.from_config(climbing(root, **{'data.file_list': str(tmp_path / 'clean_files.csv')}).data))
  listed = {p.relative_to(root).as_posix() for s in (source.train, source.val, source.test) for p in s.paths}
  assert listed == set(files.loc[files['keep'], 'path'])
  assert not listed & corrupt
  save_image(root / 'train' / 'others' / 'added_later.png', mode='RGB')
  try:
    with pytest.raises(UserInputError, match='1 file.* are not in it .*added_later.png.*run --mode clean again'):
      pipeline.list_source(DataSettings.from_config(climbing(root, **{'data.file_list': str(tmp_path / 'clean_files.csv')}).data))
  finally:
    (root / 'train' / 'others' / 'added_later.png').unlink()


def test_apply_moves_left_out_files_to_quarantine_and_never_overwrites(tmp_path):
  root = tmp_path / 'root'
  plant_folder(root, originals=12, copies_per_kind=1, seed=3)
  before = digests(root)
  workdir = tmp_path / 'work'
  files = clean(climbing(root), workdir, apply=True)
  out = set(files.loc[~files['keep'], 'path'])
  moved = pd.read_csv(workdir / 'clean_moved.csv')
  assert len(moved) == len(out) > 0
  assert digests(workdir / 'quarantine') == {p: before[p] for p in out}  # moved whole, not rewritten
  assert digests(root) == {p: d for p, d in before.items() if p not in out}
  again = clean(climbing(root), tmp_path / 'again')
  assert again['keep'].all()  # nothing corrupt or duplicated is left
  (root / sorted(out)[0]).parent.mkdir(parents=True, exist_ok=True)
  (workdir / 'quarantine' / sorted(out)[0]).rename(root / sorted(out)[0])  # put one back, keep one in place
  (root / sorted(out)[-1]).write_bytes((workdir / 'quarantine' / sorted(out)[-1]).read_bytes())
  with pytest.raises(UserInputError, match='already exist in .*Nothing was moved'):
    clean(climbing(root), workdir, apply=True)


def test_clean_needs_a_file_source():
  with pytest.raises(UserInputError, match='--mode clean scans image files'):
    clean(load_config('configs/digits.py'), '/nonexistent')


def test_unlabelled_test_files_are_never_left_out(tmp_path):
  root = tmp_path / 'root'
  for cls in ('a', 'b'):
    for i in range(3):
      save_image(root / cls / f'{cls}{i}.png', mode='RGB', size=(60, 40))
  save_image(root / 'test' / 'fine.png', mode='RGB', size=(60, 40))
  (root / 'test' / 'broken.png').write_bytes(b'')
  (root / 'test' / 'copy.png').write_bytes((root / 'a' / 'a0.png').read_bytes())
  files = clean(climbing(root), tmp_path / 'work', apply=True).set_index('path')
  assert files.loc['test/broken.png', 'keep'] and files.loc['test/broken.png', 'reason'] == 'corrupt: zero-byte file'
  assert files['keep'].all() and (root / 'test' / 'broken.png').exists()
  assert files.loc['a/a0.png', 'group'] == files.loc['test/copy.png', 'group'] >= 0  # reported, both kept
