"""Several processes for real: two `launch.py` processes on loopback, 2 CPU devices each, joined by
jax.distributed (gloo collectives), against one process with 4 devices (README: several processes), and
streaming input in such a job (docs/streaming.md)."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pandas as pd
import pytest

from fpclass import fileio
from fpclass.infer.inference import load_trained
from tests.conftest import REPO, launch_process, launch_server, load_config, xla_flags
from tests.forkserver import forkable
from tests.test_scale import TINY

# TINY's model and data, with a constant learning rate, so extending the run from 1 to 2 epochs continues it as an
# unbroken 2-epoch run, and batches of 256: an epoch of the 1,437 training images is 5 full steps and a partial one
# (TINY's 64: 23). A step of a two-process job is a gloo all-reduce between them, whose cost is the step's, not its
# images': the larger batch took this file from about 82 CPU-s to 72.
SETTINGS = {**TINY, 'train.schedule': 'constant', 'train.batch_size': 256}
OVERRIDES = [f'--config.{k}={v}' for k, v in SETTINGS.items() if k != 'train.epochs']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# launch.py under an audit hook (PEP 578) that logs every change this process makes under a folder: files opened
# for writing, renames, removals, new folders. Python-level only, which covers fileio, pandas, matplotlib and
# tensorboardX; native writers (orbax's tensorstore) are not seen. A script (`audited_launch`), forked from the
# launch server like the job's other process: the hook is in place before launch.py runs and fpclass is imported.
AUDITED_LAUNCH = """
import os, runpy, sys
log_path, folder, launch = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3]
sys.path[0] = os.path.dirname(launch)   # as `python launch.py` has it
log = open(log_path, 'w', buffering=1)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def under(path):
  if not isinstance(path, (str, bytes, os.PathLike)):
    return None
  path = os.path.realpath(os.fsdecode(path))
  return os.path.relpath(path, folder) if path == folder or path.startswith(folder + os.sep) else None

def audit(event, args):
  if event == 'open':
    path, mode, flags = args
    writes = any(c in mode for c in 'wax+') if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
    paths = [path] if writes else []
  elif event in ('os.rename', 'os.remove', 'os.rmdir', 'os.mkdir', 'os.truncate', 'shutil.rmtree',
                 'shutil.move', 'shutil.copyfile'):
    paths = args[:2] if event in ('os.rename', 'shutil.move', 'shutil.copyfile') else args[:1]
  else:
    return
  for path in paths:
    inside = under(path)
    if inside is not None:
      log.write(f'{event} {inside}\\n')

sys.addaudithook(audit)
sys.argv = [launch, *sys.argv[4:]]
runpy.run_path(launch, run_name='__main__')
"""


def launch_processes(workdir, *args, count=2, devices=2, timeout=600, audit_log=None):
  """`count` launch.py processes forming one job; returns their (returncode, stdout, stderr). With
  `audit_log`, the processes after the first log what they change under the workdir there (AUDITED_LAUNCH)."""
  procs = start_processes(workdir, *args, count=count, devices=devices, audit_log=audit_log)
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      results.append((proc.returncode, out, err))
  finally:
    for proc in procs:
      proc.kill()
  return results


def start_processes(workdir, *args, count=2, devices=2, audit_log=None) -> list:
  """The job's processes, each forked from the launch server (`conftest.launch_process`) but an audited one."""
  port = _free_port()
  procs = []
  for index in range(count):
    env = dict(os.environ, XLA_FLAGS=xla_flags(f'--xla_force_host_platform_device_count={devices}'))
    if count > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(count),
                 JAX_PROCESS_ID=str(index))
    launch_args = ['--config=configs/digits.py:quick', f'--workdir={workdir}', *OVERRIDES, *args]
    if audit_log is not None and index > 0:
      procs.append(audited_launch(pathlib.Path(f'{audit_log}.{index}'), workdir, launch_args, env))
    else:
      procs.append(launch_process(*launch_args, env=env))
  return procs


