"""End to end through launch.py: train, evaluate, submit, and bad flags (kill -9 and resume: test_faults.py)."""
import json
import os
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from fpclass.infer.inference import load_trained
from tests import content
from tests.conftest import QUICK, REPO, launch, launch_server, load_config, save_image
from tests.forkserver import forkable


def test_train_writes_every_artefact(trained_quick):
  workdir, _, result = trained_quick
  for name in ('metadata.json', 'metrics.csv', 'scores.json', 'classification_report.txt', 'quarantine.csv',
               'val_predictions.csv', 'learning_curves.png', 'confusion_matrix.png', 'roc_curve.png', 'report.md'):
    assert (workdir / name).is_file(), name
  assert (workdir / 'checkpoints' / 'last').is_dir() and (workdir / 'checkpoints' / 'best').is_dir()
  history = pd.read_csv(workdir / 'metrics.csv')
  assert history['epoch'].tolist() == [1, 2]
  assert {'train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'val_macro_f1', 'val_roc_auc'} <= set(history)
  scores = content.check_scores_match_predictions(workdir)
  assert scores['n'] == 15 and set(scores['per_class']) == {'0', '1'}
  content.check_plots(workdir)
  # The selected epoch's validation numbers in metrics.csv are what evaluate recomputes from its checkpoint.
  selected = history.set_index('epoch').loc[scores['epoch']]
  assert scores['accuracy'] == pytest.approx(selected['val_accuracy'], abs=1e-6)
  assert scores['loss'] == pytest.approx(selected['val_loss'], rel=1e-4)
  meta = json.loads((workdir / 'metadata.json').read_text())
  assert meta['class_names'] == ['0', '1'] and meta['image_size'] == [120, 80] and meta['channels'] == 1
  assert meta['normalisation'] == {'mean': [0.5], 'std': [0.5], 'bgr': False}
  report = (workdir / 'report.md').read_text()
  for link in ('learning_curves.png', 'scores.json', 'quarantine.csv', 'classification_report.txt'):
    assert f']({link})' in report
  assert 'val accuracy' in result.stdout


def test_a_forked_launch_trains_what_python_launch_py_trains_bit_for_bit(trained_quick, tmp_path):
  """The suite's launches are forked from a process that has imported launch.py's libraries (tests/forkserver.py):
  `trained_quick` ran as a plain `python launch.py` subprocess, and the same command forked trains the same
  weights to the bit and writes the same tables (the same programs on the same batches, in a process of its own)."""
  cold, env, _ = trained_quick
  server = launch_server()
  assert server is not None and forkable(server.env, dict(os.environ, **env))   # this launch is forked
  forked = tmp_path / 'forked'
  result = launch(QUICK, f'--workdir={forked}', env=env)
  assert 'val accuracy' in result.stdout
  for name in ('metrics.csv', 'val_predictions.csv'):
    assert_frame_equal(pd.read_csv(forked / name).drop(columns=['seconds'], errors='ignore'),
                       pd.read_csv(cold / name).drop(columns=['seconds'], errors='ignore'), check_exact=True)
  config = load_config('configs/footprint.py:exp4,quick')
  for kind in ('best', 'last'):
    pairs = zip(jax.tree_util.tree_leaves(load_trained(config, forked, kind).state.params),
                jax.tree_util.tree_leaves(load_trained(config, cold, kind).state.params))
    assert all(np.array_equal(a, b) for a, b in pairs)


@pytest.fixture(scope='module')
def submitted(trained_quick, tmp_path_factory):
  """(workdir, env, the launch's CompletedProcess) of --mode submit on a copy of the quick run without --config
  (its config from the sidecar), which the two tests below read: one launch, not one each. Submit writes into its
  workdir (submission.csv, the OOD fit), so it runs on a copy and the shared run stays as trained. Submit with
  --config is test_kaggle_folder_with_bad_files's."""
  shared, env, _ = trained_quick
  workdir = tmp_path_factory.mktemp('submitted') / 'run'
  shutil.copytree(shared, workdir)
  return workdir, env, launch(f'--workdir={workdir}', '--mode=submit', env=env)


def test_submit_writes_one_row_per_test_file_in_sample_order(submitted):
  workdir, env, _ = submitted
  submission = pd.read_csv(workdir / 'submission.csv', dtype=str)
  data_root = next((REPO / env['FPCLASS_CACHE']).glob('synthetic_footprints/*'))
  sample = pd.read_csv(data_root / 'sample_submission.csv', dtype=str)
  assert list(submission.columns) == ['filename', 'SEX']
  assert submission['filename'].tolist() == sample['filename'].tolist()
  assert len(submission) == len(list((data_root / 'test').glob('*.png'))) == 16
  assert set(submission['SEX']) <= {'0', '1'}
  probs = pd.read_csv(workdir / 'submission_probabilities.csv')
  assert list(probs.columns) == ['filename', 'p_0', 'p_1']
  assert ((probs['p_0'] + probs['p_1'] - 1).abs() < 1e-6).all()


def test_evaluate_with_another_architecture_is_a_clear_error(trained_quick):
  workdir, env, _ = trained_quick
  result = launch(QUICK, f'--workdir={workdir}', '--mode=evaluate', '--config.model.fc_sizes=(64,)',
                  env=env, check=False)
  assert result.returncode == 2
  assert '--config.model.fc_sizes=(64,) (trained with (128,))' in result.stderr
  assert 'Traceback' not in result.stderr


def test_modes_after_training_read_the_config_from_the_workdir(trained_quick, submitted):
  """Without --config, evaluate and submit (`submitted`) take the training config from the sidecar (the quick
  run's tiny synthetic sizes included); an inference-side override still applies."""
  workdir, env, _ = trained_quick
  evaluated = launch(f'--workdir={workdir}', '--mode=evaluate', '--config.eval.batch_size=7', env=env)
  # A reader opens the checkpoints read-only on purpose: orbax's notices of it are not the user's business.
  assert 'read only' not in evaluated.stderr and 'read_only' not in evaluated.stderr, evaluated.stderr
  submitted_dir, _, out = submitted
  submission = (submitted_dir / 'submission.csv').read_text().splitlines()
  assert submission[0].split(',')[0] == 'filename' and len(submission) == 1 + 16, out.stdout


def test_an_override_that_changes_the_model_names_the_stored_value(trained_quick):
  workdir, env, _ = trained_quick
  result = launch(f'--workdir={workdir}', '--mode=evaluate', '--config.data.image_size=(60,40)', env=env,
                  check=False)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert '--config.data.image_size=(60, 40) (trained with (120, 80))' in result.stderr


def test_a_mode_after_training_on_an_empty_workdir_says_what_is_missing(tmp_path):
  result = launch(f'--workdir={tmp_path}', '--mode=submit', check=False)
  assert result.returncode == 2 and 'metadata.json is missing' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('flag, message', [
    ('--config.train.epochz=3', '--config.train.epochz: no such config key. Did you mean "epochs"'),
    ('--config.trian.epochs=3', '--config.trian.epochs: no such config key'),
    ('--config.train.epochs=many', 'invalid literal'),
    ('--config.train.optimizer=adamm', "config.train.optimizer='adamm'"),
    ('--config.augment.rotation=-5', 'config.augment.rotation'),
])
def test_bad_flags_name_the_flag(tmp_path, flag, message):
  result = launch(QUICK, f'--workdir={tmp_path}', flag, check=False)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and 'Traceback' not in result.stderr


TINY_RUN = ['--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)',
            '--config.train.epochs=1', '--config.explain.after_training=False', '--config.train.tensorboard=False']


def test_kaggle_folder_with_bad_files(tmp_path, kaggle_root):
  """Real-data path: corrupt, empty and missing training files are quarantined, never deleted."""
  (kaggle_root / 'train' / 'img_02.png').write_bytes(b'')
  (kaggle_root / 'train' / 'img_05.png').write_bytes(b'GIF89a corrupt')
  (kaggle_root / 'train' / 'img_07.png').unlink()
  rgba = save_image(kaggle_root / 'train' / 'img_08.png', mode='RGBA')
  workdir = tmp_path / 'run'
  # What is checked happens at ingest and in submit's order: a tiny model, one epoch, no Grad-CAM figures.
  common = [QUICK, f'--workdir={workdir}', f'--config.data.root={kaggle_root}', '--config.data.val_fraction=0.34',
            *TINY_RUN]
  launch(*common)
  quarantine = pd.read_csv(workdir / 'quarantine.csv')
  assert sorted(quarantine['file'].map(lambda p: p.rsplit('/', 1)[-1])) == ['img_02.png', 'img_05.png',
                                                                           'img_07.png']
  assert (kaggle_root / 'train' / 'img_02.png').exists() and rgba.exists()
  launch(*common, '--mode=submit')
  submission = pd.read_csv(workdir / 'submission.csv')
  assert submission['filename'].tolist() == ['test_3.png', 'test_1.png', 'test_0.png', 'test_2.png']


def test_missing_column_through_launch(tmp_path, kaggle_root):
  result = launch(QUICK, f'--workdir={tmp_path}', f'--config.data.root={kaggle_root}',
                  '--config.data.label_column=sex', check=False)
  assert result.returncode == 2
  assert "missing column 'sex' (config.data.label_column)" in result.stderr


def test_digits_quick(tmp_path):
  # One epoch of the recipe's model already scores 0.87 on the 360 held-out digits (chance: 0.1).
  launch('--config=configs/digits.py:quick', f'--workdir={tmp_path}', '--config.train.epochs=1',
         '--config.train.tensorboard=False')
  scores = json.loads((tmp_path / 'scores.json').read_text())
  assert scores['n'] == 360 and len(scores['class_names']) == 10 and scores['accuracy'] > 0.5
  result = launch('--config=configs/digits.py:quick', f'--workdir={tmp_path}', '--mode=submit', check=False)
  assert result.returncode == 2 and 'no test split' in result.stderr


@pytest.mark.parametrize('mode', ['ensemble', 'label_issues', 'submit'])
def test_a_workdir_without_a_recorded_config_is_one_line(tmp_path, mode):
  """Modes that read a workdir take its config from metadata.json or workdir.json; a folder with neither says
  so in one line, naming the folder."""
  result = launch(f'--workdir={tmp_path}', f'--mode={mode}', check=False)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  [line] = result.stderr.strip().splitlines()
  assert line.startswith('fpclass: error: ') and line.endswith(
      f'{tmp_path}: no trained run here (metadata.json is missing, and so is the workdir.json a sweep or an auto '
      'run writes); pass --config, or train this --workdir first')
