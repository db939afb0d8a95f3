"""The sweep's memory rule (fpclass/train/memory_plan.py: measure_memory, MemoryPlan) against the measured peak
resident size of a process of its own that plans and trains one chunk of footprint CNNs, in both forms of the
model axis: the prediction lands within 25%.

The measuring processes are forked, each with its own address space and so its own peak, from one fresh process
(this file run as a script, the `measurer`): it applies `keep_host_buffers` first, as launch.py does, imports the
measuring code and decodes the synthetic footprints (drawn once by the test and copied into its cache), and runs
nothing on JAX, whose backend each child starts for itself. A child plans with `measure_memory` as `--mode sweep`
does, trains one epoch of the chunk with the engine, and answers the plan's predicted peak and its own peak,
`VmHWM` of /proc/self/status (`runtime.process_memory_bytes`), which starts at the fork from the resident size the
child shares with the measurer. Not `ru_maxrss`: Linux carries that across execve, so a child spawned from a
pytest worker that once held 6 GiB would report the worker's peak. Forking spares each measuring process the
interpreter's start, the imports and the decoding (about 4 of its 12 CPU-s), which a process of its own started
with `python` paid. The figures are printed (pytest -s) for docs:

    python -m pytest -q -n 0 -s tests/test_memory_rule.py
"""
import argparse
import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import traceback

import pytest

from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.config.training import TrainSettings

# Not tests.conftest's REPO: importing the conftest starts JAX's backend, which the measurer must not have when it
# forks (its children's XLA threads would be missing); the test imports it where it needs it.
REPO = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 0.25
RUNS = 3   # measuring processes per form; the median is compared
# Four footprint CNNs (exp0's two convs) at 64x48, each with a 256-wide dense layer: 3.1M parameters, so the state
# S (36 MiB) and best variables V (12 MiB) are exp0's at 96x64, and the train step's temporaries T 39 MiB a
# model. Planned when the process holds ~0.4 GiB, the chunk adds 0.3 GiB (loop) or 0.6 GiB (vmap, where T counts
# per model): without the M (S + V) term (loop) or the (k - 1) T term (vmap) the prediction falls out of 25%.
# 5 folds of 120 images: 96 train (3 steps of 32, time for the heap to settle at its step-sized blocks), 24 val.
SETUP = dict(height=64, width=48, fc=256, images=120, models=4)
ANSWER_SECONDS = 1200   # for one request's measuring processes


