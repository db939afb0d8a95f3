"""The user's loop with images nobody labelled, simulated on real sets with the labels hidden from training (issue 78).

    python -m bench.unlabelled [--out runs/bench-unlabelled] [--data digits mnist folder] [--fractions 0.05 0.1]
                               [--seeds 0 1 2] [--epochs N] [--start 50] [--add 50] [--rounds 5]
                               [--loop-seeds 0 1 2] [--parts semi label_next] [--set data.root=/tmp/fashion ...]
                               [--no-self-training] [--arms-from <an earlier --out>]

Per data set (the sets of bench/auto.py: digits, mnist, faces, footprint, or a folder with `--set data.root=...`):
1. test split: a stratified 20% of the labelled images, held out of every arm (config.data.exclude_csv) and scored
   through `--mode predict` (bench.auto.write_test_split). Array images are written as PNG files: the pool and the
   test images are read by the decode path a user's files take.
2. semi: for each `--fractions` f and `--seeds` s, a stratified draw of f of the training images keeps its labels
   (seeded by s); the rest is the pool, its labels hidden (exclude.csv) and its files listed in pool.csv. Four arms
   with seed s: the labelled part alone; the labelled part with `--config.data.unlabelled=pool.csv` (config.semi as
   given); every label; and self-training, one round of Noisy Student: the labelled arm teaches a student of the
   same config on the labelled images and the pool (`--mode distill --config.distill.unlabelled=pool.csv`;
   `--no-self-training` leaves it out). `--arms-from` an earlier --out trains the semi arm alone, against that
   run's splits, labelled and all-label arms (same epochs and overrides but semi.*): a change to config.semi, tried.
   Reported: each arm's test accuracy, semi (and self-training) minus labelled-alone as a paired difference over
   the test images (correctness averaged over the seeds; bench.auto.bootstrap's 95% interval), the share of the gap to all the
   labels closed, and the seconds per epoch (metrics.csv, after the first) of semi against labelled-alone: they
   run the same labelled batches, so the ratio is the cost per labelled batch.
3. label_next: per `--loop-seeds` s, from `--start` labelled images (a stratified draw seeded by s), `--rounds`
   rounds each adding `--add` labels, chosen by `--mode label_next` (margin, k-center, foreign images never picked)
   on the last round's model, or at random (seeded by s); the bench reveals the chosen images' labels, and every
   launch trains with seed s. Reported: both accuracy curves per seed and their mean over the seeds, and the labels
   label_next's mean curve needs to reach random's mean last accuracy (linear between rounds), as a share of
   random's (and each seed's own share).
Every launch takes `--epochs` and the `--set` overrides. Written to --out: <data>/bench_unlabelled.json and
bench_unlabelled.json (all) with every command; an --out/<data> that holds a run is refused, nothing is deleted.
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.auto import (  # noqa: E402
  DATA,
  PREDICTIONS,
  bootstrap,
  correct_from,
  correct_on_test,
  fresh_data_set,
  image_file,
  write_test_split,
)
from fpclass import fileio  # noqa: E402
from fpclass.config.inputs import DataSettings  # noqa: E402
from fpclass.data.pipeline import list_source  # noqa: E402


class Images:
  """The source's labelled training images outside the test split: ids, files (PNG written for arrays), labels."""

  def __init__(self, config, folder: pathlib.Path, test: pd.DataFrame):
    source = list_source(DataSettings.from_config(config.data))
    split, held = source.train, set(test['id'])
    keep = [i for i, name in enumerate(split.ids) if str(name) not in held]
    self.ids = np.asarray([str(split.ids[i]) for i in keep])
    self.labels = np.asarray(split.labels)[keep]
    self.test_ids = list(test['id'])
    self.files = np.asarray([image_file(split, i, folder / 'images') for i in keep])

  def draw(self, count: int, seed: int) -> np.ndarray:
    """A stratified draw of `count` indices (at least one per class)."""
    if count >= len(self.ids):
      return np.arange(len(self.ids))
    chosen, _ = train_test_split(np.arange(len(self.ids)), train_size=count, stratify=self.labels,
                                 random_state=seed)
    return np.sort(chosen)

  def write_split(self, folder: pathlib.Path, labelled: np.ndarray) -> tuple[pathlib.Path, pathlib.Path]:
    """exclude.csv (the test images and the pool) and pool.csv (the pool's files) for a labelled set."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = np.setdiff1d(np.arange(len(self.ids)), labelled)
    exclude, listed = folder / 'exclude.csv', folder / 'pool.csv'
    fileio.write_csv(exclude, pd.DataFrame({'id': [*self.test_ids, *self.ids[pool]]}))
    fileio.write_csv(listed, pd.DataFrame({'path': self.files[pool]}))
    return exclude, listed


def seconds_per_epoch(workdir: pathlib.Path) -> float:
  """The median epoch's seconds after the first (which compiles), from metrics.csv."""
  seconds = pd.read_csv(workdir / 'metrics.csv')['seconds'].to_numpy()
  return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def pseudo_rate(workdir: pathlib.Path) -> float | None:
  history = pd.read_csv(workdir / 'metrics.csv')
  return float(history['train_pseudo_rate'].iloc[-1]) if 'train_pseudo_rate' in history else None


