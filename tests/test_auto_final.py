"""The final model of `--mode auto` (`fpclass.auto.final`) spends the budget's rest: first the folds the chosen
configuration's top rung lacks, then (unless a trial count ended the search) more seeds on the same folds, each
on the most folds that fit. Real training of a tiny CNN in this process, on a simulated clock: the budget counts
1000 s for each member-epoch trained (the cost model's figure too), so what fits does not depend on the
machine's speed."""
import dataclasses
import json

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from fpclass.auto import final_mix
from fpclass.auto import search as auto
from fpclass.auto import study as study_lib
from fpclass.auto.budget import Budget
from fpclass.auto.context import TAIL, Context, Entry
from fpclass.auto.final import MORE, final_model, known_setup, piece_size
from fpclass.auto.first_trials import BASELINE
from fpclass.auto.rungs import Costs
from fpclass.auto.schedulers.successive_halving import SuccessiveHalving
from fpclass.config.search import AutoSettings
from fpclass.modes.command_line import config_from_argv
from fpclass.train import sidecar
from fpclass.train.shared_work import SharedWork
from fpclass.train.workdir_layout import rung_folder
from tests.conftest import draw_footprints, seed_cache

TINY = ['launch.py', '--config=configs/footprint.py:quick', '--config.data.image_size=(24,16)',
        '--config.model.conv_channels=(4,)', '--config.model.fc_sizes=(8,)', '--config.train.epochs=1',
        '--config.train.early_stopping_patience=0', '--config.explain.after_training=False',
        '--config.train.tensorboard=False', '--config.data.num_folds=3', '--config.augment.hflip=0.0',
        '--config.augment.brightness=0.0', '--config.augment.contrast=0.0', '--config.model.dropout=0.0',
        '--config.sweep.models_per_chunk=4']
MEMBER = 1000.0   # the cost model's seconds for one member of one epoch


@pytest.fixture(scope='module')
def drawn_footprints(tmp_path_factory):
  """TINY's synthetic footprints, drawn once for the module (1.5 CPU-s a draw) as a round draws them into its
  cache: their folder, which `footprints` copies into each test's own cache."""
  return draw_footprints(tmp_path_factory.mktemp('footprints'), config_from_argv(TINY).data.synthetic)


@pytest.fixture
def footprints(isolated_cache, drawn_footprints):
  """The test's own data cache (FPCLASS_CACHE, tests.conftest.isolated_cache) holding a copy of the module's
  footprints, where its rounds find them instead of drawing them again."""
  seed_cache(isolated_cache, drawn_footprints)


class SimulatedBudget(Budget):
  """The time used: MEMBER seconds per member-epoch the rounds trained (`Budget.add_measure`), not the clock's."""

  def used(self) -> float:
    return self.used_before + MEMBER * sum(measure[1] for measure in self.measures)


def _context(workdir, config, study, trials: int, members_left: float, data_folds: int = 0) -> Context:
  """A context whose budget has room for `members_left` members (beside the tail it keeps for the report)."""
  seconds = 100_000.0
  budget = SimulatedBudget(seconds, workdir, used_before=seconds - TAIL * seconds - members_left * MEMBER)
  budget.costs = Costs(setup=0.0, member=0.0, member_epoch=MEMBER)
  settings = AutoSettings(trials=trials)
  return Context(base=config, settings=settings, metric='accuracy', higher=True, folds=3,
                 epochs=1, own_split=False, dims=[], candidates=[], study=study, budget=budget, workdir=workdir,
                 shared=SharedWork(), train_round=auto._train_round, scheduler=SuccessiveHalving(settings),
                 data_folds=data_folds)


def _kept_models(folder):
  return {(r['split'], r['seed']) for r in json.loads((folder / 'experiment.json').read_text())['rows'] if r['kept']}


