"""The per-batch cost of `augment_batch` with RandAugment or TrivialAugment on, against the footprint config's
default augmentation (issue 28's target: RandAugment <= 1.3x the default), on CPU.

    python bench/randaugment.py [--out randaugment.json] [--rounds 20] [--calls 10] [--backend cpu]

Each arm is `fpclass.train.augment.augment_batch`, jitted, on the footprint config's image size, channels and batch
size (configs/footprint.py, the seed's experiment 4): `default` is its augment settings (hflip, brightness,
contrast), `randaugment` and `trivialaugment` add `augment.policy` with torchvision's defaults. The images are
random uint8 levels / 255, as the train step sees them. Each arm is compiled and warmed first; then rounds
alternate the arms (so a shared machine's load hits all alike), each round timing `--calls` calls with fresh
keys. A call's time is to completion; the reported time is the median over every call, and the ratio is the
median of the per-round ratios.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', type=pathlib.Path, help='write the results here as JSON')
  parser.add_argument('--rounds', type=int, default=20)
  parser.add_argument('--calls', type=int, default=10, help='timed calls per arm per round')
  parser.add_argument('--backend', default='cpu', help="JAX platform to run on ('' for JAX's default)")
  args = parser.parse_args()
  if args.backend:
    os.environ['JAX_PLATFORMS'] = args.backend
  sys.path.insert(0, str(REPO))
  import jax
  import numpy as np

  from configs.footprint import get_config
  from fpclass.config.inputs import AugmentSettings
  from fpclass.train.augment import augment_batch

  config = get_config()
  default = AugmentSettings.from_config(config.augment)
  arms = {'default': default, 'randaugment': dataclasses.replace(default, policy='randaugment'),
          'trivialaugment': dataclasses.replace(default, policy='trivialaugment')}
  shape = (config.train.batch_size, *config.data.image_size, config.data.channels)
  images = jax.device_put(np.random.default_rng(0).integers(0, 256, shape).astype(np.float32) / 255.0)
  step = jax.jit(augment_batch, static_argnames='cfg')
  compile_seconds, times = {}, {name: [] for name in arms}
  for name, cfg in arms.items():
    start = time.perf_counter()
    jax.block_until_ready(step(images, jax.random.key(0), cfg))
    compile_seconds[name] = time.perf_counter() - start
    for i in range(3):
      jax.block_until_ready(step(images, jax.random.key(i), cfg))
  round_ratios = {name: [] for name in arms if name != 'default'}
  for r in range(args.rounds):
    medians = {}
    for name, cfg in arms.items():
      calls = []
      for i in range(args.calls):
        key = jax.random.fold_in(jax.random.key(1), r * args.calls + i)
        start = time.perf_counter()
        jax.block_until_ready(step(images, key, cfg))
        calls.append(time.perf_counter() - start)
      times[name] += calls
      medians[name] = statistics.median(calls)
    for name in round_ratios:
      round_ratios[name].append(medians[name] / medians['default'])
  milliseconds = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  ratios = {name: statistics.median(r) for name, r in round_ratios.items()}
  for name in arms:
    extra = f'  {ratios[name]:.2f}x the default' if name in ratios else ''
    print(f'{name:15s} {milliseconds[name]:7.3f} ms per batch of {shape}  (compile {compile_seconds[name]:.1f} s)'
          f'{extra}')
  print(f'randaugment / default: {ratios["randaugment"]:.2f}x (target <= 1.3x)')
  if args.out:
    result = dict(milliseconds_per_batch=milliseconds, ratio_to_default=ratios, compile_seconds=compile_seconds,
                  batch_shape=list(shape), settings={name: dataclasses.asdict(cfg) for name, cfg in arms.items()},
                  rounds=args.rounds, calls_per_round=args.calls, backend=jax.default_backend(),
                  device=jax.devices()[0].device_kind, machine=f'{platform.processor() or platform.machine()}, '
                  f'{os.cpu_count()} cores', load_average=os.getloadavg(), jax=jax.__version__,
                  date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                  command=' '.join(['python', 'bench/randaugment.py', *sys.argv[1:]]))
    args.out.write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  main()
