"""An experiment's bookkeeping (`fpclass.train.experiment.finish`) on members with planned results, no training:
each split keeps its best seed for the monitor's direction (ties to the first, NaN never), the kept member's own
weights become the fold workdir, every row of experiment.json is its member's (scores recomputed from its logits,
sizes, stop), the Nadeau-Bengio ratio is n_val / n_train of the folds used, the timing sums the members', and the
out-of-fold predictions are each member's probabilities on its own fold."""
import json

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import special
from sklearn import metrics as skm

from fpclass.infer.inference import load_trained
from fpclass.models import heads
from fpclass.train import experiment, oof, plan_data, sidecar
from fpclass.train import task as task_lib
from fpclass.train.loop_state import LoopState
from fpclass.train.members import MemberResult, better_result
from fpclass.train.plan import Variant
from fpclass.train.resume import EXPERIMENT_FILE
from tests.conftest import load_config

TINY = {'data.image_size': (8, 8), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'sweep.folds': (0, 1, 2),
        'sweep.seeds': (3, 4, 5)}
# The monitored value of each (fold, seed) at its selected checkpoint, for a monitor to minimise. Fold 0's best is
# its middle seed, fold 1's first seed ties its last (the first is kept), fold 2's middle is NaN (never kept).
PLANNED = {0: [0.5, 0.3, 0.4], 1: [0.2, 0.6, 0.2], 2: [0.9, float('nan'), 0.8]}
KEPT = {0: 4, 1: 3, 2: 5}


class PlannedMembers:
  """A member store (`fpclass.train.resume.FinishedMembers`'s interface) holding made-up results."""

  def __init__(self, results: dict, headers: dict):
    self.results, self.headers, self.removed, self.loaded = results, headers, False, []

  def load(self, member, abstract_state=None):
    self.loaded.append((member.split, member.seed, abstract_state is not None))
    return self.results[member.split, member.seed], self.headers[member.split, member.seed]

  def remove(self):
    self.removed = True


def planned_experiment(tmp_path, monitor: str):
  """(variant, data, records, results) of a 3-fold x 3-seed digits experiment whose members' monitored values are
  PLANNED (negated for a monitor to maximise), with distinct random weights and logits each."""
  config = load_config('configs/digits.py:quick', **TINY, **{'train.monitor': monitor})
  variant = Variant('base', {'model.width': 1}, config)
  data = plan_data.experiment_data(variant.settings.data, TINY['sweep.folds'], TINY['sweep.seeds'])
  train = data.train_data
  task = task_lib.build_task(variant.settings, train.class_names, train.train.labels, 4)
  rng = np.random.default_rng(0)
  results, headers = {}, {}
  sign = 1.0 if monitor == 'val_loss' else -1.0
  for i, m in enumerate(data.members):
    value = sign * PLANNED[m.split][m.seed - 3]
    state = task.init(jax.random.PRNGKey(100 + i), train.train.images.shape[1:])
    history = [{'epoch': e, monitor: value + 0.1 * (2 - e), 'seconds': 1.0} for e in (1, 2)]
    loop = LoopState(epoch=2, best_value=value, best_epoch=2, history=history, finished=True,
                     stop_reason='early_stopping' if i % 2 else 'epochs')
    logits = rng.normal(0, 2, (len(m.val_index), len(train.class_names))).astype(np.float32)
    results[m.split, m.seed] = MemberResult(m, loop, 'best', 2, logits, last=state,
                                            best=(state.params, state.batch_stats), train_seconds=0.5 + i)
    headers[m.split, m.seed] = dict(train_seconds=0.5 + i, form='loop', chunk=3, plan='3 models per chunk')
  return variant, data, PlannedMembers(results, headers), results


