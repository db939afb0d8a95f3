"""A frozen backbone's sweep against one solo run: 3 head variants x 5 folds x 1 seed of a frozen ResNet-18 on
300 footprints at 224x224, each variant's members training on features computed once and shared (issue 27's
target: the sweep <= 2x one solo run of one member).

    python bench/frozen_sweep.py [--out runs/bench-frozen-sweep] [--epochs 10] [--json out.json]

Both arms go through launch.py in fresh processes, with the persistent compilation cache off (each compiles
what it runs) and the decode cache warmed first (neither decodes). The weights are a torchvision ResNet-18
state_dict that torch writes here with random initialisation (nothing can be downloaded); the times do not
depend on the values. The solo run is `--mode train` of fold 0, seed 0, the first variant (it evaluates after
training, as a user's run does); the sweep is `--mode sweep` over the three variants, which also keeps each
fold's model as a workdir and calibrates.
"""
import argparse
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ('lr1e-3: train.learning_rate=1e-3', 'lr3e-3: train.learning_rate=3e-3',
            'lr1e-2: train.learning_rate=1e-2')


def flags(weights: pathlib.Path, epochs: int) -> list[str]:
  overrides = {
      'data.image_size': (224, 224), 'data.synthetic.n_class0': 150, 'data.synthetic.n_class1': 150,
      'data.synthetic.n_test': 8, 'model.pretrained': str(weights), 'model.freeze_till': -1,
      'train.finetune_epochs': 0, 'train.epochs': epochs, 'train.early_stopping_patience': 0,
      'augment.hflip': 0.0, 'augment.brightness': 0.0, 'augment.contrast': 0.0, 'explain.after_training': False,
      'train.tensorboard': False, 'train.feature_cache': 'on'}
  return ['--config=configs/footprint.py:resnet18', *[f'--config.{k}={v}' for k, v in overrides.items()]]


def timed(command: list[str], env: dict) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, str(REPO / 'launch.py'), *command], cwd=REPO, env=env, check=True)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='runs/bench-frozen-sweep')
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  out = pathlib.Path(args.out).absolute()
  if out.exists():
    sys.exit(f'{out} exists; choose another --out')
  out.mkdir(parents=True)
  import torch
  import torchvision
  weights = out / 'resnet18.pth'
  torch.manual_seed(0)
  torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
  env = dict(os.environ, FPCLASS_CACHE=str(out / 'cache'), FPCLASS_JAX_CACHE='0', PYTHONUNBUFFERED='1')
  common = flags(weights, args.epochs)
  # Warm the decode cache: a one-epoch run that neither arm's timing includes.
  timed([*common, f'--workdir={out / "warm-up"}', '--config.train.epochs=1'], env)
  solo_command = [*common, f'--workdir={out / "solo"}', '--config.data.fold=0', '--config.seed=0',
                  '--config.train.learning_rate=1e-3']
  sweep_command = [*common, f'--workdir={out / "sweep"}', '--mode=sweep', f'--config.sweep.variants={VARIANTS}',
                   '--config.sweep.folds=()', '--config.sweep.seeds=(0,)']
  solo = timed(solo_command, env)
  sweep = timed(sweep_command, env)
  result = dict(solo_seconds=solo, sweep_seconds=sweep, ratio=sweep / solo, models=15, epochs=args.epochs,
                machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
                load_average=os.getloadavg(), date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                solo_command='python launch.py ' + shlex.join(solo_command),
                sweep_command='python launch.py ' + shlex.join(sweep_command))
  print(f'\nsolo run (1 model): {solo:.1f} s; sweep (3 variants x 5 folds = 15 models): {sweep:.1f} s; '
        f'ratio {sweep / solo:.2f} (target <= 2)')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  main()
