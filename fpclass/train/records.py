"""What the training loop keeps of each member's epochs, and how a run is stopped.

- `CheckpointRecord` (`--mode train`): the `last` checkpoint with the loop state (a killed run resumes there) at
  each epoch's end whose save can start, `best` when the monitor improves, metrics.csv once the save is
  complete, and the `interrupted` checkpoint of a run stopped by a signal inside an epoch.
- `MemoryRecord` (`--mode sweep`): each member's best variables on the device: a sweep keeps its finished
  members (`fpclass.train.resume.FinishedMembers`), and a search's rounds each member's latest epoch too
  (`on_epoch`).
"""
import dataclasses
import functools
import signal
import threading
import time

import jax

from fpclass.errors import RunInterrupted
from fpclass.runtime import sharding, tracking

INTERRUPTED = 'interrupted'


@dataclasses.dataclass
class PartialEpoch:
  """Where a run stopped by a signal was inside its epoch: the steps done and their metrics."""
  step: int
  step_metrics: list   # one {'loss_sum', 'correct', 'count'} dict of floats per step done


@dataclasses.dataclass
class Start:
  """A member resumed from its checkpoints: its loop state, train state and partial epoch."""
  loop: object       # fpclass.train.loop_state.LoopState
  state: object
  partial: PartialEpoch | None = None
  logits: dict | None = None   # the validation logits of its 'last' and 'best' epochs, where the record kept them


class CheckpointRecord:
  """One member's epochs in the workdir's checkpoint store (`fpclass.train.checkpoint.CheckpointStore`).

  An epoch's end saves the resume point (`last`), and `best` when the monitor improved, unless the previous
  `last` is still being written (one process; several save together, each epoch): then the epoch's state waits
  on the device, and the newest waiting epoch is saved as soon as the disk is free (polled at every step), at
  the run's last epoch, before a stop's checkpoint and at `close`, with the best epoch's variables if they
  changed meanwhile; its metrics rows reach the sinks once that save is complete. Waiting for every save made
  checkpoints 43% of the warm main job on an H100, where an epoch took a seventh of a save (docs/performance.md).
  """
  stops_mid_epoch = True     # a signal stops the run after the current step (the `interrupted` checkpoint)
  keeps_states = False       # the states are in the store
  kept_on_stop = 'its checkpoint is saved.'

  def __init__(self, store, workdir):
    self.store, self.workdir = store, workdir
    self._best = None        # (epoch, evaluated state, loop state) not yet saved as `best`
    self._last = None        # (epoch, state, loop state) not yet saved as `last`
    self._histories = []     # the metrics history at each epoch not yet saved, for the tracking sinks

  def epoch_end(self, m: int, epoch: int, state, loop, improved: bool, logits: dict) -> None:
    waits = not loop.finished and sharding.process_count() == 1 and self.store.busy('last')
    keep = _device_copy if waits else (lambda tree: tree)   # the train step donates the state's buffers
    if improved:
      evaluated = state.for_evaluation()
      self._best = (epoch, evaluated.replace(params=keep(evaluated.params), batch_stats=keep(evaluated.batch_stats),
                                             opt_state=None), loop.to_json())
    self._last = (epoch, keep(state), loop.to_json())
    self._histories.append(list(loop.history))
    if not waits:
      self.flush()

  def flush(self) -> None:
    """Saves the epoch waiting on the device, if any (waiting for the save in flight)."""
    if self._best is not None:
      self.store.save('best', *self._best)
    if self._last is not None:
      epoch, state, loop_state = self._last
      self.store.save('last', epoch, state, loop_state,
                      then=functools.partial(_record_epochs, self.workdir, self._histories))
      self.store.discard(INTERRUPTED)
    self._best, self._last, self._histories = None, None, []

  def poll(self) -> None:
    """Completes the saves that finished (the previous epochs' metrics rows go out now) and starts the waiting
    epoch's once the disk is free."""
    if not self.store.busy('last') and self._last is not None:   # `busy` completes the finished saves first
      self.flush()

  def best_variables(self, m: int, state):
    """The state with the best epoch's variables as evaluated (no average), or None when none was saved."""
    self.flush()
    if self.store.latest_epoch('best') is None:
      return None
    return self.store.restore('best', state)[0]

  def interrupt(self, m: int, epoch: int, state, loop, step_metrics: list, steps: int, stop) -> None:
    """Saves the middle of epoch `epoch` (1-based) and raises RunInterrupted saying how to resume."""
    done = len(step_metrics)
    self.flush()   # the epoch before, whose state and loop the interrupted checkpoint continues
    self.store.save(INTERRUPTED, epoch, state, dict(
        loop.to_json(), interrupted_step=done,
        interrupted_metrics=[{k: float(v) for k, v in s.items()} for s in step_metrics]))
    raise RunInterrupted(f'{stop.name}: stopped after step {done} of {steps} in epoch {epoch}; saved in '
                         f'{self.store.root / INTERRUPTED}. Launch the same command again to resume from step '
                         f'{done + 1}.', stop.signum or signal.SIGTERM)

  def best(self, m: int):
    return None   # on disk

  def finished(self, result) -> None:
    pass


