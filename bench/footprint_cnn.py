"""The footprint baseline CNN (seed 000, configs/footprint.py:exp0): 120x80x1, batch 32, Adam 1e-3.

    python bench/footprint_cnn.py [--batch-size 32] [--steps 20] [--rounds 5] [--augment] [--json out.json]

Trains fpclass's footprint_cnn and its PyTorch twin on the same in-memory images and prints img/s, the
ratio, compile times and (on GPU) MFU, then the same for inference. Augmentation is off on both sides
unless --augment, which turns on fpclass's flip/brightness/contrast (PyTorch then trains without it: that
measures what fpclass's fused augmentation costs, not a like-for-like ratio).
"""
import functools

import harness  # noqa: F401  (sets up the path, the allocator and the compilation-cache policy first)

from bench import torch_models
from configs import footprint


def main():
  args = harness.parse_args(
      __doc__.splitlines()[0], batch_size=32, steps=20, steps_gpu=40,
      add_arguments=lambda p: p.add_argument('--augment', action='store_true', help="fpclass's flip/brightness/contrast on"))
  config = footprint.get_config('exp0')
  augment = args.augment
  if not augment:
    config.augment.hflip = config.augment.brightness = config.augment.contrast = 0.0
  make_torch = functools.partial(torch_models.FootprintCNN, image_shape=(120, 80, 1))
  harness.check_same_size(config, (120, 80, 1), 2, make_torch)
  harness.run_benchmark(args, title='footprint_cnn' + (' (fpclass with augmentation)' if augment else ''),
                        config=config, image_shape=(120, 80, 1), num_classes=2, make_torch_model=make_torch,
                        torch_optimizer='adam', lr=1e-3)


if __name__ == '__main__':
  main()
