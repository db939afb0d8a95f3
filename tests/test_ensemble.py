"""--mode ensemble: Caruana selection with replacement on hand-made probabilities (a planted best mix, a mix that
needs one candidate twice, cross-fitted against in-sample scoring on noise), the soup's weight average, reading
an auto run's trials, and one tiny sweep through launch.py whose ensemble and soup workdirs submit and predict,
and whose models, reweighted unequally, are served (a real uvicorn server) and exported as one ONNX graph, each
answering the weighted mix that --mode predict writes; --mode calibrate on an ensemble workdir, fitted on its
out-of-fold mix and applied to the mix by predict, submit and serve."""
import base64
import dataclasses
import io
import json
import os
import pathlib
import types

import httpx
import jax
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from PIL import Image

from fpclass.analysis import calibration, metric_registry, multilabel_calibration
from fpclass.analysis.calibration import Decision
from fpclass.config.inputs import DecodeSettings
from fpclass.config.outputs import OodSettings, ServeSettings
from fpclass.config.run import RunSettings
from fpclass.config.search import EnsembleSettings
from fpclass.config.settings import ConfigError
from fpclass.data.decode import decode_files
from fpclass.deploy import ood
from fpclass.deploy import ood_scores as ood_math
from fpclass.ensemble import caruana, selection, soup
from fpclass.errors import UserInputError
from fpclass.infer import ensemble
from fpclass.infer.calibrate_models import calibrate
from fpclass.infer.inference import load_trained
from fpclass.models.heads import as_logits, head_of, probabilities
from fpclass.modes import calibrate as calibrate_mode
from fpclass.modes import export as export_mode
from fpclass.serve import app as serve_app
from fpclass.serve import server as serve_server
from fpclass.serve import service as serve_service
from fpclass.train import sidecar
from tests.conftest import launch

SINGLE, MULTI = metric_registry.SINGLE, metric_registry.MULTI
ACCURACY = metric_registry.REGISTRY['accuracy']


def binary(p1) -> np.ndarray:
  """(N, 2) probabilities from the probability of class 1."""
  p1 = np.asarray(p1, np.float64)
  return np.stack([1 - p1, p1], axis=1)


def test_selection_recovers_a_planted_best_combination():
  """C is right on rows 0-69, D on rows 40-99, their mean on every row; four noise candidates are right on
  55-65%. The selection must be exactly C + D, and stop at its perfect score although it runs 25 rounds."""
  rng = np.random.default_rng(0)
  labels = np.ones(100, np.int64)
  rows = np.arange(100)
  c = binary(np.where(rows < 70, 0.95, 0.4))
  d = binary(np.where(rows >= 40, 0.95, 0.4))
  noise = [binary(np.where(rng.random(100) < q, 0.6, 0.45)) for q in (0.55, 0.6, 0.62, 0.65)]
  probs = np.stack([noise[0], noise[1], c, noise[2], d, noise[3]])
  chosen = caruana.caruana(probs, labels, SINGLE, ACCURACY, max_size=25)
  assert chosen.counts.tolist() == [0, 0, 1, 0, 1, 0]
  assert chosen.rounds == 2 and len(chosen.path) == 25 and chosen.scores[1] == 1.0
  assert caruana.score(ACCURACY, labels, chosen.mix(probs), SINGLE) == 1.0


def test_selection_picks_with_replacement_when_a_candidate_twice_is_best():
  """2/3 A + 1/3 B is right on all three rows; A alone on two, A + B half and half on one. Only a selection
  that may pick A again in round 2 reaches the mix (without replacement it would stop at A)."""
  labels = np.ones(3, np.int64)
  a, b = binary([0.4, 0.8, 0.8]), binary([0.9, 0.1, 0.1])
  chosen = caruana.caruana(np.stack([a, b]), labels, SINGLE, ACCURACY, max_size=5)
  assert chosen.path[:3] == [0, 0, 1]
  assert chosen.counts.tolist() == [2, 1] and chosen.weights.tolist() == pytest.approx([2 / 3, 1 / 3])
  assert chosen.scores[chosen.rounds - 1] == 1.0


def test_a_loss_is_minimised_and_a_multilabel_task_uses_map():
  labels = np.array([0, 1, 1, 0])
  good, bad = binary([0.2, 0.8, 0.7, 0.3]), binary([0.6, 0.4, 0.5, 0.5])
  loss = metric_registry.REGISTRY['loss']
  assert caruana.caruana(np.stack([bad, good]), labels, SINGLE, loss, max_size=3).counts.tolist() == [0, 1]
  assert selection.resolve_metric('', MULTI).name == 'map' and selection.resolve_metric('', SINGLE).name == 'accuracy'
  with pytest.raises(UserInputError, match=r"config\.ensemble\.metric='map'"):
    selection.resolve_metric('map', SINGLE)
  tags = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
  first = np.array([[0.9, 0.4], [0.2, 0.1], [0.8, 0.2], [0.1, 0.3]])   # ranks label 0 right, label 1 wrong
  second = np.array([[0.5, 0.1], [0.5, 0.9], [0.5, 0.8], [0.5, 0.2]])  # ranks label 1 right, label 0 not at all
  chosen = caruana.caruana(np.stack([first, second]), tags, MULTI, metric_registry.REGISTRY['map'])
  assert chosen.counts.tolist() == [1, 1]


