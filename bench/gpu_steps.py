"""The GPU session's steps (bench/gpu_session.py): each runs launch.py or a bench/ script through its
`Step` and returns what it measured, read back from what ran; a failure is a `StepFailed`."""
import argparse
import concurrent.futures
import contextlib
import csv
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

from bench import keras_recipes  # stdlib only at import: its stand-in data and Keras-written weights
from bench.gpu_population import population_step
from bench.gpu_round_steps import ROUND_STEP_FUNCTIONS
from bench.gpu_session_core import (
  REPO,
  Session,
  Step,
  StepFailed,
  TrainedRun,
  accounted_serve_report,
  command_output,
  read_json,
  stop_descendants,
  stop_process_group,
  tail,
  trained_footprint_run,
)

# -------------------------------------------------------------------------------------------------- steps

def keras_recipes_step(session: Session, step: Step) -> dict:
  """bench/keras_recipes.py: seconds per epoch of fpclass and Keras 3 (JAX) on the seed recipes."""
  report_path = session.scratch / 'keras_recipes-report.json'
  done = step.run([sys.executable, 'bench/keras_recipes.py', '--out', session.scratch / 'keras', '--json',
                   report_path, *session.plan.keras_args])
  results = {}
  if report_path.exists():   # the bench writes it after every arm: a stopped run keeps what it measured
    report = read_json(report_path)
    results = dict(epoch_one_and_steady=epoch_one_and_steady(report['results']),
                   summary=report['summary'], sizes=report['sizes'], raw=report['results'])
  try:
    step.check(done, 'bench/keras_recipes.py')
  except StepFailed as e:
    raise StepFailed(str(e), e.status, results) from None
  if not results:
    raise StepFailed('bench/keras_recipes.py wrote no report')
  return results


def epoch_one_and_steady(arms_by_recipe: dict) -> dict:
  """Per recipe and arm: epoch 1 (compiles included) and the median of the later epochs (on the H100 two later
  epochs of one run took 0.029 and 0.128 s: a background checkpoint save beside one of them); Keras-JAX's over
  fpclass's (above 1: fpclass is faster)."""
  table = {}
  for recipe, arms in arms_by_recipe.items():
    rows = {arm: dict(epoch_1_seconds=r['seconds'][0], steady_epoch_seconds=statistics.median(r['seconds'][1:]),
                      last_val_accuracy=r['val_accuracy'][-1]) for arm, r in arms.items() if r['seconds']}
    if 'keras_jax' in rows and 'fpclass' in rows:
      keras, ours = rows['keras_jax'], rows['fpclass']
      rows['keras_jax_over_fpclass'] = {
          key: keras[key] / ours[key] if keras[key] and ours[key] else None
          for key in ('epoch_1_seconds', 'steady_epoch_seconds')}
    table[recipe] = rows
  return table


def footprint_step(session: Session, step: Step) -> dict:
  """bench/footprint_end_to_end.py: the footprint main job through launch.py with a cold and then a warm
  compilation cache; each job's timings.json read back from its workdir."""
  work = session.scratch / 'footprint'
  work.mkdir(exist_ok=True)
  report_path = session.scratch / 'footprint-report.json'
  # The bench makes its workdirs with mkdtemp: under TMPDIR, so they can be found and served afterwards.
  done = step.run([sys.executable, 'bench/footprint_end_to_end.py', *session.plan.footprint_args, '--json',
                   report_path], env=dict(TMPDIR=str(work)))
  step.check(done, 'bench/footprint_end_to_end.py')
  report = read_json(report_path)
  found = sorted(work.glob('fpclass-e2e-*'))
  if not found:
    raise StepFailed(f'bench/footprint_end_to_end.py left no workdir under {work}')
  results = dict(environment_of_bench=report.get('env'), epochs=report.get('epochs'), n_train=report.get('n_train'),
                 n_val=report.get('n_val'))
  for name in ('cold', 'warm'):
    timings = read_json(found[-1] / name / 'timings.json')
    results[name] = dict(report[name], timings_json={key: timings.get(key) for key in (
        'backend', 'programs_compiled', 'programs_loaded', 'compile_seconds', 'total_seconds',
        'outside_epochs_seconds')})
  session.trained = TrainedRun(found[-1] / 'warm', found[-1] / 'cache', found[-1] / 'jax-cache')
  return results


