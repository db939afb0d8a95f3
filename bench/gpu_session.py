"""Measures fpclass on a lent GPU in one command (issue 45), so that a session's device time goes to measuring.

Ten steps, each through launch.py or a bench/ script, each recorded under its name in <out>/session.json
(status, seconds, the device, the software versions, the commands with each one's wall and CPU seconds, the
results; the file is rewritten after every step), and <out>/session.log holds every command's output: two files,
within the run tool's 8.

    bash bench/gpu_session.sh prepare                          # here, with the network: .whl/ (wheels, hey)
    bash bench/gpu_session.sh --out "$OUT"                     # on the GPU machine, with .whl/ carried
    python bench/gpu_session.py --cpu-dry-run --out /tmp/dry   # here: every step at tiny sizes on the CPU

`prepare` fills .whl/ with the wheels the GPU image lacks (../shared/tools/device_wheels.sh, plus what these
steps and the suite need) and Debian's hey (`apt-get download hey`, unpacked by `dpkg -x` into .whl/hey/).
On the GPU machine the wrapper installs those wheels into /tmp/site, puts .whl/hey/usr/bin on PATH and runs
this script; through the `run` tool: command `bash bench/gpu_session.sh --out $OUT`, carry `.whl`.

Steps (`--steps`, in this order by default):
- startup: where a launch's start-up goes: launch.py's imports (`python -X importtime`), JAX's backend start;
- keras_recipes: bench/keras_recipes.py, fpclass against Keras 3 on JAX, epoch 1 and the steady epochs;
- footprint: bench/footprint_end_to_end.py, the README's main job cold and warm, with the programs compiled
  (read back from each workdir's timings.json);
- semi: the footprint config for a few epochs with and without its test images as data.unlabelled (FixMatch),
  the steady epochs' ratio against 1 + semi.ratio;
- ood: bench/ood_cost.py on the footprint step's run, each "none of my classes" score against the logits alone;
- population: bench/gpu_population.py, a sweep of 15 members on the vmap axis against the loop axis and one
  member alone, --mode auto on each axis within one budget, and auto's final ensemble served at 64 clients;
- serve: bench/serve_load.py at 64 clients with hey, on the footprint step's trained workdir;
- sharing: two `--mode serve` servers under hey while a training run shares the device;
- precision: the transfer recipes through launch.py with train.precision fp32 and bf16 (speed, accuracy);
- pytest: the GPU-relevant test files, `pytest -n 4` (the dry run: one small file, without xdist's workers).
Each step has its own time cap within `--budget` (the suite gets what is left), and a step that fails or runs
past its cap records that in its JSON while the others still run. Nothing is downloaded by this script.
"""
import argparse
import ast
import dataclasses
import os
import pathlib
import shutil
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_session_core import (  # noqa: E402
  LOG_LIMIT_BYTES,
  MIN_STEP_SECONDS,
  RESERVED_PER_LATER_STEP,
  STEPS,
  Plan,
  Session,
  Step,
  StepFailed,
  write_json,
)
from bench.gpu_steps import STEP_FUNCTIONS  # noqa: E402

# ---------------------------------------------------------------------------------------------- the session

def step_limit(session: Session, name: str, steps_after: int) -> float:
  """The step's cap, within what the budget has left after keeping some for each later step."""
  left = session.budget - session.elapsed()
  return min(session.plan.caps[name], left - RESERVED_PER_LATER_STEP * steps_after)


def run_step(session: Session, name: str, steps_after: int) -> dict:
  limit = step_limit(session, name, steps_after)
  record = dict(step=name, status='ok', error=None, limit_seconds=round(limit, 1), seconds=0.0,
                environment=dict(session.environment, load_average_at_start=os.getloadavg()[0]),
                commands=[], command_costs=[], results={})
  if limit < MIN_STEP_SECONDS:
    record.update(status='skipped', error=f'the session\'s budget of {session.budget:.0f} s is spent')
  else:
    session.say(f'step {name}: at most {limit:.0f} s')
    step = Step(session, name, limit)
    record['commands'], record['command_costs'] = step.commands, step.costs
    start = time.monotonic()
    try:
      record['results'] = STEP_FUNCTIONS[name](session, step)
    except StepFailed as e:
      record.update(status=e.status, error=str(e), results=e.partial)
    except (Exception, SystemExit) as e:   # a step's failure is its record; the next step still runs
      record.update(status='error', error=f'{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}')
    record['seconds'] = round(time.monotonic() - start, 2)
  session.say(f'step {name}: {record["status"]} in {record["seconds"]:.1f} s'
              + (f': {record["error"].splitlines()[0]}' if record['error'] else ''))
  return record


