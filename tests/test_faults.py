"""Faults a run must survive (issue 14): a damaged checkpoint, a full disk, a read-only folder, and the
same run twice giving the same bits, and kill -9 at several points. SIGTERM and Ctrl-C are in
tests/test_signals.py."""
import contextlib
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pandas as pd
import pytest

from fpclass import fileio
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.modes.runner import run
from tests.conftest import IN_PROCESS_XLA_FLAGS, launch, launch_process, load_config
from tests.test_scale import TINY


@pytest.fixture(scope='module', autouse=True)
def figures_not_rendered():
  """The runs in this process draw evaluate's figures but do not render them to PNG files (0.85 CPU-s a run): no
  test here reads them (tests/test_launch.py checks them). Everything compared (checkpoints, metrics.csv, scores,
  the workdir's files before and after a refused run) is written as before; launch.py's processes render theirs."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(fileio, 'save_figure', lambda path, figure, trim=True: None)
    yield


def same_programs() -> dict:
  """A launch's environment (this test's): compiled as this process compiles, since the killed launches are
  compared with an unbroken run in this process, to the bit."""
  return dict(os.environ, XLA_FLAGS=IN_PROCESS_XLA_FLAGS)


# A constant learning rate: a relaunch with more epochs then continues exactly as an unbroken run would
# (a cosine schedule spans train.epochs, so extending a run changes its earlier rates).
def tiny(epochs, **overrides):
  return load_config('configs/digits.py:quick', **{**TINY, 'train.epochs': epochs, 'train.schedule': 'constant',
                                                   **overrides})


def history(workdir):
  return pd.read_csv(workdir / 'metrics.csv').drop(columns='seconds')


def params(workdir, epochs):
  return jax.tree_util.tree_leaves(load_trained(tiny(epochs), workdir, 'last').state.params)


def damage(checkpoint_dir: pathlib.Path, arrays_only: bool = False) -> None:
  """Truncates every file of one orbax checkpoint's model to half its size (a disk that lost their tails);
  with `arrays_only`, only its largest file, the array data, so the metadata and the index read and the
  failure comes from reading the arrays."""
  files = [p for p in (checkpoint_dir / 'model').rglob('*') if p.is_file() and p.stat().st_size > 64]
  assert files, list(checkpoint_dir.rglob('*'))
  if arrays_only:
    files = [max(files, key=lambda p: p.stat().st_size)]
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(path.stat().st_size // 2)


@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('unbroken')
  run('train', tiny(3), workdir)
  return workdir


def test_the_same_run_twice_gives_the_same_bits(unbroken, tmp_path):
  run('train', tiny(3), tmp_path)
  assert history(tmp_path).equals(history(unbroken))
  for a, b in zip(params(tmp_path, 3), params(unbroken, 3)):
    assert np.array_equal(a, b)


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
  """A run of tiny(2), trained once for the tests that damage its checkpoints: each damages a copy (`copy_of`)."""
  workdir = tmp_path_factory.mktemp('two-epochs')
  run('train', tiny(2), workdir)
  return workdir


def copy_of(run_dir: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
  """`run_dir`'s files at `workdir`, as the run left them there."""
  shutil.copytree(run_dir, workdir, dirs_exist_ok=True)
  return workdir


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(unbroken, two_epochs, tmp_path, caplog):
  copy_of(two_epochs, tmp_path)
  assert sorted(p.name for p in (tmp_path / 'checkpoints' / 'last').iterdir() if p.name.isdigit()) == ['1', '2']
  damage(tmp_path / 'checkpoints' / 'last' / '2', arrays_only=True)  # the arrays fail to read
  with caplog.at_level(logging.WARNING):
    run('train', tiny(3), tmp_path)
  assert 'checkpoints/last/2 could not be read' in caplog.text and 'using epoch 1 instead' in caplog.text
  fallback = next(r.getMessage() for r in caplog.records if 'could not be read' in r.getMessage())
  assert '\n' not in fallback and 'TensorStore' not in fallback  # one line, not the array's whole spec
  # Epochs 2 and 3 are trained again from epoch 1's state: the run ends exactly as an unbroken one.
  assert history(tmp_path).equals(history(unbroken))
  for a, b in zip(params(tmp_path, 3), params(unbroken, 3)):
    assert np.array_equal(a, b)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(two_epochs, tmp_path):
  copy_of(two_epochs, tmp_path)
  for epoch in ('1', '2'):
    damage(tmp_path / 'checkpoints' / 'last' / epoch)
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*'))
  with pytest.raises(UserInputError, match=r'no readable .last. checkpoint .*the run is left as it is'):
    run('train', tiny(3), tmp_path)
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*')) == before  # nothing deleted or added
  assert list(history(tmp_path)['epoch']) == [1, 2]


