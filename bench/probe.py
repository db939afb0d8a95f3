"""`--mode probe` end to end: five backbones x 5 folds on a 300-image, 3-class ImageFolder at 224x224 that this
script writes, through launch.py, three launches on one fresh cache:

1. cold: every backbone's feature pass runs (weights init, compile, forward) and the probe's solver compiles;
2. warm: the same command again: the features come from the cache, so the launch is everything but the passes;
3. warm, `probe.solver=sklearn`: the same fits by scikit-learn's LogisticRegressionCV, for the solver choice.

No weights can be downloaded here, and a forward pass costs the same whatever the weights hold, so the backbones
carry random weights, either way (`--weights`):
- `files` (the default): files that the source frameworks write from their own random init (torchvision
  state_dicts, Keras' `save_weights`, a DINOv2-format state_dict from tests/dinov2_twin.py), loaded as a user's
  downloaded weights are (`name=<file>` entries);
- `random`: fpclass's own seeded init (plain names), which compiles and runs each backbone's initialisers too.
The accuracies are therefore not claims about any backbone; the times are. The images: three procedural texture classes (oriented stripes, checks, blobs) in
random colours, noise and contrast, a fifth of each class drawn with another class's texture mixed in.

    python bench/probe.py                                     # writes /tmp/fpclass-probe-bench/{data,cache,run*}
    python bench/probe.py --json bench/results/2026-11-23/probe.json
    python bench/probe.py --backbones resnet18,efficientnet_b0 --images 60 --size 64     # a quick look
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BACKBONES = 'keras_resnet50,convnext_tiny,efficientnet_v2_s,vit_b16,dinov2_vits14'
CLASSES = ('stripes', 'checks', 'blobs')


def texture(kind: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """One (size, size) float image in [0, 1] of texture `kind`."""
  y, x = np.mgrid[0:size, 0:size] / size
  if kind == 0:      # oriented stripes
    angle, freq = rng.uniform(-0.6, 0.6), rng.uniform(4, 14)
    return 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.sin(angle) + y * np.cos(angle)) + rng.uniform(0, 6.3))
  if kind == 1:      # checks
    freq = rng.uniform(3, 10)
    return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * x + rng.uniform(0, 6.3)) *
                               np.sin(2 * np.pi * freq * y + rng.uniform(0, 6.3)))
  out = np.zeros((size, size))  # blobs
  for _ in range(rng.integers(3, 9)):
    cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
    out += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
  return np.clip(out, 0, 1)


def write_images(root: pathlib.Path, count: int, size: int, seed: int = 0) -> None:
  """`count` images, balanced over CLASSES, as <root>/<class>/<i>.png (written once; kept when present)."""
  marker = root / f'.complete-{count}-{size}-{seed}'
  if marker.exists():
    return
  shutil.rmtree(root, ignore_errors=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    kind = i % len(CLASSES)
    image = texture(kind, rng, size)
    if rng.random() < 0.2:   # a harder example: another class's texture mixed in
      image = 0.5 * image + 0.5 * texture(int(rng.integers(len(CLASSES))), rng, size)
    colours = rng.uniform(0, 1, (2, 3))
    rgb = colours[0] * image[..., None] + colours[1] * (1 - image[..., None])
    rgb = rgb * rng.uniform(0.5, 1.0) + rng.normal(0, 0.08, rgb.shape)
    folder = root / CLASSES[kind]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(folder / f'{i:04d}.png')
  marker.touch()


TORCHVISION = {'convnext_tiny': 'convnext_tiny', 'efficientnet_v2_s': 'efficientnet_v2_s', 'vit_b16': 'vit_b_16',
               'resnet18': 'resnet18', 'resnet50': 'resnet50', 'efficientnet_b0': 'efficientnet_b0',
               'vgg16': 'vgg16', 'alexnet': 'alexnet'}
DINOV2 = {'dinov2_vits14': dict(dim=384, num_heads=6), 'dinov2_vitb14': dict(dim=768, num_heads=12)}


def write_weights(folder: pathlib.Path, backbones: list) -> list:
  """`name=<file>` entries, each file written by the backbone's source framework from its own random init."""
  import torch
  import torchvision

  from tests import dinov2_twin, transfer_weights
  folder.mkdir(parents=True, exist_ok=True)
  keras = [b for b in backbones if b in transfer_weights.APPLICATIONS]
  paths = transfer_weights.write_keras_weights(folder, keras) if keras else {}
  torch.manual_seed(0)
  for name in backbones:
    if name in TORCHVISION:
      paths[name] = folder / f'{name}.pth'
      torch.save(getattr(torchvision.models, TORCHVISION[name])(weights=None).state_dict(), paths[name])
    elif name in DINOV2:
      paths[name] = folder / f'{name}.pth'
      torch.save(dinov2_twin.DinoV2Twin(**DINOV2[name]).state_dict(), paths[name])
    elif name not in paths:
      raise SystemExit(f'--weights files: no framework writes {name} here; use --weights random')
  return [f'{name}={paths[name]}' for name in backbones]


