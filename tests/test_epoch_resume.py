"""A search's round keeps each running member's latest epoch (`Plan.keep_epochs`): a plan stopped after its
second epoch and launched again trains only the epochs left, and ends exactly as the unbroken plan does (the
same programs on the same shapes: its state, best variables and kept logits come back bit for bit)."""
import json

import jax
import numpy as np
import pandas as pd
import pytest

from fpclass.errors import RunInterrupted
from fpclass.infer.inference import load_trained
from fpclass.train import member_store, oof
from fpclass.train.loop import run_plan
from fpclass.train.plan import EXPERIMENTS, Plan, Variant
from fpclass.train.records import StopOnSignals
from tests.conftest import load_config

EPOCHS = 4
# A high constant rate and accuracy as the monitor, so a member's best epoch (the out-of-fold logits kept) comes
# before the stop: its best variables and logits must come back from the kept epoch.
SETUP = {'data.image_size': (8, 8), 'model.conv_channels': (4,), 'model.fc_sizes': (8,), 'model.dropout': 0.3,
         'train.batch_size': 256, 'train.epochs': EPOCHS, 'train.schedule': 'constant', 'train.learning_rate': 0.1,
         'train.monitor': 'val_accuracy', 'train.early_stopping_patience': 0, 'train.select_checkpoint': 'best',
         'data.num_folds': 3}


class CountingStop(StopOnSignals):
  """Counts the epoch ends the loop asks it about, and asks the plan to stop at the `stop_at`-th."""

  def __init__(self, stop_at: int = 0):
    super().__init__()
    self.asked, self.stop_at = 0, stop_at

  def requested(self) -> bool:
    self.asked += 1
    return self.asked == self.stop_at


def plan(keep_epochs: bool) -> Plan:
  config = load_config('configs/digits.py:quick', **SETUP)
  return Plan((Variant('v', {}, config),), EXPERIMENTS, (0, 1), (0,), keep_epochs=keep_epochs)


def outcome(workdir) -> tuple:
  """(the members' rows, the out-of-fold predictions, each fold model's selected weights)."""
  experiment = json.loads((workdir / 'v' / 'experiment.json').read_text())
  rows = pd.DataFrame(experiment['rows']).drop(columns=['train_seconds', 'seconds'], errors='ignore')
  config = plan(True).variants[0].config
  weights = [jax.tree_util.tree_leaves(load_trained(config, workdir / 'v' / f'fold{k}', 'best').state.params)
             for k in (0, 1)]
  return rows, oof.read(workdir / 'v'), weights


@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('unbroken')
  run_plan(plan(True), workdir)
  return outcome(workdir)


def test_a_stopped_round_resumes_each_member_after_its_last_epoch(unbroken, tmp_path):
  with pytest.raises(RunInterrupted), CountingStop(stop_at=2) as stop:
    run_plan(plan(True), tmp_path, stop=stop)
  kept = sorted((tmp_path / 'v' / member_store.FOLDER).glob(f'*{member_store.EPOCH}'))
  assert [p.name for p in kept] == [f'fold{k}-seed0{member_store.EPOCH}' for k in (0, 1)]
  with CountingStop() as again:
    run_plan(plan(True), tmp_path, stop=again)
  assert again.asked == EPOCHS - 2 - 1   # epochs 3 and 4; the loop asks at every epoch end but the last
  rows, predictions, weights = outcome(tmp_path)
  pd.testing.assert_frame_equal(rows, unbroken[0])
  pd.testing.assert_frame_equal(predictions, unbroken[1])
  for got, want in zip(weights, unbroken[2]):   # each fold model: the best epoch's variables, kept across the kill
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
  assert int(rows['epoch'].le(2).sum()) >= 1   # a best epoch before the stop: the kept logits mattered
  assert not list((tmp_path / 'v').glob(f'**/*{member_store.EPOCH}'))   # finished: nothing left running


def test_a_plan_without_keep_epochs_trains_again_from_the_start(tmp_path):
  with pytest.raises(RunInterrupted), CountingStop(stop_at=2) as stop:
    run_plan(plan(False), tmp_path, stop=stop)
  assert not list((tmp_path / 'v').glob(f'**/*{member_store.EPOCH}'))
  with CountingStop() as again:
    run_plan(plan(False), tmp_path, stop=again)
  assert again.asked == EPOCHS - 1
  assert np.isfinite(outcome(tmp_path)[0]['accuracy']).all()