def audited_launch(log, workdir, launch_args: list, env: dict):
  """`python launch.py *launch_args` under AUDITED_LAUNCH, logging what it changes under `workdir` to `log`: forked
  from the launch server where `env` allows (as `conftest.launch_process` forks launch.py), else a subprocess."""
  script = log.with_name(f'{log.name}.py')
  script.write_text(AUDITED_LAUNCH)
  argv = [script, log, workdir, REPO / 'launch.py', *launch_args]
  server = launch_server()
  if server is not None and forkable(server.env, env):
    return server.popen(argv, REPO, env, pathlib.Path(tempfile.gettempdir()) / 'fpclass-launch')
  return subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _params(workdir, kind='last'):
  config = load_config('configs/digits.py:quick', **SETTINGS)
  return jax.tree_util.tree_leaves(load_trained(config, workdir, kind).state.params)


@pytest.fixture(scope='module')
def one_epoch_on_two_processes(tmp_path_factory):
  """(workdir, results) of two processes training one epoch, the set in memory: continued to two epochs
  (in a copy) by the resume test, and the in-memory reference of the streaming test."""
  workdir = tmp_path_factory.mktemp('two-processes') / 'run'
  results = launch_processes(workdir, '--config.train.epochs=1', audit_log=workdir.parent / 'audit')
  assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
  return workdir, results


def test_process_1_writes_nothing_in_the_workdir_but_its_part_of_the_checkpoints(one_epoch_on_two_processes):
  """Both processes compute the same outputs, so a second writer cannot be seen in the files' content; the audit
  log of process 1 shows it. Allowed: orbax's own per-process checkpoint files (every process takes part in a
  save) and creating the workdir folder where it already exists."""
  workdir, _ = one_epoch_on_two_processes
  changes = (workdir.parent / 'audit.1').read_text().splitlines()
  assert any(line.split(' ', 1)[1].startswith('checkpoints/') for line in changes), changes   # the log works
  stray = [line for line in changes if line != 'os.mkdir .' and not line.split(' ', 1)[1].startswith('checkpoints/')]
  assert not stray, stray
  assert (workdir / 'metrics.csv').exists() and (workdir / 'scores.json').exists()


def test_two_processes_equal_one_process_with_four_devices_and_resume(tmp_path, one_epoch_on_two_processes):
  # Two processes trained one epoch; a second launch extends the run to two: the resume path.
  shutil.copytree(one_epoch_on_two_processes[0], tmp_path / 'two')
  results = launch_processes(tmp_path / 'two', '--config.train.epochs=2')
  assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
  assert any('resuming' in err for _, _, err in results), [err[-2000:] for _, _, err in results]
  results = launch_processes(tmp_path / 'four', '--config.train.epochs=2', count=1, devices=4)
  assert results[0][0] == 0, results[0][2][-3000:]

  two, four = (pd.read_csv(tmp_path / d / 'metrics.csv').drop(columns='seconds') for d in ('two', 'four'))
  assert list(two['epoch']) == [1, 2]
  # gloo sums the gradients of the two processes in another order than XLA does within one process, so the
  # runs agree to float32 rounding, not bit for bit.
  np.testing.assert_allclose(two.to_numpy(float), four.to_numpy(float), rtol=1e-4, atol=1e-5)
  largest = max(float(np.max(np.abs(a - b))) for a, b in zip(_params(tmp_path / 'two'), _params(tmp_path / 'four')))
  print(f'largest parameter difference, 2 processes x 2 devices vs 1 x 4: {largest:.2e}')
  assert largest < 1e-4
  scores = [json.loads((tmp_path / d / 'scores.json').read_text()) for d in ('two', 'four')]
  assert scores[0]['accuracy'] == scores[1]['accuracy'] and scores[0]['epoch'] == scores[1]['epoch']
  np.testing.assert_allclose(scores[0]['loss'], scores[1]['loss'], rtol=1e-4)


def test_two_processes_streaming_their_shares_equal_two_processes_in_memory(tmp_path, one_epoch_on_two_processes):
  """Streamed (config.data.device_memory_budget=1 byte), each process reads only its half of every batch;
  the run equals the same job with the set in memory, bit for bit."""
  resident, resident_results = one_epoch_on_two_processes
  results = launch_processes(tmp_path / 'streamed', '--config.train.epochs=1', '--config.data.device_memory_budget=1')
  assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
  said = [['streaming input' in err for _, _, err in runs] for runs in (resident_results, results)]
  assert said == [[False, False], [True, True]], (said, [err[-2000:] for _, _, err in results])
  frames = [pd.read_csv(d / 'metrics.csv').drop(columns='seconds') for d in (resident, tmp_path / 'streamed')]
  pd.testing.assert_frame_equal(*frames, check_exact=True)
  differences = [float(np.max(np.abs(a - b))) for a, b in zip(_params(resident), _params(tmp_path / 'streamed'))]
  assert max(differences) == 0, differences


