"""--mode label_next: uncertainty, diversity and the foreign split recomputed on crafted data, the Label Studio file
round-tripped, and the loop through launch.py: rank a pool, fill in the labels, train on them."""
import json
import pathlib
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fpclass.analysis import acquisition
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import LabelNextSettings
from fpclass.config.schema import base_config
from fpclass.config.settings import ConfigError
from fpclass.data.kaggle_csv import load_kaggle_csv
from fpclass.errors import UserInputError
from fpclass.infer import labelling
from fpclass.modes import label_next as label_next_mode
from fpclass.train import sidecar
from tests.conftest import QUICK, launch, save_image


def test_margin_and_entropy_rank_the_same_images_differently():
  # Row 0: a tie of two classes (the smallest margin); row 1: doubt spread over four (the highest entropy); row 2:
  # confident. Least confidence (1 - top) would rank row 1 first too, and a swapped pair both orders.
  probabilities = np.array([[0.5, 0.5, 0.0, 0.0], [0.4, 0.3, 0.2, 0.1], [0.9, 0.05, 0.03, 0.02]])
  np.testing.assert_allclose(acquisition.margin(probabilities), [1.0, 0.9, 0.15])
  np.testing.assert_allclose(acquisition.entropy(probabilities)[:2], [np.log(2), 1.2798542], rtol=1e-6)
  orders = {s: list(acquisition.rank(acquisition.uncertainty(s, probabilities[None]), 3).picks)
            for s in ('margin', 'entropy')}
  assert orders == {'margin': [0, 1, 2], 'entropy': [1, 0, 2]}


def test_disagreement_is_the_spread_of_the_models_not_their_doubt():
  # Image 0: the models lean apart; image 1: both sure, of different classes; image 2: both unsure, alike. Every
  # mix is (0.5, 0.5), so margin and entropy tie; images 0 and 1 get one vote per class (a vote entropy would tie
  # them, in index order); the models' own entropies would put image 2 first.
  members = np.array([[[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]],
                      [[0.4, 0.6], [0.1, 0.9], [0.5, 0.5]]])
  scores = acquisition.uncertainty('disagreement', members)
  kl = 0.9 * np.log(1.8) + 0.1 * np.log(0.2)
  np.testing.assert_allclose(scores[1:], [kl, 0.0], atol=1e-12)
  assert list(acquisition.rank(scores, 3).picks) == [1, 0, 2]
  np.testing.assert_allclose(acquisition.disagreement(members, weights=[1.0, 0.0]), 0.0, atol=1e-12)


def crafted_pool():
  """Four near-copies of the most uncertain image at (1, 0), then two less uncertain ones elsewhere."""
  features = np.array([[1, 0], [1, 0.01], [1, -0.01], [1, 0.02], [0, 1], [-1, 0]], np.float64)
  scores = np.array([0.99, 0.98, 0.97, 0.96, 0.90, 0.85])
  return features, scores


def test_kcenter_spreads_the_picks_that_top_k_spends_on_near_copies():
  features, scores = crafted_pool()
  assert list(acquisition.rank(scores, 3).picks) == [0, 1, 2]              # top-k: three copies of one image
  ranked = acquisition.rank(scores, 3, features, candidates=2.0)
  # The most uncertain first; then the farthest (-1, 0), at distance 2; then (0, 1), sqrt(2) from both.
  assert list(ranked.picks) == [0, 5, 4] and ranked.candidates == 6
  np.testing.assert_allclose(ranked.distances, [np.inf, 2.0, np.sqrt(2)])
  # The candidates bound the spread: among the 3 most uncertain, only copies are left to choose from.
  assert sorted(acquisition.rank(scores, 3, features, candidates=1.0).picks) == [0, 1, 2]
  # Features are compared at unit length: a longer copy is still a copy.
  assert list(acquisition.rank(scores, 3, features * np.array([[1], [9], [1], [1], [1], [1]]), candidates=2.0).picks
              ) == [0, 5, 4]


def test_foreign_images_are_never_picked_and_come_last_most_foreign_first():
  features, scores = crafted_pool()
  foreign = np.array([True, False, False, False, False, True])
  ood_scores = np.array([5.0, 0.1, 0.2, 0.3, 0.4, 9.0])
  for diversity in (None, features):
    ranked = acquisition.rank(scores, 3, diversity, foreign=foreign, ood_scores=ood_scores, candidates=2.0)
    assert not set(ranked.picks) & {0, 5} and list(ranked.foreign) == [5, 0]
  assert list(acquisition.rank(scores, 3, features, foreign, ood_scores, candidates=2.0).picks) == [1, 4, 2]


