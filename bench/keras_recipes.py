"""Keras 3 as the anchor: seconds per epoch of two seed recipes in fpclass (without and with the feature cache)
and in Keras 3 on its JAX and torch backends, on the same stand-in data, sizes and batch, in one run.

    python bench/keras_recipes.py                                   # full size, writes bench/results/2026-11-22/
    python bench/keras_recipes.py --train 32 --val 8 --epochs 2 --vgg-size 32 --inception-size 75 \\
        --out /tmp/bench-keras --json /tmp/bench-keras/keras_recipes.json      # a tiny check of the mechanism

Recipes (`--recipes`):
- `vgg16_aug`: seed 004, configs/cats_dogs.py:vgg16 as configured: VGG16 frozen, flatten, dense softmax,
  224x224, Adam 1e-4, its augmentation (flip, rotation 20, translation 0.1, zoom 0.2, brightness 0.2;
  Keras: the matching preprocessing layers in the model). The cache does not apply (augmentation comes
  before the backbone), so fpclass runs uncached only.
- `vgg16`: the same with augmentation off (the Keras guide's feature extraction).
- `inception_mixed7`: seed 003, configs/horses_humans.py:inception_mixed7: InceptionV3 cut at mixed7, frozen,
  flatten, dense 1024, dropout 0.2, sigmoid, RMSprop 1e-5, 150x150, no augmentation.

Arms (`--arms`), each in its own subprocess (Keras reads KERAS_BACKEND once per process; a fresh process also
gives every arm the same start): `fpclass` (train.feature_cache=off), `fpclass_cache` (on: the one-time
feature pass is counted in epoch 1, as metrics.csv counts it), `keras_jax` and `keras_torch` (`model.fit` on
the same uint8 arrays as float32, with `validation_data`, seconds from a callback at epoch begin and end).
fpclass's seconds are metrics.csv's (each epoch includes its validation pass, as Keras' do). Both frameworks
compile in epoch 1 (fpclass's persistent compilation cache is off), so epochs 2-3 are the steady state.

Data: `--train` + `--val` two-class images (noise around a darker and a brighter colour) written as PNG to an
ImageFolder (train/, validation/) that fpclass decodes, and the same arrays as .npz for Keras. Weights:
random, written by Keras itself (numpy backend, `save_weights`), loaded by fpclass (config.model.pretrained)
and by the Keras arms (`load_weights`).
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = {
    'vgg16_aug': dict(config='configs/cats_dogs.py:vgg16', app='VGG16', size='vgg_size', augment=True),
    'vgg16': dict(config='configs/cats_dogs.py:vgg16', app='VGG16', size='vgg_size', augment=False),
    'inception_mixed7': dict(config='configs/horses_humans.py:inception_mixed7', app='InceptionV3',
                             size='inception_size', augment=False),
}
ARMS = ('fpclass', 'fpclass_cache', 'keras_jax', 'keras_torch')
CLASSES = ('class0', 'class1')
DEFAULT_JSON = REPO / 'bench' / 'results' / '2026-11-22' / 'keras_recipes.json'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', type=pathlib.Path, default=pathlib.Path('runs/bench-keras'),
                 help='data, weights and workdirs go here')
  p.add_argument('--train', type=int, default=256)
  p.add_argument('--val', type=int, default=64)
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--batch-size', type=int, default=32)
  p.add_argument('--vgg-size', type=int, default=224)
  p.add_argument('--inception-size', type=int, default=150)
  p.add_argument('--recipes', default=','.join(RECIPES))
  p.add_argument('--arms', default=','.join(ARMS))
  p.add_argument('--json', type=pathlib.Path, default=DEFAULT_JSON)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config change for the fpclass arms (repeatable), e.g. eval.batch_size=32')
  p.add_argument('--worker', choices=ARMS, help=argparse.SUPPRESS)   # internal: run one arm
  p.add_argument('--recipe', choices=tuple(RECIPES), help=argparse.SUPPRESS)
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- stand-in data

def stand_in_arrays(n: int, size: int, seed: int):
  """(uint8 images (n, size, size, 3), int labels): noise around one colour per class, balanced."""
  import numpy as np
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  base = np.where(labels[:, None, None, None] == 0, 90.0, 160.0)
  images = np.clip(base + rng.normal(0, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)
  return images, labels


def prepare_data(args, size: int) -> pathlib.Path:
  """An ImageFolder (train/, validation/) of PNGs at `size` (decoded without resizing, so fpclass reads these
  very arrays) and arrays.npz with the same arrays for Keras; made once per size and count."""
  import numpy as np
  from PIL import Image
  folder = args.out / f'data-{size}-{args.train}-{args.val}'
  if (folder / 'arrays.npz').exists():
    return folder
  arrays = {}
  for split, dirname, n, seed in (('train', 'train', args.train, 0), ('val', 'validation', args.val, 1)):
    images, labels = stand_in_arrays(n, size, seed)
    for i, (image, label) in enumerate(zip(images, labels)):
      path = folder / dirname / CLASSES[label] / f'{i:05d}.png'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(path)
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = images, labels
  np.savez(folder / 'arrays.tmp.npz', **arrays)
  os.replace(folder / 'arrays.tmp.npz', folder / 'arrays.npz')
  return folder


def write_keras_weights(args, app: str, size: int) -> pathlib.Path:
  """include_top=False weights for keras.applications.<app> at size x size, random, written by Keras."""
  path = args.out / f'{app}-{size}.weights.h5'
  if not path.exists():
    script = (f'import keras\nkeras.utils.set_random_seed(0)\n'
              f'keras.applications.{app}(weights=None, include_top=False, input_shape=({size}, {size}, 3))'
              f'.save_weights({str(path)!r})\n')
    subprocess.run([sys.executable, '-c', script], check=True, env=dict(os.environ, KERAS_BACKEND='numpy'))
  return path


# ----------------------------------------------------------------------------------------------- the arms

def fpclass_arm(args, recipe: str, cache: bool) -> dict:
  """Trains the recipe's config through fpclass's training loop; metrics.csv's seconds per epoch."""
  os.environ['FPCLASS_JAX_CACHE'] = '0'   # cold compiles, as Keras' first epoch
  sys.path.insert(0, str(REPO))
  from fpclass.runtime.process import configure
  configure(trains=True)   # as launch.py does: one malloc arena on CPU only (on GPU it slowed compiles 7x)
  import importlib

  import pandas as pd

  from fpclass.modes.train import train
  from fpclass.train.validation import validate
  spec = RECIPES[recipe]
  size = getattr(args, spec['size'])
  path, _, arg = spec['config'].partition(':')
  config = importlib.import_module(path.removesuffix('.py').replace('/', '.')).get_config(arg)
  config.data.source = 'image_folder'
  config.data.root = str(prepare_data(args, size))
  config.data.image_size = (size, size)
  config.model.pretrained = str(write_keras_weights(args, spec['app'], size))
  config.train.update(epochs=args.epochs, batch_size=args.batch_size, feature_cache='on' if cache else 'off',
                      early_stopping_patience=0, tensorboard=False)
  config.explain.after_training = False
  if not spec['augment']:
    for key, value in config.augment.items():
      if isinstance(value, float):
        config.augment[key] = 0.0   # every probability, factor and angle off
  if args.set:
    from fpclass.config.variants import parse_variant
    from fpclass.train.plan import apply_changes
    config = apply_changes(config, parse_variant('set: ' + '; '.join(args.set))[1], '--set')
  validate(config)
  workdir = args.out / 'runs' / f'{recipe}-{"fpclass_cache" if cache else "fpclass"}-{time.time_ns()}'
  train(config, workdir)
  history = pd.read_csv(workdir / 'metrics.csv')
  return dict(seconds=history['seconds'].tolist(), train_loss=history['train_loss'].tolist(),
              val_accuracy=history['val_accuracy'].tolist())


