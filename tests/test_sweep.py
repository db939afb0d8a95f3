"""--mode sweep end to end through launch.py, then a fold-averaged, calibrated, flip-TTA submission."""
import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special
from sklearn import metrics as skm

from fpclass.analysis.calibration import TEMPERATURE_RANGE
from fpclass.config.inputs import DataSettings
from fpclass.config.variants import config_changes
from fpclass.data import pipeline
from fpclass.errors import UserInputError
from fpclass.infer.calibrate_models import calibrate
from fpclass.infer.inference import load_trained
from fpclass.models.heads import probabilities
from fpclass.modes.sweep import run_sweep
from fpclass.train import sidecar
from fpclass.train.sweep_plan import build_variants
from tests import content
from tests.conftest import launch, load_config
from tests.test_figures_from_definitions import best_threshold, corrected

# The footprint sweep's quick data (72 labelled, 16 test images) with a tiny model and 24x16 images.
TINY = ['--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)',
        '--config.sweep.models_per_chunk=10']
TINY_OVERRIDES = {'data.image_size': (24, 16), 'model.conv_channels': (4,), 'model.fc_sizes': (8,),
                  'sweep.models_per_chunk': 10}


@pytest.fixture(scope='module')
def sweep_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep')
  env = {'FPCLASS_CACHE': str(tmp_path_factory.mktemp('sweep-cache'))}
  result = launch('--config=configs/footprint_sweep.py:exp0,exp3,quick', f'--workdir={workdir}', '--mode=sweep',
                  *TINY, env=env)
  return workdir, env, result


def kept_predictions(workdir, variant: str, models: pd.DataFrame) -> pd.DataFrame:
  """The out-of-fold predictions of each split's kept seed (what the variant's calibration is fitted on)."""
  oof = pd.read_csv(workdir / variant / 'oof_predictions.csv', dtype={'id': str, 'label': str})
  kept = models.loc[(models['experiment'] == variant) & models['kept'], ['split', 'seed']]
  return oof.merge(kept, on=['split', 'seed'])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
  """sum over equal-width bins (b/bins, (b+1)/bins] of top-class confidence of n_b/n |accuracy_b - confidence_b|."""
  confidence, correct = probs.max(1), probs.argmax(1) == labels
  which = np.maximum(np.ceil(confidence * bins).astype(int) - 1, 0)
  return sum(np.mean(which == b) * abs(correct[which == b].mean() - confidence[which == b].mean())
             for b in range(bins) if (which == b).any())


def nll_minimiser(logits: np.ndarray, labels: np.ndarray) -> float:
  """The temperature T minimising the mean negative log-likelihood of softmax(logits / T)."""
  def nll(log_t):
    return -np.mean(special.log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels])
  found = optimize.minimize_scalar(nll, bounds=np.log(TEMPERATURE_RANGE), method='bounded', options=dict(xatol=1e-9))
  return float(np.exp(found.x))


