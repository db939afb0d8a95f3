"""End to end: the footprint baseline (configs/footprint.py:exp0), 50 epochs on the 1,573 embedded images
(1,258 train / 315 validation), through launch.py, with a cold and then a warm compilation cache, against a
PyTorch loop doing the same work in this process.

    python bench/footprint_end_to_end.py [--epochs 50] [--torch-variant channels_last] [--json out.json]
    python bench/footprint_end_to_end.py --experiment exp4 --epochs 0 --no-torch   # the README's main job

Each launch's own time report (timings.json: phases, programs compiled, seconds outside the epochs) is
printed beside the outside figures.

fpclass: `launch.py --config configs/footprint.py:exp0` in a subprocess (the user's command: start-up,
data from the decode cache, training with flip/brightness/contrast augmentation and per-epoch validation,
checkpoints, evaluation, report), timed from the outside; compile seconds are summed from JAX's own log
(JAX_LOG_COMPILES). Cold: an empty persistent compilation cache; warm: the same command again.
PyTorch: the same split, model, Adam 1e-3, batch 32, the same augmentation drawn per image on the batch,
validation every epoch; no checkpoints or report, so the comparison favours PyTorch.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import harness
import numpy as np
import pandas as pd

from configs import footprint
from fpclass.config.inputs import DataSettings


def run_launch(workdir, env, epochs, experiment='exp0', overrides=()):
  start = time.perf_counter()
  result = subprocess.run([sys.executable, str(harness.REPO / 'launch.py'), '--config',
                           f'configs/footprint.py:{experiment}', '--workdir', str(workdir)]
                          + ([f'--config.train.epochs={epochs}'] if epochs else [])
                          + [f'--config.{setting}' for setting in overrides], cwd=harness.REPO,
                          env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if result.returncode:
    raise SystemExit(f'launch.py failed ({result.returncode}); the last lines of its stderr:\n'
                     + '\n'.join(result.stderr.splitlines()[-30:]))
  compiles = [float(s) for s in re.findall(r'Finished XLA compilation of .* in ([0-9.]+) sec', result.stderr)]
  hits = len(re.findall(r'Persistent compilation cache hit', result.stderr))
  history = pd.read_csv(pathlib.Path(workdir) / 'metrics.csv')
  scores = json.loads((pathlib.Path(workdir) / 'scores.json').read_text())
  # The job's own account (fpclass.runtime.timings): its phases, and the time outside the training epochs.
  timed = json.loads((pathlib.Path(workdir) / 'timings.json').read_text())
  return dict(wall_seconds=wall, compile_seconds=sum(compiles), programs_compiled=len(compiles), cache_hits=hits,
              programs_xla_compiled=timed['programs_compiled'], outside_epochs_seconds=timed['outside_epochs_seconds'],
              job_seconds=timed['total_seconds'], phases={r['phase']: r['seconds'] for r in timed['rows']},
              epochs_run=len(pd.read_csv(pathlib.Path(workdir) / 'metrics.csv')),
              first_epoch_seconds=float(history['seconds'].iloc[0]),
              epoch_seconds_median=float(history['seconds'].iloc[1:].median()) if len(history) > 1 else None,
              train_loop_seconds=float(history['seconds'].sum()), val_accuracy=float(scores['accuracy']))


def torch_run(dataset, epochs: int, variant: str, seed: int = 0):
  """The same training in PyTorch: flip p=0.5, brightness and contrast factors in [0.8, 1.2] per image."""
  import torch

  from bench.torch_models import FootprintCNN
  torch.manual_seed(seed)
  start = time.perf_counter()
  fmt = torch.channels_last if 'channels_last' in variant else torch.contiguous_format
  model = FootprintCNN().to(memory_format=fmt)
  forward = torch.compile(model) if 'compile' in variant else model
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  x_train = torch.from_numpy(np.ascontiguousarray(dataset.train.images.transpose(0, 3, 1, 2)))
  y_train = torch.from_numpy(dataset.train.labels.astype(np.int64))
  x_val = torch.from_numpy(np.ascontiguousarray(dataset.val.images.transpose(0, 3, 1, 2)))
  y_val = torch.from_numpy(dataset.val.labels.astype(np.int64))
  n, batch = len(x_train), 32
  generator = torch.Generator().manual_seed(seed)
  epoch_seconds = []
  for _ in range(epochs):
    epoch_start = time.perf_counter()
    model.train()
    perm = torch.randperm(n, generator=generator)
    perm = torch.cat([perm, perm[:(-n) % batch]])  # the last batch wraps around, as fpclass's does
    for index in perm.view(-1, batch):
      x = x_train[index].float() / 255.0
      b = len(index)
      flip = torch.rand(b, 1, 1, 1, generator=generator) < 0.5
      x = torch.where(flip, x.flip(3), x)
      x = (x * torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=generator)).clamp_(0, 1)
      mean = x.mean(dim=(1, 2, 3), keepdim=True)
      x = ((x - mean) * torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=generator) + mean).clamp_(0, 1)
      x = ((x - 0.5) / 0.5).contiguous(memory_format=fmt)
      loss = loss_fn(forward(x), y_train[index])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    model.eval()
    with torch.inference_mode():
      logits = torch.cat([forward(((x_val[i:i + 256].float() / 255.0 - 0.5) / 0.5).contiguous(memory_format=fmt))
                          for i in range(0, len(x_val), 256)])
      val_accuracy = float((logits.argmax(1) == y_val).float().mean())
    epoch_seconds.append(time.perf_counter() - epoch_start)
  return dict(wall_seconds=time.perf_counter() - start, first_epoch_seconds=epoch_seconds[0],
              epoch_seconds_median=statistics.median(epoch_seconds[1:]) if epochs > 1 else None,
              val_accuracy=val_accuracy)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--epochs', type=int, default=50, help='0: the config\'s own (exp4: 50, with early stopping)')
  p.add_argument('--experiment', default='exp0', help='exp4 is the README\'s main job (early stopping, dropout, '
                 'Grad-CAM after training)')
  p.add_argument('--torch-variant', default='channels_last', help='eager, channels_last, compile, compile+channels_last')
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='an extra --config.KEY=VALUE for both launches (repeatable), e.g. explain.after_training=False')
  p.add_argument('--json', type=pathlib.Path)
  args = p.parse_args()
  # This process only asks JAX for the device: on a GPU it must not take 75% of its memory up front, which
  # would leave too little for the launches it times (they take config.train.gpu_memory_fraction, as a user's).
  preallocate_chosen = 'XLA_PYTHON_CLIENT_PREALLOCATE' in os.environ
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  env_info = harness.environment()
  work = pathlib.Path(tempfile.mkdtemp(prefix='fpclass-e2e-'))
  env = dict(os.environ, FPCLASS_CACHE=str(work / 'cache'), FPCLASS_JAX_CACHE=str(work / 'jax-cache'),
             JAX_LOG_COMPILES='1')
  if not preallocate_chosen:
    env.pop('XLA_PYTHON_CLIENT_PREALLOCATE')
  os.environ['FPCLASS_CACHE'] = env['FPCLASS_CACHE']
  from fpclass.data import pipeline
  config = footprint.get_config(args.experiment)
  dataset = pipeline.load_dataset(DataSettings.from_config(config.data), progress=False)  # generates and decodes once, outside the timings
  print(f'footprint end to end, {args.epochs} epochs, {len(dataset.train)} train / {len(dataset.val)} val | '
        f'{env_info["backend"]} {env_info["device"]} ({env_info["cpu"]}, {env_info["cpu_count"]} cores) | '
        f'{env_info["date"]}, load average {env_info["load_average"]}', flush=True)
  out = dict(env=env_info, epochs=args.epochs, n_train=len(dataset.train), n_val=len(dataset.val))
  for name in ('cold', 'warm'):
    out[name] = run_launch(work / name, env, args.epochs, args.experiment, args.set)
    r = out[name]
    print(f'  fpclass launch.py {args.experiment}, {name} cache: {r["wall_seconds"]:.1f}s wall, '
          f'{r["outside_epochs_seconds"]:.1f}s of the job outside its {r["epochs_run"]} epochs '
          f'({r["train_loop_seconds"]:.1f}s in them; epoch 1 {r["first_epoch_seconds"]:.1f}s'
          + (f', then {r["epoch_seconds_median"]:.2f}s each' if r['epoch_seconds_median'] is not None else '')
          + f'); XLA compiled {r["programs_xla_compiled"]} programs '
          f'({r["compile_seconds"]:.1f}s with loads), {r["cache_hits"]} persistent-cache hits; val accuracy '
          f'{r["val_accuracy"]:.3f}\n    phases: ' + ', '.join(f'{k} {v:.1f}s' for k, v in r['phases'].items()),
          flush=True)
  if not args.no_torch:
    out['torch'] = r = torch_run(dataset, args.epochs, args.torch_variant)
    out['torch']['variant'] = args.torch_variant
    print(f'  PyTorch ({args.torch_variant}) loop: {r["wall_seconds"]:.1f}s wall (epoch 1 '
          f'{r["first_epoch_seconds"]:.1f}s, then {r["epoch_seconds_median"]:.2f}s each); val accuracy '
          f'{r["val_accuracy"]:.3f}')
    for name in ('cold', 'warm'):
      print(f'  fpclass {name} / PyTorch: x{r["wall_seconds"] / out[name]["wall_seconds"]:.2f} (whole run), '
            f'x{r["epoch_seconds_median"] / out[name]["epoch_seconds_median"]:.2f} (steady epoch)')
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == '__main__':
  main()