def to_label(tmp_path, class_names=('cat', 'dog')):
  return [labelling.ToLabel(tmp_path / f'{i}.png', f'sub/{i}.png', class_names[i % 2], 0.5 + i / 10, i + 1, 0.9)
          for i in range(3)]


def test_the_label_studio_file_round_trips_and_matches_its_interface(tmp_path):
  rows = to_label(tmp_path)
  path = tmp_path / 'tasks.json'
  labelling.write_tasks(path, labelling.tasks(rows, '/data/local-files/?d=', 'run (1 model, margin)'))
  tasks = json.loads(path.read_text())
  assert [t['data']['image'] for t in tasks] == [f'/data/local-files/?d=sub/{i}.png' for i in range(3)]
  assert [t['predictions'][0]['result'][0]['value']['choices'] for t in tasks] == [['cat'], ['dog'], ['cat']]
  result = tasks[0]['predictions'][0]['result'][0]
  interface = ElementTree.fromstring(labelling.labelling_config(['cat', 'dog']))
  image, choices = interface.find('Image'), interface.find('Choices')
  assert (result['type'], result['from_name'], result['to_name']) == ('choices', choices.get('name'), image.get('name'))
  assert choices.get('toName') == image.get('name') and image.get('value') == '$' + image.get('name')
  assert [c.get('value') for c in choices] == ['cat', 'dog']
  # Label Studio's JSON export: the tasks with annotations. The latest kept annotation wins; a cancelled one and a
  # task nobody labelled give no row; a prediction is never taken for a label.
  tasks[0]['annotations'] = [{'result': [dict(result, value={'choices': ['dog']})], 'was_cancelled': False},
                             {'result': [dict(result, value={'choices': ['cat']})], 'was_cancelled': False}]
  tasks[1]['annotations'] = [{'result': [dict(result, value={'choices': ['cat']})], 'was_cancelled': True}]
  tasks[2]['annotations'] = [{'result': [dict(result, value={'choices': ['dog']})]}]
  (tmp_path / 'export.json').write_text(json.dumps(tasks))
  labels = labelling.labels_from_export(tmp_path / 'export.json')
  assert labels.to_dict('list') == {'filename': ['sub/0.png', 'sub/2.png'], 'label': ['cat', 'dog']}
  # ... which kaggle_csv reads as labelled images (data.root: the pool's folder; data.train_dir: '.').
  for i in range(3):
    save_image(tmp_path / 'sub' / f'{i}.png')
  labels.to_csv(tmp_path / 'labels.csv', index=False)
  data = base_config().data
  data.update(root=str(tmp_path), train_dir='.', labels_csv=str(tmp_path / 'labels.csv'), id_column='filename',
              label_column='label')
  source = load_kaggle_csv(DataSettings.from_config(data))
  assert source.class_names == ('cat', 'dog') and [p.name for p in source.train.paths] == ['0.png', '2.png']


def test_bad_settings_name_their_key():
  with pytest.raises(ConfigError, match=r'config\.label_next\.strategy'):
    LabelNextSettings.from_config({'strategy': 'bald'})
  with pytest.raises(ConfigError, match=r'config\.label_next\.diversity'):
    LabelNextSettings.from_config({'diversity': 'kmeans'})


@pytest.fixture
def ranked(trained_quick, tmp_path):
  """label_next through launch.py on a copy of the quick run: a pool of 16 of the synthetic set's test images, a
  copy of a training image (left out) and a broken file (quarantined); half the held-out images flagged foreign,
  so the pool has both kinds."""
  shared, env, _ = trained_quick
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/')
  pool = tmp_path / 'pool'
  (pool / 'more').mkdir(parents=True)
  for i, path in enumerate(sorted((root / 'test').glob('*.png'))[:16]):
    shutil.copy(path, pool / ('more' if i % 2 else '.') / path.name)
  shutil.copy(sorted((root / 'train').glob('*.png'))[0], pool / 'labelled_copy.png')
  (pool / 'broken.png').write_bytes(b'not a png')
  launch(f'--workdir={workdir}', '--mode=label_next', f'--config.data.unlabelled={pool}',
         '--config.label_next.count=20', '--config.label_next.contact_sheet=6', '--config.ood.false_rejection=0.5',
         env=env)
  return workdir, env, pool, root


