"""Ctrl-C and SIGTERM stop a run after the current step, save it, and say how to resume; launching again
continues from the next step, bit for bit."""
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

from fpclass.errors import RunInterrupted
from fpclass.infer.inference import load_trained
from fpclass.modes.runner import run
from fpclass.train import loop
from tests.conftest import IN_PROCESS_XLA_FLAGS, REPO, load_config
from tests.test_scale import TINY

SETUP = {**TINY, 'train.schedule': 'constant', 'train.batch_size': 16}


def tiny(epochs):
  return load_config('configs/digits.py:quick', **{**SETUP, 'train.epochs': epochs})


def history(workdir):
  return pd.read_csv(workdir / 'metrics.csv').drop(columns='seconds')


def same_params(a, b, epochs):
  leaves = [jax.tree_util.tree_leaves(load_trained(tiny(epochs), w, 'last').state.params) for w in (a, b)]
  return all(np.array_equal(x, y) for x, y in zip(*leaves))


@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('unbroken')
  run('train', tiny(2), workdir)
  return workdir


def sigterm_after_step(monkeypatch, step: int, epoch: int) -> None:
  """Delivers a real SIGTERM to this process once step `step` of epoch `epoch` is done (until monkeypatch undoes it)."""
  real_progress = loop._step_progress
  epochs_begun = []

  def progress(train, record, loop_state, epoch_now, steps, solo):
    bar, show = real_progress(train, record, loop_state, epoch_now, steps, solo)
    epochs_begun.append(steps)

    def step_done(done, metrics):
      show(done, metrics)
      if done == step and len(epochs_begun) == epoch:
        os.kill(os.getpid(), signal.SIGTERM)
    return bar, step_done
  monkeypatch.setattr(loop, '_step_progress', progress)


def test_sigterm_in_the_middle_of_an_epoch_resumes_from_the_next_step(unbroken, tmp_path, monkeypatch):
  sigterm_after_step(monkeypatch, step=5, epoch=2)
  with pytest.raises(RunInterrupted, match=r'SIGTERM: stopped after step 5 of 90 in epoch 2; saved in .*interrupted'):
    run('train', tiny(2), tmp_path)
  assert list(history(tmp_path)['epoch']) == [1]
  monkeypatch.undo()
  run('train', tiny(2), tmp_path)
  assert history(tmp_path).equals(history(unbroken))
  assert same_params(tmp_path, unbroken, 2)
  assert not [p for p in (tmp_path / 'checkpoints' / 'interrupted').iterdir() if p.name.isdigit()]


def test_ctrl_c_on_launch_py_stops_saves_and_resumes(unbroken, tmp_path):
  args = [sys.executable, str(REPO / 'launch.py'), '--config=configs/digits.py:quick', f'--workdir={tmp_path}',
          *[f'--config.{k}={v}' for k, v in SETUP.items() if k != 'train.epochs'], '--config.train.epochs=2']
  env = dict(os.environ, PYTHONUNBUFFERED='1', XLA_FLAGS=IN_PROCESS_XLA_FLAGS)   # compared with this process's run
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in proc.stdout:  # epoch 1 has ended and is saved: the signal lands in epoch 2's first steps
      if line.startswith('epoch 1/2'):
        break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  if proc.returncode == 0:
    pytest.skip('the run finished before the signal arrived')  # the machine was faster than the signal
  assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
  assert 'fpclass: SIGINT: stopped after' in err and 'Launch the same command again' in err
  assert 'Traceback' not in err
  subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
  assert history(tmp_path).equals(history(unbroken))
  assert same_params(tmp_path, unbroken, 2)