def test_the_cross_fitted_score_is_honest_where_the_in_sample_one_overfits():
  """Forty candidates of pure noise and random labels: choosing the mix on the predictions it is scored on finds
  a lucky one, well above chance; fitted on four folds and scored on the fifth, it is at chance."""
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 200)
  probs = np.stack([binary(rng.random(200)) for _ in range(40)])
  groups = np.arange(200) % 5
  in_sample = caruana.score(ACCURACY, labels, caruana.caruana(probs, labels, SINGLE, ACCURACY).mix(probs), SINGLE)
  crossfit = caruana.cross_fit(probs, labels, groups, SINGLE, ACCURACY)
  honest = crossfit.interval('ensemble')
  assert in_sample > 0.62 and abs(honest.mean - 0.5) < 0.06 and in_sample - honest.mean > 0.08
  assert honest.low < 0.5 < honest.high and crossfit.ratio == 0.25 and len(crossfit.rows) == 5
  assert crossfit.interval('difference').low < 0 < crossfit.interval('difference').high
  # Each fold's rows are predicted by a selection that never saw them.
  for g in range(5):
    fit = groups != g
    mine = caruana.caruana(probs[:, fit], labels[fit], SINGLE, ACCURACY).mix(probs[:, ~fit])
    assert np.allclose(crossfit.ensemble[~fit], mine)


def test_a_soup_is_the_hand_computed_average_of_its_ingredients():
  trees = [dict(params={'dense': {'kernel': np.full((2, 3), v, np.float32), 'bias': np.arange(3, dtype=np.float32) * v}},
                batch_stats={'bn': {'mean': np.array([v, 2 * v], np.float32)}}) for v in (1.0, 2.0, 6.0)]
  mean = soup.average_variables(trees)
  assert np.array_equal(mean['params']['dense']['kernel'], np.full((2, 3), 3.0, np.float32))
  assert np.array_equal(mean['params']['dense']['bias'], np.array([0.0, 3.0, 6.0], np.float32))
  assert np.array_equal(mean['batch_stats']['bn']['mean'], np.array([3.0, 6.0], np.float32))
  assert mean['params']['dense']['kernel'].dtype == np.float32
  # Greedy: each ingredient kept only if the soup strictly improves.
  value = {(0,): 0.5, (0, 1): 0.5, (0, 2): 0.7, (0, 2, 3): 0.9}
  assert soup.greedy([0, 1, 2, 3], lambda kept: value[tuple(kept)]) == [0, 2, 3]


class _Fixed:
  """A restored model's prediction interface that answers fixed probabilities."""

  def __init__(self, probs):
    self.probs, self.task, self.class_names = probs, types.SimpleNamespace(head='softmax'), ('0', '1')

  def logits(self, images, batch_size, chunk=None, tta_settings=None, first_batch=0):
    return np.log(self.probs)


def test_an_ensemble_workdir_averages_its_models_with_their_weights():
  a, b = binary([0.9, 0.2]), binary([0.3, 0.6])
  members = [ensemble.MemberModel(pathlib.Path(n), None, {}, _Fixed(p), w) for n, p, w in (('a', a, 0.75), ('b', b, 0.25))]
  images = np.zeros((2, 1, 1, 1), np.uint8)
  assert np.allclose(ensemble.predict_probabilities(members, images, 2, calibrated=False), 0.75 * a + 0.25 * b)
  assert np.allclose(probabilities(ensemble.WeightedEnsemble(members, {}).logits(images, 2), 'softmax'),
                     0.75 * a + 0.25 * b)
  plain = [dataclasses.replace(m, weight=1.0) for m in members]   # an ordinary folder's fold models: the mean
  assert np.allclose(ensemble.predict_probabilities(plain, images, 2, calibrated=False), (a + b) / 2)
  assert caruana.crossfit_groups(np.full(10, -1)).tolist() == [g % 5 for g in np.random.default_rng(0).permutation(10)]


def test_settings_refuse_a_path_as_the_output_folder():
  with pytest.raises(ConfigError, match=r'config\.ensemble\.output'):
    EnsembleSettings.from_config({'output': '../elsewhere'})
  with pytest.raises(ConfigError, match=r'config\.ensemble\.max_size=0'):
    EnsembleSettings.from_config({'max_size': 0})


