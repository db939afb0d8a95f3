"""The Optuna study of `--mode auto`: its storage, its seeded TPE sampler asked for batches, and the claim of the
confirmation.

Storage: a journal file in the workdir (`optuna.journal`), or a database URL (`config.auto.storage=postgresql://`),
which lets several launches, on one host or several, search one study at once.

Sampling: a round asks for a batch at once. TPE (multivariate) with the constant liar counts the batch's trials
still running as bad results, so one batch spreads out instead of drawing one point n times. The sampler is
seeded by (config.auto.seed, the batch's first trial number). Successive halving is the
search's own (`fpclass.auto.rungs`): a trial reports its value at each rung it reaches (the step), is told
PRUNED when a rung drops it and COMPLETE with its top-rung value, which TPE reads as Optuna's pruners' trials.

The confirmation is claimed through the storage, so two hosts that share no disk still confirm once: each creates
a marker trial (no parameters, never complete) with its claim in one storage operation, and the lowest-numbered
live claim holds (`claim`).
"""
import ast
import datetime
import socket
import time

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend

from fpclass.auto import failed_values
from fpclass.errors import UserInputError
from fpclass.runtime import workdir_lock
from fpclass.train import workdir_layout as layout

JOURNAL = 'optuna.journal'
OWNER = 'owner'
CHANGES = 'changes'
CANDIDATE = 'candidate'
CLAIM = 'claim'                 # a marker trial's user attribute: the process claiming the confirmation
CONFIRMED = 'confirmed_by'      # the study's user attribute once a process has confirmed
FOLDER = 'folder'
CUT = 'cut'                     # a trial's user attribute: the deadline stopped it before it reported
FOLDS = 'folds'                 # the study's user attribute: the folds a trial's top rung trains
MEASURED = 'measured'           # the study's user attribute: the measurement round's value (the config as given)
ATTEMPTS = 'attempts'           # a trial's user attribute: the launches that started its current rung
MAX_ATTEMPTS = 3                # a rung started this often without an end (its process died) fails the trial


