"""The GPU session's steps for the first minute and this round's work (issue 80): where the start-up goes, a
semi-supervised epoch against the supervised one, and what the "none of my classes" score costs per image. Each
runs launch.py or a bench/ script through its `Step` and returns what it read back from what ran."""
import csv
import json
import re
import statistics
import sys

from bench.gpu_session_core import Session, Step, StepFailed, read_json, trained_footprint_run

# `python -X importtime` writes "import time: self [us] | cumulative | imported package" to stderr.
IMPORT_TIME = re.compile(r'^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)\s*$', re.MULTILINE)
BACKEND_PROBE = ('import json, time; t0 = time.perf_counter(); import jax; t1 = time.perf_counter(); '
                 'jax.devices(); t2 = time.perf_counter(); jax.numpy.zeros(8).block_until_ready(); '
                 't3 = time.perf_counter(); print(json.dumps(dict(import_jax=t1 - t0, backend_init=t2 - t1, '
                 'first_array=t3 - t2)))')


def startup_step(session: Session, step: Step) -> dict:
  """The start-up of a launch, taken apart: `python -X importtime` on launch.py and the train mode (the imports a
  training job pays, the 15 of their own imports that cost most, and the 15 modules whose own code costs most)
  and, in a fresh interpreter, JAX's import, its backend's start and its first array."""
  imports = step.run([sys.executable, '-X', 'importtime', '-c', 'import launch, fpclass.modes.train'])
  step.check(imports, 'launch.py\'s imports under -X importtime')
  total, direct, own = 0.0, {}, {}
  for self_us, cumulative, indent, module in IMPORT_TIME.findall(imports.output):
    own[module] = int(self_us) / 1e6
    if len(indent) == 1 and module in ('launch', 'fpclass.modes.train'):
      total += int(cumulative) / 1e6
    elif len(indent) == 3:   # what those two import themselves (a package another reached first counts there)
      direct[module] = int(cumulative) / 1e6
  probe = step.run([sys.executable, '-c', BACKEND_PROBE])
  step.check(probe, 'the JAX backend probe')
  backend = read_last_json_line(probe.output)
  return dict(import_seconds=round(total, 3),
              costliest_imports={m: round(s, 3) for m, s in sorted(direct.items(), key=lambda kv: -kv[1])[:15]},
              costliest_modules_alone={m: round(s, 3) for m, s in sorted(own.items(), key=lambda kv: -kv[1])[:15]},
              **{key: round(value, 3) for key, value in backend.items()})


def semi_step(session: Session, step: Step) -> dict:
  """The footprint config trained twice through launch.py for the same epochs, once with the source's test
  images as `data.unlabelled` (FixMatch, config.semi's defaults): the epochs' seconds from each metrics.csv,
  and the steady semi-supervised epoch over the supervised one against issue 80's bar, 1 + semi.ratio."""
  work = session.scratch / 'semi'
  arms = dict(supervised=[], semi=['--config.data.unlabelled=test'])
  results = {}
  for arm, extra in arms.items():
    workdir = work / arm
    done = step.run([sys.executable, 'launch.py', '--workdir', workdir, *session.plan.semi_args, *extra])
    step.check(done, f'the {arm} footprint run')
    with open(workdir / 'metrics.csv', newline='') as metrics:
      seconds = [float(row['seconds']) for row in csv.DictReader(metrics)]
    timings = read_json(workdir / 'timings.json')
    results[arm] = dict(epoch_seconds=seconds, epoch_1_seconds=seconds[0],
                        steady_epoch_seconds=statistics.median(seconds[1:]) if len(seconds) > 1 else None,
                        programs_compiled=timings['programs_compiled'], total_seconds=timings['total_seconds'])
  ratio = read_json(work / 'semi' / 'metadata.json')['config']['semi']['ratio']
  semi, supervised = results['semi'], results['supervised']
  if semi['steady_epoch_seconds'] and supervised['steady_epoch_seconds']:
    results['steady_semi_over_supervised'] = round(semi['steady_epoch_seconds'] / supervised['steady_epoch_seconds'],
                                                   3)
  results.update(semi_ratio=ratio, bar=1 + ratio)
  return results


def ood_step(session: Session, step: Step) -> dict:
  """bench/ood_cost.py on the footprint step's trained run: each score's program against the logits alone."""
  trained = trained_footprint_run(session, step)
  report_path = session.scratch / 'ood-cost.json'
  done = step.run([sys.executable, 'bench/ood_cost.py', '--workdir', trained.workdir, '--out', report_path,
                   *session.plan.ood_args])
  step.check(done, 'bench/ood_cost.py')
  return dict(read_json(report_path), measured_workdir=str(trained.workdir))


def read_last_json_line(output: str) -> dict:
  for line in reversed(output.strip().splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  raise StepFailed(f'no JSON line in:\n{output[-2000:]}')


ROUND_STEP_FUNCTIONS = dict(startup=startup_step, semi=semi_step, ood=ood_step)
