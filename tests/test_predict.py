"""--mode predict: new images through the selected checkpoint, bad files quarantined, every input form."""
import json
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fpclass.data import new_images
from fpclass.deploy import ood
from fpclass.errors import UserInputError
from fpclass.infer import inference
from fpclass.modes import predict as predict_mode
from tests.conftest import QUICK, launch, load_config


def data_root(env) -> pathlib.Path:
  """The synthetic footprints the quick run trained on (generated into its cache)."""
  (root,) = pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/')
  return root


def quick_config(**overrides):
  return load_config(QUICK.split('=', 1)[1], **overrides)


def test_predict_equals_the_validation_predictions_of_evaluate(trained_quick, tmp_path):
  shared, env, _ = trained_quick
  workdir = tmp_path / 'run'
  shutil.copytree(shared, workdir)  # predict writes into its workdir; the shared one stays as trained
  val = pd.read_csv(workdir / 'val_predictions.csv', dtype={'id': str, 'label': str, 'predicted': str})
  listing = tmp_path / 'val_files.csv'
  pd.DataFrame({'image': [str(data_root(env) / 'train' / i) for i in val['id']]}).to_csv(listing, index=False)
  # The command line a user types: no --config, the workdir's sidecar holds it.
  launch(f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={listing}',
         '--config.predict.path_column=image', '--config.predict.output=val_check.csv',
         '--config.predict.calibrated=False', env=env)
  got = pd.read_csv(workdir / 'val_check.csv', dtype={'predicted': str})
  assert [pathlib.Path(p).name for p in got['path']] == list(val['id'])
  assert list(got['predicted']) == list(val['predicted'])
  columns = [c for c in val.columns if c.startswith('p_')]
  assert columns and list(got.columns) == ['path', 'predicted', *columns, 'ood_score', 'unknown']
  # Same model and images; only the batch size differs (15 at evaluation), which moves the last float bits.
  np.testing.assert_allclose(got[columns].to_numpy(), val[columns].to_numpy(), rtol=0, atol=1e-6)
  # The OOD fit scored these very images to place its threshold: the same scores. 15 are too few for a 5% rate
  # (it needs 19), so the threshold is infinite and none is unknown.
  fitted = ood.load(workdir / ood.FILE, 'softmax')
  assert list(fitted.held_out_ids) == list(val['id']) and fitted.threshold == np.inf and not got['unknown'].any()
  np.testing.assert_allclose(got['ood_score'], fitted.held_out_scores, rtol=1e-5, atol=1e-5)
  assert pd.read_csv(workdir / 'val_check_quarantine.csv').empty
  assert '## Predictions' in (workdir / 'report.md').read_text()


