"""The candidates `--mode ensemble` chooses from (`fpclass.ensemble.selection`), on hand-written workdirs:
which folders are candidates, how their out-of-fold rows are pooled (averaged over seeds, matched by id), every
mismatch a one-line error or a note, and what the selection writes (its workdir's sidecar, its predictions) and
measures (milliseconds per image), with the small figures (scores, keys, weights, groups) from their definitions."""
import json
import math
import pathlib

import numpy as np
import pandas as pd
import pytest

from fpclass.analysis import metric_registry
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.ensemble import caruana, selection
from fpclass.errors import UserInputError
from fpclass.infer import ensemble as ensemble_lib
from fpclass.train import oof, sidecar
from fpclass.train.resume import EXPERIMENT_FILE
from tests.conftest import load_config

SINGLE, MULTI = metric_registry.SINGLE, metric_registry.MULTI
ACCURACY, LOSS = metric_registry.REGISTRY['accuracy'], metric_registry.REGISTRY['loss']
IDS = ['b', 'a', 'd', 'c', 'f', 'e']
LABELS = ['x', 'y', 'y', 'x', 'y', 'x']
FOLDS = [0, 0, 1, 1, 2, 2]


def predictions(p_y, seed=0, ids=IDS, labels=LABELS, folds=FOLDS, classes=('x', 'y')) -> pd.DataFrame:
  p_y = np.asarray(p_y, np.float64)
  return pd.DataFrame({'id': ids, 'row': range(len(ids)), 'split': folds, 'seed': seed, 'label': labels,
                       f'p_{classes[0]}': 1 - p_y, f'p_{classes[1]}': p_y})


def candidate(folder: pathlib.Path, frames, models=('fold0', 'fold1', 'fold2'), experiment=True, metadata=None):
  """A sweep variant's folder: experiment.json, oof_predictions.csv (the frames' rows) and fold workdirs."""
  folder.mkdir(parents=True)
  if experiment:
    (folder / EXPERIMENT_FILE).write_text('{}')
  if frames is not None:
    pd.concat(frames).to_csv(folder / oof.FILE, index=False)
  for k, name in enumerate(models):
    (folder / name).mkdir()
    (folder / name / 'metadata.json').write_text(json.dumps(metadata or {'num_params': 100 + k}))
  return folder


P1 = [0.2, 0.9, 0.6, 0.4, 0.7, 0.1]
P2 = [0.6, 0.5, 0.3, 0.2, 0.8, 0.3]


def test_sweep_variants_with_predictions_are_the_candidates_in_natural_order(tmp_path):
  for name in ('v10', 'v9', 'v2'):
    candidate(tmp_path / name, [predictions(P1)])
  candidate(tmp_path / 'no-experiment', [predictions(P1)], experiment=False)
  candidate(tmp_path / 'no-predictions', None)
  (tmp_path / 'report.md').write_text('a file, not a variant')
  assert [p.name for p in selection.candidate_folders(tmp_path)] == ['v2', 'v9', 'v10']
  assert selection.candidate_folders(tmp_path / 'nowhere') == []
  with pytest.raises(UserInputError, match=r'nowhere: no candidates \(sweep variants or auto trials with '
                                           r'oof_predictions.csv\); run --mode sweep or --mode auto'):
    selection.read_pool(tmp_path / 'nowhere')


def test_an_auto_run_s_trials_are_its_candidates_and_not_its_other_folders(tmp_path):
  for name in ('trial-0010', 'trial-0002', 'notes'):
    candidate(tmp_path / 'trials' / name, [predictions(P1)], experiment=False)
  candidate(tmp_path / 'v1', [predictions(P1)])   # a variant folder beside the trials is not one
  assert [p.name for p in selection.candidate_folders(tmp_path)] == ['trial-0002', 'trial-0010']