def test_sweep_writes_tables_chart_and_fold_models(sweep_run):
  workdir, _, result = sweep_run
  for name in ('sweep_results.md', 'sweep_results.csv', 'sweep_differences.csv', 'sweep_models.csv',
               'sweep_results.png', 'report.md'):
    assert (workdir / name).is_file(), name
  models = pd.read_csv(workdir / 'sweep_models.csv')
  assert len(models) == 2 * 5 * 2  # variants x folds x seeds
  assert sorted(set(zip(models['split'], models['seed']))) == [(f, s) for f in range(5) for s in (0, 1)]
  assert models['n_val'].sum() == 2 * 2 * 72  # every labelled image validated once per variant and seed
  summary = pd.read_csv(workdir / 'sweep_results.csv').set_index('experiment')
  assert summary.index.tolist() == ['exp0', 'exp3'] and summary['models'].tolist() == [10, 10]
  # The Nadeau-Bengio ratio is n_val / n_train of the folds the members trained on (every fold holds out about a
  # fifth of the 72 images), and each interval is the corrected one at that ratio.
  assert (models['n_train'] + models['n_val'] == 72).all() and set(models['n_val']) <= {14, 15}
  for variant, rows in models.groupby('experiment'):
    ratio = float(np.mean(rows['n_val'] / rows['n_train']))
    assert summary.loc[variant, 'test_train_ratio'] == pytest.approx(ratio, abs=1e-12)
    for metric in ('accuracy', 'macro_f1', 'roc_auc'):
      ci = [summary.loc[variant, f'{metric}_{k}'] for k in ('mean', 'std', 'ci_low', 'ci_high')]
      assert ci == pytest.approx(corrected(rows[metric], ratio), abs=1e-12), (variant, metric)
  for variant in ('exp0', 'exp3'):
    record = json.loads((workdir / variant / 'experiment.json').read_text())
    rows = models[models['experiment'] == variant]
    # Each split keeps its best seed: the lowest validation loss (config.train.monitor) at its checkpoint.
    for split, seeds in rows.groupby('split'):
      assert seeds['kept'].sum() == 1 and seeds.loc[seeds['kept'], 'seed'].item() == \
          seeds.loc[seeds['loss'].idxmin(), 'seed'], (variant, split)
      meta = sidecar.read_metadata(workdir / variant / f'fold{split}')
      assert meta['config']['seed'] == seeds.loc[seeds['kept'], 'seed'].item()
    # Calibration figures, from their definitions on what they are fitted to: the kept seeds' out-of-fold
    # predictions (their log probabilities are the logits, up to a constant per example).
    kept = kept_predictions(workdir, variant, models)
    labels, probs = kept['label'].astype(int).to_numpy(), kept[['p_0', 'p_1']].to_numpy(np.float64)
    assert summary.loc[variant, 'ece_before'] == pytest.approx(expected_calibration_error(probs, labels, 15), abs=1e-6)
    temperature = nll_minimiser(np.log(probs), labels)
    assert summary.loc[variant, 'temperature'] == pytest.approx(temperature, rel=1e-4)
    threshold = best_threshold(special.softmax(np.log(probs) / temperature, axis=1)[:, 1], labels, 'macro_f1')
    assert summary.loc[variant, 'threshold'] == pytest.approx(threshold, abs=1e-5)
    # The parameter count is the kept model's; the time per model-epoch is the members' time over their epochs.
    params = load_trained(sidecar.stored_config(workdir / variant / 'fold0'), workdir / variant / 'fold0').state.params
    assert summary.loc[variant, 'num_params'] == sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    timing = record['timing']
    assert timing['model_epochs'] == rows['epochs_trained'].sum() and record['test_train_ratio'] == pytest.approx(
        summary.loc[variant, 'test_train_ratio'], abs=1e-15)
    assert summary.loc[variant, 'seconds_per_model_epoch'] == pytest.approx(
        timing['train_seconds'] / timing['model_epochs'], rel=1e-12)
    assert summary.loc[variant, 'train_seconds'] == pytest.approx(timing['train_seconds'], rel=1e-12)
  differences = pd.read_csv(workdir / 'sweep_differences.csv')
  assert differences['metric'].tolist() == ['accuracy', 'macro_f1', 'roc_auc'] and (differences['pairs'] == 10).all()
  exp0 = models[models['experiment'] == 'exp0'].set_index(['split', 'seed'])['accuracy']
  exp3 = models[models['experiment'] == 'exp3'].set_index(['split', 'seed'])['accuracy']
  assert differences.loc[0, 'mean_difference'] == pytest.approx((exp3 - exp0).mean())
  table = (workdir / 'sweep_results.md').read_text()
  assert '| variant | changes | models | accuracy | macro F1 | ROC AUC |' in table and 'model.batch_norm=True' in table
  assert '## Sweep' in (workdir / 'report.md').read_text()
  # Each fold's best seed is an ordinary workdir, with the calibration in its sidecar.
  for variant in ('exp0', 'exp3'):
    folds = sorted(p.name for p in (workdir / variant).iterdir() if (p / 'metadata.json').exists())
    assert folds == [f'fold{k}' for k in range(5)]
    assert len(models[(models['experiment'] == variant) & models['kept']]) == 5
    meta = sidecar.read_metadata(workdir / variant / 'fold3')
    assert meta['config']['data']['fold'] == 3
    assert meta['calibration']['temperature'] == summary.loc[variant, 'temperature']   # the variant's, in each
    assert meta['calibration']['threshold'] == summary.loc[variant, 'threshold']
    content.check_not_blank(workdir / variant / 'reliability.png')
  content.check_not_blank(workdir / 'sweep_results.png')
  assert 'exp3' in result.stdout