def semi_part(args, launch, common, folder, images, test) -> dict:
  """The arms per fraction and seed. With --arms-from, the labelled and all-label arms (and the splits) are an
  earlier run's, read from its predictions, and only the semi arm trains: a change to config.semi costs its own arm
  alone (those arms do not read config.semi, and each launch is deterministic given its seed)."""
  arms_by_seed, rows = {}, []
  source = args.arms_from / folder.name if args.arms_from else None
  for seed in args.seeds:
    if source:
      arms_by_seed.setdefault('all', {})[seed] = correct_from(source / f'all-s{seed}', PREDICTIONS, test)
      continue
    workdir = folder / f'all-s{seed}'
    launch(f'all-s{seed}', [*common, f'--config.seed={seed}', f'--workdir={workdir}',
                            f'--config.data.exclude_csv={folder / "exclude.csv"}'])
    arms_by_seed.setdefault('all', {})[seed] = correct_on_test(launch, f'predict-all-s{seed}', workdir, folder, test)
  for fraction in args.fractions:
    correct = {'labelled': {}, 'semi': {}, **({'self_training': {}} if args.self_training and not source else {})}
    cost, rates = [], []
    for seed in args.seeds:
      split = f'f{fraction}-s{seed}'
      if source:
        exclude, pool = source / split / 'exclude.csv', source / split / 'pool.csv'
      else:
        exclude, pool = images.write_split(folder / split, images.draw(round(fraction * len(images.ids)), seed))
      base = [*common, f'--config.seed={seed}', f'--config.data.exclude_csv={exclude}']
      workdirs = {arm: folder / split / arm for arm in correct}
      if source:
        workdirs['labelled'] = source / split / 'labelled'
      else:
        launch(f'labelled-{split}', [*base, f'--workdir={workdirs["labelled"]}'])
      launch(f'semi-{split}', [*base, f'--workdir={workdirs["semi"]}', f'--config.data.unlabelled={pool}'])
      if 'self_training' in workdirs:
        # Self-training (one round of Noisy Student): the labelled arm teaches a student of the same config, with
        # its augmentation and dropout, on the labelled images and the pool (--mode distill, the teacher's
        # probabilities).
        launch(f'self-{split}', [*base, f'--workdir={workdirs["self_training"]}', '--mode=distill',
                                 f'--config.distill.teacher={workdirs["labelled"]}',
                                 f'--config.distill.unlabelled={pool}', '--config.distill.compare=False'])
      for arm, workdir in workdirs.items():
        correct[arm][seed] = (correct_from(workdir, PREDICTIONS, test) if source and arm == 'labelled' else
                              correct_on_test(launch, f'predict-{arm}-{split}', workdir, folder, test))
      cost.append(seconds_per_epoch(workdirs['semi']) / seconds_per_epoch(workdirs['labelled']))
      rates.append(pseudo_rate(workdirs['semi']))
    mean = {arm: np.mean([correct[arm][s] for s in args.seeds], axis=0) for arm in correct}
    mean['all'] = np.mean([arms_by_seed['all'][s] for s in args.seeds], axis=0)
    accuracy = {arm: float(m.mean()) for arm, m in mean.items()}
    gap = accuracy['all'] - accuracy['labelled']
    rows.append(dict(fraction=fraction, labelled_images=int(round(fraction * len(images.ids))),
                     pool_images=len(images.ids) - int(round(fraction * len(images.ids))), accuracy=accuracy,
                     accuracy_by_seed={arm: {str(s): float(c.mean()) for s, c in by.items()}
                                       for arm, by in {**correct, 'all': arms_by_seed['all']}.items()},
                     semi_minus_labelled=bootstrap(mean['semi'] - mean['labelled'], args.seeds[0]),
                     gap_closed=None if gap <= 0 else (accuracy['semi'] - accuracy['labelled']) / gap,
                     **(self_training_row(mean, accuracy, gap, args.seeds[0]) if 'self_training' in mean else {}),
                     semi_epoch_cost=cost, last_epoch_pseudo_rate=rates))
  return dict(rows=rows)