@pytest.mark.parametrize('monitor', ['val_loss', 'val_accuracy'])
def test_each_split_keeps_its_best_seed_and_the_record_is_each_member_s(tmp_path, monitor):
  variant, data, records, results = planned_experiment(tmp_path, monitor)
  run = experiment.finish(variant, tmp_path, data, records, [dict(chunk=3), dict(chunk=3), dict(chunk=3)], 42.0,
                         compile_seconds=3.5)
  assert {split: r.member.seed for split, r in run.kept.items()} == KEPT
  record = json.loads((tmp_path / EXPERIMENT_FILE).read_text())
  assert record == run.experiment and record['name'] == 'base' and record['changes'] == {'model.width': 1}
  assert record['config'] == sidecar.config_as_json(variant.config)   # the variant's config, as a sidecar keeps it
  rows = pd.DataFrame(record['rows'])
  labels = data.train_data.val.labels
  for m, row in zip(data.members, rows.itertuples()):
    r = results[m.split, m.seed]
    probs = special.softmax(r.val_logits.astype(np.float64), axis=1)
    y = labels[m.val_index]
    assert (row.experiment, row.split, row.seed, row.kept) == ('base', m.split, m.seed, KEPT[m.split] == m.seed)
    assert row.accuracy == pytest.approx(np.mean(probs.argmax(1) == y), abs=1e-12)
    assert row.loss == pytest.approx(skm.log_loss(y, probs, labels=range(10)), rel=1e-5)
    assert (row.checkpoint, row.epoch, row.epochs_trained, row.stop_reason) == ('best', 2, 2, r.loop.stop_reason)
    assert (row.n_train, row.n_val) == (len(m.train_index), len(m.val_index))
    assert len(set(m.train_index) | set(m.val_index)) == len(labels) and not set(m.train_index) & set(m.val_index)
    assert row.val_hash == experiment._index_hash(m.val_index) != experiment._index_hash(m.train_index)
  assert rows.groupby('split')['val_hash'].nunique().tolist() == [1, 1, 1] and rows['val_hash'].nunique() == 3
  # The ratio of the corrected interval: n_val / n_train of the folds the members trained on (about 1/4 for
  # 3 of the digits' 5 folds: not 1/(3 - 1) from the number of folds used).
  ratio = np.mean([len(m.val_index) / len(m.train_index) for m in data.members])
  assert record['test_train_ratio'] == pytest.approx(ratio, abs=1e-15) and abs(ratio - 0.25) < 0.01
  assert record['split_note'] == data.note and record['task'] == 'single_label'
  timing = record['timing']
  assert timing == dict(wall_seconds=42.0, compile_seconds=3.5, train_seconds=sum(0.5 + i for i in range(9)),
                        model_epochs=18,
                        seconds_per_model_epoch=sum(0.5 + i for i in range(9)) / 18, form='loop', chunks=[3, 3, 3],
                        plan='3 models per chunk', processes=1)
  # Each kept member is its fold's workdir with its own weights, config and history.
  params = []
  for split, seed in KEPT.items():
    folder = tmp_path / f'fold{split}'
    config = json.loads((folder / 'metadata.json').read_text())['config']
    assert (config['data']['fold'], config['seed']) == (split, seed)
    restored = load_trained(variant.member(split, seed, 'test').config, folder, 'last').state.params
    expected = results[split, seed].last.params
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(restored),
                                                    jax.tree_util.tree_leaves(expected)))
    history = pd.read_csv(folder / 'metrics.csv')
    assert history[monitor].tolist() == pytest.approx([h[monitor] for h in results[split, seed].loop.history])
    params.append(sum(leaf.size for leaf in jax.tree_util.tree_leaves(expected)))
  assert record['num_params'] == params[0] == params[-1]
  assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ['fold0', 'fold1', 'fold2']
  # Out-of-fold: every member's probabilities on its own fold's examples.
  predictions = oof.read(tmp_path)
  assert len(predictions) == sum(len(m.val_index) for m in data.members)   # 3 seeds x 3 of the 5 folds
  for m in data.members:
    mine = predictions[(predictions['split'] == m.split) & (predictions['seed'] == m.seed)]
    assert mine['row'].tolist() == m.val_index.tolist()
    expected = heads.probabilities(results[m.split, m.seed].val_logits, 'softmax')
    np.testing.assert_allclose(mine[[f'p_{c}' for c in data.train_data.class_names]].to_numpy(), expected, rtol=1e-6)
  assert records.removed and sorted(s for s, _, restored in records.loaded if restored) == [0, 1, 2]