def test_a_kept_fold_model_scores_what_sweep_models_csv_says(sweep_run, monkeypatch):
  """The per-model figures behind every interval, recomputed: fold 3's kept model of exp3 restored from its
  workdir and scored with scikit-learn on that fold's validation split."""
  workdir, env, _ = sweep_run
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = load_config('configs/footprint.py:exp3,quick', **TINY_OVERRIDES, **{'data.fold': 3})
  trained = load_trained(config, workdir / 'exp3' / 'fold3')
  val = pipeline.load_dataset(DataSettings.from_config(config.data)).val
  pred = trained.probabilities(val.images, 64)
  models = pd.read_csv(workdir / 'sweep_models.csv')
  row = models[(models['experiment'] == 'exp3') & (models['split'] == 3) & models['kept']].iloc[0]
  assert row['n_val'] == len(val.labels)
  assert row['accuracy'] == pytest.approx(skm.accuracy_score(val.labels, pred.argmax(1)), abs=1e-6)
  assert row['macro_f1'] == pytest.approx(skm.f1_score(val.labels, pred.argmax(1), average='macro'), abs=1e-6)
  assert row['roc_auc'] == pytest.approx(skm.roc_auc_score(val.labels, pred[:, 1]), abs=1e-6)


def test_every_member_s_out_of_fold_predictions_give_its_row_of_sweep_models_csv(sweep_run, monkeypatch):
  """oof_predictions.csv holds each member's probabilities on its own validation fold: every labelled image once
  per seed, and each (split, seed)'s accuracy and ROC AUC recomputed from it equal sweep_models.csv's; the kept
  fold-3 model of exp3, restored, predicts the same probabilities."""
  workdir, env, _ = sweep_run
  models = pd.read_csv(workdir / 'sweep_models.csv')
  for variant in ('exp0', 'exp3'):
    oof = pd.read_csv(workdir / variant / 'oof_predictions.csv', dtype={'id': str, 'label': str})
    assert len(oof) == 2 * 72 and oof.groupby('seed')['row'].nunique().tolist() == [72, 72]
    assert np.allclose(oof[['p_0', 'p_1']].sum(axis=1), 1.0)
    for (split, seed), group in oof.groupby(['split', 'seed']):
      row = models[(models['experiment'] == variant) & (models['split'] == split) & (models['seed'] == seed)].iloc[0]
      labels = group['label'].astype(int).to_numpy()
      predicted = group[['p_0', 'p_1']].to_numpy().argmax(1)
      assert row['accuracy'] == pytest.approx(np.mean(predicted == labels))
      assert row['macro_f1'] == pytest.approx(skm.f1_score(labels, predicted, average='macro'))
      assert row['roc_auc'] == pytest.approx(skm.roc_auc_score(labels, group['p_1']))
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = load_config('configs/footprint.py:exp3,quick', **TINY_OVERRIDES, **{'data.fold': 3})
  val = pipeline.load_dataset(DataSettings.from_config(config.data)).val
  kept = models[(models['experiment'] == 'exp3') & (models['split'] == 3) & models['kept']].iloc[0]
  oof = pd.read_csv(workdir / 'exp3' / 'oof_predictions.csv', dtype={'id': str})
  mine = oof[(oof['split'] == 3) & (oof['seed'] == kept['seed'])].set_index('id').loc[list(map(str, val.ids))]
  restored = load_trained(config, workdir / 'exp3' / 'fold3').probabilities(val.images, 64)
  np.testing.assert_allclose(mine[['p_0', 'p_1']].to_numpy(), restored, atol=1e-5)


def test_relaunch_reuses_finished_variants_and_refuses_a_changed_config(sweep_run, monkeypatch):
  workdir, env, _ = sweep_run
  before = (workdir / 'exp0' / 'experiment.json').stat().st_mtime_ns
  result = launch('--config=configs/footprint_sweep.py:exp0,quick', f'--workdir={workdir}', '--mode=sweep', *TINY,
                  env=env)
  assert 'finished earlier' in result.stderr + result.stdout
  assert (workdir / 'exp0' / 'experiment.json').stat().st_mtime_ns == before
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  changed = load_config('configs/footprint_sweep.py:exp0,quick', **TINY_OVERRIDES, **{'train.learning_rate': 0.1})
  with pytest.raises(UserInputError, match=r'train.learning_rate: 0.001 -> 0.1'):
    run_sweep(changed, workdir)