@pytest.mark.usefixtures('footprints')
def test_the_rest_trains_the_missing_folds_then_more_seeds_and_the_final_mixes_every_model_alike(tmp_path):
  # The chosen trial's top rung trained 2 of its 3 folds, and the study has one trial taken.
  workdir, config = tmp_path / 'auto', config_from_argv(TINY)
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  study.tell(study.ask(), 0.5)
  seed = int(config.seed)
  outcomes, _ = _context(workdir, config, study, 0, 10).round(config, [Entry('trial-0000', {})], (0, 1), (seed,), 1,
                                                               workdir / 'trials', None)
  assert not outcomes['trial-0000'].error
  chosen = dict(name='trial-0000', trial=0, changes={})
  # A trial count reached: only the fold the top rung lacks, though room is left for 2.5 members.
  out, note = final_model(_context(workdir, config, study, 1, 2.5), chosen)
  assert sorted(p.name for p in (workdir / MORE).iterdir()) == [f'trial-0000-seed{seed}']
  assert _kept_models(workdir / MORE / f'trial-0000-seed{seed}') == {(2, seed)}
  assert 'every labelled image' in note
  # No trial count (a relaunch): the missing fold is reused, and the room of 2.5 members buys seed + 1 on the
  # first 2 folds: 3 would not fit.
  out, note = final_model(_context(workdir, config, study, 0, 2.5), chosen)
  pieces = [workdir / 'trials' / 'trial-0000', workdir / MORE / f'trial-0000-seed{seed}',
            workdir / MORE / f'trial-0000-seed{seed + 1}']
  assert sorted(p.name for p in (workdir / MORE).iterdir()) == sorted(p.name for p in pieces[1:])
  assert _kept_models(pieces[2]) == {(0, seed + 1), (1, seed + 1)}
  members = sidecar.read_metadata(out)['ensemble']['members']
  # Every fold model weighs alike: each folder by its share of the 5 models.
  assert [(m['folder'], m['models'], m['weight']) for m in members] == [
      ('../trials/trial-0000', ['fold0', 'fold1'], pytest.approx(0.4)),
      (f'../{MORE}/trial-0000-seed{seed}', ['fold2'], pytest.approx(0.2)),
      (f'../{MORE}/trial-0000-seed{seed + 1}', ['fold0', 'fold1'], pytest.approx(0.4))]
  # The out-of-fold mix: per image, the plain mean of the models that held it out (recomputed from their files).
  rows = pd.concat([pd.read_csv(p / 'oof_predictions.csv', dtype={'id': str, 'label': str}) for p in pieces])
  expected = rows.groupby('id')[['p_0', 'p_1']].mean()
  mixed = pd.read_csv(out / 'ensemble_predictions.csv', dtype={'id': str, 'label': str}).set_index('id')
  assert mixed.index.is_unique and set(mixed.index) == set(rows['id'])
  np.testing.assert_allclose(mixed.loc[expected.index, ['p_0', 'p_1']], expected, rtol=1e-12)
  assert (rows.groupby('id').size().loc[mixed.index] == np.where(mixed['split'] < 2, 2, 1)).all()
  accuracy = accuracy_score(mixed['label'], np.where(mixed['p_1'] > mixed['p_0'], '1', '0'))
  assert chosen['final_score'] == pytest.approx(accuracy)
  assert f'5 fold model(s) of trial-0000 as one ensemble (seeds [{seed}, {seed + 1}]' in note
  assert f'accuracy {accuracy:.4f}' in note


@pytest.mark.usefixtures('footprints')
def test_where_the_search_trained_the_first_folds_of_the_data_s_the_final_completes_them(tmp_path):
  """The search ranked its trials on the first 3 of the data's 4 folds (`measure.fit_folds`): the choice's top
  rung holds folds 0 to 2 of the 4-fold split, each model on 3/4 of the images, and the rest of the budget first
  trains fold 3 of the same split, so that the final models hold out every example."""
  workdir, config = tmp_path / 'auto', config_from_argv([*TINY, '--config.data.num_folds=4'])
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  study.tell(study.ask(), 0.5)
  seed = int(config.seed)
  outcomes, _ = _context(workdir, config, study, 0, 10, data_folds=4).round(
      config, [Entry('trial-0000', {})], (0, 1, 2), (seed,), 1, workdir / 'trials', None)
  assert not outcomes['trial-0000'].error
  out, note = final_model(_context(workdir, config, study, 1, 1.5, data_folds=4),
                          dict(name='trial-0000', trial=0, changes={}))
  piece = workdir / MORE / f'trial-0000-seed{seed}'
  assert sorted(p.name for p in (workdir / MORE).iterdir()) == [piece.name]
  assert _kept_models(piece) == {(3, seed)}
  (member,) = piece.glob('fold*')
  assert sidecar.read_metadata(member)['config']['data']['num_folds'] == 4
  assert '4 fold model(s) of trial-0000' in note and 'every labelled image' in note
  assert len(pd.read_csv(out / 'ensemble_predictions.csv')) == 72   # every example, held out once


