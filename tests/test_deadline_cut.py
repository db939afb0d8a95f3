"""A variant of a search's round that the deadline cuts keeps what ended (`fpclass.train.loop.finish_ended`): it
is finished on its members that had ended, a run of fewer folds that says which members the deadline cut. On an
H200 (2026-11-28) auto's one trial was cut after three of its five folds had stopped early, and the final model
fell back to the set-up measurement's one fold at two epochs."""
import pytest

from fpclass.auto.context import Entry
from fpclass.auto.population import outcomes, round_plan
from fpclass.train import member_store, oof
from fpclass.train.loop import run_plan
from fpclass.train.records import StopOnSignals
from tests.conftest import load_config

# The digits at 8x8 and one small layer, one model per chunk: fold 0 trains to its end, then fold 1 starts, and
# the deadline that passes once a member ended cuts fold 1 after its first epoch (fold 2 never starts).
SETUP = {'data.image_size': (8, 8), 'model.conv_channels': (8,), 'model.fc_sizes': (16,), 'train.batch_size': 479,
         'train.epochs': 3, 'train.schedule': 'constant', 'train.learning_rate': 0.03,
         'train.early_stopping_patience': 0, 'sweep.models_per_chunk': 1, 'train.tensorboard': False,
         'explain.after_training': False}
FOLDS = (0, 1, 2)


class DeadlineOnceOneEnds(StopOnSignals):
  """A deadline that passes once a member of the experiment in `folder` has ended (its result is on disk,
  `member_store`): the loop then stops after the next member's epoch, cutting it."""

  def __init__(self, folder):
    super().__init__()
    self.folder = folder

  @property
  def deadline_passed(self) -> bool:
    return any(p.name.endswith('.json') for p in (self.folder / member_store.FOLDER).glob('*'))


def _round(tmp_path, keep_ended: bool, keep_cut_from: int = 0):
  config = load_config('configs/digits.py:quick', **SETUP)
  plan, failed = round_plan(config, [Entry('trial-0000', {})], FOLDS, (0,), SETUP['train.epochs'])
  assert not failed
  folder = tmp_path / 'round'
  runs = run_plan(plan, folder, stop=DeadlineOnceOneEnds(folder / 'trial-0000'), isolate=True,
                  keep_ended=keep_ended, keep_cut_from=keep_cut_from)
  return runs, folder / 'trial-0000'


def test_a_variant_the_deadline_cut_is_finished_on_the_members_that_had_ended(tmp_path):
  runs, folder = _round(tmp_path, keep_ended=True)
  (run,) = runs
  rows, cut = run.experiment['rows'], run.experiment['cut_members']
  assert [r['split'] for r in rows] == [0] and cut == ['fold1-seed0', 'fold2-seed0']
  assert rows[0]['stop_reason'] == 'epochs' and rows[0]['epochs_trained'] == 3   # fold 0 had ended
  ended = [0]
  assert not (folder / member_store.FOLDER).exists()   # a relaunch reads it as finished
  predictions = oof.read(folder)
  assert sorted(set(predictions['split'])) == ended   # out of fold on the ended folds alone
  (outcome,) = outcomes(runs, 'accuracy').values()
  assert outcome.cut_members == tuple(cut) and outcome.value == sum(r['accuracy'] for r in rows) / len(rows)


def test_without_keep_ended_a_cut_variant_leaves_its_ended_members_for_a_relaunch(tmp_path):
  runs, folder = _round(tmp_path, keep_ended=False)
  assert runs == []
  assert any(p.name.endswith('.json') for p in (folder / member_store.FOLDER).glob('*'))


def test_a_member_cut_after_enough_epochs_ends_at_its_selected_epoch(tmp_path):
  """`keep_cut_from`: fold 1, cut after its first of 3 epochs, ends there (the final stage's last piece: a member
  the deadline cuts after half its epochs is a fold model, as an early-stopped one is); fold 2 never started."""
  runs, folder = _round(tmp_path, keep_ended=False, keep_cut_from=1)
  (run,) = runs
  rows, cut = run.experiment['rows'], run.experiment['cut_members']
  assert [r['split'] for r in rows] == [0, 1] and cut == ['fold2-seed0']
  assert [(r['stop_reason'], r['epochs_trained'], r['epoch'], r['kept']) for r in rows] == [
      ('epochs', 3, rows[0]['epoch'], True), ('deadline', 1, 1, True)]
  assert (folder / 'fold1').is_dir() and not (folder / member_store.FOLDER).exists()
  predictions = oof.read(folder)
  fold1 = predictions[predictions['split'] == 1]
  assert len(fold1) == rows[1]['n_val']   # its validation logits at epoch 1, scored as the row says
  labels, probabilities, _ = oof.labels_and_probabilities(fold1)
  assert (labels == probabilities.argmax(1)).mean() == pytest.approx(rows[1]['accuracy'])


def test_a_member_cut_before_enough_epochs_is_left_out(tmp_path):
  runs, folder = _round(tmp_path, keep_ended=False, keep_cut_from=2)
  (run,) = runs
  assert [r['split'] for r in run.experiment['rows']] == [0]
  assert run.experiment['cut_members'] == ['fold1-seed0', 'fold2-seed0']
