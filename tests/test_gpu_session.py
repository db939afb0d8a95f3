"""bench/gpu_session.py's CPU dry run, as a user runs it: every step ends ok, and its JSON holds the device, the
software versions and figures read back from what ran (timings.json, metrics.csv, hey's answers), not
placeholders. Needs Debian's hey (`python -m tests.system_packages` installs it)."""
import json
import os
import shutil
import statistics
import subprocess
import sys
from xml.etree import ElementTree

import jax
import pytest

from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from tests.conftest import REPO, load_config

STEPS = ('startup', 'keras_recipes', 'footprint', 'semi', 'ood', 'population', 'serve', 'sharing', 'precision',
         'pytest')


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
  """The output folder of one dry run (session.json with every step's record, and session.log)."""
  if shutil.which('hey') is None:
    message = 'hey not installed (python -m tests.system_packages installs it)'
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(f'CI must run the GPU session\'s dry run: {message}')
    pytest.skip(message)
  out = tmp_path_factory.mktemp('gpu-session') / 'out'
  # Its scratch folder (about 750 MB: VGG16 weights and checkpoints) is a temporary one that it removes.
  done = subprocess.run([sys.executable, 'bench/gpu_session.py', '--cpu-dry-run', '--out', str(out)], cwd=REPO,
                        capture_output=True, text=True, timeout=1200)
  log = (out / 'session.log').read_text() if (out / 'session.log').exists() else ''
  assert done.returncode == 0, f'{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n--- session.log:\n{log[-6000:]}'
  return out


def step_record(out, name: str) -> dict:
  return json.loads((out / 'session.json').read_text())['steps'][name]


def test_every_step_is_ok_with_the_device_and_versions(dry_run):
  session = json.loads((dry_run / 'session.json').read_text())
  assert list(session['steps']) == list(STEPS)
  # The run tool brings back at most 8 files: every step's record is in session.json, the tests' in JUnit's XML.
  assert sorted(p.name for p in dry_run.iterdir()) == ['pytest-junit.xml', 'session.json', 'session.log']
  for name in STEPS:
    record = step_record(dry_run, name)
    assert record['status'] == 'ok', f'{name}: {record["error"]}'
    assert record['error'] is None and record['seconds'] > 0 and record['commands']
    for cost in record['command_costs']:   # those `Step.run` waited for: the others run beside something
      assert 0 <= cost['command'] < len(record['commands']) and cost['wall_seconds'] > 0 and cost['cpu_seconds'] > 0
    environment = record['environment']
    assert environment['dry_run'] is True
    assert environment['device'] == dict(backend='cpu', platform='cpu', name='cpu', count=1)
    versions = environment['versions']
    assert versions['jax'] == jax.__version__
    assert versions['python'] == '.'.join(map(str, sys.version_info[:3]))
    assert versions['hey']


def test_keras_recipes_epoch_one_and_steady(dry_run):
  results = step_record(dry_run, 'keras_recipes')['results']
  epochs = results['sizes']['epochs']
  assert epochs == 2
  for arm in ('fpclass', 'keras_jax'):
    seconds = results['raw']['vgg16'][arm]['seconds']
    assert len(seconds) == epochs and all(s > 0 for s in seconds)
    row = results['epoch_one_and_steady']['vgg16'][arm]
    assert row['epoch_1_seconds'] == seconds[0] and row['steady_epoch_seconds'] == seconds[1]
  rows = results['epoch_one_and_steady']['vgg16']
  assert rows['keras_jax_over_fpclass'] == {key: rows['keras_jax'][key] / rows['fpclass'][key]
                                            for key in ('epoch_1_seconds', 'steady_epoch_seconds')}


def test_footprint_programs_compiled_come_from_timings_json(dry_run):
  results = step_record(dry_run, 'footprint')['results']
  cold, warm = results['cold'], results['warm']
  for job in (cold, warm):
    compiled = job['timings_json']['programs_compiled']
    assert isinstance(compiled, int) and compiled >= 0
    assert compiled == job['programs_xla_compiled']   # the bench's figure is timings.json's
    assert job['timings_json']['backend'] == 'cpu' and job['epochs_run'] == 1   # the dry run's one epoch
  assert cold['timings_json']['programs_compiled'] > 0
  assert warm['timings_json']['programs_compiled'] < cold['timings_json']['programs_compiled']
  assert warm['timings_json']['programs_loaded'] > 0   # the warm job loads what the cold one compiled


def test_startup_is_taken_apart_from_python_own_import_times(dry_run):
  results = step_record(dry_run, 'startup')['results']
  assert results['import_seconds'] > 0 and 'fpclass.modes.command_line' in results['costliest_imports']
  assert max(results['costliest_imports'].values()) <= results['import_seconds']
  assert len(results['costliest_modules_alone']) == 15
  assert results['import_jax'] > 0 and results['backend_init'] >= 0 and results['first_array'] > 0


def test_semi_epochs_are_read_from_both_runs_metrics(dry_run):
  results = step_record(dry_run, 'semi')['results']
  for arm in ('supervised', 'semi'):
    seconds = results[arm]['epoch_seconds']
    assert len(seconds) == 2 and results[arm]['steady_epoch_seconds'] == seconds[1] > 0   # the dry run's 2 epochs
  assert results['semi_ratio'] == 2 and results['bar'] == 3   # the dry run's semi.ratio, read from metadata.json
  assert results['steady_semi_over_supervised'] == round(
      results['semi']['steady_epoch_seconds'] / results['supervised']['steady_epoch_seconds'], 3)


