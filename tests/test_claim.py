"""One claimant of auto's confirmation (issue 77, item 7): the claim is created whole in the study's storage, so
two launches that claim at once cannot both win, and a claim from another host expires."""
import socket
import time

import optuna
import pytest
import sqlalchemy

from fpclass.auto import study as study_lib
from fpclass.errors import UserInputError


def _study():
  return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_two_claims_at_the_worst_moment_make_one_claimant():
  """The second launch claims right after the first one's marker is created, before the first reads the claims:
  exactly one of them holds the claim (the first, the lower number)."""
  study = _study()
  storage, results, create = study._storage, {}, study._storage.create_new_trial

  def interleaved(study_id, template_trial=None):
    trial_id = create(study_id, template_trial)
    if 'second' not in results:
      results['second'] = None
      results['second'] = study_lib.claim(study, 100.0)
    return trial_id
  storage.create_new_trial = interleaved
  first = study_lib.claim(study, 100.0)
  storage.create_new_trial = create
  assert first is not None and results['second'] is None
  assert study_lib.claim(study, 100.0) is None   # a third, later, sees the live claim


def test_a_claim_from_another_host_holds_until_it_expires():
  study = _study()
  elsewhere = {'host': 'node-b.' + socket.gethostname(), 'pid': 1}
  for expires, wins in ((time.time() + 3600, False), (time.time() - 1, True)):
    trial = study.ask()
    trial.set_user_attr(study_lib.CLAIM, dict(elsewhere, expires=expires))
    mine = study_lib.claim(study, 100.0)
    assert (mine is not None) == wins
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
  assert study_lib.claim_alive(dict(elsewhere, expires=10.0), now=9.0)
  assert not study_lib.claim_alive(dict(elsewhere, expires=10.0), now=11.0)


def test_a_launch_that_loses_the_race_to_create_the_tables_tries_again(monkeypatch, tmp_path):
  """Two launches opening a new PostgreSQL database at once: the loser sees the winner's table already there
  (DuplicateTable, a ProgrammingError) or a unique key taken (IntegrityError), and opens it again; another
  error is named in one line at once."""
  errors = [sqlalchemy.exc.ProgrammingError('CREATE TABLE studies', {}, Exception('relation "studies" already exists')),
            sqlalchemy.exc.IntegrityError('INSERT', {}, Exception('duplicate key value'))]
  calls = []

  def storage(url, engine_kwargs=None):
    calls.append(url)
    if errors:
      raise errors.pop(0)
    return 'the storage'
  monkeypatch.setattr(study_lib.optuna.storages, 'RDBStorage', storage)
  monkeypatch.setattr(study_lib.time, 'sleep', lambda seconds: None)
  assert study_lib.storage_of('postgresql://db', tmp_path) == 'the storage' and len(calls) == 3
  errors[:] = [sqlalchemy.exc.ProgrammingError('SELECT', {}, Exception('permission denied for table studies'))]
  with pytest.raises(UserInputError, match='cannot open the study storage.*permission denied'):
    study_lib.storage_of('postgresql://db', tmp_path)
  assert len(calls) == 4
