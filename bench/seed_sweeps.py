"""The seeds' transfer comparisons as sweeps with intervals, at reduced size (issue 27 part 4):

    python -m bench.seed_sweeps [--out runs/bench-seed-sweeps] [--seeds 1] [--only 000|004|002]

- seed 000: `configs/footprint_sweep.py:transfer,quick`: the baseline CNN against ResNet-18, AlexNet and
  EfficientNet-B0 on the embedded synthetic footprints (72 images);
- seed 004: `configs/cats_dogs.py:freeze_sweep,quick`: VGG16 with freeze_till 18, 14, 10, 6 on a stand-in
  PetImages folder (40 noise images, two brightness classes; tests/test_recipes.py's `pet_images`);
- seed 002: `configs/climbing.py:compare,quick`: the four Keras backbones on a stand-in climbing folder
  (bench/clean_planted.py's `plant_folder`).

Every backbone loads a weights file its source framework wrote here with random initialisation (torchvision's
`state_dict` via torch.save, Keras' `save_weights` of `keras.applications` with weights=None): nothing can be
downloaded, so the accuracies say nothing about transfer; the commands, the intervals and the times carry over.
Each variant's spec gains `model.pretrained=<that file>`. 5 folds x `--seeds` seeds per variant.
"""
import argparse
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def sweep(config_spec: str, workdir: pathlib.Path, weights: dict, seeds: int, flags: list[str]) -> float:
  """Runs the config's sweep with each variant pointed at its weights file; returns the wall seconds."""
  sys.path.insert(0, str(REPO))
  from fpclass.config.variants import parse_variant, variant_spec
  from tests.conftest import load_config
  config = load_config(config_spec)
  variants = []
  for spec in config.sweep.variants:
    name, changes = parse_variant(spec)
    model = changes.get('model.name', config.model.name)
    if model in weights:
      changes['model.pretrained'] = str(weights[model])
    variants.append(variant_spec(name, changes))
  command = [sys.executable, str(REPO / 'launch.py'), f'--config={config_spec}', '--mode=sweep',
             f'--workdir={workdir}', f'--config.sweep.variants={tuple(variants)!r}',
             f'--config.sweep.seeds={tuple(range(seeds))!r}', *flags]
  if config.model.name in weights:
    command.append(f'--config.model.pretrained={weights[config.model.name]}')
  start = time.perf_counter()
  subprocess.run(command, cwd=REPO, check=True)
  seconds = time.perf_counter() - start
  print(f'\n== {config_spec}: {seconds:.0f} s\n{(workdir / "sweep_results.md").read_text()}', flush=True)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='runs/bench-seed-sweeps')
  parser.add_argument('--seeds', type=int, default=1)
  parser.add_argument('--only', choices=('000', '004', '002'), default=None)
  args = parser.parse_args()
  out = pathlib.Path(args.out).absolute()
  if out.exists():
    sys.exit(f'{out} exists; choose another --out')
  out.mkdir(parents=True)
  sys.path.insert(0, str(REPO))
  from bench.clean_planted import plant_folder
  from tests.conftest import torchvision_weights
  from tests.test_recipes import pet_images
  from tests.transfer_weights import write_keras_weights

  if args.only in (None, '000'):
    weights = {name: torchvision_weights(out, name) for name in ('resnet18', 'alexnet', 'efficientnet_b0')}
    sweep('configs/footprint_sweep.py:transfer,quick', out / 'seed000', weights, args.seeds, [])
  keras = {}
  if args.only in (None, '004', '002'):
    names = (['keras_vgg16'] if args.only == '004' else
             ['keras_vgg16', 'keras_mobilenetv3large', 'keras_efficientnetb2', 'keras_resnet50'])
    keras = write_keras_weights(out, names)
  if args.only in (None, '004'):
    pet_images(out / 'PetImages', np.random.default_rng(0))
    sweep('configs/cats_dogs.py:freeze_sweep,quick', out / 'seed004', keras, args.seeds,
          [f'--config.data.root={out / "PetImages"}'])
  if args.only in (None, '002'):
    plant_folder(out / 'climbing', originals=24, copies_per_kind=1, seed=5)
    sweep('configs/climbing.py:compare,quick', out / 'seed002', keras, args.seeds,
          [f'--config.data.root={out / "climbing"}', '--config.data.bad_test_images=prior'])


if __name__ == '__main__':
  main()