def test_an_unreadable_checkpoint_costs_one_line_on_the_console(trained_quick, tmp_path):
  """Through launch.py: the error names the checkpoint in one line, without TensorStore's spec of the array
  or orbax's tracebacks of the reads it abandoned (reported as the process exits, without the fix)."""
  workdir, env, _ = trained_quick
  shutil.copytree(workdir, tmp_path / 'run')
  damage(next(p for p in (tmp_path / 'run' / 'checkpoints' / 'best').iterdir() if p.name.isdigit()), arrays_only=True)
  result = launch(f'--workdir={tmp_path / "run"}', '--mode=evaluate', env=env, check=False)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if not re.match(r'W\d{4} .*SYNTHETIC', line)]
  assert len(errors) == 1, result.stderr
  assert re.match(r"fpclass: error: .*/checkpoints/best: no readable 'best' checkpoint \(epoch \d+: ", errors[0])


def test_a_full_disk_while_writing_a_report_is_a_clear_error(tmp_path, monkeypatch):
  (tmp_path / 'scores.json').write_text('{"old": true}')

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(fileio.os, 'replace', full)
  with pytest.raises(UserInputError, match=r'scores.json: the disk is full .*previous version, if any, is unchanged'):
    fileio.write_json(tmp_path / 'scores.json', {'new': True})
  assert (tmp_path / 'scores.json').read_text() == '{"old": true}'
  assert [p.name for p in tmp_path.iterdir()] == ['scores.json']  # no temporary file left behind


@contextlib.contextmanager
def small_filesystem(folder: pathlib.Path, size: str, read_only: bool = False):
  """A tmpfs of `size` at `folder` (needs root: the CI and developer machines run as root)."""
  folder.mkdir(parents=True, exist_ok=True)
  options = f'size={size}' + (',ro' if read_only else '')
  subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(folder)], check=True)
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', str(folder)], check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('mount') is None,
                                reason='mounting a small tmpfs needs root')


@needs_root
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(unbroken, tmp_path):
  with small_filesystem(tmp_path / 'disk', '64m') as disk:
    workdir = disk / 'run'
    run('train', tiny(1), workdir)
    ballast = disk / 'ballast'
    with contextlib.suppress(OSError), open(ballast, 'wb') as f:  # fill the disk to the last block ...
      while True:
        f.write(b'\0' * 4096)
        f.flush()
    os.truncate(ballast, ballast.stat().st_size - 3 * 4096)  # ... but 3 pages: lock, quarantine.csv, metadata
    with pytest.raises(UserInputError, match=r'disk is full'):
      run('train', tiny(3), workdir)
    ballast.unlink()
    run('train', tiny(3), workdir)  # space again: it resumes from epoch 1 and ends as an unbroken run
    assert history(workdir).equals(history(unbroken))


@needs_root
def test_a_read_only_workdir_fails_before_any_work(tmp_path):
  with small_filesystem(tmp_path / 'ro', '1m', read_only=True) as folder:
    with pytest.raises(UserInputError, match=r'--workdir .*ro/run is not writable'):
      run('train', tiny(1), folder / 'run')