def _fake_trial(folder, probabilities, labels, folds):
  """An auto trial's layout: one member workdir per fold (rows numbered within each member's split)."""
  frames = []
  for k in sorted(set(folds)):
    member = folder / f'fold{k}-seed0'
    member.mkdir(parents=True)
    (member / 'metadata.json').write_text(json.dumps({'num_params': 10, 'config': {'data': {'fold': int(k)}}}))
    index = np.flatnonzero(folds == k)
    frames.append(pd.DataFrame({'id': [f'img{i}' for i in index], 'row': np.arange(len(index)), 'split': k,
                                'seed': 0, 'label': [str(labels[i]) for i in index],
                                'p_0': probabilities[index, 0], 'p_1': probabilities[index, 1]}))
  pd.concat(frames[::-1]).to_csv(folder / 'oof_predictions.csv', index=False)


def test_an_auto_run_s_trials_are_matched_by_example_id(tmp_path):
  labels, folds = np.array([0, 1, 1, 0, 1, 0]), np.array([0, 0, 1, 1, 2, 2])
  first, second = binary([0.1, 0.9, 0.8, 0.4, 0.7, 0.2]), binary([0.3, 0.6, 0.4, 0.1, 0.9, 0.5])
  _fake_trial(tmp_path / 'trials' / 'trial-0000', first, labels, folds)
  _fake_trial(tmp_path / 'trials' / 'trial-0001', second, labels, folds)
  (tmp_path / 'trials' / 'trial-0002').mkdir()   # pruned before its predictions were gathered
  pool = selection.read_pool(tmp_path)
  assert [c.name for c in pool.candidates] == ['trial-0000', 'trial-0001']
  order = [int(i[3:]) for i in pool.ids]
  assert np.allclose(pool.candidates[1].probabilities, second[order]) and pool.folds.tolist() == folds[order].tolist()
  assert pool.labels.tolist() == labels[order].tolist() and len(pool.candidates[0].models) == 3
  with pytest.raises(UserInputError, match=r"config\.ensemble\.candidates: \['trial-9'\]"):
    selection.read_pool(tmp_path, ('trial-9',))


TINY = ['--config=configs/footprint_sweep.py:exp0,exp1,exp5,quick', '--config.data.image_size=(24,16)',
        '--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)', '--config.sweep.models_per_chunk=10',
        '--config.sweep.seeds=(0,)', '--config.data.num_folds=2']


@pytest.fixture(scope='module')
def ensembled(tmp_path_factory):
  """A 3-variant x 2-fold tiny sweep (exp1 has another model, so it never joins exp0 and exp5 in a soup), then
  --mode ensemble on it by log loss. Two folds are the fewest that cross-fit (each fold's selection scored on the
  other), and every launch below restores each fold model of the ensemble."""
  workdir = tmp_path_factory.mktemp('ensemble-sweep')
  env = {'FPCLASS_CACHE': str(tmp_path_factory.mktemp('ensemble-cache'))}
  launch(*TINY, f'--workdir={workdir}', '--mode=sweep', env=env)
  result = launch(*TINY, f'--workdir={workdir}', '--mode=ensemble', '--config.ensemble.metric=loss', env=env)
  return workdir, env, result


def test_the_ensemble_workdir_lists_its_members_and_scores_them_cross_fitted(ensembled):
  workdir, _, result = ensembled
  out = workdir / 'ensemble'
  members = sidecar.read_metadata(out)['ensemble']['members']
  assert sum(m['weight'] for m in members) == pytest.approx(1.0)
  assert all((out / m['folder'] / name / 'metadata.json').is_file() for m in members for name in m['models'])
  record = json.loads((out / 'ensemble.json').read_text())
  assert [r['model'] for r in record['table']] == ['best single', 'ensemble', 'soup']
  assert record['metric'] == 'loss' and len(record['crossfit']) == 2 and record['candidates'] == ['exp0', 'exp1', 'exp5']
  # The cross-fitted figures, recomputed from the ensemble's out-of-fold predictions fold by fold.
  predictions = pd.read_csv(out / 'ensemble_predictions.csv', dtype={'label': str})
  labels, probs, _ = selection.oof.labels_and_probabilities(predictions)
  loss = metric_registry.REGISTRY['loss']
  for row in record['crossfit']:
    held = predictions['split'].to_numpy() == row['fold']
    assert row['ensemble'] == pytest.approx(loss(labels[held], probs[held], SINGLE))
  assert '| ensemble |' in (out / 'ensemble.md').read_text() and '## Ensemble' in (out / 'report.md').read_text()
  assert 'submit or predict with' in result.stdout