def serve_step(session: Session, step: Step) -> dict:
  """bench/serve_load.py: hey against `--mode serve` at 64 clients, on the trained footprint workdir."""
  if session.hey is None:
    raise StepFailed('hey is missing: apt-get install hey, or `bash bench/gpu_session.sh prepare` and carry .whl')
  trained = trained_footprint_run(session, step)
  report_path = session.scratch / 'serve-report.json'
  done = step.run([sys.executable, 'bench/serve_load.py', '--workdir', trained.workdir, '--json', report_path,
                   *session.plan.serve_args], env=dict(FPCLASS_CACHE=str(trained.data_cache)))
  step.check(done, 'bench/serve_load.py')
  return dict(accounted_serve_report(report_path), served_workdir=str(trained.workdir))


def sharing_step(session: Session, step: Step) -> dict:
  """Two `--mode serve` servers under hey while a footprint training run shares the device: whether all three
  run, the training's epochs and the servers' answers meanwhile (bench/serve_load.py's server and hey)."""
  if session.hey is None:
    raise StepFailed('hey is missing: apt-get install hey, or `bash bench/gpu_session.sh prepare` and carry .whl')
  from bench import serve_load  # lazy: it imports httpx, which the GPU image gets from .whl/
  plan = session.plan
  trained = trained_footprint_run(session, step)
  with data_cache(trained):
    body = serve_load.multipart_body(serve_load.footprint_png(trained.workdir))
  body_file = session.scratch / 'sharing-body.bin'
  body_file.write_bytes(body)
  servers, training, gpu_memory = {}, None, None
  try:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      starting = {f'server {i}': pool.submit(serve_load.Server, trained.workdir, plan.share_workers, True,
                                             serve_configs(plan.serve_args)) for i in (1, 2)}
      _, late = concurrent.futures.wait(starting.values(), timeout=max(1.0, step.remaining()))
      if late:
        stop_descendants()   # a server still starting: its read of the address line then ends
    not_started = []
    for name, future in starting.items():
      try:
        servers[name] = future.result()
      except SystemExit as e:   # serve_load's way of reporting a server that did not start
        not_started.append(f'{name}: {e}')
    if late:
      raise StepFailed(f'the servers did not start within the step\'s {step.limit:.0f} s', status='timeout')
    if not_started:
      raise StepFailed('\n'.join(not_started))
    workdir = session.scratch / 'sharing-training'
    command = [sys.executable, 'launch.py', *plan.share_train_args, '--workdir', str(workdir),
               '--config.explain.after_training=False']
    step.commands.append(shlex.join(command))
    log = open(session.log_path, 'a')
    log.write(f'\n$ {shlex.join(command)}   (beside the two servers)\n')
    log.flush()
    # The served run's data and compiled programs: the training run's time goes to its epochs.
    env = dict(os.environ, FPCLASS_CACHE=str(trained.data_cache), FPCLASS_JAX_CACHE=str(trained.jax_cache))
    training = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    turns = {name: [] for name in servers}
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
      while True:   # both servers under load at once, turn after turn, until the training run ends
        running = {name: pool.submit(hey_turn, serve_load, session.hey, server, body_file, plan.share_clients,
                                     plan.share_turn_requests, step.remaining()) for name, server in servers.items()}
        for name, future in running.items():
          try:
            turns[name].append(future.result())
          except SystemExit as e:   # serve_load.run_hey's way of saying hey failed
            raise StepFailed(f'hey against {name}: {e}') from None
        if gpu_memory is None:
          gpu_memory = gpu_memory_in_use()
        if training.poll() is not None or step.remaining() < 5:
          break
        time.sleep(plan.share_pause_seconds)
    try:
      training.wait(timeout=max(1.0, step.remaining()))
    except subprocess.TimeoutExpired:
      stop_process_group(training)
      raise StepFailed(f'the training run beside the servers ran past the step\'s {step.limit:.0f} s',
                       status='timeout') from None
    results = dict(training=training_run_record(workdir, training.returncode),
                   servers={name: dict(serve_load.summarise(parts), workers=plan.share_workers,
                                       clients=plan.share_clients, turns=len(parts),
                                       alive_after=servers[name].process.poll() is None)
                            for name, parts in turns.items()},
                   gpu_memory_during_training=gpu_memory)
  finally:
    if training is not None and training.poll() is None:
      stop_process_group(training)
    for server in servers.values():
      server.stop()
  if training.returncode:
    raise StepFailed(f'the training run beside the servers failed (exit status {training.returncode}); see '
                     'session.log', partial=results)
  for name, result in results['servers'].items():
    if not result['ok'] or not result['alive_after']:
      raise StepFailed(f'{name}: {result["ok"]} answers 200, alive after: {result["alive_after"]}', partial=results)
  return results