def test_each_candidate_is_its_seeds_mean_matched_by_example_id(tmp_path):
  shuffled = predictions(P2, seed=1).iloc[[3, 0, 5, 1, 4, 2]]
  candidate(tmp_path / 'one', [predictions(P1), predictions(P2, seed=1).iloc[::-1]])
  candidate(tmp_path / 'two', [shuffled])
  pool = selection.read_pool(tmp_path)
  assert pool.ids == IDS and pool.task == SINGLE and pool.class_names == ['x', 'y'] and pool.notes == []
  assert pool.labels.tolist() == [0, 1, 1, 0, 1, 0] and pool.folds.tolist() == FOLDS and pool.folds.dtype == np.int64
  np.testing.assert_allclose(pool.candidates[0].probabilities[:, 1], (np.array(P1) + P2) / 2, rtol=1e-15)
  np.testing.assert_allclose(pool.candidates[1].probabilities[:, 1], P2, rtol=1e-15)
  np.testing.assert_allclose(pool.stacked.sum(axis=2), 1.0)
  assert pool.stacked.shape == (2, 6, 2) and [c.name for c in pool.candidates] == ['one', 'two']
  one = pool.candidates[0]
  assert one.folder == tmp_path / 'one' and [m.name for m in one.models] == ['fold0', 'fold1', 'fold2']
  assert one.num_params == 100   # its first fold model's
  only = selection.read_pool(tmp_path, ('two',))
  assert [c.name for c in only.candidates] == ['two']
  with pytest.raises(UserInputError, match=r"config.ensemble.candidates: \['three'\] not found in .*; its "
                                           r"candidates are \['one', 'two'\]"):
    selection.read_pool(tmp_path, ('two', 'three'))


def test_an_example_held_out_in_two_folds_is_an_error(tmp_path):
  twice = predictions(P1, seed=1, folds=[1, 0, 1, 1, 2, 2])
  candidate(tmp_path / 'one', [predictions(P1), twice])
  with pytest.raises(UserInputError, match=r'one/oof_predictions.csv: an example was held out in two folds; its '
                                           r'ids are not unique'):
    selection.read_pool(tmp_path)


def test_a_candidate_that_predicted_other_examples_or_has_no_models_is_left_out_with_a_note(tmp_path):
  candidate(tmp_path / 'a-short', [predictions(P1[:4], ids=IDS[:4], labels=LABELS[:4], folds=FOLDS[:4])])
  candidate(tmp_path / 'b-full', [predictions(P1)])
  candidate(tmp_path / 'c-empty', [predictions(P2)], models=())
  pool = selection.read_pool(tmp_path)
  assert [c.name for c in pool.candidates] == ['b-full'] and pool.ids == IDS   # the longest one's examples
  assert pool.notes == ['c-empty: no fold models in its folder', 'a-short: predicted 4 examples, not the 6 of the others']
  empty = tmp_path / 'empty'
  candidate(empty / 'c-empty', [predictions(P2)], models=())
  with pytest.raises(UserInputError, match=r'empty: no candidate has fold models to predict with'):
    selection.read_pool(empty)


@pytest.mark.parametrize('other, message', [
    (dict(classes=('x', 'z')), r"two/oof_predictions.csv: classes \['x', 'z'\] differ from \['x', 'y'\]"),
    (dict(folds=[0, 1, 1, 1, 2, 2]), r"two/oof_predictions.csv: its folds differ from the other candidates' "
                                     r"\(another data.split_seed or data.num_folds\?\); ensemble the runs of one split"),
    (dict(labels=['x', 'y', 'y', 'x', 'y', 'y']), r"two/oof_predictions.csv: its examples carry other labels than "
                                                  r"the other candidates' \(a relabelled run\?\)"),
])
def test_candidates_of_another_split_labelling_or_class_set_are_refused(tmp_path, other, message):
  candidate(tmp_path / 'one', [predictions(P1)])
  candidate(tmp_path / 'two', [predictions(P2, **other)])
  with pytest.raises(UserInputError, match=message):
    selection.read_pool(tmp_path)


