"""The cost floor of a frozen-backbone epoch: one VGG16 forward pass (224x224, no top) in fpclass, in
PyTorch (torchvision's VGG16 features, eager, its CPU convolutions) and in Keras 3 on the JAX backend
(`keras.applications.VGG16`, a jitted `stateless_call`), interleaved in one process.

A frozen-backbone epoch in fpclass and in Keras is this forward over every image plus a small head, so
when the three arms run the forward at the same speed, neither fpclass nor its feature cache can beat
Keras by more than its share of the rest (bench/keras_recipes.py times the whole recipes).

    python bench/frozen_forward.py                      # batch 8, 5 rounds
    python bench/frozen_forward.py --batch 32 --rounds 3 --json bench/results/2026-11-22/frozen_forward.json
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from fpclass import fileio, models  # noqa: E402


def fpclass_forward(x):
  cfg = ml_collections.ConfigDict(dict(name='keras_vgg16', head='softmax', top='flatten', freeze_till=-1,
                                       pretrained='', top_hidden=()))
  model = models.create_model(cfg, 2)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  return lambda: jax.block_until_ready(apply(variables, x))


def torch_forward(x):
  module = torchvision.models.vgg16(weights=None).features.eval()
  tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

  def run():
    with torch.no_grad():
      return module(tx)
  return run


def keras_forward(x):
  model = keras.applications.VGG16(weights=None, include_top=False, input_shape=x.shape[1:])
  trainable = [v.value for v in model.trainable_variables]
  state = [v.value for v in model.non_trainable_variables]
  call = jax.jit(lambda t, s, x: model.stateless_call(t, s, x)[0])
  return lambda: jax.block_until_ready(call(trainable, state, x))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--json', help='also write the results here')
  args = p.parse_args(argv)
  x = np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
  arms = {'fpclass (XLA)': fpclass_forward(x), 'PyTorch eager': torch_forward(x), 'Keras 3, JAX': keras_forward(x)}
  for run in arms.values():
    run()  # compile / warm up
  seconds = {name: [] for name in arms}
  for _ in range(args.rounds):  # interleaved, so machine load hits every arm alike
    for name, run in arms.items():
      start = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - start)
  fastest = min(statistics.median(s) for s in seconds.values())
  print(f'VGG16 forward, {args.batch} images of {args.size}x{args.size}, {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, median of {args.rounds} interleaved rounds:')
  print('| arm | seconds per batch | images/s | relative to the fastest |\n|---|---|---|---|')
  rows = {}
  for name, s in seconds.items():
    median = statistics.median(s)
    rows[name] = {'seconds': median, 'images_per_second': args.batch / median}
    print(f'| {name} | {median:.3f} | {args.batch / median:.2f} | {median / fastest:.2f}x |')
  if args.json:
    fileio.write_json(args.json, {'date': datetime.date.today().isoformat(), 'argv': sys.argv,
                                  'cpus': os.cpu_count(), 'batch': args.batch, 'size': args.size,
                                  'rounds': args.rounds, 'arms': rows})


if __name__ == '__main__':
  main()
