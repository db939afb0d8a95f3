"""Where a job's time went: wall seconds per phase, and the XLA programs each phase compiled.

    with timings.job(started_at) as clock:      # the mode runner, around a whole job
      with timings.phase('data'):               # anywhere below it; a no-op when no job is timed
        ...
    clock.rows()                                # one row per phase, for report.md and timings.json

Phases nest: time spent in an inner phase counts to it alone (an evaluation's report writing is 'report',
not 'evaluate'). XLA compilations are read from JAX's own monitoring events: each program JAX hands to XLA
is one `/jax/core/compile/backend_compile_duration` event, and a program served from the persistent
compilation cache is also one `/jax/compilation_cache/cache_hits` event just before it, on the same thread.
So a program is 'compiled' when its event had no cache hit, and 'loaded' when it had one.
"""
import contextlib
import dataclasses
import os
import threading
import time

import jax

PHASES = ('start-up', 'data', 'model', 'epochs', 'checkpoints', 'evaluate', 'explain', 'report')
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'


@dataclasses.dataclass
class PhaseTotals:
  seconds: float = 0.0
  compiled: int = 0             # programs XLA compiled
  compile_seconds: float = 0.0
  loaded: int = 0               # programs read from the persistent compilation cache
  load_seconds: float = 0.0


class JobClock:
  """Accumulates wall time per phase (innermost phase wins) and compilations per phase."""

  def __init__(self, started_at: float | None = None):
    self.started = time.perf_counter()
    # Time before the clock started (the interpreter, imports, flag parsing): 'start-up'.
    self.before = max(0.0, time.time() - started_at) if started_at is not None else 0.0
    self.totals = {name: PhaseTotals() for name in PHASES}
    self._stack = []            # [(phase, entered at)] on the job's thread
    self.thread = threading.get_ident()
    self._hit = threading.local()
    self.totals['start-up'].seconds = self.before

  def enter(self, name: str) -> None:
    now = time.perf_counter()
    if self._stack:
      self._charge(self._stack[-1][0], now - self._stack[-1][1])
    self._stack.append((name, now))

  def leave(self) -> None:
    now = time.perf_counter()
    name, since = self._stack.pop()
    self._charge(name, now - since)
    if self._stack:
      self._stack[-1] = (self._stack[-1][0], now)

  def _charge(self, name: str, seconds: float) -> None:
    self.totals.setdefault(name, PhaseTotals()).seconds += seconds

  @property
  def current(self) -> str:
    return self._stack[-1][0] if self._stack else 'other'

  def on_event(self, event: str, **_) -> None:
    if event == _CACHE_HIT_EVENT:
      self._hit.value = True

  def on_duration(self, event: str, seconds: float, **_) -> None:
    if event != _COMPILE_EVENT:
      return
    totals = self.totals.setdefault(self.current, PhaseTotals())
    if getattr(self._hit, 'value', False):
      totals.loaded += 1
      totals.load_seconds += seconds
    else:
      totals.compiled += 1
      totals.compile_seconds += seconds
    self._hit.value = False

  @property
  def elapsed(self) -> float:
    return self.before + time.perf_counter() - self.started

  def rows(self) -> list:
    """One dict per phase that took time or compiled, in PHASES order, then 'other' (what no phase claimed)."""
    rows = [dict(phase=name, seconds=t.seconds, compiled=t.compiled, compile_seconds=t.compile_seconds,
                 loaded=t.loaded, load_seconds=t.load_seconds)
            for name, t in self.totals.items() if name != 'other' and (t.seconds > 0 or t.compiled or t.loaded)]
    claimed = sum(row['seconds'] for row in rows)
    other = self.totals.get('other', PhaseTotals())
    rows.append(dict(phase='other', seconds=max(0.0, self.elapsed - claimed), compiled=other.compiled,
                     compile_seconds=other.compile_seconds, loaded=other.loaded, load_seconds=other.load_seconds))
    return rows

  def summary(self) -> dict:
    rows = self.rows()
    return dict(total_seconds=self.elapsed, rows=rows,
                programs_compiled=sum(r['compiled'] for r in rows),
                compile_seconds=sum(r['compile_seconds'] for r in rows),
                programs_loaded=sum(r['loaded'] for r in rows),
                outside_epochs_seconds=self.elapsed - sum(r['seconds'] for r in rows if r['phase'] == 'epochs'))


_active: list = []   # the clock of the job running in this process, if any (jobs in one process run one at a time)


def _forward_event(event: str, **kwargs) -> None:
  if _active:
    _active[-1].on_event(event, **kwargs)


def _forward_duration(event: str, seconds: float, **kwargs) -> None:
  if _active:
    _active[-1].on_duration(event, seconds, **kwargs)


# JAX keeps its listeners for the life of the process, so one pair forwards to whichever job is timed.
jax.monitoring.register_event_listener(_forward_event)
jax.monitoring.register_event_duration_secs_listener(_forward_duration)


@contextlib.contextmanager
def job(started_at: float | None = None):
  """Times a job: yields its JobClock; phases entered below it are charged to it."""
  clock = JobClock(started_at)
  _active.append(clock)
  try:
    yield clock
  finally:
    _active.remove(clock)


@contextlib.contextmanager
def phase(name: str):
  """Charges the time of the block (and the programs it compiles) to phase `name` of the running job."""
  clock = _active[-1] if _active else None
  if clock is None or threading.get_ident() != clock.thread:
    yield
    return
  clock.enter(name)
  try:
    yield
  finally:
    clock.leave()


def compile_seconds() -> float:
  """Seconds the running job has spent compiling XLA programs or loading them from the persistent cache, so far;
  0 outside a job. The difference of two reads is what the code between them spent on programs."""
  clock = _active[-1] if _active else None
  return sum(t.compile_seconds + t.load_seconds for t in clock.totals.values()) if clock is not None else 0.0


def job_elapsed() -> float:
  """Seconds since the running job began, its start-up (the interpreter, imports, flag parsing) included; 0
  outside a job."""
  clock = _active[-1] if _active else None
  return clock.before + time.perf_counter() - clock.started if clock is not None else 0.0


def process_start_time() -> float | None:
  """When this process started, as a time.time() value (from /proc: the kernel's start time in clock ticks
  after boot, and the uptime), or None where /proc is absent."""
  try:
    with open('/proc/self/stat') as stat:
      # The command name (field 2) may hold spaces: the fields after it follow its closing parenthesis.
      fields = stat.read().rsplit(')', 1)[1].split()
    with open('/proc/uptime') as uptime:
      seconds_up = float(uptime.read().split()[0])
    started_after_boot = int(fields[19]) / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return None
  return time.time() - (seconds_up - started_after_boot)