def test_submit_averages_calibrated_fold_models_with_flip_tta(sweep_run, monkeypatch):
  workdir, env, _ = sweep_run
  folder = workdir / 'exp3'
  config_spec = '--config=configs/footprint.py:exp3,quick'
  launch(config_spec, f'--workdir={folder}', '--mode=submit', '--config.submit.average_folds=True',
         '--config.submit.tta_hflip=True', *TINY, env=env)
  submission = pd.read_csv(folder / 'submission.csv', dtype=str)
  probs = pd.read_csv(folder / 'submission_probabilities.csv')
  assert len(submission) == 16 and list(probs.columns) == ['filename', 'p_0', 'p_1']

  # The same numbers by hand: each fold model's logits on the image and its mirror, divided by the stored
  # temperature, softmaxed, averaged; class 1 where p_1 reaches the stored threshold.
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  config = load_config('configs/footprint.py:exp3,quick', **TINY_OVERRIDES)
  test = pipeline.decode_source(DataSettings.from_config(config.data), progress=False).test
  expected, thresholds = [], set()
  for fold in range(5):
    trained = load_trained(config, folder / f'fold{fold}')
    calibration = trained.metadata['calibration']
    thresholds.add(calibration['threshold'])
    for images in (test.images, test.images[:, :, ::-1, :]):
      expected.append(probabilities(trained.logits(np.ascontiguousarray(images), 64) / calibration['temperature'],
                                    'softmax'))
  expected = np.mean(expected, axis=0)
  order = {name: i for i, name in enumerate(test.ids)}
  rows = [order[f] for f in probs['filename']]
  np.testing.assert_allclose(probs[['p_0', 'p_1']].to_numpy(), expected[rows], atol=1e-5)
  (threshold,) = thresholds
  assert submission['SEX'].tolist() == [str(int(p >= threshold)) for p in expected[rows, 1]]
  report = (folder / 'report.md').read_text()
  assert 'mean probability of 5 fold models' in report and 'horizontally flipped' in report
  assert f'threshold {threshold:.3f}' in report


def test_repeated_seeds_of_any_config_on_its_holdout(tmp_path):
  """Seed 001's mean ± std over repeated runs: any config, no variants, the fixed holdout, three seeds."""
  config = load_config('configs/digits.py:quick', **{
      'data.image_size': (8, 8), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'train.epochs': 1,
      'sweep.folds': (-1,), 'sweep.seeds': (0, 1, 2), 'sweep.models_per_chunk': 3})
  summary = run_sweep(config, tmp_path)
  assert summary['experiment'].tolist() == ['base'] and summary['models'].tolist() == [3]
  models = pd.read_csv(tmp_path / 'sweep_models.csv')
  assert sorted(models['seed']) == [0, 1, 2] and (models['split'] == -1).all() and (models['n_val'] == 360).all()
  assert summary.loc[0, 'accuracy_std'] == pytest.approx(models['accuracy'].std())
  assert summary.loc[0, 'test_train_ratio'] == 0  # one fixed split: seed-to-seed intervals
  assert 'seed-to-seed variation only' in (tmp_path / 'sweep_results.md').read_text()
  calibration = json.loads((tmp_path / 'base' / 'calibration.json').read_text())
  assert calibration['threshold'] is None and calibration['crossfit_groups'] == 5  # 10 classes: no threshold
  assert (tmp_path / 'base' / 'holdout' / 'metadata.json').is_file()


def test_a_bad_variant_key_names_the_flag(tmp_path):
  config = load_config('configs/digits.py:quick', **{'sweep.variants': ('a: model.dropot=0.1',)})
  with pytest.raises(UserInputError, match=r"config.sweep.variants \(a\): config.model.dropot is not a key of model 'footprint_cnn' "
                                           r"\(did you mean dropout\?\)"):
    run_sweep(config, tmp_path)
  config = load_config('configs/digits.py:quick', **{'sweep.variants': ('b: train.lerning_rate=0.1',)})
  with pytest.raises(UserInputError, match=r"config.sweep.variants \(b\): 'train.lerning_rate' is not a config key"):
    run_sweep(config, tmp_path)
  assert not list(tmp_path.iterdir())


