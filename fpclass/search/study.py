"""The Optuna study of `--mode auto`: its storage, its seeded TPE sampler and its Wilcoxon pruner, and the trials
an earlier launch left running.

Storage: by default a journal file in the workdir (`optuna.journal`, Optuna's JournalStorage with a file
backend: no server), or a database URL (`config.auto.storage=postgresql://...`), which lets several launches, on
one host or several, work on one study at once. A trial records who runs it (host and process id); a launch
fails the trials whose process on this host is gone and asks for their parameters again, so the retry trains in
the same folder and resumes its members where they stopped.
"""
import hashlib
import json
import os
import socket

import optuna
from optuna.storages.journal import JournalFileBackend

from fpclass.errors import UserInputError

JOURNAL = 'optuna.journal'
OWNER = 'owner'
CHANGES = 'changes'
CANDIDATE = 'candidate'
RETRY_OF = 'retry_of'


def storage_of(url: str, workdir):
  if not url:
    return optuna.storages.JournalStorage(JournalFileBackend(str(workdir / JOURNAL)))
  try:
    return optuna.storages.RDBStorage(url, engine_kwargs={'pool_pre_ping': True})
  except Exception as e:  # noqa: BLE001 -- a bad URL or an unreachable server, named in one line
    raise UserInputError(f'config.auto.storage={url!r}: cannot open the study storage '
                         f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None


def open_study(name: str, url: str, workdir, direction: str, seed: int, p_threshold: float) -> optuna.Study:
  """The study `name` in its storage (created on first use), with a seeded TPE sampler and a Wilcoxon pruner."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
  pruner = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=2)
  study = optuna.create_study(study_name=name, storage=storage_of(url, workdir), sampler=sampler, pruner=pruner,
                              direction=direction, load_if_exists=True)
  if study.direction != optuna.study.StudyDirection[direction.upper()]:
    raise UserInputError(f'the study {name!r} in {url or workdir / JOURNAL} optimises in the other direction; '
                         'use another config.auto.study or --workdir')
  return study


def owner() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid()}


def alive(pid: int) -> bool:
  """Whether process `pid` of this host is running."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def retry_stale_trials(study: optuna.Study) -> list[int]:
  """Fails the running trials whose process on this host is gone and enqueues their parameters again; returns
  their numbers. A trial of another live process (this host or another) is left to it."""
  retried = []
  here = socket.gethostname()
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    who = trial.user_attrs.get(OWNER) or {}
    if who.get('host') != here or alive(int(who.get('pid', -1))):
      continue
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number}, skip_if_exists=False)
    retried.append(trial.number)
  return retried


def trial_folder_name(changes: dict) -> str:
  """The folder of a trial's members, named by its changes: a retried trial trains in its predecessor's."""
  text = json.dumps({k: repr(v) for k, v in sorted(changes.items())})
  return 'trial-' + hashlib.sha1(text.encode()).hexdigest()[:10]


def completed(study: optuna.Study) -> list:
  return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def finished_count(study: optuna.Study) -> int:
  done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  return len(study.get_trials(deepcopy=False, states=done))
