"""Process settings by backend (fpclass.runtime.process), and the time report of a job (fpclass.runtime.timings): the
decisions are checked per backend through the decision function, and two real processes at once on this
machine's one device through what each child recorded in its timings.json."""
import json
import os
import subprocess
import sys

import pytest

from fpclass.errors import UserInputError
from fpclass.runtime import process, timings
from tests.conftest import QUICK, REPO


def test_cpu_keeps_host_buffers_and_leaves_gpu_memory_alone():
  settings = process.decide('cpu', trains=True)
  assert settings.host_allocator == 'keep' and settings.environment == () and settings.xla_flags == ()
  assert process.decide('cpu', trains=False) == settings


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_accelerators_keep_glibcs_allocator(backend):
  """One arena serialised XLA's multi-threaded GPU compiler (7x slower compiles on an H100)."""
  for trains in (True, False):
    assert process.decide(backend, trains).host_allocator == 'default'


def test_on_a_gpu_only_training_preallocates_and_takes_its_configured_share():
  train = dict(process.decide('gpu', trains=True, gpu_memory_fraction=0.4).environment)
  assert train == {'XLA_PYTHON_CLIENT_PREALLOCATE': 'true', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.4'}
  serve = dict(process.decide('gpu', trains=False, gpu_memory_fraction=0.4).environment)
  assert serve == {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}
  # Autotuning results kept with the programs; XLA's kernel cache file (part of 'all') is left off: a cache one
  # sweep wrote crashed another process on an H200 (process.GPU_XLA_CACHES).
  assert process.decide('gpu', trains=False).xla_caches == 'xla_gpu_per_fusion_autotune_cache_dir'
  assert process.decide('cpu', trains=False).xla_caches == ''


@pytest.mark.parametrize('backend, trains', [(b, t) for b in process.BACKENDS for t in (True, False)])
def test_apply_keeps_host_buffers_on_cpu_alone(backend, trains, monkeypatch):
  """`apply` itself, not only `decide`: the one-arena allocator on a GPU made its compiles 7x slower."""
  calls = []
  monkeypatch.setattr(process, 'keep_host_buffers', lambda: calls.append(backend) or True)
  for name in (process.ENV_PREALLOCATE, process.ENV_MEM_FRACTION):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', ''))   # restored after the test
  settings = process.decide(backend, trains)
  assert process.apply(settings) == settings
  assert calls == (['cpu'] if backend == 'cpu' else [])
  for name, value in settings.environment:
    assert os.environ[name] == value


@pytest.mark.parametrize('fraction', [0, -0.1, 1.5])
def test_a_gpu_share_outside_0_1_names_the_key(fraction):
  with pytest.raises(UserInputError, match=rf'config.train.gpu_memory_fraction={fraction}: a share of the GPU'):
    process.decide('cpu', trains=True, gpu_memory_fraction=fraction)


def test_the_planned_backend_comes_from_jax_platforms_before_any_backend_starts(monkeypatch):
  monkeypatch.setattr(process, '_backend_started', lambda: False)
  assert process.planned_backend({'JAX_PLATFORMS': 'cuda'}) == 'gpu'
  assert process.planned_backend({'JAX_PLATFORMS': 'rocm,cpu'}) == 'gpu'
  assert process.planned_backend({'JAX_PLATFORMS': 'cpu'}) == 'cpu'
  assert process.planned_backend({'JAX_PLATFORMS': 'tpu'}) == 'tpu'
  assert process.planned_backend({}) == 'cpu'  # no GPU plugin and device here
  monkeypatch.setattr(process, '_backend_started', lambda: True)
  assert process.planned_backend({'JAX_PLATFORMS': 'cuda'}) == 'cpu'  # once started, JAX's own answer


def test_settings_the_user_made_in_the_environment_win(monkeypatch):
  monkeypatch.setenv('XLA_PYTHON_CLIENT_PREALLOCATE', 'true')
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  process.apply(process.ProcessSettings('gpu', 'default', environment=(('XLA_PYTHON_CLIENT_PREALLOCATE', 'false'),
                                                                       ('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.3'))))
  assert os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'true'
  assert os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.3'


def test_nested_phases_charge_their_own_time_and_the_rest_is_other():
  with timings.job() as clock:
    with timings.phase('evaluate'):
      with timings.phase('report'):
        pass
  names = [row['phase'] for row in clock.rows()]
  assert names == ['evaluate', 'report', 'other']
  assert abs(sum(row['seconds'] for row in clock.rows()) - clock.elapsed) < 1e-3


def test_a_second_identical_job_compiles_almost_nothing_beside_a_second_process(trained_quick, tmp_path):
  """Two launch.py processes at once on this machine's one device: a training job (the second of two
  identical ones, so its programs come from the persistent cache) and an evaluation of another workdir. Each
  child records the settings it was given and what it compiled (timings.json, report.md)."""
  workdir, env, _ = trained_quick
  # The product's own cache settings: without the suite's "cache every program" (tests/conftest.py).
  child_env = {k: v for k, v in os.environ.items() if k != 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'}
  child_env.update(env, FPCLASS_JAX_CACHE=str(tmp_path / 'jax-cache'))

  # A tiny model on 24x16 images: the same programs to compile and load (their count is the claim), each smaller.
  def train(folder):
    return subprocess.Popen([sys.executable, str(REPO / 'launch.py'), QUICK, f'--workdir={tmp_path / folder}',
                             '--config.train.epochs=1', '--config.explain.after_training=False',
                             '--config.data.image_size=(24,16)', '--config.model.conv_channels=(4,)',
                             '--config.model.fc_sizes=(8,)'],
                            cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert train('first').wait(timeout=600) == 0
  second = train('second')
  evaluate = subprocess.run([sys.executable, str(REPO / 'launch.py'), f'--workdir={workdir}', '--mode=evaluate'],
                            cwd=REPO, env=child_env, capture_output=True, text=True, timeout=600)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  _, stderr = second.communicate(timeout=600)
  assert second.returncode == 0, stderr[-3000:]
  first, again, evaluated = (json.loads((w / 'timings.json').read_text())
                             for w in (tmp_path / 'first', tmp_path / 'second', workdir))
  assert first['programs_compiled'] > 5 >= again['programs_compiled'], (first, again)
  assert again['programs_loaded'] >= first['programs_compiled'] - again['programs_compiled']
  for job, mode in ((again, 'train'), (evaluated, 'evaluate')):
    assert job['mode'] == mode and job['backend'] == 'cpu'
    assert job['settings']['host_allocator'] == 'keep' and job['settings']['environment'] == {}
  phases = {row['phase'] for row in again['rows']}
  assert {'start-up', 'data', 'model', 'epochs', 'checkpoints', 'evaluate', 'report'} <= phases
  assert again['outside_epochs_seconds'] < again['total_seconds']
  report = (tmp_path / 'second' / 'report.md').read_text()
  assert '## Where the time went' in report and f'XLA compiled {again["programs_compiled"]} programs' in report
  # The workdir keeps each mode's latest job: the training job's phases beside evaluate's, in both files (and
  # those of other modes that tests sharing this session's workdir ran on it before): train's column first.
  modes = ['train', *sorted(set(evaluated['modes']) - {'train'})]
  assert set(modes) >= {'train', 'evaluate'} and evaluated['modes']['evaluate']['mode'] == 'evaluate'
  assert evaluated['modes']['train']['rows'] and evaluated['modes']['evaluate']['rows']
  evaluated_report = (workdir / 'report.md').read_text()
  assert f"| phase | {' | '.join(f'--mode {m}' for m in modes)} |" in evaluated_report
  for mode in ('train', 'evaluate'):   # one line per mode, with its own figures
    job = evaluated['modes'][mode]
    assert (f'- `--mode {mode}` on cpu: {job["total_seconds"]:.1f} s wall' in evaluated_report
            and f'XLA compiled {job["programs_compiled"]} programs' in evaluated_report), evaluated_report


def test_a_gpu_plugin_without_a_gpu_device_falls_back_to_the_cpu_with_one_line(monkeypatch, capsys):
  """JAX's CUDA plugin crashes the process at its first device query where no GPU is visible; fpclass sets
  JAX_PLATFORMS=cpu first and says so in one line. bench/gpu_extra_without_gpu.sh runs the real plugin."""
  updates = []
  monkeypatch.setattr(process, '_gpu_plugins', lambda: {'xla_cuda13'})
  monkeypatch.setattr(process, '_backend_started', lambda: False)
  monkeypatch.setattr(process.jax.config, 'update', lambda name, value: updates.append((name, value)))
  environ = {}
  monkeypatch.setattr(process, '_any_path', lambda *paths: False)     # no /dev/nvidia*
  assert process.fall_back_to_cpu(environ)
  assert environ == {'JAX_PLATFORMS': 'cpu'} and updates == [('jax_platforms', 'cpu')]
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and 'xla_cuda13' in lines[0] and 'running on the CPU' in lines[0]
  assert process.planned_backend(environ) == 'cpu'

  # The user's own choice, or a visible device, leaves everything alone.
  for environ, visible in (({'JAX_PLATFORMS': 'cuda'}, False), ({}, True)):
    monkeypatch.setattr(process, '_any_path', lambda *paths, v=visible: v)
    updates.clear()
    assert not process.fall_back_to_cpu(environ) and updates == [] and 'cpu' not in environ.values()
  assert capsys.readouterr().err == ''


_CACHE_OFF_SCRIPT = '''
import os, pathlib, sys
import jax, jax.numpy as jnp
from fpclass.runtime import process
folder = pathlib.Path(process.enable_compilation_cache())
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
entries = lambda: len([p for p in folder.iterdir() if not p.name.endswith('-atime')])
counts = []
jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7)).block_until_ready(); counts.append(entries())
with process.compilation_cache_off():
  jax.jit(lambda x: jnp.sin(x) * 5.0)(jnp.ones(9)).block_until_ready(); counts.append(entries())
jax.jit(lambda x: jnp.cos(x) - 2.0)(jnp.ones(11)).block_until_ready(); counts.append(entries())
print(counts)
'''


def test_compilation_cache_off_compiles_afresh_inside_and_caches_again_after(tmp_path):
  """JAX decides once per process whether it uses the cache, so the switch must reset that decision both
  ways: a program compiled inside writes no entry, and one compiled after it writes one again."""
  env = dict(os.environ, FPCLASS_JAX_CACHE=str(tmp_path / 'cache'))
  done = subprocess.run([sys.executable, '-c', _CACHE_OFF_SCRIPT], env=env, cwd=REPO, capture_output=True,
                        text=True, check=True)
  before, inside, after = json.loads(done.stdout.strip().splitlines()[-1])
  assert before > 0
  assert inside == before
  assert after > inside