@pytest.mark.parametrize('room, size', [(34.0, (3, 10)), (33.9, (2, 10)), (13.0, (1, 10)), (9.0, (1, 7)),
                                        (7.0, (1, 5)), (6.9, None)])
def test_a_piece_is_the_most_folds_at_full_epochs_else_one_fold_at_the_most_epochs_down_to_half(room, size):
  # Costs(setup 1 s, member 1 s, 1 s a member-epoch), 10 epochs: a whole member costs 11 s beside the set-up.
  assert piece_size(Costs(1.0, 1.0, 1.0), 1.0, room, 3, 10) == size


@pytest.mark.parametrize('form, setup', [('loop', 1.5), ('vmap', 4.0)])
def test_the_first_piece_sets_up_without_compiling_where_the_job_shares_the_configuration_s_programs(form, setup):
  """The loop form keys its programs by the configuration, lengths aside (`Cohort.programs`): the search compiled
  the chosen configuration's already. The vmap form compiles its own for each cohort."""
  assert known_setup(Costs(setup=4.0, member=1.0, member_epoch=1.0, compile=2.5), {'form': form}) == setup


def _two_trials(study):
  """The config as given (trial 0) and another learning rate (trial 1), as a search leaves them."""
  for number, attrs in ((0, {BASELINE: True, study_lib.CHANGES: {}}),
                        (1, {study_lib.CHANGES: {'train.learning_rate': '0.002'}})):
    trial = study.ask()
    assert trial.number == number
    for key, value in {**attrs, study_lib.FOLDER: f'trial-{number:04d}'}.items():
      trial.set_user_attr(key, value)
    study.tell(trial, 0.5)


@pytest.mark.usefixtures('footprints')
def test_an_unconfirmed_choice_gets_the_config_as_given_beside_it_trained_or_taken_from_the_top_rung(tmp_path):
  workdir, config = tmp_path / 'auto', config_from_argv(TINY)
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  _two_trials(study)
  seed, folds = int(config.seed), (0, 1, 2)
  ctx = _context(workdir, config, study, 0, 3.5)
  outcomes, _ = ctx.round(config, [Entry('trial-0001', {'train.learning_rate': 0.002})], folds, (seed,), 1,
                          workdir / 'trials', None)
  assert not outcomes['trial-0001'].error
  chosen = dict(name='trial-0001', trial=1, changes={'train.learning_rate': 0.002})
  # Room for 3.5 members: the config as given on the 3 folds, then no whole member of a new seed.
  out, note = final_model(_context(workdir, config, study, 0, 3.5), chosen)
  assert sorted(p.name for p in (workdir / MORE).iterdir()) == [f'trial-0000-seed{seed}']
  assert _kept_models(workdir / MORE / f'trial-0000-seed{seed}') == {(f, seed) for f in folds}
  given = sidecar.read_metadata(workdir / MORE / f'trial-0000-seed{seed}' / 'fold0')['config']
  assert given['train']['learning_rate'] == config.train.learning_rate   # the config as given, not the choice
  # It is the mix's other candidate; the final model is whichever the cross-fitted comparison kept.
  _check_kept(out, note, {'trial-0001': '../trials/trial-0001', 'trial-0000': f'../{MORE}/trial-0000-seed{seed}'},
              'trial-0001')
  # Its top-rung fold models, where the search trained them, are taken as they are: nothing is trained.
  (workdir / MORE / f'trial-0000-seed{seed}').rename(workdir / 'trials' / 'trial-0000')
  out, note = final_model(_context(workdir, config, study, 0, 0.5), chosen)
  assert not any((workdir / MORE).iterdir())
  _check_kept(out, note, {'trial-0001': '../trials/trial-0001', 'trial-0000': '../trials/trial-0000'}, 'trial-0001')
  # The choice is the config as given: the other trial is a runner-up, its top-rung fold models taken as they are.
  out, note = final_model(_context(workdir, config, study, 0, 0.5), dict(name='trial-0000', trial=0, changes={}))
  assert not any((workdir / MORE).iterdir())
  _check_kept(out, note, {'trial-0000': '../trials/trial-0000', 'trial-0001': '../trials/trial-0001'}, 'trial-0000')