def test_multilabel_candidates_keep_their_label_columns(tmp_path):
  frame = pd.DataFrame({'id': ['p', 'q', 'r'], 'row': [0, 1, 2], 'split': [0, 1, 1], 'seed': 0,
                        'label_sun': [1, 0, 1], 'label_rain': [0, 0, 1],
                        'p_sun': [0.9, 0.2, 0.7], 'p_rain': [0.1, 0.3, 0.8]})
  candidate(tmp_path / 'one', [frame])
  candidate(tmp_path / 'two', [frame.assign(seed=1, p_sun=[0.5, 0.4, 0.3])])
  pool = selection.read_pool(tmp_path)
  assert pool.task == MULTI and pool.class_names == ['sun', 'rain'] and pool.labels.tolist() == [[1, 0], [0, 0], [1, 1]]
  np.testing.assert_allclose(pool.candidates[1].probabilities, [[0.5, 0.1], [0.4, 0.3], [0.3, 0.8]])
  out = tmp_path / 'mix.csv'
  selection.write_predictions(out, pool, np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]))
  written = pd.read_csv(out, dtype={'id': str})
  assert list(written.columns) == ['id', 'split', 'label_sun', 'label_rain', 'p_sun', 'p_rain']
  assert written.values.tolist() == [['p', 0, 1, 0, 0.1, 0.2], ['q', 1, 0, 0, 0.3, 0.4], ['r', 1, 1, 1, 0.5, 0.6]]


def test_the_predictions_file_holds_ids_splits_labels_and_the_probabilities_given(tmp_path):
  candidate(tmp_path / 'one', [predictions(P1)])
  pool = selection.read_pool(tmp_path)
  mixed = np.stack([np.linspace(0, 1, 6), 1 - np.linspace(0, 1, 6)], 1)
  selection.write_predictions(tmp_path / 'out.csv', pool, mixed)
  written = pd.read_csv(tmp_path / 'out.csv', dtype={'id': str})
  assert list(written.columns) == ['id', 'split', 'label', 'p_x', 'p_y']
  assert written['id'].tolist() == IDS and written['split'].tolist() == FOLDS and written['label'].tolist() == LABELS
  np.testing.assert_array_equal(written[['p_x', 'p_y']].to_numpy(), mixed)


def test_the_ensemble_workdir_sidecar_is_its_heaviest_member_s_with_every_member_listed(tmp_path):
  light = candidate(tmp_path / 'light', [predictions(P1)], models=('fold0',), metadata={'num_params': 7, 'model': 'a'})
  heavy = candidate(tmp_path / 'sub' / 'heavy', [predictions(P1)], models=('fold0', 'fold1'),
                    metadata={'num_params': 5, 'model': 'b', 'calibration': {'temperature': 2.0}, 'image_size': [8, 8]})
  members = [(selection.Candidate('light', light, None, [light / 'fold0']), 0.25),
             (selection.Candidate('heavy', heavy, None, [heavy / 'fold0', heavy / 'fold1']), 0.75)]
  out = tmp_path / 'ensemble'
  metadata = selection.workdir_metadata(out, members, 'loss')
  assert metadata == {'num_params': 7 * 1 + 5 * 2, 'model': 'ensemble', 'image_size': [8, 8],
                      'ensemble': dict(kind='caruana', metric='loss', members=[
                          dict(folder='../light', weight=0.25, models=['fold0']),
                          dict(folder='../sub/heavy', weight=0.75, models=['fold0', 'fold1'])])}
  assert ensemble_lib.ENSEMBLE_KEY == 'ensemble'


