"""--mode predict and --mode submit of a multi-label model: p_<class> columns are the sigmoids of the model's
logits, the tags are the classes at or above their threshold (0.5, then the ones --mode calibrate stores), and
submission.csv holds the same tags in sample_submission order; an unreadable test image gets the training
prevalence (data.bad_test_images=prior); fold models must share their thresholds."""
import json
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest

from fpclass.config.inputs import DecodeSettings
from fpclass.data.decode import decode_files
from fpclass.errors import UserInputError
from fpclass.infer import ensemble
from fpclass.infer.inference import load_trained
from fpclass.modes import submit as submit_mode
from tests.conftest import MULTILABEL, launch, load_config

NAMES = ['circle', 'cross', 'ring', 'square', 'triangle']
P_COLUMNS = [f'p_{n}' for n in NAMES]


def synthetic_root(env) -> pathlib.Path:
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_multilabel/*/')
  return root


def tags_at(probs, thresholds) -> list[str]:
  return [' '.join(n for n, p, t in zip(NAMES, row, thresholds) if p >= t) for row in probs]


def read(path) -> pd.DataFrame:
  return pd.read_csv(path, keep_default_na=False, dtype={'path': str, 'tags': str, 'image_name': str})


def run_predict(workdir, env, listing, output) -> pd.DataFrame:
  launch(f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={listing}',
         '--config.predict.path_column=image', f'--config.predict.output={output}', env=env)
  frame = read(workdir / output)
  assert list(frame.columns) == ['path', 'tags', *P_COLUMNS, 'ood_score', 'unknown']   # config.ood: on by default
  return frame


@pytest.fixture(scope='module')
def predicted(trained_multilabel, tmp_path_factory):
  """The 60 test images predicted before and after --mode calibrate, and submitted, on one workdir copy:
  (workdir, env, files, frame at 0.5, frame at the stored thresholds, stored thresholds, in-process logits)."""
  shared, env, _ = trained_multilabel
  tmp = tmp_path_factory.mktemp('ml-predict')
  workdir = tmp / 'run'
  shutil.copytree(shared, workdir)  # predict, calibrate and submit write into it; the shared one stays as trained
  assert not (json.loads((workdir / 'metadata.json').read_text()).get('calibration') or {}).get('thresholds')
  files = sorted((synthetic_root(env) / 'test').glob('*.png'))
  assert len(files) == 60
  listing = tmp / 'files.csv'
  pd.DataFrame({'image': [str(f) for f in files]}).to_csv(listing, index=False)
  before = run_predict(workdir, env, listing, 'before.csv')
  launch(MULTILABEL, f'--workdir={workdir}', '--mode=calibrate', env=env)
  stored = json.loads((workdir / 'metadata.json').read_text())['calibration']['thresholds']
  after = run_predict(workdir, env, listing, 'after.csv')

  config = load_config(MULTILABEL.split('=', 1)[1])
  images, ok, _ = decode_files(files, DecodeSettings.from_config(config.data), split='predict', progress=False)
  assert ok.all()
  logits = load_trained(config, workdir).logits(np.asarray(images), batch_size=60)
  return workdir, env, files, before, after, [stored[n] for n in NAMES], logits


def test_predict_gives_sigmoids_and_tags_at_the_stored_thresholds(predicted):
  workdir, _, files, before, after, thresholds, logits = predicted
  assert list(before['path']) == [str(f) for f in files] == list(after['path'])
  sigmoid = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  for frame in (before, after):  # calibration stores thresholds only: the probabilities stay the sigmoid's
    np.testing.assert_allclose(frame[P_COLUMNS].to_numpy(), sigmoid, rtol=0, atol=1e-6)
  # Before --mode calibrate, 0.5 for every class; after it, the per-label thresholds of metadata.json.
  assert list(before['tags']) == tags_at(before[P_COLUMNS].to_numpy(), [0.5] * 5) == tags_at(sigmoid, [0.5] * 5)
  assert any(abs(t - 0.5) > 1e-3 for t in thresholds)
  assert list(after['tags']) == tags_at(after[P_COLUMNS].to_numpy(), thresholds)
  assert list(after['tags']) != list(before['tags'])  # the stored thresholds changed some decisions
  assert len(set(after['tags'])) > 3  # not a trivial agreement: the tag sets vary between images
  section = (workdir / 'report.md').read_text()
  assert '## Predictions' in section and 'Images tagged with each class: circle: ' in section


def test_submit_writes_predicts_tags_in_sample_submission_order(predicted):
  workdir, env, files, _, after, thresholds, _ = predicted
  out = launch(MULTILABEL, f'--workdir={workdir}', '--mode=submit', env=env)
  submission = read(workdir / 'submission.csv')
  sample = read(synthetic_root(env) / 'sample_submission.csv')
  assert list(submission.columns) == ['image_name', 'tags']
  assert list(submission['image_name']) == list(sample['image_name'])
  assert set(' '.join(submission['tags']).split()) <= set(NAMES)
  stems = [pathlib.Path(p).stem for p in after['path']]
  by_name = dict(zip(stems, after['tags']))
  assert list(submission['tags']) == [by_name[i] for i in submission['image_name']]
  probabilities = read(workdir / 'submission_probabilities.csv').set_index('image_name')
  np.testing.assert_allclose(probabilities.loc[stems, P_COLUMNS].to_numpy(np.float64), after[P_COLUMNS].to_numpy(),
                             rtol=0, atol=1e-6)
  # The synthetic set's hidden tags score the submission: Planet's F2, recomputed here.
  truth = read(synthetic_root(env) / 'solution.csv').set_index('image_name')['tags']
  f2 = np.mean([_f2(set(truth[i].split()), set(t.split())) for i, t in zip(submission['image_name'], submission['tags'])])
  assert f'hidden-label F2 {f2:.4f}' in out.stdout
  assert 'its stored threshold (circle ' in (workdir / 'report.md').read_text()


def _f2(truth: set, pred: set) -> float:
  tp = len(truth & pred)
  return 5 * tp / (4 * len(truth) + len(pred)) if truth or pred else 0.0


def test_submit_follows_a_shuffled_sample_and_gives_an_unreadable_image_the_prevalence(predicted, tmp_path):
  """A Kaggle folder (the synthetic set copied) whose sample_submission is shuffled and one of whose test
  images is broken: with data.bad_test_images=prior, its probabilities are each label's training prevalence."""
  workdir, env, _, _, after, thresholds, _ = predicted
  root = tmp_path / 'planet'
  shutil.copytree(synthetic_root(env), root)
  sample = read(root / 'sample_submission.csv').sample(frac=1.0, random_state=0)
  sample.to_csv(root / 'sample_submission.csv', index=False)
  broken = sample['image_name'].iloc[3]
  (root / 'test' / f'{broken}.png').write_bytes(b'not a png')
  config = load_config(MULTILABEL.split('=', 1)[1], **{
      'data.root': str(root), 'data.bad_test_images': 'prior', 'submit.filename': 'shuffled.csv',
      'submit.probabilities_filename': 'shuffled_probabilities.csv'})
  submission = read(submit_mode.submit(config, workdir))
  assert list(submission['image_name']) == list(sample['image_name'])
  by_name = dict(zip((pathlib.Path(p).stem for p in after['path']), after['tags']))
  good = submission['image_name'] != broken
  assert list(submission['tags'][good]) == [by_name[i] for i in submission['image_name'][good]]
  train = read(root / 'train.csv')
  prevalence = np.array([[n in t.split() for n in NAMES] for t in train['tags']], np.float64).mean(0)
  probabilities = read(workdir / 'shuffled_probabilities.csv').set_index('image_name')
  np.testing.assert_allclose(probabilities.loc[broken, P_COLUMNS].to_numpy(np.float64), prevalence, atol=1e-9)
  assert submission['tags'][~good].item() == tags_at([prevalence], thresholds)[0]


def test_fold_models_must_share_their_per_label_thresholds(tmp_path):
  def member(thresholds):
    calibration = {'thresholds': dict(zip(NAMES, thresholds))} if thresholds else None
    return ensemble.MemberModel(tmp_path, None, {'class_names': NAMES, 'calibration': calibration}, None)

  a, b = [0.3, 0.5, 0.7, 0.4, 0.6], [0.3, 0.5, 0.7, 0.4, 0.61]
  np.testing.assert_array_equal(ensemble.label_thresholds([member(a), member(a)], True), a)
  np.testing.assert_array_equal(ensemble.label_thresholds([member(a), member(b)], False), [0.5] * 5)
  np.testing.assert_array_equal(ensemble.label_thresholds([member(None)], True), [0.5] * 5)
  for members in ([member(a), member(b)], [member(a), member(None)]):
    with pytest.raises(UserInputError, match='different stored per-label thresholds'):
      ensemble.label_thresholds(members, True)