@pytest.mark.usefixtures('footprints')
def test_a_tie_s_config_as_given_is_a_candidate_though_the_rest_ran_out_on_the_choice_s_missing_folds(
    tmp_path, monkeypatch):
  """A tie sent the choice and the config as given to the top rung on the first 2 of the data's 4 folds each
  (`brackets.widened`). The rest buys 1 member: one of the choice's 2 missing folds, and then nothing. The config as
  given's two top-rung fold models are still a candidate of the mix, taken as they are (they were left out when
  the rest ran out), on the examples both hold out (`MIN_POOL` lowered for the tiny data's 36)."""
  monkeypatch.setattr(final_mix, 'MIN_POOL', 20)
  workdir, config = tmp_path / 'auto', config_from_argv([*TINY, '--config.data.num_folds=4'])
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  _two_trials(study)
  seed, ctx = int(config.seed), _context(workdir, config, study, 0, 10, data_folds=4)
  entries = [Entry('trial-0000', {}), Entry('trial-0001', {'train.learning_rate': 0.002})]
  outcomes, _ = ctx.round(config, entries, (0, 1), (seed,), 1, workdir / 'trials', None)
  assert not any(o.error for o in outcomes.values())
  chosen = dict(name='trial-0001', trial=1, changes={'train.learning_rate': 0.002})
  out, note = final_model(_context(workdir, config, study, 0, 1.5, data_folds=4), chosen)
  assert sorted(p.name for p in (workdir / MORE).iterdir()) == [f'trial-0001-seed{seed}']
  assert _kept_models(workdir / MORE / f'trial-0001-seed{seed}') == {(2, seed)}
  record = json.loads((out / 'mix.json').read_text())
  assert record['candidates'] == ['trial-0001', 'trial-0000'] and record['left_out'] == []
  assert record['pool'] == 36 and record['examples'] == 54   # the 2 folds both hold out; the choice's 3
  members = {m['folder']: m['weight'] for m in sidecar.read_metadata(out)['ensemble']['members']}
  choice = {'../trials/trial-0001': 2 / 3, f'../{MORE}/trial-0001-seed{seed}': 1 / 3}
  if record['kept'] == 'mix':
    choice = {'../trials/trial-0000': record['weights'].get('trial-0000', 0.0),
              **{f: w * record['weights']['trial-0001'] for f, w in choice.items()}}
  assert members == {f: pytest.approx(w) for f, w in choice.items() if w}
  assert 'a Caruana mix over 2 configurations' in note


@pytest.mark.usefixtures('footprints')
def test_a_trial_the_search_left_at_its_bottom_rung_is_a_candidate_on_the_fold_it_held_out(tmp_path, monkeypatch):
  """Everything the search trained: the config as given on every fold (the choice) and another learning rate
  pruned after its bottom rung of one fold. The mix compares them on that fold's examples; nothing is trained.
  The tiny data's fold holds 24 examples: fewer than `MIN_POOL`, so the trial is left out, named, until the
  floor is lowered."""
  workdir, config = tmp_path / 'auto', config_from_argv(TINY)
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  _two_trials(study)
  seed, ctx = int(config.seed), _context(workdir, config, study, 0, 0.5)
  bottom = rung_folder(workdir, 0, 0)
  for name, changes, folds, folder in (('trial-0000', {}, (0, 1, 2), workdir / 'trials'),
                                       ('trial-0001', {'train.learning_rate': 0.002}, (0,), bottom)):
    outcomes, _ = ctx.round(config, [Entry(name, changes)], folds, (seed,), 1, folder, None)
    assert not outcomes[name].error
  chosen = dict(name='trial-0000', trial=0, changes={})
  out, note = final_model(_context(workdir, config, study, 0, 0.5), chosen)
  record = json.loads((out / 'mix.json').read_text())
  assert record['candidates'] == ['trial-0000'] and record['left_out'] == [
      'trial-0001: predicted 24 examples, 24 of them shared with the others']
  monkeypatch.setattr(final_mix, 'MIN_POOL', 20)
  out, note = final_model(_context(workdir, config, study, 0, 0.5), chosen)
  assert not (workdir / MORE).exists() or not any((workdir / MORE).iterdir())
  record = json.loads((out / 'mix.json').read_text())
  assert record['candidates'] == ['trial-0000', 'trial-0001'] and (record['pool'], record['examples']) == (24, 72)
  _check_kept(out, note, {'trial-0000': '../trials/trial-0000', 'trial-0001': '../rounds/b0-r0/trial-0001'},
              'trial-0000')


