"""The sweep's memory rule (fpclass/train/memory_plan.py: measure_memory, MemoryPlan) against the measured peak
resident size of a fresh process that plans and trains one chunk of footprint CNNs, in both forms of the model
axis: the prediction lands within 25%.

The measured run is a subprocess (this file run as a script), so the peak is its own: it applies
`keep_host_buffers` first, as launch.py does, decodes the synthetic footprints (drawn once by the test and
copied into each process's cache, where a later launch finds them too), plans with `measure_memory` as
`--mode sweep` does, trains one epoch of the chunk with the engine, and prints the plan's predicted peak and
its own peak, `VmHWM` of /proc/self/status (`runtime.process_memory_bytes`). Not `ru_maxrss`: Linux carries
that across execve, so a child spawned from a pytest worker that once held 6 GiB would report the worker's
peak. The figures are printed (pytest -s) for docs:

    python -m pytest -q -n 0 -s tests/test_memory_rule.py
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

from fpclass.config.inputs import DataSettings
from fpclass.config.run import RunSettings
from fpclass.config.training import TrainSettings
from tests.conftest import REPO

TOLERANCE = 0.25
RUNS = 3   # fresh processes per form; the median is compared
# Four footprint CNNs (exp0's two convs) at 64x48, each with a 256-wide dense layer: 3.1M parameters, so the state
# S (36 MiB) and best variables V (12 MiB) are exp0's at 96x64, and the train step's temporaries T 39 MiB a
# model. Planned when the process holds ~0.5 GiB, the chunk adds 0.3 GiB (loop) or 0.6 GiB (vmap, where T counts
# per model): without the M (S + V) term (loop) or the (k - 1) T term (vmap) the prediction falls out of 25%.
# 5 folds of 120 images: 96 train (3 steps of 32, time for the heap to settle at its step-sized blocks), 24 val.
SETUP = dict(height=64, width=48, fc=256, images=120, models=4)


def _config(form: str, height: int, width: int, fc: int, images: int, **overrides):
  from tests.conftest import load_config
  return load_config('configs/footprint.py:exp0', **{
      'data.image_size': (height, width), 'model.fc_sizes': (fc,), 'data.synthetic.n_class0': images // 2,
      'data.synthetic.n_class1': images - images // 2, 'data.synthetic.n_test': 4, 'train.epochs': 1,
      'sweep.model_axis': form, **overrides})


def measure(form: str, height: int, width: int, fc: int, images: int, models: int) -> dict:
  """Plans and trains one chunk in this process; the predicted and measured peaks (bytes)."""
  from fpclass.runtime.process import keep_host_buffers, process_memory_bytes
  keep_host_buffers()

  from fpclass.data import pipeline, splits
  from fpclass.train import memory_plan
  from fpclass.train import task as task_lib
  from fpclass.train.axis import Split, TrainData
  from fpclass.train.cohort import Cohort
  from fpclass.train.loop import train_members
  from fpclass.train.members import Member, batch_size_for
  from fpclass.train.records import MemoryRecord
  config = _config(form, height, width, fc, images)
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  pool, labels = decoded.pool.images, decoded.pool.labels
  folds = splits.kfold_indices(labels, 5, 0)
  members = [Member(m % 5, m // 5, *folds[m % 5]) for m in range(models)]
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


def _within(result: dict) -> bool:
  return abs(result['predicted'] - result['measured']) <= TOLERANCE * result['measured']


@pytest.fixture(scope='module')
def footprints(tmp_path_factory):
  """The synthetic footprints `_config` asks for, drawn once: their folder as a cache holds it."""
  from fpclass.data.footprints import FootprintSpec, ensure_synthetic_footprints
  images = SETUP['images']
  spec = FootprintSpec(n_class0=images // 2, n_class1=images - images // 2, n_test=4)
  return ensure_synthetic_footprints(tmp_path_factory.mktemp('footprints'), spec, progress=False)


def _measured_side_by_side(form: str, folder, footprints, first: int, count: int) -> list[dict]:
  """`count` fresh measuring processes at once (this file as a script), each with its own cache holding a copy
  of the footprints; their results."""
  args = [sys.executable, '-m', 'tests.test_memory_rule', form, *[f'--{k}={v}' for k, v in SETUP.items()]]
  for i in range(first, first + count):
    shutil.copytree(footprints, folder / str(i) / footprints.parent.name / footprints.name)
  runs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, FPCLASS_CACHE=str(folder / str(i))))
          for i in range(first, first + count)]
  results = []
  for run in runs:
    out, err = run.communicate(timeout=1200)
    assert run.returncode == 0, err[-4000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  return results


@pytest.mark.parametrize('form', ['vmap', 'loop'])
def test_predicted_peak_is_within_25_percent_of_the_measured_peak(form, tmp_path, footprints):
  # The peak of identical runs is itself spread: the vmap form's ranged 1,150-1,820 MiB over ten runs on this
  # machine (2026-11-23; then at 96x64 with a 128-wide dense layer and 6 steps), with one XLA thread as with
  # many and with every step awaited, so it comes from where glibc places the freed step buffers, not from the
  # program; a loaded CI run once read 2,165. The rule is held to the median of three fresh processes. The
  # passing peaks form an interval, so when the first two both pass the median does too, whatever the third:
  # it runs only when they do not.
  results = _measured_side_by_side(form, tmp_path, footprints, 0, 2)
  if not all(_within(r) for r in results):
    results += _measured_side_by_side(form, tmp_path, footprints, 2, RUNS - 2)
  result = sorted(results, key=lambda r: r['measured'])[len(results) // 2]
  mib = {k: round(result[k] / 2**20) for k in ('predicted', 'measured', 'resident', 'first_rule')}
  print(f'{form}, {result["models"]} models: peak RSS MiB {mib} (of {sorted(round(r["measured"] / 2**20) for r in results)}); '
        f'plan {result["plan"]}')
  assert _within(result), mib


if __name__ == '__main__':
  parser = argparse.ArgumentParser()
  parser.add_argument('form', choices=('vmap', 'loop'))
  for name, value in SETUP.items():
    parser.add_argument(f'--{name}', type=int, default=value)
  options = parser.parse_args()
  print(json.dumps(measure(options.form, options.height, options.width, options.fc, options.images, options.models)))