def launch(workdir: pathlib.Path, env: dict, args: list) -> float:
  """Runs launch.py --mode probe; returns its wall seconds (the whole process: start-up, decode and all)."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, str(REPO / 'launch.py'), '--config=configs/climbing.py:probe',
                           '--mode=probe', f'--workdir={workdir}', *args], env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  sys.stdout.write(result.stdout[-3000:])
  if result.returncode != 0:
    raise SystemExit(f'launch.py failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return seconds


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--root', type=pathlib.Path, default=pathlib.Path('/tmp/fpclass-probe-bench'))
  p.add_argument('--backbones', default=BACKBONES)
  p.add_argument('--images', type=int, default=300)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--folds', type=int, default=5)
  p.add_argument('--flip-tta', action='store_true')
  p.add_argument('--weights', choices=('files', 'random'), default='files')
  p.add_argument('--json', type=pathlib.Path)
  a = p.parse_args()

  data, cache = a.root / 'data', a.root / 'cache'
  write_images(data, a.images, a.size)
  shutil.rmtree(cache, ignore_errors=True)     # cold: no cached features, no compiled programs
  env = dict(os.environ, FPCLASS_CACHE=str(cache))
  env.pop('FPCLASS_JAX_CACHE', None)           # the persistent compilation cache under the fresh cache root
  backbones = [b for b in a.backbones.split(',') if b]
  entries = write_weights(a.root / 'weights', backbones) if a.weights == 'files' else backbones
  common = [f'--config.data.root={data}', f'--config.data.image_size=({a.size}, {a.size})',
            f'--config.data.num_folds={a.folds}',
            f'--config.probe.backbones={tuple(entries)!r}', f'--config.probe.flip_tta={a.flip_tta}']
  runs = {}
  for name, extra in (('cold', []), ('warm', []), ('warm_sklearn', ['--config.probe.solver=sklearn'])):
    workdir = a.root / f'run-{name}'
    shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()[0]
    wall = launch(workdir, env, common + extra)
    runs[name] = dict(wall=wall, load_before=load, load_after=os.getloadavg()[0],
                      results=pd.read_csv(workdir / 'probe_results.csv'))

  cold = runs['cold']['results']
  passes = float(cold['feature_pass_seconds'].sum())
  rest = runs['cold']['wall'] - passes
  rows = []
  for i, b in enumerate(backbones):
    rows.append(dict(backbone=b, feature_dim=int(cold['feature_dim'][i]),
                     feature_pass_s=round(float(cold['feature_pass_seconds'][i]), 1),
                     fit_s_cold=round(float(cold['fit_seconds'][i]), 2),
                     fit_s_jax=round(float(runs['warm']['results']['fit_seconds'][i]), 2),
                     fit_s_sklearn=round(float(runs['warm_sklearn']['results']['fit_seconds'][i]), 2),
                     accuracy_jax=round(float(runs['warm']['results']['accuracy_mean'][i]), 4),
                     accuracy_sklearn=round(float(runs['warm_sklearn']['results']['accuracy_mean'][i]), 4)))
  table = pd.DataFrame(rows)
  # The two solvers fold by fold: the same chosen C and accuracy, and how close their log losses are.
  jax_folds, sklearn_folds = (pd.read_csv(a.root / f'run-{name}' / 'probe_folds.csv') for name in ('warm', 'warm_sklearn'))
  summary = dict(
      date=datetime.date.today().isoformat(), machine=platform.processor() or platform.machine(),
      cpus=os.cpu_count(), images=a.images, size=a.size, folds=a.folds, flip_tta=a.flip_tta, weights=a.weights,
      wall_cold=round(runs['cold']['wall'], 1), wall_warm=round(runs['warm']['wall'], 1),
      wall_warm_sklearn=round(runs['warm_sklearn']['wall'], 1), feature_passes=round(passes, 1),
      beyond_passes=round(rest, 1), beyond_passes_share=round(rest / passes, 3),
      fits_jax_cold=round(float(cold['fit_seconds'].sum()), 2),
      fits_jax_warm=round(float(runs['warm']['results']['fit_seconds'].sum()), 2),
      fits_sklearn=round(float(runs['warm_sklearn']['results']['fit_seconds'].sum()), 2),
      solvers_same_c=bool((jax_folds['c'] == sklearn_folds['c']).all()),
      solvers_same_accuracy=bool((jax_folds['accuracy'] == sklearn_folds['accuracy']).all()),
      solvers_log_loss_max_difference=float((jax_folds['log_loss'] - sklearn_folds['log_loss']).abs().max()),
      load={k: (round(v['load_before'], 1), round(v['load_after'], 1)) for k, v in runs.items()})
  print(table.to_string(index=False))
  print(json.dumps(summary, indent=2))
  if a.json:
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(dict(summary=summary, backbones=rows), indent=2) + '\n')


if __name__ == '__main__':
  main()