def test_the_ensemble_submits_and_predicts_its_weighted_members_mean(ensembled):
  workdir, env, _ = ensembled
  out = workdir / 'ensemble'
  test_folder = next(pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/test'))
  launch(f'--workdir={out}', '--mode=submit', env=env)
  launch(f'--workdir={out}', '--mode=predict', f'--config.predict.inputs={test_folder}', env=env)
  submitted = pd.read_csv(out / 'submission_probabilities.csv').set_index('filename')
  predicted = pd.read_csv(out / 'predictions.csv')
  images, ok, _ = decode_files(list(predicted['path']), DecodeSettings.from_config(sidecar.stored_config(out).data),
                               split='test', workers=1, progress=False)
  assert ok.all() and len(predicted) == 16
  expected = 0
  for member in sidecar.read_metadata(out)['ensemble']['members']:
    for name in member['models']:
      path = out / member['folder'] / name
      model = load_trained(sidecar.stored_config(path), path)
      expected = expected + member['weight'] / len(member['models']) * model.probabilities(np.asarray(images), 16)
  assert np.allclose(predicted[['p_0', 'p_1']].to_numpy(), expected, atol=1e-5)
  names = [pathlib.Path(p).name for p in predicted['path']]
  assert np.allclose(submitted.loc[names, ['p_0', 'p_1']].to_numpy(), expected, atol=1e-5)
  with pytest.raises(UserInputError, match='ensemble workdir'):
    calibrate(sidecar.stored_config(out), out)   # it would rewrite the members' own sidecars
  with pytest.raises(UserInputError, match='ensemble workdir'):
    load_trained(sidecar.stored_config(out), out)   # evaluate and explain: one model each


def test_each_fold_soup_is_the_average_of_its_ingredients_and_submits(ensembled):
  workdir, env, _ = ensembled
  folder = workdir / 'ensemble' / 'soup'
  assert [m['models'] for m in sidecar.read_metadata(folder)['ensemble']['members']] == [['fold0', 'fold1']]
  for k in range(2):
    fold = folder / f'fold{k}'
    meta = sidecar.read_metadata(fold)
    kept = [fold / p for p in meta['soup']['ingredients']]
    assert not any('exp1' in str(p) for p in kept) or len(kept) == 1   # exp1's model keys differ from the others'
    souped = load_trained(sidecar.stored_config(fold), fold)
    ingredients = [load_trained(sidecar.stored_config(p), p) for p in kept]
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(souped.state.params)]
    by_hand = [np.mean([np.asarray(x) for x in xs], axis=0)
               for xs in zip(*[jax.tree_util.tree_leaves(t.state.params) for t in ingredients])]
    assert all(np.allclose(a, b, atol=1e-7) for a, b in zip(leaves, by_hand))
  launch(f'--workdir={folder}', '--mode=submit', env=env)
  assert len(pd.read_csv(folder / 'submission.csv')) == 16
  assert ensemble.ensemble_record(folder)['kind'] == 'soup'


def test_the_device_mix_equals_the_host_mix_for_every_head():
  """The one program serve runs and export writes computes each head's probabilities as the host does."""
  logits = np.random.default_rng(2).normal(0, 3, (6, 4)).astype(np.float32)
  for head, columns in (('softmax', 4), ('multilabel', 4), ('sigmoid', 1)):
    assert np.allclose(probabilities(jax.numpy.asarray(logits[:, :columns]), head, xp=jax.numpy),
                       probabilities(logits[:, :columns], head), atol=1e-6), head
  parts = [np.full((2, 2), 0.2), np.full((2, 2), 0.8)]
  assert np.allclose(ensemble.weighted_mean(parts, [0.25, 0.5]), np.full((2, 2), 0.6))


# Unequal shares: exp0's fold0 and fold1 at 0.35 each, exp1's fold0 (another model) at 0.3; an equal mean (1/3
# each) or a member's weight not split over its models (0.7, 0.7, 0.3) gives other probabilities.
REWEIGHTED = [{'folder': '../exp0', 'weight': 0.7, 'models': ['fold0', 'fold1']},
              {'folder': '../exp1', 'weight': 0.3, 'models': ['fold0']}]


SERVE_SETTINGS = ServeSettings(warm_batch_sizes=(1, 8), max_batch=8)   # two programs to compile, not six