def _record_epochs(workdir, histories: list) -> None:
  """Each epoch (its history so far) to the active tracking sinks (metrics.csv, TensorBoard, MLflow) once the
  `last` checkpoint holding it is complete (saves are asynchronous), so a killed run's metrics.csv lists exactly
  the epochs it resumes after."""
  for history in histories:
    tracking.current().epoch(history, workdir)


def _device_copy(tree):
  """A copy of `tree` on its devices, which the next train step cannot donate away."""
  # A transfer, not a compiled program: jnp.copy per leaf compiled one program per leaf shape (9 on the GPU).
  return jax.device_put(tree, may_alias=False)


class MemoryRecord:
  """Each member's best variables, copied on the device when its monitor improves; `on_finished(result)`
  receives each member's result (with host copies of its states) as soon as it has finished, and
  `on_epoch(m, state, loop, best variables, kept logits)` each member's every epoch (to keep it on disk)."""
  stops_mid_epoch = False
  keeps_states = True
  kept_on_stop = 'the members that had finished are kept.'

  def __init__(self, on_finished=None, on_epoch=None):
    self._best = {}
    self._on_finished = on_finished
    self._on_epoch = on_epoch

  def resume(self, m: int, best) -> None:
    """Member m resumed: the best variables its earlier epochs kept."""
    if best is not None:
      self._best[m] = jax.device_put(tuple(best))

  def finished(self, result) -> None:
    if self._on_finished is not None:
      self._on_finished(result)

  def epoch_end(self, m: int, epoch: int, state, loop, improved: bool, logits: dict) -> None:
    if improved:   # the variables the epoch was validated with (the averaged ones when the run keeps them)
      evaluated = state.for_evaluation()
      self._best[m] = _device_copy((evaluated.params, evaluated.batch_stats))
    if self._on_epoch is not None and not loop.finished:   # a finished member is saved whole (on_finished)
      self._on_epoch(m, state, loop, self._best.get(m), logits)

  def poll(self) -> None:
    pass

  def best_variables(self, m: int, state):
    if m not in self._best:
      return None
    params, batch_stats = self._best[m]
    return state.replace(params=params, batch_stats=batch_stats, ema=None)

  def interrupt(self, m, epoch, state, loop, step_metrics, steps, stop) -> None:
    raise AssertionError('a sweep stops between epochs')   # the loop asks for mid-epoch stops with M = 1 only

  def best(self, m: int):
    """Host copies of member m's best (params, batch_stats) as evaluated, or None."""
    return jax.device_get(self._best[m]) if m in self._best else None


class StopOnSignals:
  """SIGINT and SIGTERM set a flag that the training loop reads after each step; the handlers are put back at
  once, so a second signal acts as usual (KeyboardInterrupt, or termination). With a `deadline` (a
  time.monotonic() value) the flag also rises when it passes: a budgeted search stops its running member
  there, as a signal would, and the member resumes from that step later."""

  def __init__(self, deadline: float | None = None):
    self.signum = None
    self.deadline = deadline
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signum = signum
    self._restore()

  def _restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()

  def requested(self) -> bool:
    return self.signum is not None or self.deadline_passed

  @property
  def deadline_passed(self) -> bool:
    return self.deadline is not None and time.monotonic() >= self.deadline

  @property
  def name(self) -> str:
    if self.signum:
      return signal.Signals(self.signum).name
    return 'the time budget' if self.deadline_passed else 'process 0\'s signal'
