"""Seed 001's 3-block CNN (cifar_cnn) on 32x32x3, batch 32, Adam 1e-3, against its PyTorch twin.

    python bench/cifar_cnn.py [--batch-size 32] [--steps 40] [--rounds 5] [--json out.json]

Batch norm and dropout are on (the seed's model); no augmentation on either side.
"""
import functools

import harness  # noqa: F401  (sets up the path, the allocator and the compilation-cache policy first)

from bench import torch_models
from fpclass.config.schema import base_config


def main():
  args = harness.parse_args(__doc__.splitlines()[0], batch_size=32, steps=40, steps_gpu=100)
  config = base_config()
  config.data.image_size, config.data.channels = (32, 32), 3
  config.data.mean, config.data.std = (0.5,), (0.5,)
  config.model.name = 'cifar_cnn'
  config.train.optimizer, config.train.learning_rate = 'adam', 1e-3
  make_torch = functools.partial(torch_models.CifarCNN, num_outputs=2, channels=3)
  harness.check_same_size(config, (32, 32, 3), 2, make_torch)
  harness.run_benchmark(args, title='cifar_cnn', config=config, image_shape=(32, 32, 3), num_classes=2,
                        make_torch_model=make_torch, torch_optimizer='adam', lr=1e-3)


if __name__ == '__main__':
  main()