def storage_of(url: str, workdir, attempts: int = 20):
  """The study's storage. Launches that open a new database at once race to create its tables, and the losers
  see a unique-key violation or a table that already exists (PostgreSQL's `CREATE TABLE` checks and creates in
  two steps): they try again (the winner's tables are there by then)."""
  if not url:
    return optuna.storages.JournalStorage(JournalFileBackend(str(workdir / JOURNAL)))
  for attempt in range(attempts):
    try:
      return optuna.storages.RDBStorage(url, engine_kwargs={'pool_pre_ping': True})
    except Exception as e:  # noqa: BLE001 -- a bad URL or an unreachable server, named in one line
      raced = isinstance(e, sqlalchemy.exc.IntegrityError) or (
          isinstance(e, sqlalchemy.exc.ProgrammingError) and 'already exists' in str(e))
      if raced and attempt < attempts - 1:
        time.sleep(0.5)
        continue
      raise UserInputError(f'config.auto.storage={url!r}: cannot open the study storage '
                           f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None


def open_study(name: str, url: str, workdir, direction: str, seed: int) -> optuna.Study:
  """The study `name` in its storage (created on first use), with a seeded batch TPE sampler."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(study_name=name, storage=storage_of(url, workdir), sampler=_sampler(seed, 0),
                              pruner=optuna.pruners.NopPruner(), direction=direction, load_if_exists=True)
  if study.direction != optuna.study.StudyDirection[direction.upper()]:
    raise UserInputError(f'the study {name!r} in {url or workdir / JOURNAL} optimises in the other direction; '
                         'use another config.auto.study or --workdir')
  return study


def _sampler(seed: int, trial_number: int) -> optuna.samplers.TPESampler:
  return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + trial_number) % 2**32, n_startup_trials=8,
                                    multivariate=True, constant_liar=True)


def ask_batch(study: optuna.Study, seed: int, count: int) -> list:
  """`count` new trials (enqueued ones first), each recorded with its owner and folder name."""
  trials = []
  for i in range(count):
    trial = study.ask()
    if i == 0:
      study.sampler = _sampler(seed, trial.number)
    trial.set_user_attr(OWNER, workdir_lock.process_owner())
    trial.set_user_attr(FOLDER, layout.trial_name(trial.number))
    trials.append(trial)
  return trials


def changes_of(trial) -> dict:
  """The config changes a trial trains (its CHANGES attribute, stored as reprs)."""
  return {k: ast.literal_eval(v) for k, v in trial.user_attrs.get(CHANGES, {}).items()}


def is_marker(trial) -> bool:
  return CLAIM in trial.user_attrs


def searched(study: optuna.Study) -> list:
  """Every trial that reported a value (complete, or pruned at a rung), markers left out."""
  return [t for t in study.get_trials(deepcopy=False) if not is_marker(t)
          and (t.state == optuna.trial.TrialState.COMPLETE or t.intermediate_values)]


def taken_count(study: optuna.Study) -> int:
  """Trials finished, failed, cut or being run: what counts against config.auto.trials (a failing trial costs one
  trial of the count, as it costs its seconds)."""
  taken = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING,
           optuna.trial.TrialState.FAIL)
  return len([t for t in study.get_trials(deepcopy=False, states=taken) if not is_marker(t)
              and failed_values.SKIPPED not in t.user_attrs])   # a draw set aside trained nothing


def others_running(study: optuna.Study) -> list[int]:
  """The running trials of other processes that are alive (or on another host, where that cannot be told)."""
  me = workdir_lock.process_owner()
  return [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
          if not is_marker(t) and (t.user_attrs.get(OWNER) or {}) != me
          and workdir_lock.owner_alive(t.user_attrs.get(OWNER) or {})]


def wait_for_others(study: optuna.Study, deadline: float, poll: float = 1.0) -> list[int]:
  """Waits until no other process runs a trial of the study, or until the monotonic `deadline`; returns the
  trials still running then (the confirmation chooses among the finished ones)."""
  while (running := others_running(study)) and time.monotonic() < deadline:
    time.sleep(poll)
  return running


def claim(study: optuna.Study, expires_in: float) -> optuna.Trial | None:
  """This process's claim of the confirmation (its marker trial), or None when a live claim holds it or a process
  has confirmed already. The marker is created with its claim in one operation of the storage (journal and
  database alike), so a claim that another process reads is complete, and the lowest-numbered live one holds:
  two launches that reach their deadline together cannot both win. A claim is dead when its process is gone (on
  this host), or, from another host, whose processes cannot be seen, once `expires_in` seconds after it was made
  have passed (the claimer's budget left, and some slack)."""
  if study.user_attrs.get(CONFIRMED):
    return None
  owner = dict(workdir_lock.process_owner(), expires=time.time() + float(expires_in))
  now = datetime.datetime.now()
  template = optuna.trial.FrozenTrial(number=-1, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=now,
                                      datetime_complete=None, params={}, distributions={}, user_attrs={CLAIM: owner},
                                      system_attrs={}, intermediate_values={}, trial_id=-1)
  trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
  mine = optuna.trial.Trial(study, trial_id)
  holders = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
             if is_marker(t) and (t._trial_id == trial_id or claim_alive(t.user_attrs[CLAIM]))]
  if min(t.number for t in holders) == mine.number:
    return mine
  study.tell(mine, state=optuna.trial.TrialState.FAIL)
  return None


def claim_alive(owner: dict, now: float | None = None) -> bool:
  """Whether a claim still holds: its process is alive on this host; on another host, until it expires."""
  if owner.get('host') != socket.gethostname():
    return (now or time.time()) < float(owner.get('expires', float('inf')))
  return workdir_lock.owner_alive(owner)


def release(study: optuna.Study, marker: optuna.Trial, confirmed: bool) -> None:
  """Ends the claim: FAIL keeps the marker out of every sampler and count; `confirmed` records who confirmed."""
  if confirmed:
    study.set_user_attr(CONFIRMED, workdir_lock.process_owner())
  study.tell(marker, state=optuna.trial.TrialState.FAIL)