def test_label_next_writes_a_consistent_list_sheet_template_and_tasks(ranked):
  workdir, env, pool, _ = ranked
  listed = pd.read_csv(workdir / 'label_next.csv', dtype={'guess': str}, keep_default_na=False)
  assert list(listed.columns) == label_next_mode.COLUMNS and list(listed['rank']) == list(range(1, 17))
  assert not {'labelled_copy.png', 'broken.png'} & {pathlib.Path(p).name for p in listed['path']}
  assert list(pd.read_csv(workdir / 'label_next_quarantine.csv')['path']) == [str(pool / 'broken.png')]
  foreign = listed['foreign'].astype(str) == 'True'
  assert 0 < foreign.sum() < len(listed) and not foreign[:int((~foreign).sum())].any()   # the foreign ones last
  assert (listed[foreign]['why'].str.startswith(label_next_mode.FOREIGN)).all() and (listed[foreign]['guess'] == '').all()
  assert (listed[~foreign]['guess'] != '').all() and listed[~foreign]['why'].str.startswith('margin').all()
  assert (listed['ood_score'][foreign] > listed['ood_score'][~foreign].max()).all()
  with Image.open(workdir / 'label_next.png') as sheet:
    assert sheet.size[0] > 6 * 40
  # The task file and the template: the in-distribution picks alone, in rank order, relative to the pool.
  picks = listed[~foreign]
  names = [pathlib.Path(p).relative_to(pool).as_posix() for p in picks['path']]
  tasks = json.loads((workdir / 'label_next_label_studio.json').read_text())
  assert [t['data']['filename'] for t in tasks] == names
  assert [t['predictions'][0]['result'][0]['value']['choices'] for t in tasks] == [[g] for g in picks['guess']]
  template = pd.read_csv(workdir / 'label_next_labels.csv', dtype=str, keep_default_na=False)
  assert list(template['filename']) == names and set(template['label']) == {''}
  report = (workdir / 'report.md').read_text()
  assert '## What to label next' in report
  assert f'The pool: {int(foreign.sum())} of 16 (' in report   # the shift line (fpclass/deploy/shift.py)


def test_the_filled_template_trains_as_labelled_images(ranked, tmp_path):
  workdir, env, pool, _ = ranked
  template = pd.read_csv(workdir / 'label_next_labels.csv', dtype=str, keep_default_na=False)
  names = sidecar.read_metadata(workdir)['class_names']
  template['label'] = [names[i % 2] for i in range(len(template))]
  filled = tmp_path / 'filled.csv'
  template.to_csv(filled, index=False)
  launch(QUICK, f'--workdir={tmp_path / "labelled"}', '--config.data.source=kaggle_csv', f'--config.data.root={pool}',
         '--config.data.train_dir=.', f'--config.data.labels_csv={filled}', '--config.data.id_column=filename',
         '--config.data.label_column=label', '--config.train.epochs=1', '--config.explain.after_training=False', env=env)
  scores = json.loads((tmp_path / 'labelled' / 'scores.json').read_text())
  assert scores and sidecar.read_metadata(tmp_path / 'labelled')['class_names'] == names


def test_an_empty_or_missing_pool_names_config_data_unlabelled(trained_quick, tmp_path, monkeypatch):
  workdir, env, _ = trained_quick
  (tmp_path / 'empty').mkdir()
  for spec, message in (('', 'is empty'), (str(tmp_path / 'nowhere'), 'no such file or folder'),
                        (str(tmp_path / 'empty'), 'holds no image files')):
    result = launch(f'--workdir={workdir}', '--mode=label_next', f'--config.data.unlabelled={spec}', env=env,
                    check=False)
    assert result.returncode != 0 and 'config.data.unlabelled' in result.stderr and message in result.stderr, \
        result.stderr[-2000:]
  result = launch(f'--workdir={workdir}', '--mode=label_next', '--config.label_next.strategy=bald',
                  f'--config.data.unlabelled={tmp_path}', env=env, check=False)
  assert result.returncode != 0 and 'config.label_next.strategy' in result.stderr
  with pytest.raises(UserInputError, match='needs several models'):
    pool = tmp_path / 'one'
    save_image(pool / 'a.png')
    config = sidecar.stored_config(workdir)
    with config.unlocked():
      config.data.unlabelled, config.label_next.strategy = str(pool), 'disagreement'
    monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])   # the synthetic set the run trained on
    label_next_mode.label_next(config, workdir)

