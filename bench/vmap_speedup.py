"""K x S footprint models trained together (vmap form, loop form) vs the same models one after another.

    python bench/vmap_speedup.py                          # 5 folds x 4 seeds, 2 epochs, a fifth of each split
    python bench/vmap_speedup.py --fraction 1 --epochs 3  # full epochs (slow on CPU)
    python bench/vmap_speedup.py --forms vmap,one_by_one  # on a GPU
    python bench/vmap_speedup.py --set 'data.image_size=(60,40)'  # smaller images (less memory)

Every arm trains the same members with `fpclass.train.loop.train_members` (the one training loop), with the
same epochs, steps and per-epoch validation, so the arms differ only in how the model axis is executed:
  one_by_one   each member alone (a chunk of one), members one after another
  loop         all members in one chunk, each member's epoch through the single-model programs in turn
  vmap         all members in one chunk, one jitted jax.vmap step for all of them
`--fraction` keeps that share of each member's training and validation indices (the same share for every
arm), to bound the run time on a CPU; steps per epoch scale with it. The first epoch includes compilation;
the later epochs are the steady state. Timings on a shared machine are noisy: compare the ratios of one run.
"""
import argparse
import ast
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/footprint.py:exp0')
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--seeds', type=int, default=4)
  parser.add_argument('--epochs', type=int, default=2)
  parser.add_argument('--fraction', type=float, default=0.2)
  parser.add_argument('--forms', default='one_by_one,loop,vmap')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. --set data.image_size=(60,40) (value: a Python literal)')
  parser.add_argument('--json', default='', help='also write the results to this file')
  args = parser.parse_args()

  import jax

  from fpclass.config.inputs import DataSettings
  from fpclass.config.run import RunSettings
  from fpclass.config.training import TrainSettings
  from fpclass.data import pipeline, splits
  from fpclass.runtime.process import enable_compilation_cache
  from fpclass.train.axis import Split, TrainData
  from fpclass.train.cohort import Cohort
  from fpclass.train.loop import train_members
  from fpclass.train.members import Member, batch_size_for
  from fpclass.train.records import MemoryRecord
  from tests.conftest import load_config

  enable_compilation_cache()
  overrides = {'train.epochs': args.epochs, 'train.early_stopping_patience': 0}
  for item in args.set:
    key, _, value = item.partition('=')
    overrides[key.strip()] = ast.literal_eval(value.strip())
  config = load_config(args.config, **overrides)
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False)
  labels = decoded.pool.labels.astype(np.int32)
  folds = splits.kfold_indices(labels, args.folds, int(config.data.split_seed))
  rng = np.random.default_rng(0)
  keep = lambda index: np.sort(rng.choice(index, max(1, int(round(args.fraction * len(index)))), replace=False))
  subsets = [(keep(t), keep(v)) for t, v in folds]
  members = [Member(f, s, *subsets[f]) for f in range(args.folds) for s in range(args.seeds)]
  batch = batch_size_for(TrainSettings.from_config(config.train), len(members[0].train_index))
  steps = int(np.ceil(len(members[0].train_index) / batch))
  split = Split(decoded.pool.images, labels)
  train_data = TrainData(decoded.class_names, split, split)
  print(f'{jax.default_backend()} ({jax.devices()[0].device_kind}); {len(members)} members '
        f'({args.folds} folds x {args.seeds} seeds), {args.epochs} epochs of {steps} steps (batch {batch}), '
        f'{len(members[0].val_index)} validation images each; image {decoded.pool.images.shape[1:]}', flush=True)

  results = {}
  for form in [f.strip() for f in args.forms.split(',') if f.strip()]:
    epoch_seconds = np.zeros(args.epochs)
    start = time.perf_counter()
    accuracy = []
    groups = [[m] for m in members] if form == 'one_by_one' else [members]
    for group in groups:
      cohort = Cohort(RunSettings.from_config(config), train_data, group,
                      form='loop' if form == 'one_by_one' else form, log_prefix=f'[{form}] ')
      chunk_results = train_members(cohort, MemoryRecord())
      epoch_seconds += [row['seconds'] for row in chunk_results[0].loop.history]
      accuracy += [r.loop.history[-1]['val_accuracy'] for r in chunk_results]
    wall = time.perf_counter() - start
    steady = float(epoch_seconds[1:].mean()) if args.epochs > 1 else float('nan')
    results[form] = dict(wall_seconds=wall, first_epoch_seconds=float(epoch_seconds[0]),
                         steady_epoch_seconds=steady, mean_val_accuracy=float(np.mean(accuracy)))
    print(f'{form}: {wall:.1f}s wall; epoch 1 (with compilation) {epoch_seconds[0]:.1f}s; later epochs '
          f'{steady:.1f}s each, all {len(members)} members', flush=True)

  base = results.get('one_by_one')
  print('\n| arm | wall s | epoch 1 s | later epochs s | speed-up (wall) | speed-up (later epochs) |')
  print('|---|---|---|---|---|---|')
  for form, r in results.items():
    speed = f'{base["wall_seconds"] / r["wall_seconds"]:.2f}x' if base else ''
    steady = f'{base["steady_epoch_seconds"] / r["steady_epoch_seconds"]:.2f}x' if base and args.epochs > 1 else ''
    print(f'| {form} | {r["wall_seconds"]:.1f} | {r["first_epoch_seconds"]:.1f} | {r["steady_epoch_seconds"]:.1f} '
          f'| {speed} | {steady} |')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(args=vars(args), backend=jax.default_backend(),
                                                       results=results), indent=2))


if __name__ == '__main__':
  main()
