"""What EMA, layer-wise lr decay and drop path add to a ConvNeXt-T train step on CPU (issue 28's target: <= 10%).

    python bench/finetune_step_overhead.py [--batch 8] [--size 64] [--rounds 15] [--json out.json]

Both arms are the same jitted `Task.train_batch` (random init; the values do not change the time), built by
`build_task` from configs/finetune.py:convnext_tiny with nothing else changed: 'plain' has ema_decay 0,
layer_decay 1 and drop_path_rate 0; 'recipe' has the recipe's 0.9998, 0.8 and 0.1. Augmentation and mixing are
off in both, so only the three pieces differ. Each arm is compiled and warmed, then timed in interleaved rounds
(median of the rounds), so a noisy machine slows both alike.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import finetune  # noqa: E402
from fpclass.config.run import RunSettings
from fpclass.train.task import build_task  # noqa: E402


def arm(recipe: bool, batch: int, size: int):
  c = finetune.get_config('convnext_tiny')
  c.model.pretrained = ''
  c.data.image_size = (size, size)
  c.augment.update(policy='', hflip=0.0, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)
  c.train.batch_size = batch
  if not recipe:
    c.train.ema_decay, c.train.layer_decay, c.model.drop_path_rate = 0.0, 1.0, 0.0
  task = build_task(RunSettings.from_config(c), ['a', 'b', 'c'], np.array([0, 1, 2]), steps_per_epoch=100)
  state = task.init(jax.random.PRNGKey(0), (size, size, 3))
  step = jax.jit(task.train_batch)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  labels = jnp.asarray(np.arange(batch) % 3, jnp.int32)
  return step, state, images, labels


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=15)
  parser.add_argument('--steps', type=int, default=5, help='steps per round')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  arms = {name: arm(name == 'recipe', args.batch, args.size) for name in ('plain', 'recipe')}
  states, times = {}, {name: [] for name in arms}
  for name, (step, state, images, labels) in arms.items():
    state, _ = step(state, images, labels, jax.random.PRNGKey(1))   # compile and warm
    jax.block_until_ready(state)
    states[name] = state
  for r in range(args.rounds):
    for name, (step, _, images, labels) in arms.items():
      state = states[name]
      started = time.perf_counter()
      for s in range(args.steps):
        state, _ = step(state, images, labels, jax.random.PRNGKey(r * args.steps + s))
      jax.block_until_ready(state)
      times[name].append((time.perf_counter() - started) / args.steps)
      states[name] = state
  median = {name: statistics.median(t) for name, t in times.items()}
  ratio = median['recipe'] / median['plain']
  for name, seconds in median.items():
    print(f'{name:7s} {seconds * 1e3:8.1f} ms per step')
  print(f'recipe / plain = {ratio:.3f} (target <= 1.10)')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(
        ms_per_step={k: round(v * 1e3, 2) for k, v in median.items()}, ratio=round(ratio, 4), batch=args.batch,
        size=args.size, rounds=args.rounds, steps=args.steps, machine=platform.processor() or platform.machine(),
        cpus=os.cpu_count(), date=time.strftime('%Y-%m-%d')), indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