def serve_configs(serve_args) -> list[str]:
  """The serve step's `--serve-config` settings (bench/serve_load.py's), which the sharing step's servers take
  too: the dry run's one warm batch size; none in the GPU plan."""
  return [value for flag, value in zip(serve_args, serve_args[1:]) if flag == '--serve-config']


@contextlib.contextmanager
def data_cache(trained: TrainedRun):
  """FPCLASS_CACHE of `trained` while serve_load.footprint_png looks for its data."""
  before = os.environ.get('FPCLASS_CACHE')
  os.environ['FPCLASS_CACHE'] = str(trained.data_cache)
  try:
    yield
  finally:
    if before is None:
      os.environ.pop('FPCLASS_CACHE', None)
    else:
      os.environ['FPCLASS_CACHE'] = before


def hey_turn(serve_load, hey: str, server, body_file, clients: int, requests: int, time_limit: float) -> dict:
  """One turn of hey against `server`, with the figures serve_load.summarise pools (as serve_load.main does)."""
  calls_before, cpu_before, load_average = server.device_calls(), server.cpu_seconds(), os.getloadavg()[0]
  part = serve_load.run_hey(hey, server.url, body_file, clients, requests, max(5.0, time_limit))
  calls_after = server.device_calls()
  part.update(server_cpu=server.cpu_seconds() - cpu_before, load_average=load_average,
              device_calls=None if calls_before is None or calls_after is None else calls_after - calls_before)
  return part


def gpu_memory_in_use() -> dict | None:
  if not shutil.which('nvidia-smi'):
    return None
  return dict(device=command_output(['nvidia-smi', '--query-gpu=memory.used,memory.total,utilization.gpu',
                                     '--format=csv,noheader']),
              processes=command_output(['nvidia-smi', '--query-compute-apps=pid,used_memory',
                                        '--format=csv,noheader']))


def training_run_record(workdir: pathlib.Path, returncode: int | None) -> dict:
  """A launch.py training job's figures from its workdir: metrics.csv's epochs, scores.json, timings.json."""
  record = dict(workdir=str(workdir), exit_status=returncode)
  with contextlib.suppress(OSError):
    with open(workdir / 'metrics.csv') as f:
      seconds = [float(row['seconds']) for row in csv.DictReader(f)]
    record.update(epochs=len(seconds), epoch_seconds=seconds, first_epoch_seconds=seconds[0] if seconds else None,
                  steady_epoch_seconds=statistics.median(seconds[1:]) if len(seconds) > 1 else None)
  with contextlib.suppress(OSError, ValueError):
    scores = read_json(workdir / 'scores.json')
    record.update(val_accuracy=scores.get('accuracy'), val_loss=scores.get('loss'))
  with contextlib.suppress(OSError, ValueError):
    timings = read_json(workdir / 'timings.json')
    record.update({key: timings.get(key) for key in ('backend', 'total_seconds', 'outside_epochs_seconds',
                                                     'programs_compiled', 'programs_loaded')})
  return record