def trim_log(path: pathlib.Path) -> None:
  """Keeps the log under the run tool's file size limit: its start and its end."""
  if path.exists() and path.stat().st_size > LOG_LIMIT_BYTES:
    data = path.read_bytes()
    keep = LOG_LIMIT_BYTES // 2
    path.write_bytes(data[:keep] + b'\n[... trimmed ...]\n' + data[-keep:])


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', type=pathlib.Path, required=True, help='session.json (every step\'s record) and session.log')
  p.add_argument('--cpu-dry-run', action='store_true', help='every step at tiny sizes on the CPU')
  p.add_argument('--steps', default=','.join(STEPS), help='steps to run, in this order')
  p.add_argument('--budget', type=float, help='seconds for all steps (default: 520 on the GPU, 3600 dry)')
  p.add_argument('--caps', default='', help='STEP=SECONDS,... to change steps\' time caps, e.g. keras_recipes=400')
  p.add_argument('--plan', action='append', default=[], metavar='FIELD=VALUE',
                 help='changes a field of the plan (bench/gpu_session_core.Plan) for this session, the value a Python '
                      "literal, e.g. population_auto_budget='90s' or population_sweeps=()")
  p.add_argument('--scratch', type=pathlib.Path, help='data, workdirs and caches (default: a temporary folder, '
                 'removed at the end; a folder given here is kept)')
  args = p.parse_args(argv)
  args.steps = [s.strip() for s in args.steps.split(',') if s.strip()]
  unknown = sorted(set(args.steps) - set(STEPS))
  try:
    args.caps = {step: float(seconds) for step, seconds in (c.split('=') for c in args.caps.split(',') if c)}
  except ValueError:
    p.error(f'--caps {args.caps!r}: STEP=SECONDS, comma-separated')
  unknown += sorted(set(args.caps) - set(STEPS))
  if unknown:
    p.error(f'unknown steps {unknown}; the steps: {", ".join(STEPS)}')
  try:
    args.plan = plan_fields(args.plan)
  except ValueError as e:
    p.error(f'--plan: {e}')
  return args


def plan_fields(assignments: list[str]) -> dict:
  """--plan FIELD=VALUE, each a field of `Plan` and a Python literal."""
  known = {field.name for field in dataclasses.fields(Plan)}
  fields = {}
  for assignment in assignments:
    name, _, value = assignment.partition('=')
    if name not in known:
      raise ValueError(f'{assignment!r}: no field {name!r}; the fields: {", ".join(sorted(known))}')
    try:
      fields[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise ValueError(f'{assignment!r}: {value!r} is not a Python literal (quote strings)') from None
  return fields


def main(argv=None) -> int:
  args = parse_args(argv)
  session = Session(args)
  device = session.environment['device']
  session.say(f'GPU session{" (CPU dry run)" if session.dry_run else ""}: {device.get("name", device)}, '
              f'{session.budget:.0f} s for {", ".join(args.steps)}; scratch {session.scratch}')
  summary = dict(environment=session.environment, budget_seconds=session.budget, steps={})
  try:
    for i, name in enumerate(args.steps):
      record = run_step(session, name, len(args.steps) - i - 1)
      summary['steps'][name] = record
      summary['total_seconds'] = round(session.elapsed(), 1)
      write_json(session.out / 'session.json', summary)
  finally:
    trim_log(session.log_path)
    if args.scratch is None:
      shutil.rmtree(session.scratch, ignore_errors=True)
  failed = [name for name, step in summary['steps'].items() if step['status'] != 'ok']
  print(f'done in {session.elapsed():.0f} s; ' + (f'not ok: {", ".join(failed)}' if failed else 'every step ok')
        + f'; written to {session.out}', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