def test_calibrate_mode_on_a_single_run(sweep_run, tmp_path, monkeypatch):
  """A fold model is an ordinary workdir: --mode calibrate fits on its own validation split."""
  workdir, env, _ = sweep_run
  monkeypatch.setenv('FPCLASS_CACHE', env['FPCLASS_CACHE'])
  run = tmp_path / 'fold1'
  shutil.copytree(workdir / 'exp0' / 'fold1', run)
  config = load_config('configs/footprint.py:exp0,quick', **TINY_OVERRIDES)
  result = calibrate(config, run)
  stored = sidecar.read_metadata(run)['calibration']
  assert stored['fitted_on'] == 'validation predictions of this run (n=15)' and stored == result
  assert stored['temperature'] != sidecar.read_metadata(workdir / 'exp0' / 'fold1')['calibration']['temperature']
  assert '## Calibration' in (run / 'report.md').read_text() and (run / 'reliability.png').is_file()


@pytest.mark.parametrize('sweep_spec, expected', [
    ('configs/footprint_sweep.py:transfer,quick',
     {'cnn': 'configs/footprint.py:exp0,quick', 'resnet18': 'configs/footprint.py:resnet18,quick',
      'alexnet': 'configs/footprint.py:alexnet,quick', 'efficientnet_b0': 'configs/footprint.py:efficientnet_b0,quick'}),
    ('configs/climbing.py:compare,quick', {b: f'configs/climbing.py:{b},quick' for b in
                                           ('mobilenetv3large', 'efficientnetb2', 'resnet50', 'vgg16')}),
])
def test_a_seed_comparison_sweep_trains_each_recipe_whole(sweep_spec, expected):
  """Each variant of a seed's comparison is the whole recipe its own config file gives (model, phases, early
  stopping, learning rate), not just another model name."""
  variants = build_variants(load_config(sweep_spec))
  assert [v.name for v in variants] == list(expected)
  for variant in variants:
    recipe = load_config(expected[variant.name])
    assert config_changes(recipe, variant.config) == {} == config_changes(variant.config, recipe), variant.name


def test_the_freeze_till_sweep_varies_freeze_till_alone():
  variants = build_variants(load_config('configs/cats_dogs.py:freeze_sweep,quick'))
  solo = load_config('configs/cats_dogs.py:vgg16,quick', **{'explain.after_training': False})
  for variant, n in zip(variants, (18, 14, 10, 6)):
    assert variant.name == f'freeze{n}' and config_changes(solo, variant.config) == {'model.freeze_till': n}


def test_a_streamed_sweep_equals_the_in_memory_one_and_vmap_names_its_key(tmp_path):
  """Over the device budget a sweep's members stream their batches from the decode cache (the loop form runs
  the solo run's streamed feed, each member with its own fold's class weights): the same models to the bit. The
  vmap form cannot stream, and says so."""
  base = {'data.image_size': (8, 8), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'train.epochs': 2,
          'sweep.folds': (0, 1), 'sweep.seeds': (0,), 'sweep.model_axis': 'loop', 'sweep.models_per_chunk': 2,
          'train.class_weights': 'auto'}
  run_sweep(load_config('configs/digits.py:quick', **base, **{'data.device_memory_budget': 1}), tmp_path / 'streamed')
  run_sweep(load_config('configs/digits.py:quick', **base), tmp_path / 'in-memory')
  streamed, resident = (pd.read_csv(tmp_path / d / 'sweep_models.csv').drop(columns='experiment')
                        for d in ('streamed', 'in-memory'))
  pd.testing.assert_frame_equal(streamed, resident, check_exact=True)
  vmap = load_config('configs/digits.py:quick', **{**base, 'sweep.model_axis': 'vmap', 'data.device_memory_budget': 1})
  with pytest.raises(UserInputError, match=r"config.sweep.model_axis='vmap': the images exceed "
                                           r"config.data.device_memory_budget"):
    run_sweep(vmap, tmp_path / 'vmap')