def self_training_row(mean: dict, accuracy: dict, gap: float, seed: int) -> dict:
  return dict(self_training_minus_labelled=bootstrap(mean['self_training'] - mean['labelled'], seed),
              self_training_minus_semi=bootstrap(mean['self_training'] - mean['semi'], seed),
              self_training_gap_closed=None if gap <= 0 else (accuracy['self_training'] - accuracy['labelled']) / gap)


def label_next_part(args, launch, common, folder, images, test) -> dict:
  """Both strategies' curves per loop seed (its own first draw, random picks and training seed), their mean over
  the seeds, and the labels label_next's mean curve needs to reach random's mean last accuracy: one draw's curve
  moves by several points from round to round (docs/unlabelled.md)."""
  by_seed = {seed: label_next_loop(args, launch, common, folder, images, test, seed) for seed in args.loop_seeds}
  curves = {strategy: dict(labels=by_seed[args.loop_seeds[0]][strategy]['labels'],
                           accuracy=[float(a) for a in np.mean([by_seed[s][strategy]['accuracy'] for s in by_seed],
                                                               axis=0)])
            for strategy in ('label_next', 'random')}
  return dict(start=args.start, add=args.add, rounds=args.rounds, seeds=list(args.loop_seeds), curves=curves,
              curves_by_seed={str(s): c for s, c in by_seed.items()},
              share_of_random_labels_by_seed={str(s): share_of_random(c)[1] for s, c in by_seed.items()},
              **dict(zip(('random_last_accuracy', 'label_next_labels_to_reach_it', 'share_of_random_labels'),
                         share_of_random(curves, with_target=True))))


def share_of_random(curves: dict, with_target: bool = False) -> tuple:
  """(random's last accuracy, the labels label_next needs to reach it, their share of random's labels)."""
  target = curves['random']['accuracy'][-1]
  needed = labels_to_reach(curves['label_next'], target)
  share = None if needed is None else needed / curves['random']['labels'][-1]
  return (target, needed, share) if with_target else (needed, share)


def label_next_loop(args, launch, common, folder, images, test, seed: int) -> dict:
  """One simulated loop: from a stratified draw of `--start` labels (seeded by `seed`), `--rounds` rounds adding
  `--add` labels each, by label_next or at random (the same first model for both); {strategy: labels, accuracy}."""
  start = images.draw(args.start, seed)
  prefix = 'loop' if seed == 0 else f'loop-s{seed}'   # seed 0's folders keep the names of the one-seed bench
  curves = {}
  for strategy in ('label_next', 'random'):
    labelled, counts, accuracy = start.copy(), [], []
    rng = np.random.default_rng(seed)
    for round_ in range(args.rounds + 1):
      name = f'{prefix}-{strategy}-r{round_}'
      exclude, pool = images.write_split(folder / name, labelled)
      workdir = folder / name / 'run'
      if strategy == 'random' and round_ == 0:   # the same first model as label_next's
        workdir = folder / f'{prefix}-label_next-r0' / 'run'
      else:
        launch(name, [*common, f'--config.seed={seed}', f'--config.data.exclude_csv={exclude}',
                      f'--workdir={workdir}'])
      counts.append(len(labelled))
      accuracy.append(float(correct_on_test(launch, f'predict-{name}', workdir, folder, test).mean()))
      if round_ == args.rounds:
        break
      pool_index = np.setdiff1d(np.arange(len(images.ids)), labelled)
      if strategy == 'random':
        picked = rng.choice(pool_index, min(args.add, len(pool_index)), replace=False)
      else:
        launch(f'label_next-{name}', [f'--workdir={workdir}', '--mode=label_next', f'--config.data.unlabelled={pool}',
                                       f'--config.label_next.count={args.add}', '--config.label_next.contact_sheet=0'])
        ranked = pd.read_csv(workdir / 'label_next.csv', dtype={'path': str}, keep_default_na=False)
        chosen = ranked[ranked['guess'] != '']['path'].head(args.add)
        by_file = {f: i for i, f in enumerate(images.files)}
        picked = np.asarray([by_file[str(pathlib.Path(p).resolve())] for p in chosen])
      labelled = np.union1d(labelled, picked)
    curves[strategy] = dict(labels=counts, accuracy=accuracy)
  return curves