def test_a_single_process_mode_refuses_a_multi_process_job(tmp_path):
  results = launch_processes(tmp_path, '--mode=probe', timeout=300)
  for code, _, err in results:
    assert code == 2 and '--mode probe runs on one process; this job has 2' in err, err[-2000:]


def test_only_the_primary_process_writes_workdir_files(tmp_path):
  try:
    fileio.set_primary(False)
    fileio.write_text(tmp_path / 'report.md', 'from process 1')
    fileio.write_json(tmp_path / 'scores.json', {'a': 1})
  finally:
    fileio.set_primary(True)
  assert list(tmp_path.iterdir()) == []
  fileio.write_text(tmp_path / 'report.md', 'from process 0')
  assert (tmp_path / 'report.md').read_text() == 'from process 0'


# Two folds x two seeds, one member per chunk, so members finish one after another on each process.
SWEEP = ['--mode=sweep', '--config.train.epochs=2', '--config.sweep.folds=(0,1)', '--config.sweep.seeds=(0,1)',
         '--config.sweep.models_per_chunk=1']
TIMING_COLUMNS = ['seconds_per_model_epoch', 'train_seconds', 'wall_seconds']


def _tables(workdir):
  models = pd.read_csv(workdir / 'sweep_models.csv')
  return models, pd.read_csv(workdir / 'sweep_results.csv').drop(columns=TIMING_COLUMNS)


@pytest.fixture(scope='module')
def one_process_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep-one') / 'run'
  (code, _, err), = launch_processes(workdir, *SWEEP, count=1)
  assert code == 0, err[-3000:]
  return workdir


def test_two_processes_split_a_sweep_and_its_tables_equal_one_processs(tmp_path, one_process_sweep):
  results = launch_processes(tmp_path, *SWEEP)
  assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
  for _, out, _ in results:
    assert out.count('epoch 2/2: 1 model,') == 2, out[-3000:]   # two members on each process
  for ours, reference in zip(_tables(tmp_path), _tables(one_process_sweep)):
    pd.testing.assert_frame_equal(ours, reference, check_exact=True)
  assert json.loads((tmp_path / 'base' / 'experiment.json').read_text())['timing']['processes'] == 2
  assert not (tmp_path / 'base' / 'members').exists()   # gathered into fold workdirs, then removed
  assert _params(tmp_path / 'base' / 'fold1') and all(
      np.array_equal(a, b) for a, b in zip(_params(tmp_path / 'base' / 'fold1'),
                                           _params(one_process_sweep / 'base' / 'fold1')))


def test_a_killed_sweep_relaunched_keeps_its_finished_members(tmp_path, one_process_sweep):
  members = tmp_path / 'base' / 'members'
  procs = start_processes(tmp_path, *SWEEP)
  try:
    deadline = time.monotonic() + 300
    while not list(members.glob('*.json')) and time.monotonic() < deadline and procs[1].poll() is None:
      time.sleep(0.05)
    procs[1].kill()   # SIGKILL to one process; the job is then ended, as a scheduler ends a failed job step
    procs[0].kill()
  finally:
    for proc in procs:
      proc.communicate()
  finished = {p.name: p.stat().st_mtime_ns for p in members.glob('*.json')}
  assert finished and len(finished) < 4, finished
  results = launch_processes(tmp_path, *SWEEP)
  assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
  assert any(f'{len(finished)} of 4 members finished earlier; kept' in out for _, out, _ in results)
  trained_again = sum(out.count('epoch 2/2: 1 model,') for _, out, _ in results)
  assert trained_again == 4 - len(finished)
  for ours, reference in zip(_tables(tmp_path), _tables(one_process_sweep)):
    pd.testing.assert_frame_equal(ours, reference, check_exact=True)