@pytest.mark.usefixtures('footprints')
def test_a_runner_up_the_budget_cannot_train_on_every_fold_trains_on_the_folds_that_fit(tmp_path, monkeypatch):
  """The choice is the config as given on 3 folds; the other trial, pruned at its bottom rung, is the runner-up.
  Room for 1.5 members buys it one fold at the configuration's epochs in more/, a candidate of the mix on that
  fold's examples (`MIN_POOL` lowered for the tiny data's 24); a relaunch takes it as it is."""
  monkeypatch.setattr(final_mix, 'MIN_POOL', 20)
  workdir, config = tmp_path / 'auto', config_from_argv(TINY)
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  _two_trials(study)
  seed, ctx = int(config.seed), _context(workdir, config, study, 0, 10)
  outcomes, _ = ctx.round(config, [Entry('trial-0000', {})], (0, 1, 2), (seed,), 1, workdir / 'trials', None)
  assert not outcomes['trial-0000'].error
  chosen = dict(name='trial-0000', trial=0, changes={})
  for members_left in (1.5, 0.5):   # the second: a relaunch with no room, which trains nothing
    out, note = final_model(_context(workdir, config, study, 0, members_left), chosen)
    assert sorted(p.name for p in (workdir / MORE).iterdir()) == ['trial-0001']
    assert _kept_models(workdir / MORE / 'trial-0001') == {(0, seed)}
    learning_rate = sidecar.read_metadata(workdir / MORE / 'trial-0001' / 'fold0')['config']['train']['learning_rate']
    assert learning_rate == 0.002
    record = json.loads((out / 'mix.json').read_text())
    assert record['candidates'] == ['trial-0000', 'trial-0001'] and record['pool'] == 24
    _check_kept(out, note, {'trial-0000': '../trials/trial-0000', 'trial-0001': f'../{MORE}/trial-0001'}, 'trial-0000')


@pytest.mark.usefixtures('footprints')
def test_the_confirmation_s_other_finalist_is_a_candidate_on_its_fresh_folds(tmp_path):
  """The confirmation trained the choice and the other finalist on fresh folds: the finalist is a candidate there,
  every example held out at the configuration's epochs, rather than at its bottom rung's one fold."""
  workdir, config = tmp_path / 'auto', config_from_argv(TINY)
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  _two_trials(study)
  seed, ctx = int(config.seed), _context(workdir, config, study, 0, 10)
  entries = [Entry('trial-0000', {}), Entry('trial-0001', {'train.learning_rate': 0.002})]
  outcomes, _ = ctx.round(ctx.fresh_folds(), entries, (0, 1, 2), (seed,), 1, workdir / 'confirm', None)
  assert not any(o.error for o in outcomes.values())
  outcomes, _ = ctx.round(config, entries[1:], (0,), (seed,), 1, rung_folder(workdir, 0, 0), None)
  out, note = final_model(_context(workdir, config, study, 0, 0.5), dict(name='trial-0000', trial=0, changes={}))
  record = json.loads((out / 'mix.json').read_text())
  assert record['candidates'] == ['trial-0000', 'trial-0001'] and record['pool'] == record['examples'] == 72
  _check_kept(out, note, {'trial-0000': '../confirm/trial-0000', 'trial-0001': '../confirm/trial-0001'}, 'trial-0000')


