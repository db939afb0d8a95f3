"""Grad-CAM speed: fpclass.explain.cam against pytorch-grad-cam on the same model, images and targets, same run.

    python bench/gradcam_speed.py                       # footprint_cnn, 256 images in one call
    python bench/gradcam_speed.py --model footprint_cnn --images 256 --repeats 5 --method gradcam
    python bench/gradcam_speed.py --model resnet18 --forward   # also each framework's plain forward pass

The model is built in torch with random weights and copied into its fpclass twin (tests/torch_twins.py),
so both libraries explain the same network; the script also reports how far apart their maps are.
Timings exclude the first call (JAX compilation, pytorch-grad-cam's hook set-up), which is reported apart.
--forward also times each framework's forward pass alone (jitted Flax apply; torch under no_grad) in the
same rounds: it separates the cost of the explainer from the speed of the framework's convolutions.
"""
import argparse
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from fpclass.explain import cam  # noqa: E402
from tests import torch_twins  # noqa: E402

REFERENCE = {'gradcam': GradCAM, 'gradcam++': GradCAMPlusPlus, 'hirescam': HiResCAM}


def seconds_of(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def timed_alternately(fns, repeats):
  """First calls, then `repeats` rounds calling each function in turn, so load from other processes on a
  shared machine falls on both alike. Returns per function (output, first-call seconds, call seconds)."""
  results = [[*seconds_of(fn), []] for fn in fns]
  for _ in range(repeats):
    for fn, result in zip(fns, results):
      result[2].append(seconds_of(fn)[1])
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='footprint_cnn', choices=sorted(torch_twins.CASES))
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--method', default='gradcam', choices=sorted(REFERENCE))
  parser.add_argument('--forward', action='store_true', help="also time each framework's forward pass alone")
  args = parser.parse_args()

  build, shape, layer = torch_twins.CASES[args.model]
  twin = build(shape)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.images, *shape)).astype(np.float32)
  targets = rng.integers(0, 2, args.images).astype(np.int32)

  def run_fpclass():
    return np.asarray(jax.block_until_ready(
        cam.cam(twin.flax_model.apply, twin.variables, images, targets, layer, args.method)))

  torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  torch_layer = dict(twin.torch_model.named_modules())[twin.layers[layer]]
  explainer = REFERENCE[args.method](twin.torch_model, [torch_layer])

  def run_reference():
    return explainer(torch_images, [ClassifierOutputTarget(int(t)) for t in targets])

  flax_forward = jax.jit(lambda variables, x: twin.flax_model.apply(variables, x)[0])

  def forward_fpclass():
    return jax.block_until_ready(flax_forward(twin.variables, images))

  def forward_reference():
    with torch.no_grad():
      return twin.torch_model(torch_images)

  fns = [run_fpclass, run_reference] + ([forward_fpclass, forward_reference] if args.forward else [])
  (ours, ours_first, ours_seconds), (reference, reference_first, reference_seconds), *forwards = (
      timed_alternately(fns, args.repeats))
  ours_rate = args.images / np.median(ours_seconds)
  reference_rate = args.images / np.median(reference_seconds)

  print(f'{args.method} of {args.images} images {shape} at {args.model}/{layer}, one call each, median of '
        f'{args.repeats} alternating rounds after a first call; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), '
        f'jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__} ({torch.get_num_threads()} '
        f'threads)')
  print('| implementation | images/s | seconds per call | first call (s) |')
  print('|---|---|---|---|')
  print(f'| fpclass.explain.cam (jax.vjp, jit) | {ours_rate:.1f} | {np.median(ours_seconds):.3f} | {ours_first:.2f} |')
  print(f'| pytorch-grad-cam {REFERENCE[args.method].__name__} | {reference_rate:.1f} | '
        f'{np.median(reference_seconds):.3f} | {reference_first:.2f} |')
  for label, (_, first, seconds) in zip(('forward pass only, Flax model (jax.jit)', 'forward pass only, torch model '
                                        '(no_grad)'), forwards):
    print(f'| {label} | {args.images / np.median(seconds):.1f} | {np.median(seconds):.3f} | {first:.2f} |')
  print(f'speed ratio fpclass / pytorch-grad-cam: {ours_rate / reference_rate:.2f}x; '
        f'max |map difference|: {np.abs(ours - reference).max():.2e}')


if __name__ == '__main__':
  main()