def precision_step(session: Session, step: Step) -> dict:
  """The transfer recipes through launch.py in fp32 and in bf16 (train.precision), on keras_recipes.py's
  stand-in data and Keras-written weights: seconds per epoch and validation scores."""
  train, val = session.plan.stand_in_images
  stand_in = argparse.Namespace(out=session.scratch / 'keras', train=train, val=val)   # as keras_recipes' arms
  results = {}
  for recipe, config, application, size in session.plan.precision_recipes:
    data = keras_recipes.prepare_data(stand_in, size)   # made once: the keras_recipes step's, when it ran
    weights = keras_recipes.write_keras_weights(stand_in, application, size)
    runs = {}
    for precision in ('fp32', 'bf16'):
      workdir = session.scratch / 'precision' / f'{recipe}-{precision}'
      done = step.run([sys.executable, 'launch.py', '--config', config, '--workdir', workdir,
                       '--config.data.source=image_folder', f'--config.data.root={data}',
                       f'--config.model.pretrained={weights}', f'--config.train.precision={precision}',
                       '--config.explain.after_training=False', '--config.train.tensorboard=False',
                       *session.plan.precision_args],
                      env=dict(FPCLASS_JAX_CACHE='0'))   # cold compiles in both, so epoch 1 compares
      runs[precision] = training_run_record(workdir, done.returncode)
      results[recipe] = runs
      try:
        step.check(done, f'{recipe} in {precision}')
      except StepFailed as e:
        raise StepFailed(str(e), e.status, results) from None
    fp32, bf16 = runs['fp32'], runs['bf16']
    runs['bf16_computed'] = bf16.get('backend') not in (None, 'cpu')   # the CPU trains a bf16 request in fp32
    runs['fp32_over_bf16_seconds'] = {
        key: fp32[key] / bf16[key] if fp32.get(key) and bf16.get(key) else None
        for key in ('first_epoch_seconds', 'steady_epoch_seconds')}
    runs['val_accuracy_bf16_minus_fp32'] = (bf16['val_accuracy'] - fp32['val_accuracy']
                                            if None not in (bf16.get('val_accuracy'), fp32.get('val_accuracy'))
                                            else None)
  return results


PYTEST_COUNT = re.compile(r'(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)')
PYTEST_SUMMARY = re.compile(r'^=*\s*((?:\d+ \w+(?:, )?)+) in ([\d.]+)s\b.*$', re.MULTILINE)


def pytest_step(session: Session, step: Step) -> dict:
  """The suite (`pytest -n 4`); at the step's deadline pytest gets Ctrl-C and reports what ran so far. Every
  failure's message and traceback is in <out>/pytest-junit.xml, also where the log's summary is cut."""
  done = step.run([sys.executable, '-m', 'pytest', *session.plan.pytest_args, '-p', 'no:cacheprovider',
                   f'--basetemp={session.scratch / "pytest"}', f'--junitxml={session.out / "pytest-junit.xml"}'])
  summaries = PYTEST_SUMMARY.findall(done.output)
  results = dict(exit_status=done.returncode, stopped_at_deadline=done.returncode is None,
                 not_passed=re.findall(r'^(?:FAILED|ERROR) (\S+)', done.output, re.MULTILINE)[:100])
  if summaries:
    counts, seconds = summaries[-1]
    for number, kind in PYTEST_COUNT.findall(counts):
      results[kind.rstrip('s') if kind in ('errors', 'warnings') else kind] = int(number)
    results['pytest_seconds'] = float(seconds)
  if done.returncode is None:
    raise StepFailed(f'the suite ran past the step\'s {step.limit:.0f} s', status='timeout', partial=results)
  if done.returncode == 1:
    raise StepFailed(f'tests failed: {", ".join(results["not_passed"][:10])}', status='failed', partial=results)
  if done.returncode:
    raise StepFailed(f'pytest exit status {done.returncode}:\n{tail(done.output)}', partial=results)
  return results


STEP_FUNCTIONS = dict(keras_recipes=keras_recipes_step, footprint=footprint_step, population=population_step,
                      serve=serve_step, sharing=sharing_step, precision=precision_step, pytest=pytest_step,
                      **ROUND_STEP_FUNCTIONS)