def test_one_split_has_no_fold_ratio_and_each_seed_competes_on_it(tmp_path):
  config = load_config('configs/digits.py:quick', **{**TINY, 'sweep.folds': (-1,), 'sweep.seeds': (0, 1)})
  data = plan_data.experiment_data(Variant('base', {}, config).settings.data, (-1,), (0, 1))
  assert [m.split for m in data.members] == [-1, -1]
  variant, planned, records, results = planned_experiment(tmp_path / 'folds', 'val_loss')
  holdout = {(-1, s): results[0, s + 3] for s in (0, 1)}   # fold 0's first two seeds: 0.5 and 0.3
  for (_, s), r in holdout.items():
    r.member = data.members[s]
    r.val_logits = np.zeros((len(data.members[s].val_index), 10), np.float32)
  records = PlannedMembers(holdout, {k: records.headers[0, k[1] + 3] for k in holdout})
  run = experiment.finish(Variant('base', {}, config), tmp_path / 'holdout', data, records, [], 1.0)
  assert run.experiment['test_train_ratio'] == 0.0 and run.kept[-1].member.seed == 1
  assert run.experiment['timing']['chunks'] == [3] and (tmp_path / 'holdout' / 'holdout' / 'metadata.json').is_file()
  # One member alone: it is kept, and the record's plan and form are its own.
  single = plan_data.experiment_data(Variant('base', {}, config).settings.data, (-1,), (1,))
  holdout[-1, 1].member = single.members[0]
  alone = PlannedMembers({(-1, 1): holdout[-1, 1]}, {(-1, 1): dict(records.headers[-1, 1], plan='alone')})
  run = experiment.finish(Variant('base', {}, config), tmp_path / 'single', single, alone, [], 1.0)
  assert run.kept[-1].member.seed == 1 and run.experiment['timing']['plan'] == 'alone'
  assert [row['kept'] for row in run.experiment['rows']] == [True]


def test_better_result_compares_the_monitored_value_at_each_selected_checkpoint():
  def result(best, last, checkpoint='best'):
    loop = LoopState(epoch=2, best_value=best, history=[{'val_loss': 9.0, 'val_accuracy': 0.0},
                                                        {'val_loss': last, 'val_accuracy': last}])
    return MemberResult(None, loop, checkpoint, 2, None)
  assert better_result(None, result(None, None), 'val_loss')                      # anything beats nothing
  assert better_result(result(0.5, 9), result(0.4, 9), 'val_loss')
  assert not better_result(result(0.4, 9), result(0.5, 9), 'val_loss')
  assert not better_result(result(0.4, 9), result(0.4, 9), 'val_loss')            # a tie keeps the first
  assert better_result(result(0.4, 9), result(0.5, 9), 'val_accuracy')            # the metric's own direction
  assert not better_result(result(0.4, 9), result(float('nan'), 9), 'val_loss')    # NaN never wins
  assert better_result(result(0.1, 0.5, 'last'), result(0.9, 0.4, 'last'), 'val_loss')   # at `last`: its row
  assert not better_result(result(0.1, 0.5, 'last'), result(0.9, 0.6, 'last'), 'val_loss')
  three = MemberResult(None, LoopState(epoch=3, history=[{'val_loss': v} for v in (0.9, 0.8, 0.7)]), 'last', 3, None)
  assert three.monitor_value('val_loss') == 0.7   # the last epoch's row
  empty = MemberResult(None, LoopState(), 'last', 0, None)
  assert empty.monitor_value('val_loss') is None and not better_result(result(0.4, 9), empty, 'val_loss')