def _check_kept(out, note, folders: dict, choice: str) -> None:
  """final/ holds the mix's members when it kept the mix, the choice's folder alone otherwise, as mix.json says."""
  record = json.loads((out / 'mix.json').read_text())
  assert record['candidates'] == list(folders) and record['kept'] in ('mix', 'choice')
  members = {m['folder']: m['weight'] for m in sidecar.read_metadata(out)['ensemble']['members']}
  if record['kept'] == 'mix':
    assert members == {folders[n]: pytest.approx(w) for n, w in record['weights'].items()}
    assert record['mixed'] > record['alone']
  else:
    assert members == {folders[choice]: pytest.approx(1.0)}
  assert f'a Caruana mix over {len(folders)} configurations' in note


@pytest.mark.usefixtures('footprints')
def test_a_choice_whose_top_rung_the_deadline_cut_starts_from_its_highest_finished_rung(tmp_path):
  # A loaded machine: the best trial finished rung 0 (one fold) and rung 1 (two folds), but its top rung was cut
  # (`trials/` holds an unfinished folder): the final model starts from rung 1's fold models and trains the fold
  # they lack, instead of ending without a model.
  workdir, config = tmp_path / 'auto', config_from_argv(TINY)
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  study.tell(study.ask(), 0.5)
  seed, ctx = int(config.seed), _context(workdir, config, study, 1, 10)
  for level, folds in ((0, (0,)), (1, (0, 1))):
    outcomes, _ = ctx.round(config, [Entry('trial-0000', {})], folds, (seed,), 1, rung_folder(workdir, 0, level),
                            None)
    assert not outcomes['trial-0000'].error
  (workdir / 'trials' / 'trial-0000').mkdir(parents=True)   # the cut top rung
  out, note = final_model(_context(workdir, config, study, 1, 10), dict(name='trial-0000', trial=0, changes={}))
  assert out is not None, note
  members = sidecar.read_metadata(out)['ensemble']['members']
  assert [(m['folder'], m['models']) for m in members] == [
      ('../rounds/b0-r1/trial-0000', ['fold0', 'fold1']), (f'../{MORE}/trial-0000-seed{seed}', ['fold2'])]
  assert "start from b0-r1's" in note and 'every labelled image' in note


@pytest.mark.usefixtures('footprints')
def test_the_missing_folds_take_as_many_pieces_as_fit_each_at_the_source_s_epochs_the_last_one_shorter(tmp_path):
  """A top rung the budget cut to 1 of 3 folds at 4 of the config's 8 epochs: room for 6 member-epochs trains
  fold 1 at 4 epochs (the source's, not the config's), then fold 2 in a second piece at the 2 epochs left (half of
  4, the shortest a piece may be), so the final model has seen every image and the budget's rest is spent."""
  workdir, config = tmp_path / 'auto', config_from_argv([*TINY, '--config.train.epochs=8'])
  study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction='maximize')
  study.tell(study.ask(), 0.5)
  seed = int(config.seed)
  ctx = _context(workdir, config, study, 1, 6.0)
  ctx = dataclasses.replace(ctx, epochs=8)
  outcomes, _ = ctx.round(config, [Entry('trial-0000', {})], (0,), (seed,), 4, workdir / 'trials', None)
  assert not outcomes['trial-0000'].error
  out, note = final_model(dataclasses.replace(_context(workdir, config, study, 1, 6.0), epochs=8),
                          dict(name='trial-0000', trial=0, changes={}))
  first, second = workdir / MORE / f'trial-0000-seed{seed}', workdir / MORE / f'trial-0000-seed{seed}-part1'
  assert _kept_models(first) == {(1, seed)} and _kept_models(second) == {(2, seed)}
  trained = {json.loads((f / 'experiment.json').read_text())['rows'][0]['epochs_trained'] for f in (first, second)}
  assert trained == {4, 2}
  assert 'every labelled image' in note


@pytest.mark.parametrize('share, size', [(1.0, (1, 10)), (0.5, (2, 10)), (0.25, (2, 10))])
def test_a_piece_is_priced_at_the_share_of_its_epochs_early_stopping_left_the_source(share, size):
  # Costs(setup 1 s, member 1 s, 1 s a member-epoch), 10 epochs, 14 s of room. At a share of 0.25, three members
  # (3 x 3.5 s) would fit, but each must afford the 5 epochs (SHORTEST) after which a deadline that cuts it keeps it.
  assert piece_size(Costs(1.0, 1.0, 1.0), 1.0, 14.0, 3, 10, share) == size
