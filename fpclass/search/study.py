"""The Optuna study of `--mode auto`: its storage, its seeded TPE sampler and its Wilcoxon pruner, and the trials
an earlier launch left running.

Storage: by default a journal file in the workdir (`optuna.journal`, Optuna's JournalStorage with a file
backend: no server), or a database URL (`config.auto.storage=postgresql://...`), which lets several launches, on
one host or several, work on one study at once. A trial records who runs it (host and process id); a launch
fails the trials whose process on this host is gone and asks for their parameters again, so the retry trains in
the same folder and resumes its members where they stopped.

Sampling: each trial samples with a TPE sampler seeded by (config.auto.seed, trial number), so one process's
search is reproducible and processes sharing a study do not draw the same parameters (one seeded sampler per
process would). Each trial trains in its own folder, `trials/trial-<number>` (a retry in its predecessor's).
"""
import time

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend

from fpclass.errors import UserInputError
from fpclass.runtime import workdir_lock

JOURNAL = 'optuna.journal'
OWNER = 'owner'
CHANGES = 'changes'
CANDIDATE = 'candidate'
RETRY_OF = 'retry_of'
FOLDER = 'folder'


def storage_of(url: str, workdir, attempts: int = 20):
  """The study's storage. Launches that open a new database at once race to create its tables, and the losers
  see a unique-key violation: they try again (the winner's tables are there by then)."""
  if not url:
    return optuna.storages.JournalStorage(JournalFileBackend(str(workdir / JOURNAL)))
  for attempt in range(attempts):
    try:
      return optuna.storages.RDBStorage(url, engine_kwargs={'pool_pre_ping': True})
    except sqlalchemy.exc.IntegrityError:
      if attempt == attempts - 1:
        raise
      time.sleep(0.5)
    except Exception as e:  # noqa: BLE001 -- a bad URL or an unreachable server, named in one line
      raise UserInputError(f'config.auto.storage={url!r}: cannot open the study storage '
                           f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None


def open_study(name: str, url: str, workdir, direction: str, seed: int, p_threshold: float) -> optuna.Study:
  """The study `name` in its storage (created on first use), with a seeded TPE sampler and a Wilcoxon pruner."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  sampler = _sampler(seed, 0)
  pruner = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=2)
  study = optuna.create_study(study_name=name, storage=storage_of(url, workdir), sampler=sampler, pruner=pruner,
                              direction=direction, load_if_exists=True)
  if study.direction != optuna.study.StudyDirection[direction.upper()]:
    raise UserInputError(f'the study {name!r} in {url or workdir / JOURNAL} optimises in the other direction; '
                         'use another config.auto.study or --workdir')
  return study


def _sampler(seed: int, trial_number: int) -> optuna.samplers.TPESampler:
  return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + trial_number) % 2**32, n_startup_trials=4)


def ask(study: optuna.Study, seed: int) -> optuna.Trial:
  """A new trial (or an enqueued retry), recorded with its owner and folder, whose parameters come from a
  sampler seeded by its number (the suggestions are drawn after the ask, from `study.sampler`)."""
  trial = study.ask()
  study.sampler = _sampler(seed, trial.number)
  trial.set_user_attr(OWNER, workdir_lock.process_owner())
  if FOLDER not in trial.user_attrs:
    trial.set_user_attr(FOLDER, f'trial-{trial.number:04d}')
  return trial


def retry_stale_trials(study: optuna.Study) -> list[int]:
  """Fails the running trials whose process on this host is gone and enqueues their parameters again; returns
  their numbers. A trial of another live process (this host or another) is left to it."""
  retried = []
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    if workdir_lock.owner_alive(trial.user_attrs.get(OWNER) or {}):
      continue
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, FOLDER: trial.user_attrs.get(FOLDER)},
                        skip_if_exists=False)
    retried.append(trial.number)
  return retried


def others_running(study: optuna.Study) -> list[int]:
  """The running trials of other processes that are alive (or on another host, where that cannot be told)."""
  me = workdir_lock.process_owner()
  out = []
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    who = trial.user_attrs.get(OWNER) or {}
    if who != me and workdir_lock.owner_alive(who):
      out.append(trial.number)
  return out


def wait_for_others(study: optuna.Study, deadline: float, poll: float = 1.0) -> list[int]:
  """Waits until no other process runs a trial of the study, or until the monotonic `deadline`; returns the
  trials still running then (the confirmation chooses among the finished ones)."""
  while (running := others_running(study)) and time.monotonic() < deadline:
    time.sleep(poll)
  return running


def completed(study: optuna.Study) -> list:
  return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def taken_count(study: optuna.Study) -> int:
  """Trials finished or being run: what counts against config.auto.trials."""
  taken = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
  return len(study.get_trials(deepcopy=False, states=taken))
