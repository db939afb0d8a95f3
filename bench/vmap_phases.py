"""The vmap form of the model axis through two phases, against solo runs: seed 000's ResNet-18 recipe (a frozen
phase, then fine-tuning from stage 3, early stopping with patience 1) on 36 footprints at 32x24, folds 0 and 1
with seed 3, swept with `sweep.model_axis=vmap` and trained alone with `--mode train`.

    python bench/vmap_phases.py [--learning-rate 1e-3]

Prints, per fold, the phases of each run's epochs and the largest differences of metrics.csv and of the last
parameters. The loop form equals the solo run bit for bit (tests/test_engine.py); the vmap form batches the
convolutions, so it agrees to float32 rounding, which training amplifies more at a higher learning rate. The
weights are a torchvision file torch writes with random initialisation (nothing can be downloaded).
"""
import argparse
import pathlib
import sys
import tempfile

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--learning-rate', type=float, default=1e-3)
  args = parser.parse_args()
  sys.path.insert(0, str(REPO))
  import jax

  from fpclass.infer.inference import load_trained
  from fpclass.modes.runner import run
  from tests.conftest import load_config, torchvision_weights
  out = pathlib.Path(tempfile.mkdtemp(prefix='vmap-phases-'))
  common = {'data.image_size': (32, 24), 'data.synthetic.n_class0': 20, 'data.synthetic.n_class1': 16, 'seed': 3,
            'explain.after_training': False, 'train.tensorboard': False, 'sweep.folds': (0, 1), 'sweep.seeds': (3,),
            'sweep.models_per_chunk': 2, 'model.freeze_till': -1, 'train.finetune_epochs': 1,
            'train.finetune_freeze_till': 3, 'model.pretrained': str(torchvision_weights(out)),
            'train.early_stopping_patience': 1, 'train.epochs': 3, 'train.learning_rate': args.learning_rate}
  run('sweep', load_config('configs/footprint.py:resnet18,quick', **common, **{'sweep.model_axis': 'vmap'}),
      out / 'sweep')
  for fold in (0, 1):
    config = load_config('configs/footprint.py:resnet18,quick', **common, **{'data.fold': fold})
    run('train', config, out / f'solo{fold}')
    member, solo = out / 'sweep' / 'base' / f'fold{fold}', out / f'solo{fold}'
    a, b = (pd.read_csv(w / 'metrics.csv').drop(columns='seconds') for w in (member, solo))
    params = [jax.tree_util.tree_leaves(load_trained(config, w, 'last').state.params) for w in (member, solo)]
    print(f'fold {fold}: phases {a["phase"].tolist()} (solo {b["phase"].tolist()}); largest difference of '
          f'metrics.csv {np.max(np.abs(a.to_numpy(float) - b.to_numpy(float))):.2e}, of the last parameters '
          f'{max(float(np.max(np.abs(x - y))) for x, y in zip(*params)):.2e}')


if __name__ == '__main__':
  main()