def test_ood_cost_is_each_score_against_the_logits_alone(dry_run):
  results = step_record(dry_run, 'ood')['results']
  assert results['images'] == 32 and results['ratio_to_logits']['logits alone'] == 1.0
  assert set(results['median_seconds']) == {'logits alone', 'combined', 'energy'}
  assert all(seconds > 0 for seconds in results['median_seconds'].values())


def test_population_trains_the_sweep_on_both_axes_runs_auto_and_serves_its_ensemble(dry_run):
  results = step_record(dry_run, 'population')['results']
  sweeps = results['sweeps']
  assert {name: run['models'] for name, run in sweeps.items()} == dict(vmap_3=3, loop_3=3)   # the dry run's two
  for run in sweeps.values():
    assert run['exit_status'] == 0 and 0 < run['train_seconds'] <= run['wall_seconds'] < run['launch_seconds']
  assert results['loop_3_over_vmap_3'] == {
      key: round(sweeps['loop_3'][key] / sweeps['vmap_3'][key], 3) for key in ('launch_seconds', 'train_seconds')}
  assert 'vmap_15_over_one_member' not in results   # one member alone is the GPU plan's
  (auto,) = results['auto'].values()   # the dry run's one axis
  assert auto['exit_status'] == 0 and auto['trial_states'].get('COMPLETE', 0) >= 1
  # The budget's hold is test_auto's to check (at this tiny budget the interpreter's start is a third of it).
  assert auto['chosen']['candidate'] and 0 < sum(auto['stages'].values()) < auto['used_seconds'] < auto['launch_seconds']
  served = results['serve_ensemble']
  # auto's final ensemble: its one trial's fold models, as many as the 15 s afforded (one, on a loaded machine)
  assert served['served_workdir'].endswith('auto-loop/final') and served['models'] >= 1
  (result,) = served['results']
  assert result['ok'] > 0 and result['hey_answers'] + result['failed'] == result['requests'] == 32


def test_serve_counts_every_request_hey_sent(dry_run):
  results = step_record(dry_run, 'serve')['results']
  assert results['generator'].startswith('hey')
  (result,) = results['results']
  assert result['concurrency'] == 64 and result['requests'] == 128
  assert result['hey_answers'] + result['failed'] == result['requests']
  assert result['ok'] + result['http_503'] + result['other_status'] == result['hey_answers']
  assert result['ok'] > 0 and result['p95_ms'] > 0


def test_two_servers_answer_beside_a_training_run(dry_run):
  results = step_record(dry_run, 'sharing')['results']
  training = results['training']
  assert training['exit_status'] == 0 and training['epochs'] == 1 and training['first_epoch_seconds'] > 0
  assert training['epoch_seconds'] == [training['first_epoch_seconds']]
  # An accuracy of the footprint quick run's validation images: a whole number of them right.
  n_val = len(pipeline.load_dataset(DataSettings.from_config(load_config('configs/footprint.py:exp4,quick').data),
                                    progress=False).val)
  assert training['val_accuracy'] * n_val == pytest.approx(round(training['val_accuracy'] * n_val), abs=1e-9)
  assert len(results['servers']) == 2
  for server in results['servers'].values():
    assert server['alive_after'] and server['turns'] >= 1
    assert server['ok'] > 0 and server['requests'] == server['turns'] * 8   # turns of 8 requests from 2 clients


def test_precision_trains_the_recipe_in_fp32_and_bf16(dry_run):
  runs = step_record(dry_run, 'precision')['results']['vgg16']
  for precision in ('fp32', 'bf16'):
    run = runs[precision]
    assert run['exit_status'] == 0 and run['backend'] == 'cpu' and run['epochs'] == len(run['epoch_seconds']) == 2
    assert run['first_epoch_seconds'] == run['epoch_seconds'][0] > 0
    assert run['steady_epoch_seconds'] == statistics.median(run['epoch_seconds'][1:]) > 0
  assert runs['bf16_computed'] is False   # the CPU trains a bf16 request in fp32: the same model, the same score
  assert runs['fp32']['val_accuracy'] == runs['bf16']['val_accuracy'] and runs['val_accuracy_bf16_minus_fp32'] == 0
  assert runs['fp32']['val_accuracy'] * 4 == round(runs['fp32']['val_accuracy'] * 4)   # of the 4 stand-in images
  assert runs['fp32_over_bf16_seconds'] == {key: runs['fp32'][key] / runs['bf16'][key]
                                            for key in ('first_epoch_seconds', 'steady_epoch_seconds')}


def test_pytest_step_reads_pytest_own_counts(dry_run):
  results = step_record(dry_run, 'pytest')['results']
  assert results['exit_status'] == 0 and results['passed'] > 0 and results.get('failed', 0) == 0
  assert results['pytest_seconds'] > 0 and results['not_passed'] == []
  suite = ElementTree.parse(dry_run / 'pytest-junit.xml').getroot().find('testsuite')
  assert int(suite.get('tests')) - int(suite.get('skipped')) == results['passed']   # every test's record
