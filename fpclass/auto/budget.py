"""The time budget of `--mode auto`: what is used and left, across launches, and what the stages still need.

The budget is the whole run's wall time. Each launch adds the seconds it used to `auto_state.json` as it goes
(after every rung and stage), and a heartbeat writes them to `auto_clock.json` every few seconds between those
saves, so a relaunch after a kill continues with what is left, less at most one beat. The same file keeps the
search's brackets (their rungs, trials, promotions and values), so a relaunch resumes a bracket at the rung it
stopped in, and the cost model (`fpclass.auto.rungs.Costs`) refitted on every variant a round trained.
"""
import contextlib
import dataclasses
import json
import pathlib
import threading
import time

from fpclass import fileio
from fpclass.auto.rungs import Costs

STATE_FILE = 'auto_state.json'
CLOCK_FILE = 'auto_clock.json'   # the heartbeat's used seconds, written between the state's saves
HEARTBEAT = 5.0                  # seconds between two beats: the most of the budget a kill leaves uncounted
SLACK = 0.05   # the run may end this share of the budget late, no more


@dataclasses.dataclass
class Budget:
  seconds: float
  folder: pathlib.Path
  used_before: float = 0.0                      # by earlier launches
  stages: dict = dataclasses.field(default_factory=dict)   # stage -> seconds, all launches
  # (members, member-epochs, seconds, of them compiling) of each variant
  measures: list = dataclasses.field(default_factory=list)
  costs: Costs | None = None
  brackets: list = dataclasses.field(default_factory=list)
  confirm_started: bool = False
  started: float = dataclasses.field(default_factory=time.monotonic)

  @classmethod
  def load(cls, seconds: float, folder, elapsed: float = 0.0) -> 'Budget':
    """The budget as earlier launches left it in `folder`; `elapsed`: the seconds this launch has run already
    (its start-up), which the budget counts too: the user's clock started when the command did."""
    path, clock = pathlib.Path(folder) / STATE_FILE, pathlib.Path(folder) / CLOCK_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    try:   # a beat after the state's last save: the time a killed launch used since
      beat = float(json.loads(clock.read_text()).get('used_seconds', 0.0)) if clock.is_file() else 0.0
    except (OSError, ValueError):
      beat = 0.0
    costs = stored.get('costs')
    used = max(float(stored.get('used_seconds', 0.0)), beat)
    return cls(seconds, pathlib.Path(folder), used, dict(stored.get('stages', {})),
               [tuple(m) for m in stored.get('measures', [])], Costs(**costs) if costs else None,
               list(stored.get('brackets', [])), bool(stored.get('confirm_started', False)),
               time.monotonic() - max(0.0, elapsed))

  def used(self) -> float:
    return self.used_before + time.monotonic() - self.started

  def left(self) -> float:
    return self.seconds - self.used()

  def deadline(self, reserve: float = 0.0, slack: bool = False) -> float:
    """The monotonic time by which a stage must stop, keeping `reserve` seconds for what follows it."""
    end = self.seconds * (1.0 + SLACK) if slack else self.seconds
    return self.started + (end - self.used_before) - reserve

  def add_stage(self, stage: str, seconds: float) -> None:
    self.stages[stage] = self.stages.get(stage, 0.0) + seconds
    self.save()

  def record_costs(self, costs: Costs, measures: list) -> None:
    self.costs, self.measures = costs, [tuple(m) for m in measures]
    self.save()

  def add_measure(self, members: int, member_epochs: int, seconds: float, compile_seconds: float = 0.0) -> None:
    """A variant a round trained: the cost model refitted on every one so far."""
    if member_epochs > 0 and seconds > 0:
      self.measures.append((members, member_epochs, seconds, compile_seconds))
      self.costs = Costs.fitted(self.measures, self.costs.member_epoch)
      self.save()

  def open_bracket(self) -> dict | None:
    return next((b for b in self.brackets if not b.get('done')), None)

  def new_bracket(self, rungs: list) -> dict:
    self.brackets.append(dict(index=len(self.brackets), rungs=rungs, trials=[], promoted=[], values=[], done=False))
    self.save()
    return self.brackets[-1]

  def save(self) -> None:
    fileio.write_json(self.folder / STATE_FILE, dict(
        used_seconds=self.used(), stages=self.stages, budget_seconds=self.seconds, measures=self.measures,
        costs=dataclasses.asdict(self.costs) if self.costs else None, brackets=self.brackets,
        confirm_started=self.confirm_started))

  @contextlib.contextmanager
  def heartbeat(self, every: float = HEARTBEAT):
    """While the block runs, the used seconds are written to auto_clock.json every `every` seconds (a thread of
    its own: a round's epochs do not wait for it), so that a launch killed between two saves of the state loses
    at most one beat of the budget's account."""
    stop = threading.Event()

    def beat():
      while not stop.wait(every):
        try:
          fileio.write_json(self.folder / CLOCK_FILE, {'used_seconds': self.used()})
        except OSError:   # a full disk: the next save of the state counts the time anyway
          pass
    thread = threading.Thread(target=beat, name='auto-heartbeat', daemon=True)
    thread.start()
    try:
      yield self
    finally:
      stop.set()
      thread.join()

  def describe(self) -> str:
    return f'{self.used() / 60:.1f} of {self.seconds / 60:.1f} min used, {max(0.0, self.left()) / 60:.1f} left'