def test_milliseconds_per_image_is_the_fastest_of_the_timed_calls_over_the_batch(monkeypatch, tmp_path):
  calls, clock = [], iter([0.0, 0.5, 1.0, 1.2, 2.0, 2.9])   # three timed calls: 0.5, 0.2 and 0.9 seconds

  class Model:
    def probabilities(self, images, batch_size):
      calls.append((len(images), batch_size))

  stored = {str(tmp_path): {'config': {'seed': 7}}}   # the model's own sidecar, read as its config

  def load_trained(config, path):
    calls.append(('load', config, path))
    return Model()

  monkeypatch.setattr(selection, 'load_trained', load_trained)
  monkeypatch.setattr(selection.sidecar, 'read_metadata', lambda path: stored[str(path)])
  monkeypatch.setattr(selection.sidecar, 'config_from_json', lambda config: ('from json', config))
  monkeypatch.setattr(selection.time, 'perf_counter', lambda: next(clock))
  assert selection.ms_per_image(tmp_path, np.zeros((4, 2, 2, 1)), repeats=3) == pytest.approx(1000 * 0.2 / 4)
  assert calls == [('load', ('from json', {'seed': 7}), tmp_path)] + [(4, 4)] * 4   # compiled first, timed thrice
  calls.clear()
  clock = iter(np.arange(20.0))
  assert selection.ms_per_image(tmp_path, np.zeros((2, 2, 2, 1))) == pytest.approx(1000 * 1.0 / 2)
  assert len(calls) == 1 + 1 + 10   # ten timed calls by default


def test_the_pooled_examples_are_found_in_the_data_the_candidates_validated_on(tmp_path):
  config = load_config('configs/digits.py:quick', **{'data.image_size': (8, 8)})
  from_config = {'config': sidecar.config_as_json(config)}
  folder = candidate(tmp_path / 'one', [predictions(P1)], models=('fold0',), metadata=from_config)
  pool = selection.read_pool(tmp_path)
  split = pipeline.decode_source(DataSettings.from_config(config.data)).pool
  wanted = [str(split.ids[i]) for i in (5, 0, 17, 3, 9, 2)]
  pool.ids = wanted
  found, positions = selection.examples(pool)
  assert list(found.ids) == list(split.ids) and positions.tolist() == [5, 0, 17, 3, 9, 2]
  np.testing.assert_array_equal(found.images[positions], split.images[[5, 0, 17, 3, 9, 2]])
  pool.ids = [wanted[0], 'moved.png', 'gone.png', 'lost.png', 'x.png']
  with pytest.raises(UserInputError, match=rf"{folder}: examples \['moved.png', 'gone.png', 'lost.png'\] of its "
                                           r'out-of-fold predictions are not in the data its config reads now'):
    selection.examples(pool)


def test_scores_keys_weights_and_groups_from_their_definitions():
  labels, p = np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
  assert caruana.score(ACCURACY, labels, p, SINGLE) == 0.5
  assert math.isnan(caruana.score(ACCURACY, labels[:0], p[:0], SINGLE))   # no examples: no figure
  assert math.isnan(caruana.score(metric_registry.REGISTRY['roc_auc'], labels[:2] * 0, p[:2], SINGLE))
  assert caruana.key_of(ACCURACY, 0.75) == 0.75 and caruana.key_of(LOSS, 0.75) == -0.75
  assert caruana.key_of(ACCURACY, math.nan) == -math.inf == caruana.key_of(LOSS, math.nan)
  chosen = caruana.Selection(np.array([3, 0, 1]), [0, 0, 2, 0], [0.5, 0.6, 0.7, 0.7], 4)
  assert chosen.weights.tolist() == [0.75, 0.0, 0.25]
  stacked = np.stack([p, 1 - p, np.full((4, 2), 0.5)])
  np.testing.assert_allclose(chosen.mix(stacked), 0.75 * p + 0.25 * 0.5)
  index, scores = caruana.best_single(stacked, labels, SINGLE, LOSS)
  expected = [-np.mean(np.log(q[np.arange(4), labels])) for q in stacked]   # the mean negative log-likelihood
  assert scores == pytest.approx(expected, abs=1e-12) and index == 0 and expected[2] == pytest.approx(math.log(2))
  assert caruana.best_single(stacked, labels, SINGLE, ACCURACY) == (0, [0.5, 0.5, 0.5])   # ties: the first
  folds = np.array([2, 0, 1, 0, 2, 1])
  assert caruana.crossfit_groups(folds, seed=9) is folds
  assert caruana.crossfit_groups(folds[:2], seed=9) is not folds   # two folds are folds too
  assert caruana.crossfit_groups(folds[:2][::-1]).tolist() == [0, 2]
  assert caruana.group_scores(ACCURACY, [0, 1, 1, 0, 1, 1], np.tile([[0.4, 0.6]], (6, 1)), folds, SINGLE) == [
      0.5, 1.0, 0.5]   # folds 0, 1, 2 in order
  interval = caruana.paired([0.7, 0.8, 0.9], [0.6, 0.8, 0.7], 0.5)
  assert (interval.mean, interval.n) == (pytest.approx(0.1), 3)
  assert interval.high - interval.mean == pytest.approx(
      4.302652729911275 * math.sqrt((1 / 3 + 0.5) * np.var([0.1, 0.0, 0.2], ddof=1)))