def _config(form: str, height: int, width: int, fc: int, images: int, **overrides):
  """configs/footprint.py:exp0 as launch.py builds it, with these settings (as tests.conftest.load_config)."""
  from fpclass.modes.command_line import config_from_argv
  config = config_from_argv(['launch.py', '--config=configs/footprint.py:exp0'])
  for key, value in {
      'data.image_size': (height, width), 'model.fc_sizes': (fc,), 'data.synthetic.n_class0': images // 2,
      'data.synthetic.n_class1': images - images // 2, 'data.synthetic.n_test': 4, 'train.epochs': 1,
      'sweep.model_axis': form, **overrides}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def prepare(height: int, width: int, fc: int, images: int, models: int) -> dict:
  """In the measurer, before it forks: the measuring code imported, the footprints decoded, the chunk's members."""
  from fpclass.data import pipeline, splits
  from fpclass.train import axis, cohort, loop, memory_plan, records, task  # noqa: F401 -- imported for the children
  from fpclass.train.members import Member
  config = _config('loop', height, width, fc, images)   # the data section is both forms'
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  folds = splits.kfold_indices(decoded.pool.labels, 5, 0)
  return dict(decoded=decoded, members=[Member(m % 5, m // 5, *folds[m % 5]) for m in range(models)])


def measure(form: str, prepared: dict, height: int, width: int, fc: int, images: int, models: int) -> dict:
  """Plans and trains one chunk in this process; the predicted and measured peaks (bytes)."""
  from fpclass.runtime.process import process_memory_bytes
  from fpclass.train import memory_plan
  from fpclass.train import task as task_lib
  from fpclass.train.axis import Split, TrainData
  from fpclass.train.cohort import Cohort
  from fpclass.train.loop import train_members
  from fpclass.train.members import batch_size_for
  from fpclass.train.records import MemoryRecord
  config = _config(form, height, width, fc, images)
  decoded, members = prepared['decoded'], prepared['members']
  pool, labels = decoded.pool.images, decoded.pool.labels
  batch = batch_size_for(TrainSettings.from_config(config.train), len(members[0].train_index))
  task = task_lib.build_task(RunSettings.from_config(config), decoded.class_names, labels[members[0].train_index],
                             -(-len(members[0].train_index) // batch))
  eval_batch = task_lib.common_batch(config.eval.batch_size, [len(m.val_index) for m in members])
  plan = memory_plan.measure_memory(task, pool, batch, eval_batch, form)
  split = Split(pool, labels.astype('int32'))
  train_members(Cohort(RunSettings.from_config(config), TrainData(decoded.class_names, split, split), members,
                       form=form), MemoryRecord())
  # The first rule, for the record: D + M (S + V + W) (vmap) or D + W + M (S + V) (loop), W the larger of
  # the train and evaluation programs' XLA temp bytes, which read 0 for the latter on CPU.
  first = plan.shared_bytes + plan.step_bytes + models * (plan.state_bytes + plan.best_bytes) + (
      (models - 1) * plan.step_bytes if form == 'vmap' else 0)
  return dict(form=form, models=models, predicted=plan.peak_bytes(form, models),
              measured=process_memory_bytes('VmHWM'), resident=plan.resident_bytes,
              first_rule=plan.resident_bytes + first, plan=plan.__dict__)


def _fork_measuring(form: str, prepared: dict, sizes: dict) -> tuple[int, int]:
  """A measuring process forked now: (its pid, the pipe its JSON result comes on)."""
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      os.close(read)
      with os.fdopen(write, 'w') as answer:
        answer.write(json.dumps(measure(form, prepared, **sizes)))
      code = 0
    except BaseException:
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  os.close(write)
  return pid, read


def measurer(sizes: dict) -> None:
  """Answers each request on stdin, 'FORM COUNT', with one line of JSON on stdout: the results of COUNT measuring
  processes forked side by side (a failed one's: its exit status under 'error'). Everything else this process and
  its children print goes to stderr."""
  answers = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)
  from fpclass.runtime.process import keep_host_buffers
  keep_host_buffers()
  prepared = prepare(**sizes)
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    raise SystemExit('the measurer started JAX\'s backend before forking')
  for request in sys.stdin:
    form, count = request.split()
    sys.stdout.flush()
    sys.stderr.flush()
    children = [_fork_measuring(form, prepared, sizes) for _ in range(int(count))]
    results = []
    for pid, read in children:
      with os.fdopen(read) as answer:
        text = answer.read()
      status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
      results.append(json.loads(text) if status == 0 else dict(error=f'exit status {status}'))
    answers.write(json.dumps(results) + '\n')
    answers.flush()


def _within(result: dict) -> bool:
  return abs(result['predicted'] - result['measured']) <= TOLERANCE * result['measured']


@pytest.fixture(scope='module')
def footprints(tmp_path_factory):
  """The synthetic footprints `_config` asks for, drawn once: their folder as a cache holds it."""
  from fpclass.data.footprints import FootprintSpec, ensure_synthetic_footprints
  images = SETUP['images']
  spec = FootprintSpec(n_class0=images // 2, n_class1=images - images // 2, n_test=4)
  return ensure_synthetic_footprints(tmp_path_factory.mktemp('footprints'), spec, progress=False)


@pytest.fixture(scope='module')
def measuring(tmp_path_factory, footprints):
  """The measurer (this file as a script) with a cache holding a copy of the footprints, and its log (stderr).
  Its children compile as a process importing tests.conftest would, at this process's XLA flags."""
  from tests.conftest import IN_PROCESS_XLA_FLAGS
  folder = tmp_path_factory.mktemp('measurer')
  shutil.copytree(footprints, folder / 'cache' / footprints.parent.name / footprints.name)
  log = folder / 'measurer.log'
  command = [sys.executable, '-m', 'tests.test_memory_rule', *[f'--{k}={v}' for k, v in SETUP.items()]]
  env = dict(os.environ, FPCLASS_CACHE=str(folder / 'cache'), XLA_FLAGS=IN_PROCESS_XLA_FLAGS)
  with open(log, 'w') as stderr:
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                               text=True, env=env, start_new_session=True)
  try:
    yield process, log
  finally:
    process.stdin.close()
    try:
      process.wait(timeout=60)
    except subprocess.TimeoutExpired:   # a measuring process that hangs: it and the measurer, one process group
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
    process.stdout.close()


def _measured_side_by_side(measuring, form: str, count: int) -> list[dict]:
  """`count` measuring processes at once, forked by the measurer; their results."""
  process, log = measuring
  process.stdin.write(f'{form} {count}\n')
  process.stdin.flush()
  ready, _, _ = select.select([process.stdout], [], [], ANSWER_SECONDS)
  line = process.stdout.readline() if ready else ''
  assert line, f'the measurer did not answer (exit status {process.poll()}); its log:\n{log.read_text()[-4000:]}'
  results = json.loads(line)
  assert not any('error' in r for r in results), (results, log.read_text()[-4000:])
  return results


@pytest.mark.parametrize('form', ['vmap', 'loop'])
def test_predicted_peak_is_within_25_percent_of_the_measured_peak(form, measuring):
  # The peak of identical runs is itself spread: the vmap form's ranged 1,150-1,820 MiB over ten runs on this
  # machine (2026-11-23; then at 96x64 with a 128-wide dense layer and 6 steps), with one XLA thread as with
  # many and with every step awaited, so it comes from where glibc places the freed step buffers, not from the
  # program; a loaded CI run once read 2,165. At 64x48 it falls in two modes, 1,019-1,161 and 1,357-1,401 MiB
  # (2026-11-29), which the vmap form's k (3.75) puts within 17%; at k = 2.5 CI read 1,359 three times. The rule is held to the median of three measuring processes. The
  # passing peaks form an interval, so when the first two both pass the median does too, whatever the third:
  # it runs only when they do not.
  results = _measured_side_by_side(measuring, form, 2)
  if not all(_within(r) for r in results):
    results += _measured_side_by_side(measuring, form, RUNS - 2)
  result = sorted(results, key=lambda r: r['measured'])[len(results) // 2]
  mib = {k: round(result[k] / 2**20) for k in ('predicted', 'measured', 'resident', 'first_rule')}
  print(f'{form}, {result["models"]} models: peak RSS MiB {mib} (of {sorted(round(r["measured"] / 2**20) for r in results)}); '
        f'plan {result["plan"]}')
  assert _within(result), mib


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description='the measurer: requests "FORM COUNT" on stdin, results on stdout')
  for name, value in SETUP.items():
    parser.add_argument(f'--{name}', type=int, default=value)
  measurer(vars(parser.parse_args()))