def test_a_file_where_the_cache_folder_or_workdir_should_be_fails_before_any_work(tmp_path):
  (tmp_path / 'not-a-folder').write_text('a file where a folder should be')
  with pytest.raises(UserInputError, match=r'the cache folder .*not-a-folder/sub: .*not-a-folder is a file, not a '):
    run('train', tiny(1, **{'data.cache_dir': str(tmp_path / 'not-a-folder' / 'sub')}), tmp_path / 'run')
  with pytest.raises(UserInputError, match=r'--workdir .*not-a-folder: .*not-a-folder is a file, not a folder'):
    run('train', tiny(1), tmp_path / 'not-a-folder')
  assert (tmp_path / 'not-a-folder').read_text() == 'a file where a folder should be'


def _kill_when(args, ready, log: pathlib.Path, timeout=300):
  """Starts launch.py `args` with its output in `log`, polls until `ready()` is true, then SIGKILLs it (no
  clean-up runs). Returns whether it was still running."""
  process = launch_process(*args, env=same_programs(), new_session=True, output=log)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and process.poll() is None and not ready():
      time.sleep(0.001)
    killed = process.poll() is None
  finally:
    try:
      os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:   # ended on its own (or not yet in its own group: the process alone)
      process.kill()
    process.wait()
  return killed


def trained_epochs(log_text: str, epochs: int) -> list:
  return sorted({int(m) for m in re.findall(rf'epoch (\d+)/{epochs}: loss', log_text)})


def test_kill_9_inside_a_save_mid_epoch_and_mid_report_loses_only_the_unfinished_epoch(tmp_path):
  """SIGKILL inside an orbax save (its temporary folder exists), in the middle of an epoch, and while the
  report is written; each relaunch resumes, training only the epochs after the last complete one, and the
  run ends exactly as an unbroken one."""
  epochs = 6
  workdir = tmp_path / 'killed'
  overrides = {**TINY, 'train.epochs': epochs, 'train.schedule': 'constant', 'train.batch_size': 16}
  args = ['--config=configs/digits.py:quick', f'--workdir={workdir}', *[f'--config.{k}={v}' for k, v in overrides.items()]]
  last = workdir / 'checkpoints' / 'last'

  def rows():   # polled every millisecond: lines, not a parse (csv_sink replaces the file whole)
    try:
      return max(0, len((workdir / 'metrics.csv').read_text().splitlines()) - 1)
    except FileNotFoundError:
      return 0

  kills = [
      lambda: last.is_dir() and any('tmp' in p.name for p in last.iterdir()),  # inside a checkpoint save
      lambda: rows() >= 3,                                                     # the next epoch has begun
      lambda: (workdir / 'report.d').is_dir(),                                 # evaluation and its report
  ]
  logs = [tmp_path / f'launch{i}.log' for i in range(len(kills))]
  killed = [_kill_when(args, ready, log) for ready, log in zip(kills, logs)]
  assert killed[0] and killed[1], killed  # the last one may find the run already finished: nothing to kill
  # The launch after the mid-epoch kill resumed after the last complete epoch (3 or more were done) and
  # trained only the epochs after it: a restart from scratch, which being deterministic would end with the
  # same numbers, fails here.
  third = logs[2].read_text()
  resumed = int(re.search(rf'resuming {re.escape(str(workdir))} after epoch (\d+)', third).group(1))
  assert resumed >= 3 and trained_epochs(third, epochs) == list(range(resumed + 1, epochs + 1)), third[-3000:]
  final = launch(*args, env=same_programs())
  assert f'resuming {workdir} after epoch {epochs}' in final.stderr and not trained_epochs(final.stdout + final.stderr, epochs)
  unbroken = tmp_path / 'unbroken'
  run('train', load_config('configs/digits.py:quick', **overrides), unbroken)
  assert history(workdir).equals(history(unbroken))
  config = load_config('configs/digits.py:quick', **overrides)
  for a, b in zip(*(jax.tree_util.tree_leaves(load_trained(config, w, 'last').state.params)
                    for w in (workdir, unbroken))):
    assert np.array_equal(a, b)
  scores = [json.loads((w / 'scores.json').read_text()) for w in (workdir, unbroken)]
  for key in ('accuracy', 'loss', 'macro_f1', 'confusion_matrix', 'epoch'):
    assert scores[0][key] == scores[1][key], key