def test_folder_input_quarantines_bad_files_and_explains_the_good_ones(trained_quick, tmp_path):
  workdir, env, _ = trained_quick
  folder = tmp_path / 'photos'
  good = sorted((data_root(env) / 'test').glob('*.png'))[:3]
  (folder / 'nested' / 'deeper').mkdir(parents=True)
  for i, path in enumerate(good):
    shutil.copy(path, folder / ('nested/deeper' if i == 2 else 'nested') / path.name)
  png = good[0].read_bytes()
  bad = {'truncated.png': png[:len(png) // 2], 'text.jpg': b'this is not an image', 'empty.png': b''}
  for name, data in bad.items():
    (folder / name).write_bytes(data)
  (folder / 'notes.txt').write_text('not an image extension: not listed at all')
  out_dir = tmp_path / 'run'
  shutil.copytree(workdir, out_dir)  # this test writes overlays; the shared workdir stays as it was

  config = quick_config(**{'predict.inputs': str(folder), 'predict.explain': True, 'predict.batch_size': 2})
  out = predict_mode.predict(config, out_dir)

  frame = pd.read_csv(out, dtype={'predicted': str})
  assert sorted(pathlib.Path(p).name for p in frame['path']) == sorted(p.name for p in good)
  probs = frame[[c for c in frame.columns if c.startswith('p_')]].to_numpy()
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
  quarantine = pd.read_csv(out_dir / 'predictions_quarantine.csv').set_index('path')['reason']
  reasons = {pathlib.Path(p).name: r for p, r in quarantine.items()}
  assert set(reasons) == set(bad)
  assert reasons['empty.png'] == 'zero-byte file'
  assert reasons['text.jpg'] == 'not an image Pillow can identify'
  assert reasons['truncated.png'].startswith('corrupt image')
  for name in bad:  # listed, never moved or deleted
    assert (folder / name).exists()
  for overlay in frame['overlay']:
    with Image.open(overlay) as image:
      assert image.mode == 'RGB' and image.size == (80, 120)


def test_stored_calibration_is_applied_unless_switched_off(trained_quick, tmp_path):
  workdir, env, _ = trained_quick
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  metadata = json.loads((run / 'metadata.json').read_text())
  metadata['calibration'] = {'temperature': 3.0, 'threshold': 0.8}
  (run / 'metadata.json').write_text(json.dumps(metadata))
  (tmp_path / 'images').mkdir()
  for f in sorted((data_root(env) / 'test').glob('*.png'))[:6]:
    shutil.copy(f, tmp_path / 'images' / f.name)
  listing = tmp_path / 'files.csv'  # relative paths, taken from the CSV's folder
  pd.DataFrame({'path': [f'images/{f.name}' for f in sorted((tmp_path / 'images').iterdir())]}).to_csv(
      listing, index=False)

  raw = pd.read_csv(predict_mode.predict(quick_config(**{'predict.inputs': str(listing), 'predict.calibrated': False,
                                                         'predict.output': 'raw.csv'}), run))
  calibrated = pd.read_csv(predict_mode.predict(quick_config(**{'predict.inputs': str(listing)}), run),
                           dtype={'predicted': str})
  p_raw = raw[['p_0', 'p_1']].to_numpy()
  logits = np.log(p_raw)  # softmax is shift-invariant: log-probabilities are logits
  scaled = np.exp(logits / 3.0)
  scaled /= scaled.sum(1, keepdims=True)
  np.testing.assert_allclose(calibrated[['p_0', 'p_1']].to_numpy(), scaled, atol=1e-9)
  assert list(calibrated['predicted']) == ['1' if p >= 0.8 else '0' for p in scaled[:, 1]]
  assert 'T = 3.000' in (run / 'report.md').read_text()


def test_list_inputs_takes_a_file_a_glob_and_a_csv(tmp_path):
  for rel in ('a/x1.png', 'a/b/x2.PNG', 'a/b/y.jpg', 'a/readme.md'):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b'')
  single = new_images.list_inputs(str(tmp_path / 'a/x1.png'))
  assert single.paths == [tmp_path / 'a/x1.png']
  folder = new_images.list_inputs(str(tmp_path / 'a'))
  assert [p.name for p in folder.paths] == ['x2.PNG', 'y.jpg', 'x1.png']  # recursive, natural order
  found = new_images.list_inputs(str(tmp_path / 'a/**/x*.*'))
  assert sorted(p.name for p in found.paths) == ['x1.png', 'x2.PNG']
  (tmp_path / 'list.csv').write_text('file,other\na/x1.png,1\n,2\n/abs/elsewhere.png,3\n')
  listed = new_images.list_inputs(str(tmp_path / 'list.csv'), path_column='file')
  assert listed.paths == [tmp_path / 'a/x1.png', pathlib.Path('/abs/elsewhere.png')]
  assert listed.names == ['a/x1.png', '/abs/elsewhere.png']
  assert listed.problems == [(f'{tmp_path / "list.csv"}:3', "row 3: empty 'file'")]


@pytest.mark.parametrize('spec, column, message', [
    ('', 'path', 'config.predict.inputs is empty'),
    ('missing/folder', 'path', 'no such file or folder'),
    ('nothing/*.png', 'path', 'the glob matches no file'),
    ('list.csv', 'filename', "no column 'filename' \\(config.predict.path_column\\); its columns are \\['path'\\]"),
    ('empty', 'path', 'the folder holds no image files'),
])
def test_bad_inputs_name_the_flag_or_file(tmp_path, monkeypatch, spec, column, message):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'list.csv').write_text('path\nx.png\n')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('')
  with pytest.raises(UserInputError, match=message):
    new_images.list_inputs(spec, column)


def test_with_the_score_on_predict_runs_the_model_once_for_classes_and_score(trained_quick, tmp_path, monkeypatch):
  """Without test-time augmentation the classes come from the score's own program (`ood.Scorer.outputs`), which
  runs the model once: predict never calls the model's plain logits, and gets the same classes and probabilities."""
  workdir, env, _ = trained_quick
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  images = sorted((data_root(env) / 'test').glob('*.png'))[:5]
  listing = tmp_path / 'some.csv'
  pd.DataFrame({'path': [str(p) for p in images]}).to_csv(listing, index=False)
  plain = pd.read_csv(predict_mode.predict(quick_config(**{'predict.inputs': str(listing), 'ood.enabled': False,
                                                           'predict.output': 'plain.csv'}), run))
  used = []
  monkeypatch.setattr(ood.Scorer, 'outputs', lambda self, *a, real=ood.Scorer.outputs: used.append(1) or real(self, *a))
  with monkeypatch.context() as patched:
    patched.setattr(inference.Trained, 'logits', lambda *a, **k: pytest.fail('the model ran a second time'))
    scored = pd.read_csv(predict_mode.predict(quick_config(**{'predict.inputs': str(listing)}), run))
  assert used and list(scored['predicted']) == list(plain['predicted']) and 'ood_score' in scored
  columns = [c for c in plain.columns if c.startswith('p_')]
  np.testing.assert_allclose(scored[columns].to_numpy(), plain[columns].to_numpy(), rtol=0, atol=1e-6)
