"""What each CPU choice is worth: the footprint baseline's train step (120x80x1, batch 32, Adam) with one
setting changed at a time against fpclass's production setting.

    python bench/cpu_ablations.py [--only allocator,pool,xla,batch,loop,devices,init] [--rounds 12] [--json out.json]

- allocator: glibc malloc as is vs `fpclass.runtime.process.keep_host_buffers` (minor page faults per step, img/s).
- pool: `flax.linen.max_pool` (select-and-scatter gradient) vs `fpclass.models.layers.pooling.max_pool`.
- xla: XLA:CPU option sets (YNNPACK/XNNPACK/oneDNN/LLVM levels) vs `fpclass.runtime.compiler_options.CPU_OPTIONS`.
- batch: img/s at batch 16 to 128.
- loop: per-step jit vs a scanned epoch (`config.train.loop`).
- devices: the batch split over 2 virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=2).
- init: compile and run time of the model init under XLA O3/O1, threefry partitionable on/off, rbg keys.
Settings that are per process (allocator, devices, init) run in child processes, alternated; the others
alternate rounds inside one process. img/s is the median over rounds; x is the median per-round ratio.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault('FPCLASS_JAX_CACHE', '0')

ABLATIONS = ('allocator', 'pool', 'xla', 'batch', 'loop', 'devices', 'init')
XLA_VARIANTS = {
    'XLA defaults (YNNPACK convs)': (),
    'YNNPACK off': (('xla_cpu_experimental_ynn_fusion_type', ''),),
    'XNNPACK/YNNPACK off': (('xla_cpu_use_xnnpack', False),),
    'oneDNN on': (('xla_cpu_use_onednn', True),),
    'production + LLVM O1': None,   # filled in below from fpclass.runtime.compiler_options.CPU_OPTIONS
    'production + 512-bit vectors': None,
}


def _setup(keep=True):
  from fpclass.runtime.process import keep_host_buffers
  if keep:
    keep_host_buffers()


def _footprint(batch=32, steps=8):
  import numpy as np

  from configs import footprint
  config = footprint.get_config('exp0')
  config.augment.hflip = config.augment.brightness = config.augment.contrast = 0.0
  config.train.batch_size = batch
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (steps * batch, 120, 80, 1), dtype=np.uint8)
  labels = rng.integers(0, 2, steps * batch).astype(np.int32)
  return config, images, labels


class Runner:
  """A footprint train step under one setting; `round()` runs `steps` steps to completion."""

  def __init__(self, name, batch=32, steps=8, form='step', options=None, patch_pool=False, devices=None):
    import jax

    from fpclass.config.run import RunSettings
    from fpclass.runtime.sharding import DataParallel
    from fpclass.train.sampling import epoch_order
    from fpclass.train.steps import CompiledSteps
    from fpclass.train.task import build_task
    config, images, labels = _footprint(batch, steps)
    self.name, self.batch, self.steps, self.form = name, batch, steps, form
    task = build_task(RunSettings.from_config(config), ('0', '1'), labels, steps)
    parallel = DataParallel.over(devices)
    self.compiled = CompiledSteps(task, parallel, form, options)
    self.weights = self.compiled.arguments()   # the train programs' arguments (class weights, rate, smoothing)
    self.state = self.compiled.init(jax.random.PRNGKey(0), (120, 80, 1))
    self.x, self.y = parallel.replicate((images, labels))
    self.order = parallel.replicate(epoch_order(0, 0, len(images), batch))
    self.key = jax.random.PRNGKey(1)
    self.times = []
    start = time.perf_counter()
    if patch_pool:  # trace the step with flax's max_pool in place of fpclass's
      import flax.linen as nn

      from fpclass.models.architectures import cnn
      fast = cnn.max_pool
      cnn.max_pool = lambda x, window: nn.max_pool(x, window, strides=window)
      try:
        self._run(1 if form == 'step' else None)
      finally:
        cnn.max_pool = fast
    else:
      self._run(1 if form == 'step' else None)
    self.first_seconds = time.perf_counter() - start
    self._run()

  def _run(self, steps=None):
    import jax
    if self.form == 'scan':
      self.state, out = self.compiled.train_epoch(self.state, self.x, self.y, self.order, self.key, self.weights)
    else:
      for i in range(steps or self.steps):
        self.state, out = self.compiled.train_step(self.state, self.x, self.y, self.order, i, self.key, self.weights)
    jax.block_until_ready((self.state, out))

  def round(self):
    start = time.perf_counter()
    self._run()
    self.times.append(time.perf_counter() - start)

  @property
  def img_s(self):
    return self.batch * self.steps / statistics.median(self.times)


def _interleave(runners, rounds):
  for _ in range(rounds):
    for r in runners:
      r.round()
  base = runners[0]
  rows = []
  for r in runners:
    ratio = statistics.median([(r.batch * r.steps / t) / (base.batch * base.steps / b)
                               for b, t in zip(base.times, r.times)])
    rows.append(dict(setting=r.name, img_s=r.img_s, vs_first=ratio, first_call_seconds=r.first_seconds))
  return rows


def in_process(name, rounds):
  """Ablations that alternate settings inside this process."""
  _setup()
  from fpclass.runtime.compiler_options import CPU_OPTIONS
  if name == 'pool':
    runners = [Runner('fpclass max_pool (production)'), Runner('flax nn.max_pool', patch_pool=True)]
  elif name == 'xla':
    variants = dict(XLA_VARIANTS)
    variants['production + LLVM O1'] = CPU_OPTIONS + (('xla_backend_optimization_level', 1),)
    variants['production + 512-bit vectors'] = CPU_OPTIONS + (('xla_cpu_prefer_vector_width', 512),)
    runners = [Runner('production (Eigen convs, YNNPACK dots)', options=CPU_OPTIONS)]
    runners += [Runner(label, options=opts) for label, opts in variants.items()]
  elif name == 'batch':
    runners = [Runner(f'batch {b}', batch=b, steps=max(2, 256 // b)) for b in (32, 16, 64, 128)]
  elif name == 'loop':
    runners = [Runner('per-step jit (CPU auto)'), Runner('scanned epoch', form='scan')]
  else:
    raise ValueError(name)
  return _interleave(runners, rounds)


def child(name, setting, rounds):
  """One per-process setting: prints a JSON row."""
  if name == 'allocator':
    _setup(keep=setting == 'keep_host_buffers')
    r = Runner(setting)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
      r.round()
    per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (rounds * r.steps)
    return dict(setting=setting, img_s=r.img_s, times=r.times, minor_faults_per_step=per_step)
  if name == 'devices':
    _setup()
    import jax
    r = Runner(f'{jax.device_count()} CPU device(s)')
    for _ in range(rounds):
      r.round()
    return dict(setting=r.name, img_s=r.img_s, times=r.times)
  if name == 'init':
    _setup()
    import jax
    impl, partitionable, level = setting.split(':')
    if impl != 'threefry2x32':
      jax.config.update('jax_default_prng_impl', impl)
    jax.config.update('jax_threefry_partitionable', partitionable == 'on')
    from fpclass.config.run import RunSettings
    from fpclass.train.task import build_task
    config, _, labels = _footprint()
    task = build_task(RunSettings.from_config(config), ('0', '1'), labels, 1)
    fn = jax.jit(task.init, static_argnums=1, compiler_options={'xla_backend_optimization_level': int(level[1])})
    start = time.perf_counter()
    compiled = fn.lower(jax.random.PRNGKey(0), (120, 80, 1)).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(jax.random.PRNGKey(0)))
    return dict(setting=f'{impl}, partitionable {partitionable}, XLA {level}', compile_seconds=compile_seconds,
                run_seconds=time.perf_counter() - start)
  raise ValueError(name)


def in_children(name, rounds):
  """Alternates child processes for per-process settings; returns rows."""
  settings = {'allocator': ['keep_host_buffers', 'glibc default'],
              'devices': ['1', '2'],
              'init': ['threefry2x32:on:O3', 'threefry2x32:on:O1', 'threefry2x32:off:O3', 'threefry2x32:off:O1',
                       'rbg:on:O3', 'unsafe_rbg:on:O3']}[name]
  repeats = 1 if name == 'init' else 2
  results = {s: [] for s in settings}
  for _ in range(repeats):
    for s in settings:
      env = dict(os.environ)
      if name == 'allocator' and s != 'keep_host_buffers':
        env['FPCLASS_HOST_ALLOCATOR'] = 'default'
      if name == 'devices':
        env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={s}'.strip()
      out = subprocess.run([sys.executable, __file__, '--child', name, '--setting', s, '--rounds', str(rounds)],
                           env=env, capture_output=True, text=True)
      if out.returncode:
        raise SystemExit(f'{name}/{s} failed:\n{out.stderr[-2000:]}')
      results[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
  rows = []
  for runs in results.values():
    row = dict(runs[0])
    if 'times' in row:
      times = [t for run in runs for t in run['times']]
      row['img_s'] = runs[0]['img_s'] * statistics.median(runs[0]['times']) / statistics.median(times)
      row.pop('times')
      for key in ('minor_faults_per_step',):
        if key in row:
          row[key] = statistics.median(run[key] for run in runs)
    rows.append(row)
  if 'img_s' in rows[0]:
    for row in rows:
      row['vs_first'] = row['img_s'] / rows[0]['img_s']
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--only', default=','.join(ABLATIONS))
  p.add_argument('--rounds', type=int, default=12)
  p.add_argument('--json', type=pathlib.Path)
  p.add_argument('--child')
  p.add_argument('--setting')
  args = p.parse_args()
  if args.child:
    print(json.dumps(child(args.child, args.setting, args.rounds)))
    return
  import harness
  env = harness.environment()
  print(f'CPU ablations, footprint train step | {env["cpu"]}, {env["cpu_count"]} cores | jax {env["jax"]} | '
        f'{env["date"]}, load average {env["load_average"]}', flush=True)
  results = dict(env=env)
  for name in [n.strip() for n in args.only.split(',') if n.strip()]:
    rows = in_children(name, args.rounds) if name in ('allocator', 'devices', 'init') else in_process(name, args.rounds)
    results[name] = rows
    print(f'\n{name} (load average now {os.getloadavg()[0]:.1f})')
    for row in rows:
      extras = '  '.join(f'{k} {v:.2f}' if isinstance(v, float) else f'{k} {v}' for k, v in row.items()
                         if k not in ('setting', 'img_s', 'vs_first'))
      speed = f'{row["img_s"]:8.1f} img/s  x{row["vs_first"]:.2f}' if 'img_s' in row else ''
      print(f'  {row["setting"]:42s} {speed}  {extras}', flush=True)
  if args.json:
    args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == '__main__':
  main()