def keras_arm(args, recipe: str) -> dict:
  """The same recipe in Keras 3 on the backend of KERAS_BACKEND: keras.applications with the Keras-written
  weights, frozen, the seed's head, model.fit on the same arrays."""
  sys.path.insert(0, str(REPO))
  import keras
  import numpy as np

  from tests.parity import _zeros_for_variance_scaling  # the build draws zeros: load_weights overwrites them
  spec = RECIPES[recipe]
  size = getattr(args, spec['size'])
  arrays = np.load(prepare_data(args, size) / 'arrays.npz')
  keras.utils.set_random_seed(0)
  inputs = keras.Input((size, size, 3))
  x = inputs
  with _zeros_for_variance_scaling(keras):
    base = getattr(keras.applications, spec['app'])(weights=None, include_top=False, input_shape=(size, size, 3))
  base.load_weights(write_keras_weights(args, spec['app'], size))
  if spec['app'] == 'VGG16':
    if spec['augment']:   # configs/cats_dogs.py's augmentation, as Keras preprocessing layers in the model
      for layer in (keras.layers.RandomFlip('horizontal'),
                    keras.layers.RandomRotation(20 / 360, fill_mode='nearest'),
                    keras.layers.RandomTranslation(0.1, 0.1, fill_mode='nearest'),
                    keras.layers.RandomZoom(0.2, fill_mode='nearest'),
                    keras.layers.RandomBrightness(0.2, value_range=(0, 255))):
        x = layer(x)
    x = keras.applications.vgg16.preprocess_input(x)
    base.trainable = False
    x = keras.layers.Flatten()(base(x, training=False))
    outputs = keras.layers.Dense(2, activation='softmax')(x)
    optimizer, loss = keras.optimizers.Adam(1e-4), 'sparse_categorical_crossentropy'
  else:   # seed 003: the network up to mixed7, then flatten, dense 1024, dropout 0.2, one sigmoid unit
    cut = keras.Model(base.input, base.get_layer('mixed7').output)
    cut.trainable = False
    x = keras.applications.inception_v3.preprocess_input(x)
    x = keras.layers.Flatten()(cut(x, training=False))
    x = keras.layers.Dropout(0.2)(keras.layers.Dense(1024, activation='relu')(x))
    outputs = keras.layers.Dense(1, activation='sigmoid')(x)
    optimizer, loss = keras.optimizers.RMSprop(1e-5), 'binary_crossentropy'
  model = keras.Model(inputs, outputs)
  model.compile(optimizer=optimizer, loss=loss, metrics=['accuracy'])

  class EpochSeconds(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      seconds.append(time.perf_counter() - self.start)

  seconds = []
  history = model.fit(arrays['train_images'].astype('float32'), arrays['train_labels'], batch_size=args.batch_size,
                      epochs=args.epochs, validation_data=(arrays['val_images'].astype('float32'),
                                                           arrays['val_labels']),
                      callbacks=[EpochSeconds()], verbose=0)
  trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
  return dict(seconds=seconds, train_loss=[float(v) for v in history.history['loss']],
              val_accuracy=[float(v) for v in history.history['val_accuracy']], trainable_params=trainable,
              keras=keras.__version__, backend=keras.backend.backend())


def run_worker(args) -> None:
  start_load = os.getloadavg()[0]
  if args.worker.startswith('fpclass'):
    result = fpclass_arm(args, args.recipe, cache=args.worker == 'fpclass_cache')
  else:
    result = keras_arm(args, args.recipe)
  result['load_average'] = [start_load, os.getloadavg()[0]]
  print('RESULT ' + json.dumps(result), flush=True)


def run_arm(args, recipe: str, arm: str) -> dict:
  """One arm in a fresh subprocess (with its backend); its RESULT line."""
  argv = [sys.executable, str(pathlib.Path(__file__).resolve()), '--worker', arm, '--recipe', recipe,
          '--out', str(args.out), '--train', str(args.train), '--val', str(args.val), '--epochs', str(args.epochs),
          '--batch-size', str(args.batch_size), '--vgg-size', str(args.vgg_size),
          '--inception-size', str(args.inception_size), *(f'--set={change}' for change in args.set)]
  env = dict(os.environ)
  if arm.startswith('keras'):
    env['KERAS_BACKEND'] = arm.removeprefix('keras_')
  start = time.perf_counter()
  done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
  lines = [line for line in done.stdout.splitlines() if line.startswith('RESULT ')]
  if done.returncode != 0 or not lines:
    print(done.stdout[-3000:], done.stderr[-6000:], sep='\n', file=sys.stderr)
    raise SystemExit(f'{recipe} / {arm} failed ({done.returncode})')
  result = json.loads(lines[-1].removeprefix('RESULT '))
  result['wall_seconds'] = time.perf_counter() - start
  return result


# --------------------------------------------------------------------------------------------- the report

def mean(values):
  return sum(values) / len(values) if values else float('nan')


def summarise(results: dict) -> dict:
  """Per recipe: each arm's mean seconds per epoch over epochs 1..N and 2..N, and the ratios of the fastest
  Keras backend's to each fpclass arm's (above 1: fpclass is faster)."""
  summary = {}
  for recipe, arms in results.items():
    rows = {arm: dict(all=mean(r['seconds']), steady=mean(r['seconds'][1:])) for arm, r in arms.items()}
    keras = [arm for arm in rows if arm.startswith('keras')]
    if keras:
      fastest = {k: min(rows[a][k] for a in keras) for k in ('all', 'steady')}
      for arm in rows:
        if arm.startswith('fpclass'):
          rows[arm]['keras_over_this'] = {k: fastest[k] / rows[arm][k] for k in ('all', 'steady')}
    summary[recipe] = rows
  return summary


def table(results: dict, summary: dict) -> str:
  lines = ['| recipe | arm | seconds per epoch (1, 2, ...) | mean 1-N | mean 2-N | fastest Keras / this (1-N, 2-N) |',
           '|---|---|---|---|---|---|']
  for recipe, arms in results.items():
    for arm, r in arms.items():
      row = summary[recipe][arm]
      ratio = row.get('keras_over_this')
      lines.append(f'| {recipe} | {arm} | {", ".join(f"{s:.1f}" for s in r["seconds"])} | {row["all"]:.1f} | '
                   f'{row["steady"]:.1f} | ' + (f'{ratio["all"]:.2f}x, {ratio["steady"]:.2f}x' if ratio else '') + ' |')
  return '\n'.join(lines)


def environment() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return dict(date=datetime.date.today().isoformat(), cpu=cpu, cpu_count=os.cpu_count(),
              load_average=os.getloadavg()[0], command=' '.join(['python', *sys.argv]))


def write_report(args, env, results) -> dict:
  """Writes the JSON report of the arms measured so far (atomically, as fpclass.fileio writes); returns
  the summary."""
  summary = summarise(results)
  report = dict(environment=env, sizes=dict(train=args.train, val=args.val, epochs=args.epochs,
                                            batch_size=args.batch_size, vgg_size=args.vgg_size,
                                            inception_size=args.inception_size),
                results=results, summary=summary, load_average_end=os.getloadavg()[0])
  args.json.parent.mkdir(parents=True, exist_ok=True)
  tmp = args.json.with_suffix('.tmp')
  tmp.write_text(json.dumps(report, indent=1))
  os.replace(tmp, args.json)
  return summary


def main(argv=None):
  args = parse_args(argv)
  args.out = args.out.absolute()
  if args.worker:
    return run_worker(args)
  recipes = [r.strip() for r in args.recipes.split(',') if r.strip()]
  arms = [a.strip() for a in args.arms.split(',') if a.strip()]
  unknown = sorted(set(recipes) - set(RECIPES)) + sorted(set(arms) - set(ARMS))
  if unknown:
    raise SystemExit(f'unknown recipe or arm {unknown}; recipes: {list(RECIPES)}, arms: {list(ARMS)}')
  args.out.mkdir(parents=True, exist_ok=True)
  env = environment()
  results = {}
  for recipe in recipes:
    spec = RECIPES[recipe]
    prepare_data(args, getattr(args, spec['size']))
    write_keras_weights(args, spec['app'], getattr(args, spec['size']))
    results[recipe] = {}
    for arm in arms:
      if arm == 'fpclass_cache' and spec['augment']:
        continue   # augmentation before the backbone: the cache does not apply (feature_cache=on refuses it)
      results[recipe][arm] = run_arm(args, recipe, arm)
      print(f'{recipe} / {arm}: seconds per epoch {[round(s, 1) for s in results[recipe][arm]["seconds"]]}',
            flush=True)
      write_report(args, env, results)  # after every arm, so a stopped run keeps what it measured
  summary = write_report(args, env, results)
  print(table(results, summary))
  print(f'command: {env["command"]}\nwritten: {args.json}')


if __name__ == '__main__':
  main()
