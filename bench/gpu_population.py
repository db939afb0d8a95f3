"""The GPU session's step for the engine's model axis (issue 57): a sweep of 15 members on the vmap axis against
the same members on the loop axis and against one member alone, an auto population on each axis within the same
budget, and serving the auto run's final ensemble at 64 clients. Each through launch.py or bench/serve_load.py;
the figures are read back from the workdirs (timings.json, trials.csv, auto.json)."""
import csv
import pathlib
import sys
import time

from bench.gpu_session_core import Session, Step, StepFailed, accounted_serve_report, read_json

# The sweeps compared: (config.sweep.folds, config.sweep.seeds, config.sweep.model_axis) of configs/footprint_sweep.py's
# one variant; () is its 5 folds.
# The CPU dry run's pair (vmap_3, loop_3) is one fold's 3 seeds: what it checks is that both axes launch and are read.
SWEEPS = dict(one_member=('(0,)', '(0,)', 'vmap'), vmap_15=('()', '(0,1,2)', 'vmap'), loop_15=('()', '(0,1,2)', 'loop'),
              vmap_3=('(0,)', '(0,1,2)', 'vmap'), loop_3=('(0,)', '(0,1,2)', 'loop'))
RATIOS = (('vmap_15', 'one_member'), ('loop_15', 'vmap_15'), ('loop_3', 'vmap_3'))   # (over, under) where both ran


def population_step(session: Session, step: Step) -> dict:
  plan = session.plan
  work = session.scratch / 'population'
  results = dict(sweeps={}, auto={})
  try:
    for name in plan.population_sweeps:
      folds, seeds, axis = SWEEPS[name]
      workdir = work / f'sweep-{name}'
      results['sweeps'][name] = launched(step, workdir, [
          '--config', plan.population_sweep_config, '--mode', 'sweep', f'--config.sweep.folds={folds}',
          f'--config.sweep.seeds={seeds}', f'--config.sweep.model_axis={axis}', *plan.population_args])
    sweeps = results['sweeps']
    for over, under in RATIOS:
      if over in sweeps and under in sweeps:
        results[f'{over}_over_{under}'] = ratio(sweeps[over], sweeps[under])
    for axis in plan.population_auto_axes:
      workdir = work / f'auto-{axis}'
      record = launched(step, workdir, ['--config', plan.population_auto_config, '--mode', 'auto',
                                        f'--config.auto.time_budget={plan.population_auto_budget}',
                                        f'--config.sweep.model_axis={axis}', *plan.population_args])
      record.update(auto_figures(workdir))
      results['auto'][axis] = record
    results['serve_ensemble'] = serve_ensemble(session, step, work / f'auto-{plan.population_auto_axes[0]}' / 'final')
  except StepFailed as e:
    raise StepFailed(str(e), e.status, results) from None
  return results


def launched(step: Step, workdir: pathlib.Path, args: list) -> dict:
  """One launch.py run: its wall seconds here, and a sweep's own figures (sweep_results.csv: its training
  seconds, wall seconds and seconds per model-epoch; --mode sweep and auto write no timings.json)."""
  start = time.monotonic()
  done = step.run([sys.executable, 'launch.py', *args, '--workdir', workdir,
                   '--config.explain.after_training=False', '--config.train.tensorboard=False'])
  record = dict(launch_seconds=round(time.monotonic() - start, 2), exit_status=done.returncode)
  step.check(done, f'launch.py {" ".join(map(str, args))}')
  results = workdir / 'sweep_results.csv'
  if results.exists():
    with open(results) as f:
      rows = list(csv.DictReader(f))
    record.update(models=sum(int(r['models']) for r in rows),
                  **{key: sum(float(r[key]) for r in rows) for key in ('train_seconds', 'wall_seconds')},
                  seconds_per_model_epoch=[float(r['seconds_per_model_epoch']) for r in rows])
  return record


def ratio(over: dict, under: dict) -> dict:
  """over / under for the whole launch and for the sweep's training alone."""
  return {key: round(over[key] / under[key], 3) if over.get(key) and under.get(key) else None
          for key in ('launch_seconds', 'train_seconds')}


def auto_figures(workdir: pathlib.Path) -> dict:
  """How far the search got within its budget: trials per state and the rungs' member-epochs (trials.csv), and
  the choice with its score (auto.json)."""
  with open(workdir / 'trials.csv') as f:
    trials = list(csv.DictReader(f))
  states = {}
  for row in trials:
    states[row.get('state', '?')] = states.get(row.get('state', '?'), 0) + 1
  summary = read_json(workdir / 'auto.json')
  chosen = {key: value for key, value in (summary.get('chosen') or {}).items() if key != 'config'}
  return dict(trials=len(trials), trial_states=states, chosen=chosen, changes=summary.get('changes'),
              brackets=summary.get('brackets'), stages=summary.get('stages'),
              used_seconds=summary.get('used_seconds'), budget_seconds=summary.get('budget_seconds'))


def serve_ensemble(session: Session, step: Step, workdir: pathlib.Path) -> dict:
  """bench/serve_load.py at 64 clients on an ensemble workdir (auto's final/)."""
  if session.hey is None:
    raise StepFailed('hey is missing: apt-get install hey, or `bash bench/gpu_session.sh prepare` and carry .whl')
  report_path = session.scratch / 'serve-ensemble-report.json'
  done = step.run([sys.executable, 'bench/serve_load.py', '--workdir', workdir, '--json', report_path,
                   *session.plan.population_serve_args])
  step.check(done, 'bench/serve_load.py on the ensemble')
  report = accounted_serve_report(report_path)
  members = read_json(workdir / 'metadata.json').get('ensemble', {}).get('members', [])
  return dict(report, served_workdir=str(workdir), models=sum(len(m.get('models', [])) for m in members))
