"""The time budget of `--mode auto`: what is used and left, across launches, and what the stages still need.

The budget is the whole run's wall time. Each launch adds the seconds it used to `auto_state.json` as it goes
(after every trial and stage), so a relaunch after a kill continues with what is left. The search stops taking
new trials when the next one and a reserve for the confirmation and the refit would not fit; both estimates come
from the members' times measured so far (a trial is k of them).
"""
import dataclasses
import json
import pathlib
import statistics
import time

from fpclass import fileio

STATE_FILE = 'auto_state.json'
SLACK = 0.05   # the run may end this share of the budget late, no more


@dataclasses.dataclass
class Budget:
  seconds: float
  folder: pathlib.Path
  used_before: float = 0.0                      # by earlier launches
  stages: dict = dataclasses.field(default_factory=dict)   # stage -> seconds, all launches
  member_seconds: dict = dataclasses.field(default_factory=dict)   # candidate -> seconds of each member trained
  started: float = dataclasses.field(default_factory=time.monotonic)

  @classmethod
  def load(cls, seconds: float, folder) -> 'Budget':
    path = pathlib.Path(folder) / STATE_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    return cls(seconds, pathlib.Path(folder), float(stored.get('used_seconds', 0.0)), dict(stored.get('stages', {})),
               {k: list(v) for k, v in stored.get('member_seconds', {}).items()})

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

  def add_member(self, candidate: str, seconds: float) -> None:
    if seconds > 0:
      self.member_seconds.setdefault(candidate, []).append(seconds)
      self.save()

  def member(self, candidate: str | None = None) -> float | None:
    """The median seconds of one member (of `candidate`'s, when it has any), or None before any finished."""
    values = self.member_seconds.get(candidate) or [s for v in self.member_seconds.values() for s in v]
    return statistics.median(values) if values else None

  def save(self) -> None:
    fileio.write_json(self.folder / STATE_FILE, dict(used_seconds=self.used(), stages=self.stages,
                                                      member_seconds=self.member_seconds, budget_seconds=self.seconds))

  def describe(self) -> str:
    return f'{self.used() / 60:.1f} of {self.seconds / 60:.1f} min used, {max(0.0, self.left()) / 60:.1f} left'
