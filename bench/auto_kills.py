"""Issue 77's kill check: `--mode auto` on configs/footprint.py at a 200 s budget, killed with -9 after 45 s and
again 25 s into the relaunch (70 s in all, as in the issue), then relaunched to the end. Prints each launch's wall
time (start-up included), their sum, the seconds `auto_state.json` accounts, and whether `final/` submits.

    python -m bench.auto_kills --workdir /tmp/fakill      # a folder that does not exist yet
"""
import argparse
import json
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def launch(args: list, log: pathlib.Path, kill_after: float | None) -> float:
  """One launch's wall seconds; killed with SIGKILL after `kill_after` seconds when given."""
  start = time.monotonic()
  with open(log, 'w') as out:
    process = subprocess.Popen([sys.executable, 'launch.py', *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
      process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGKILL)
      process.wait()
  return time.monotonic() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', type=pathlib.Path, required=True)
  parser.add_argument('--budget', default='200')
  parser.add_argument('--kills', type=float, nargs='*', default=[45.0, 25.0], help='seconds into each killed launch')
  args = parser.parse_args()
  workdir = args.workdir.resolve()
  if workdir.exists():
    raise SystemExit(f'--workdir {workdir} exists: give a new folder (nothing is deleted)')
  command = ['--config', 'configs/footprint.py', f'--workdir={workdir}', '--mode', 'auto',
             f'--config.auto.time_budget={args.budget}']
  logs = workdir.parent / f'{workdir.name}-logs'
  logs.mkdir(parents=True, exist_ok=True)
  walls = [launch(command, logs / f'launch{i}.log', kill) for i, kill in enumerate([*args.kills, None])]
  submitted = subprocess.run([sys.executable, 'launch.py', f'--workdir={workdir / "final"}', '--mode', 'submit'],
                             cwd=REPO, capture_output=True, text=True).returncode == 0
  state = json.loads((workdir / 'auto_state.json').read_text())
  print(json.dumps(dict(budget=args.budget, launch_walls=[round(w, 1) for w in walls], total=round(sum(walls), 1),
                        accounted=round(state['used_seconds'], 1), stages=state.get('stages'),
                        final_submits=submitted)))


if __name__ == '__main__':
  main()
