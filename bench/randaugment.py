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

In the same rounds, what a PyTorch user would run instead: torchvision.transforms.v2 on the same batch as uint8
tensors, one image at a time as a DataLoader worker applies it (one draw per image): RandomHorizontalFlip and
ColorJitter(brightness, contrast) as the default, with RandAugment() or TrivialAugmentWide() between them.
`--per-op` adds the policy alone (`randaugment.apply_policy` under vmap, jitted) with every image drawing the same op,
RandAugment's two slots: where the time goes, and the floor that the per-image loop costs (Identity).
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
  parser.add_argument('--no-torchvision', action='store_true', help='skip the torchvision arms')
  parser.add_argument('--per-op', action='store_true', help="time the policy alone with every image on one op")
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
  torch_arms = {} if args.no_torchvision else _torchvision_arms(config)
  torch_batch = None
  if torch_arms:
    import torch
    torch_batch = torch.from_numpy(np.round(np.asarray(images) * 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()
  compile_seconds, times = {}, {name: [] for name in [*arms, *torch_arms]}
  for name, cfg in arms.items():
    start = time.perf_counter()
    jax.block_until_ready(step(images, jax.random.key(0), cfg))
    compile_seconds[name] = time.perf_counter() - start
    for i in range(3):
      jax.block_until_ready(step(images, jax.random.key(i), cfg))
  # Each ratio: (numerator arm, denominator arm), taken per round.
  ratio_of = {name: (name, 'default') for name in arms if name != 'default'}
  ratio_of.update({name: (name, 'torchvision default') for name in torch_arms if name != 'torchvision default'})
  ratio_of.update({f'torchvision {name} / fpclass': (f'torchvision {name}', name) for name in arms
                   if f'torchvision {name}' in torch_arms})
  round_ratios = {name: [] for name in ratio_of}
  for r in range(args.rounds):
    medians = {}
    for name, cfg in arms.items():
      keys = [jax.random.fold_in(jax.random.key(1), r * args.calls + i) for i in range(args.calls)]
      times[name] += _seconds(lambda i, cfg=cfg, keys=keys: jax.block_until_ready(step(images, keys[i], cfg)),
                              args.calls)
      medians[name] = statistics.median(times[name][-args.calls:])
    for name, transform in torch_arms.items():
      times[name] += _seconds(lambda i, transform=transform: [transform(image) for image in torch_batch], args.calls)
      medians[name] = statistics.median(times[name][-args.calls:])
    for name, (numerator, denominator) in ratio_of.items():
      round_ratios[name].append(medians[numerator] / medians[denominator])
  milliseconds = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  ratios = {name: statistics.median(r) for name, r in round_ratios.items()}
  for name in times:
    extra = f'  {ratios[name]:.2f}x its default' if name in ratios else ''
    compiled = f'  (compile {compile_seconds[name]:.1f} s)' if name in compile_seconds else ''
    print(f'{name:26s} {milliseconds[name]:7.3f} ms per batch of {shape}{compiled}{extra}')
  for name in ratios:
    if name.endswith('/ fpclass'):
      print(f'{name}: {ratios[name]:.2f}x')
  print(f'randaugment / default: {ratios["randaugment"]:.2f}x (target <= 1.3x)')
  per_op = _per_op(images, arms['randaugment'], args.rounds) if args.per_op else {}
  for name, ms in per_op.items():
    print(f'  policy alone, every image {name:13s} {ms:7.3f} ms')
  if args.out:
    result = dict(milliseconds_per_batch=milliseconds, ratio_to_default=ratios, compile_seconds=compile_seconds,
                  batch_shape=list(shape), settings={name: dataclasses.asdict(cfg) for name, cfg in arms.items()},
                  policy_alone_per_op_milliseconds=per_op or None, torch=_torch_version(torch_arms),
                  rounds=args.rounds, calls_per_round=args.calls, backend=jax.default_backend(),
                  device=jax.devices()[0].device_kind, machine=f'{platform.processor() or platform.machine()}, '
                  f'{os.cpu_count()} cores', load_average=os.getloadavg(), jax=jax.__version__,
                  date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                  command=' '.join(['python', 'bench/randaugment.py', *sys.argv[1:]]))
    args.out.write_text(json.dumps(result, indent=2) + '\n')


def _torchvision_arms(config) -> dict:
  """torchvision v2 pipelines on one uint8 (C, H, W) image: the default augmentation, then with each policy."""
  try:
    from torchvision.transforms import v2
  except ImportError:
    return {}
  a = config.augment
  flip, jitter = v2.RandomHorizontalFlip(a.hflip), v2.ColorJitter(brightness=a.brightness, contrast=a.contrast)
  return {'torchvision default': v2.Compose([flip, jitter]),
          'torchvision randaugment': v2.Compose([flip, v2.RandAugment(), jitter]),
          'torchvision trivialaugment': v2.Compose([flip, v2.TrivialAugmentWide(), jitter])}


def _torch_version(torch_arms) -> str | None:
  if not torch_arms:
    return None
  import torch
  import torchvision
  return f'torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads'


def _per_op(images, cfg, rounds: int) -> dict[str, float]:
  """Milliseconds per batch of the policy alone, jitted and vmapped, with every image drawing op k in each slot."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from fpclass.train import randaugment
  policy = jax.jit(jax.vmap(lambda image, u: randaugment.apply_policy(image, u, cfg)))
  result = {}
  for k, name in enumerate(randaugment.OPS):
    draws = np.full((images.shape[0], randaugment.num_slots(cfg), randaugment.DRAWS_PER_OP), 0.25, np.float32)
    draws[..., 0] = (k + 0.5) / len(randaugment.OPS)
    u = jnp.asarray(draws.reshape(images.shape[0], -1))
    jax.block_until_ready(policy(images, u))
    result[name] = 1e3 * statistics.median(_seconds(lambda i, u=u: jax.block_until_ready(policy(images, u)),
                                                    rounds * 5))
  return result


def _seconds(call, n: int) -> list[float]:
  """Wall seconds of `call(i)` for i in 0..n-1, each to completion (the caller blocks on device work)."""
  seconds = []
  for i in range(n):
    start = time.perf_counter()
    call(i)
    seconds.append(time.perf_counter() - start)
  return seconds


if __name__ == '__main__':
  main()