def labels_to_reach(curve: dict, target: float) -> float | None:
  """The labels at which `curve` first reaches `target`, linear between rounds; None if it never does."""
  labels, accuracy = curve['labels'], curve['accuracy']
  for i, a in enumerate(accuracy):
    if a >= target:
      if i == 0:
        return float(labels[0])
      lo, hi = accuracy[i - 1], a
      return float(labels[i - 1] + (target - lo) / (hi - lo) * (labels[i] - labels[i - 1]))
  return None


def arms_from(args, name: str, folder: pathlib.Path) -> pd.DataFrame:
  """The test split of the earlier run --arms-from names, after checking that its arms trained as these would:
  the same epochs and the same overrides but config.semi's. Its test listing is copied into `folder`."""
  source = args.arms_from / name
  recorded = json.loads((source / 'bench_unlabelled.json').read_text())
  others = sorted(o for o in args.set if not o.startswith('semi.'))
  theirs = sorted(o for o in recorded['overrides'] if not o.startswith('semi.'))
  if recorded['epochs'] != args.epochs or others != theirs:
    raise SystemExit(f'--arms-from {source}: its arms trained with --epochs {recorded["epochs"]} and {theirs}, '
                     f'not {args.epochs} and {others}; only semi.* may differ')
  missing = [f'f{f}-s{s}' for f in args.fractions for s in args.seeds if not (source / f'f{f}-s{s}').is_dir()]
  if missing:
    raise SystemExit(f'--arms-from {source}: it has no split {missing[0]} (--fractions and --seeds must be its own)')
  for listing in ('test_split.csv', 'test_images.csv'):
    fileio.write_text(folder / listing, (source / listing).read_text())
  return pd.read_csv(folder / 'test_split.csv', dtype=str, keep_default_na=False)


def run_one(name: str, args) -> dict:
  folder, launch, common, config = fresh_data_set(name, args)
  if args.arms_from:
    test = arms_from(args, name, folder)
    images = Images(config, args.arms_from / name, test)   # its PNG files, written once, are kept
  else:
    test, _ = write_test_split(config, folder, 0.2, 0)
    images = Images(config, folder, test)
  row = dict(data=name, date=time.strftime('%Y-%m-%d'), config=DATA[name], epochs=args.epochs,
             overrides=list(args.set), test_images=len(test), training_images=len(images.ids),
             semi_settings={k: v for k, v in config.semi.items()})
  if 'semi' in args.parts:
    row['semi'] = semi_part(args, launch, common, folder, images, test)
  if 'label_next' in args.parts:
    row['label_next'] = label_next_part(args, launch, common, folder, images, test)
  row['commands'] = launch.commands
  fileio.write_json(folder / 'bench_unlabelled.json', row)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'runs' / 'bench-unlabelled')
  p.add_argument('--data', nargs='+', default=['digits', 'mnist'], choices=list(DATA))
  p.add_argument('--fractions', type=float, nargs='+', default=[0.05, 0.1])
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--epochs', type=int, default=0, help="every launch's epochs (0: each config's own)")
  p.add_argument('--start', type=int, default=50, help='label_next: the labelled images it starts from')
  p.add_argument('--add', type=int, default=50, help='label_next: labels added per round')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--loop-seeds', type=int, nargs='+', default=[0],
                 help='label_next: one simulated loop per seed (its first draw, random picks, training seed)')
  p.add_argument('--parts', nargs='+', default=['semi', 'label_next'], choices=['semi', 'label_next'])
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override for every training launch (repeatable)')
  p.add_argument('--self-training', action=argparse.BooleanOptionalAction, default=True,
                 help='semi: also the self-training arm (one round of Noisy Student through --mode distill)')
  p.add_argument('--arms-from', type=pathlib.Path, default=None, metavar='OUT',
                 help="semi only: an earlier --out's labelled and all-label arms and splits; train the semi arm alone")
  args = p.parse_args()
  if args.arms_from and args.parts != ['semi']:
    p.error('--arms-from reuses the semi part\'s arms: give --parts semi')
  rows = [run_one(name, args) for name in args.data]
  fileio.write_json(args.out / 'bench_unlabelled.json', rows)
  print(json.dumps([{k: v for k, v in r.items() if k != 'commands'} for r in rows], indent=1, default=str))


if __name__ == '__main__':
  main()