@pytest.fixture(scope='module')
def reweighted(ensembled):
  """(an ensemble workdir beside --mode ensemble's, of three fold models of two variants at REWEIGHTED's weights,
  the 16 test footprints, their decoded images, the hand-computed weighted mix of the models' probabilities)."""
  workdir, env, _ = ensembled
  out = workdir / 'reweighted'
  metadata = sidecar.read_metadata(workdir / 'ensemble')
  metadata['ensemble'] = dict(metadata['ensemble'], members=REWEIGHTED)
  sidecar.write_metadata(out, metadata)
  paths = sorted(next(pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/test')).glob('*.png'))
  images, ok, _ = decode_files(paths, DecodeSettings.from_config(sidecar.stored_config(out).data), split='test',
                               workers=1, progress=False)
  assert ok.all() and len(paths) == 16
  images = np.asarray(images)
  shares, expected, equal = [], 0, 0
  for member in REWEIGHTED:
    for name in member['models']:
      path = out / member['folder'] / name
      probs = load_trained(sidecar.stored_config(path), path).probabilities(images, 16)
      shares.append(member['weight'] / len(member['models']))
      expected, equal = expected + shares[-1] * probs, equal + probs / 3
  assert shares == pytest.approx([0.35, 0.35, 0.3])
  assert np.abs(expected - equal).max() > 1e-3   # the weights change the answer: a mix ignoring them fails below
  return out, paths, images, expected


def test_the_ensemble_is_served_answering_the_weighted_mix_that_predict_writes(reweighted, ensembled):
  out, paths, images, expected = reweighted
  _, env, _ = ensembled
  launch(f'--workdir={out}', '--mode=predict', f'--config.predict.inputs={paths[0].parent}', env=env)
  predicted = pd.read_csv(out / 'predictions.csv').set_index('path').loc[[str(p) for p in paths]]
  assert np.allclose(predicted[['p_0', 'p_1']].to_numpy(), expected, atol=1e-5)

  service = serve_service.load_service(sidecar.stored_config(out), out, SERVE_SETTINGS)
  with serve_server.BackgroundServer(serve_app.create_app(service)) as server:
    files = [('file', (p.name, p.read_bytes(), 'image/png')) for p in paths[:8]]
    body = httpx.post(server.url + 'predict', files=files, timeout=60).json()
    single = httpx.post(server.url + 'predict', files=files[8 - 1:], timeout=60).json()   # another batch size
    meta = httpx.get(server.url + 'metadata').json()
    explain = httpx.post(server.url + 'explain', files=files[:1], timeout=60)
    health = httpx.get(server.url + 'healthz')
  served = np.array([[r['probabilities']['0'], r['probabilities']['1']] for r in body['predictions']])
  assert [r['file'] for r in body['predictions']] == [p.name for p in paths[:8]]
  assert np.allclose(served, predicted[['p_0', 'p_1']].to_numpy()[:8], atol=1e-5)
  assert [r['class'] for r in body['predictions']] == list(predicted['predicted'].astype(str)[:8])
  assert [single['probabilities']['0'], single['probabilities']['1']] == pytest.approx(served[7], abs=1e-6)
  # /metadata lists the members, their weights and each model's share; Grad-CAM is refused with a 4xx.
  assert meta['model'] == 'ensemble' and body['model'] == 'ensemble' and meta['explain'] is False
  assert meta['ensemble']['members'] == REWEIGHTED
  assert [m['weight'] for m in meta['ensemble']['models']] == pytest.approx([0.35, 0.35, 0.3])
  assert [m['path'] for m in meta['ensemble']['models']] == ['../exp0/fold0', '../exp0/fold1', '../exp1/fold0']
  assert explain.status_code == 404 and 'Grad-CAM explains one model' in explain.json()['detail']
  assert health.status_code == 200 and health.json()['status'] == 'ok'
  assert 'an ensemble of 3 models (../exp0 x0.70, ../exp1 x0.30)' in serve_service.startup_summary(service)['what']


@pytest.mark.filterwarnings('ignore:jax.core.DropVar is deprecated:DeprecationWarning')   # jax2onnx's, not ours
def test_the_ensemble_exports_as_one_onnx_graph_of_its_weighted_mix(reweighted):
  out, _, images, expected = reweighted
  written = export_mode.export(sidecar.stored_config(out), out)
  assert sorted(p.name for p in (out / 'export').iterdir()) == ['model.jax_export', 'model.json', 'model.onnx']
  model = onnx.load(str(written['onnx']))   # one file, every member's weights inside (no external data)
  assert [o.name for o in model.graph.output] == ['probabilities', 'ood_score'] and len(model.graph.input) == 1
  assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
  session = onnxruntime.InferenceSession(str(written['onnx']), providers=['CPUExecutionProvider'])
  got, score = session.run(['probabilities', 'ood_score'], {'images': images})
  assert got.shape == (16, 2) and np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
  # The OOD score (config.ood): the weighted mean of each model's score, standardised by its held-out scores,
  # recomputed on the host from each model's stored fit.
  models = ensemble.load_model(sidecar.stored_config(out), out).members
  fits = [ood.load(m.path / ood.FILE, 'softmax') for m in models]
  host = sum(m.weight * (ood_math.scores(f.statistics, *ood.outputs(m.trained, images, 16), images=images) - f.center)
                        / f.scale
             for m, f in zip(models, fits)) / sum(m.weight for m in models)
  np.testing.assert_allclose(score, host, rtol=1e-4, atol=1e-4)
  assert json.loads(written['description'].read_text())['ood']['score'] == OodSettings().score
  hlo = np.asarray(jax.export.deserialize(bytearray(written['stablehlo'].read_bytes())).call(images)[0])
  assert np.abs(hlo - expected).max() <= 1e-5
  description = json.loads(written['description'].read_text())
  assert description['model'] == 'ensemble' and description['output']['name'] == 'probabilities'
  assert description['ensemble']['members'] == REWEIGHTED
  properties = {p.key: p.value for p in model.metadata_props}
  assert json.loads(properties['ensemble'])['members'] == REWEIGHTED


def test_an_ensemble_of_models_that_decode_differently_is_refused(ensembled, tmp_path):
  workdir, _, _ = ensembled
  metadata = sidecar.read_metadata(workdir / 'ensemble')
  metadata['config']['data']['image_size'] = [32, 16]   # its models were trained on 24x16 images
  out = workdir / 'wrong-input'
  sidecar.write_metadata(out, metadata)
  with pytest.raises(UserInputError, match=r'fold0: decodes its images as 24x16x1 \(stretch\), the ensemble in .* '
                                           r'as 32x16x1 \(stretch\)'):
    ensemble.load_model(sidecar.stored_config(out), out)


@pytest.mark.filterwarnings('ignore:jax.core.DropVar is deprecated:DeprecationWarning')
def test_a_multilabel_ensemble_is_served_and_exported_with_its_own_thresholds(trained_multilabel, tmp_path):
  """The quick multi-label run as an ensemble workdir with per-label thresholds of its own (as --mode ensemble
  stores those it fits on the mix): the server's labels are the classes at or above them, not at 0.5, and the
  exported graph's probabilities are the run's sigmoid probabilities, its model.json those thresholds."""
  run = trained_multilabel[0]
  out = tmp_path / 'ensemble'
  metadata = sidecar.read_metadata(run)
  names = metadata['class_names']
  height, width = metadata['image_size']
  images = np.random.default_rng(5).integers(0, 256, (8, height, width, metadata['channels']), np.uint8)
  probs = load_trained(sidecar.stored_config(run), run).probabilities(images, 8)
  middle = np.sort(probs, axis=0)[3:5]
  assert (middle[1] - middle[0]).min() > 1e-4   # no probability within float noise of its threshold
  thresholds = dict(zip(names, map(float, middle.mean(axis=0))))
  expected = probs >= np.array(list(thresholds.values()))
  assert (expected != (probs >= 0.5)).any()   # a server deciding at 0.5 fails below
  metadata.update(model='ensemble', calibration={'thresholds': thresholds},
                  ensemble={'kind': 'caruana', 'metric': 'map',
                            'members': [{'folder': os.path.relpath(run.parent, out), 'weight': 1.0,
                                         'models': [run.name]}]})
  sidecar.write_metadata(out, metadata)
  # Not what this test is about: the OOD score (fitted twice, by the server in memory and by the export; an
  # ensemble's is checked by test_the_ensemble_exports_as_one_onnx_graph_of_its_weighted_mix) and the StableHLO
  # artefact (the ONNX graph is what is checked here).
  config = sidecar.stored_config(out)
  config.ood.enabled = False
  config.export.formats = ('onnx',)

  service = serve_service.load_service(config, out, SERVE_SETTINGS)
  pngs = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format='PNG')
    pngs.append(base64.b64encode(buffer.getvalue()).decode())
  with serve_server.BackgroundServer(serve_app.create_app(service)) as server:
    body = httpx.post(server.url + 'predict', json={'images': pngs}, timeout=60).json()
  served = np.array([[r['probabilities'][c] for c in names] for r in body['predictions']])
  assert np.abs(served - probs).max() <= 1e-5 and body['thresholds'] == pytest.approx(thresholds)
  assert [r['labels'] for r in body['predictions']] == [[c for c, y in zip(names, row) if y] for row in expected]

  written = export_mode.export(config, out)
  session = onnxruntime.InferenceSession(str(written['onnx']), providers=['CPUExecutionProvider'])
  assert np.abs(session.run(['probabilities'], {'images': images})[0] - probs).max() <= 1e-5
  calibration = json.loads(written['description'].read_text())['calibration']
  assert calibration['thresholds'] == pytest.approx(thresholds) and '--mode ensemble' in calibration['thresholds_source']


def test_the_sweep_records_its_config_so_ensemble_needs_only_the_workdir(ensembled):
  """--mode ensemble --workdir <sweep> with no --config takes the sweep's config from its workdir.json and
  selects what the launch with --config selected."""
  workdir, env, _ = ensembled
  record = json.loads((workdir / 'workdir.json').read_text())
  assert record['kind'] == 'sweep' and record['config']['data']['num_folds'] == 2
  launch(f'--workdir={workdir}', '--mode=ensemble', '--config.ensemble.metric=loss', '--config.ensemble.soup=False',
         '--config.ensemble.output=again', env=env)
  first, again = (json.loads((workdir / out / 'ensemble.json').read_text()) for out in ('ensemble', 'again'))
  assert again['candidates'] == first['candidates'] == ['exp0', 'exp1', 'exp5']
  assert again['weights'] == first['weights'] and again['crossfit'] == first['crossfit']


# --mode calibrate on an ensemble workdir: fitted on the mix's out-of-fold probabilities, stored as the ensemble's.

def _ensemble_copy(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """An ensemble workdir's metadata.json (and ensemble_predictions.csv, if any) at `out`, beside `source`, so its
  members resolve alike and calibrating it leaves the workdir the other tests read as it was."""
  out.mkdir()
  for name in ('metadata.json', 'ensemble_predictions.csv'):
    if (source / name).is_file():
      (out / name).write_bytes((source / name).read_bytes())
  return out


def _mix_temperature(probs, labels, head) -> float:
  """The temperature calibration's own function fits on the mix's logits."""
  return calibration.fit_temperature(as_logits(probs, head), labels, head)


def test_calibrate_fits_an_ensemble_on_its_cross_fitted_mix_and_predict_and_submit_apply_it(ensembled):
  """Through launch.py without --config: the temperature is the NLL minimiser on ensemble_predictions.csv's logits,
  the threshold the macro-F1 maximiser after it, stored in the ensemble's metadata.json (the members' untouched),
  with the report; predict and submit then answer the mix with that temperature applied after the averaging."""
  workdir, env, _ = ensembled
  out = _ensemble_copy(workdir / 'ensemble', workdir / 'calibrated')
  record = sidecar.read_metadata(out)['ensemble']
  models = [out / m['folder'] / name for m in record['members'] for name in m['models']]
  sidecars = [(p / 'metadata.json').read_bytes() for p in models]
  launch(f'--workdir={out}', '--mode=calibrate', env=env)
  stored = sidecar.read_metadata(out)['calibration']
  labels, probs, _ = selection.oof.labels_and_probabilities(
      pd.read_csv(out / 'ensemble_predictions.csv', dtype={'id': str, 'label': str}))
  head = head_of(sidecar.stored_settings(out))
  temperature = _mix_temperature(probs, labels, head)
  assert stored['temperature'] == pytest.approx(temperature, rel=1e-9) and abs(temperature - 1) > 0.05
  calibrated_oof = calibration.scaled_probabilities(as_logits(probs, head), head, temperature)
  assert stored['threshold'] == calibration.tune_threshold(calibrated_oof[:, 1], labels, 'macro_f1')[0]
  assert stored['ece_before'] == pytest.approx(calibration.expected_calibration_error(probs, labels, 15))
  assert json.loads((out / 'calibration.json').read_text()) == stored and (out / 'reliability.png').is_file()
  section = (out / 'report.md').read_text()
  assert 'Fitted on the cross-fitted out-of-fold probabilities of the ensemble (n=72; ensemble_predictions.csv' in section
  assert 'applied after the models are averaged' in section
  assert [(p / 'metadata.json').read_bytes() for p in models] == sidecars

  test_folder = next(pathlib.Path(env['FPCLASS_CACHE']).glob('synthetic_footprints/*/test'))
  launch(f'--workdir={out}', '--mode=predict', f'--config.predict.inputs={test_folder}', env=env)
  launch(f'--workdir={out}', '--mode=submit', env=env)
  predicted = pd.read_csv(out / 'predictions.csv')
  images, ok, _ = decode_files(list(predicted['path']), DecodeSettings.from_config(sidecar.stored_config(out).data),
                               split='test', workers=1, progress=False)
  mix = 0
  for member in record['members']:
    for name in member['models']:
      path = out / member['folder'] / name
      mix = mix + member['weight'] / len(member['models']) * load_trained(sidecar.stored_config(path), path
                                                                           ).probabilities(np.asarray(images), 16)
  expected = calibration.scaled_probabilities(as_logits(mix, head), head, temperature)
  assert ok.all() and np.abs(expected - mix).max() > 1e-3   # a reader ignoring the temperature fails below
  assert np.allclose(predicted[['p_0', 'p_1']].to_numpy(), expected, atol=1e-5)
  clear = np.abs(expected[:, 1] - stored['threshold']) > 1e-4
  assert (predicted['predicted'].astype(str).to_numpy()[clear] ==
          np.where(expected[clear, 1] >= stored['threshold'], '1', '0')).all()
  submitted = pd.read_csv(out / 'submission_probabilities.csv').set_index('filename')
  names = [pathlib.Path(p).name for p in predicted['path']]
  assert np.allclose(submitted.loc[names, ['p_0', 'p_1']].to_numpy(), expected, atol=1e-5)


def test_evaluate_refuses_an_ensemble_in_one_line_saying_what_to_do(ensembled):
  """Explain restores its model with the same `load_trained` before anything else, so it says the same line."""
  workdir, env, _ = ensembled
  result = launch(f'--workdir={workdir / "ensemble"}', '--mode=evaluate', env=env, check=False)
  assert result.returncode == 2 and result.stderr.strip().count('\n') == 0, result.stderr[-2000:]
  assert ('is an ensemble workdir (--mode ensemble): submit, predict, serve, export and calibrate use it; evaluate '
          'and explain take one model' in result.stderr and "point them at a member's workdir" in result.stderr)


def test_calibrate_mixes_the_members_out_of_fold_predictions_with_the_ensemble_s_weights_and_serve_applies_it(
    reweighted, ensembled):
  """No ensemble_predictions.csv: the temperature is fitted on 0.7 x exp0's and 0.3 x exp1's out-of-fold
  probabilities per example (an equal mix fits another), and the server answers the mix at that temperature."""
  out, _, images, expected_mix = reweighted
  workdir = out.parent
  out = _ensemble_copy(out, workdir / 'reweighted-calibrated')
  config = sidecar.stored_config(out)
  calibrate_mode.calibrate(config, out)
  stored = sidecar.read_metadata(out)['calibration']
  first, second = (selection.oof.mean_by_id(selection.oof.read(workdir / v)) for v in ('exp0', 'exp1'))
  columns, head = ['p_0', 'p_1'], head_of(RunSettings.from_config(config))
  labels, _, _ = selection.oof.labels_and_probabilities(first.reset_index())
  weighted = 0.7 * first[columns].to_numpy() + 0.3 * second.loc[first.index, columns].to_numpy()
  equal = (first[columns].to_numpy() + second.loc[first.index, columns].to_numpy()) / 2
  temperature = _mix_temperature(weighted, labels, head)
  assert stored['temperature'] == pytest.approx(temperature, rel=1e-9)
  assert abs(_mix_temperature(equal, labels, head) - temperature) > 1e-3 * temperature   # an equal mix fails
  assert "mixed per example with its weights (n=72; ../exp0 x0.70, ../exp1 x0.30" in stored['fitted_on']

  config.ood.enabled = False   # not what this test is about: the served probabilities and classes
  service = serve_service.load_service(config, out, SERVE_SETTINGS)
  answers = service.predictor.classify(images)
  served = np.array([[r['probabilities']['0'], r['probabilities']['1']] for r in answers])
  expected = calibration.scaled_probabilities(as_logits(expected_mix, head), head, temperature)
  assert np.abs(expected - expected_mix).max() > 1e-3 and np.abs(served - expected).max() <= 1e-5
  clear = np.abs(expected[:, 1] - stored['threshold']) > 1e-4
  assert ([r['class'] for r, c in zip(answers, clear) if c] ==
          ['1' if p >= stored['threshold'] else '0' for p in expected[clear, 1]])
  assert service.metadata['calibration']['temperature'] == pytest.approx(temperature)


def test_calibrate_fits_a_multilabel_ensemble_s_thresholds_on_its_models_out_of_fold_predictions(trained_multilabel,
                                                                                                  tmp_path):
  """An ensemble of the quick multi-label run, whose member folder holds no out-of-fold file (its model's workdir
  does): the per-label thresholds are those calibrate_thresholds fits on the run's oof_predictions.csv, and
  predict's decision (an ensemble's) takes them in place of --mode ensemble's."""
  run = trained_multilabel[0]
  out = tmp_path / 'ensemble'
  metadata = sidecar.read_metadata(run)
  names = metadata['class_names']
  metadata.update(model='ensemble', calibration={'thresholds': {n: 0.5 for n in names}},
                  ensemble={'kind': 'caruana', 'metric': 'map',
                            'members': [{'folder': os.path.relpath(run.parent, out), 'weight': 1.0,
                                         'models': [run.name]}]})
  sidecar.write_metadata(out, metadata)
  config = sidecar.stored_config(out)
  calibrate_mode.calibrate(config, out)
  frame = selection.oof.mean_by_id(selection.oof.read(run), keep=('split',)).reset_index()
  labels, probs, _ = selection.oof.labels_and_probabilities(frame)
  fitted = multilabel_calibration.calibrate_thresholds(probs, labels, names, frame['split'].to_numpy(),
                                                       str(config.sweep.threshold_metric))
  stored = sidecar.read_metadata(out)['calibration']
  assert stored['thresholds'] == pytest.approx(fitted['thresholds']) and stored['temperature'] == 1.0
  assert any(t != 0.5 for t in fitted['thresholds'].values())
  decision = Decision.for_model(ensemble.load_model(config, out), calibrated=True)
  assert decision.thresholds == pytest.approx(tuple(fitted['thresholds'][n] for n in names))
  assert '(per-label thresholds)' in (out / 'report.md').read_text() and (out / 'calibration.json').is_file()