def test_the_selection_stops_at_its_first_best_round_and_cross_fits_each_fold():
  labels = np.array([1, 1, 1, 1, 0, 0])
  right = np.array([[0.1, 0.9]] * 4 + [[0.9, 0.1]] * 2)
  wrong = right[:, ::-1]
  chosen = caruana.caruana(np.stack([wrong, right]), labels, SINGLE, LOSS, max_size=4)
  assert chosen.path == [1, 1, 1, 1] and chosen.rounds == 1 and chosen.counts.tolist() == [0, 1]
  assert chosen.scores == pytest.approx([-math.log(0.9)] * 4, abs=1e-12)
  groups = np.array([0, 1, 2, 0, 1, 2])
  crossfit = caruana.cross_fit(np.stack([wrong, right]), labels, groups, SINGLE, ACCURACY, 3, ['w', 'r'])
  assert crossfit.ratio == 0.5 and [r['fold'] for r in crossfit.rows] == [0, 1, 2]
  assert crossfit.rows[0] == dict(fold=0, n=2, ensemble=1.0, best_single=1.0, single='r', difference=0.0,
                                  weights={'r': 1.0})
  np.testing.assert_array_equal(crossfit.ensemble, right)
  np.testing.assert_array_equal(crossfit.single, right)
  assert crossfit.interval('ensemble').mean == 1.0
  one_group = caruana.cross_fit(np.stack([right]), labels, np.zeros(6, int), SINGLE, ACCURACY, 2)
  assert one_group.ratio == 1.0 and one_group.rows[0]['single'] == '0'


def test_one_validation_split_is_cut_into_five_seeded_parts_of_near_equal_size():
  one = np.zeros(23, int)   # a single split: its examples are all in fold 0 (or -1)
  groups = caruana.crossfit_groups(one)
  assert groups.dtype.kind == 'i' and sorted(np.bincount(groups).tolist()) == [4, 4, 5, 5, 5]
  assert caruana.crossfit_groups(np.full(23, -1)).tolist() == groups.tolist()   # the default seed, 0
  assert caruana.crossfit_groups(one, seed=0).tolist() == groups.tolist()
  assert caruana.crossfit_groups(one, seed=1).tolist() != groups.tolist()
  assert caruana.crossfit_groups(one[:5], seed=3).tolist() != list(range(5))   # shuffled, not in order


def test_a_metric_of_another_task_is_one_line_listing_the_task_s_metrics():
  for task in (SINGLE, MULTI):
    names = [m.name for m in metric_registry.REGISTRY.values() if m.applies_to(task)]
    other = next(n for n, m in metric_registry.REGISTRY.items() if not m.applies_to(task))
    with pytest.raises(UserInputError) as raised:
      selection.resolve_metric(other, task)
    assert str(raised.value) == (f'config.ensemble.metric={other!r}: not a registered metric of a {task} task; one '
                                 f'of {names}')
