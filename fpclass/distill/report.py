"""The distilled student against its teacher and against itself trained alone (`--mode distill`'s report).

Every comparison run is a split the teacher's models held out and a seed: the student trained there with that
split's teacher models, and alone on the labels, both ordinary workdirs; all three are scored on the split's
validation images, which none of them trained on. The differences are paired twice: per run (folds x seeds, the
corrected resampled t-interval of `fpclass.analysis.stats`, as sweeps report) and per image (pooled over the
runs, a paired t-interval). `gain_kept` is the share of the teacher's lead over the student alone that the
student keeps, with a bootstrap interval over the pooled images (`stats.share_interval`). Images per second:
each model's compiled predict on this machine, the teacher's models in turn.
"""
import dataclasses
import pathlib

import numpy as np

from fpclass import fileio
from fpclass.analysis import metric_registry, stats
from fpclass.analysis.stats import paired_difference
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.distill import teacher as distill
from fpclass.infer.inference import load_trained
from fpclass.runtime import report
from fpclass.train import oof, sidecar
from fpclass.train.members import split_name

FILE = 'distill.json'


@dataclasses.dataclass
class ComparisonRun:
  split: int
  seed: int
  student: pathlib.Path     # the student's workdir, trained with the split's teacher models
  alone: pathlib.Path       # the same student trained on the labels alone
  teacher: distill.Teacher  # the models that held the split out


def run_folders(workdir: pathlib.Path, split: int, seed: int) -> tuple[pathlib.Path, pathlib.Path]:
  folder = pathlib.Path(workdir) / 'compare' / f'{split_name(split)}-seed{seed}'
  return folder / 'student', folder / 'alone'


def _rows(folder: pathlib.Path, class_names) -> tuple[np.ndarray, np.ndarray]:
  """(validation rows, probabilities) of a run's selected checkpoint, from its out-of-fold predictions."""
  frame = oof.read(folder).sort_values('row')
  return frame['row'].to_numpy(), frame[[f'p_{c}' for c in class_names]].to_numpy(np.float64)


def _per_image(labels: np.ndarray, probs: np.ndarray, task: str) -> np.ndarray:
  """Per image: 1 when right (multi-label: the share of its labels decided right at 0.5)."""
  if task == metric_registry.MULTI:
    return ((probs >= 0.5) == labels.astype(bool)).mean(axis=1)
  return (probs.argmax(1) == labels).astype(np.float64)


def score_runs(runs: list[ComparisonRun], student: RunSettings, class_names) -> dict:
  """Every run scored: its metric for student, teacher and alone, and the paired differences. `student`: the
  student's typed sections."""
  batch = student.eval.batch_size
  rows, right, ratios = [], {k: [] for k in ('student', 'teacher', 'alone')}, []
  task = None
  for run in runs:
    dataset = pipeline.load_dataset(student.with_split(run.split, run.seed).data, progress=False)
    order, student_probs = _rows(run.student, class_names)
    alone_order, alone = _rows(run.alone, class_names)
    if not (np.array_equal(order, alone_order) and np.array_equal(order, np.arange(len(dataset.val)))):
      raise ValueError(f'{run.student}: its validation predictions are not those of split {run.split}')
    labels = np.asarray(dataset.val.labels)
    teacher = sum(m.weight * m.trained.probabilities(np.asarray(dataset.val.images), batch)
                  for m in run.teacher.models) / sum(m.weight for m in run.teacher.models)
    task = metric_registry.task_of_head('multilabel' if labels.ndim == 2 else 'softmax')
    metric = distill.metric_of(task)
    scored = {k: metric_registry.score(labels, p, task) for k, p in
              (('student', student_probs), ('teacher', teacher), ('alone', alone))}
    rows.append({'split': run.split, 'seed': run.seed, 'n': len(labels), 'n_train': len(dataset.train),
                 **{k: scored[k][metric] for k in scored}, **{f'{k}_loss': scored[k]['loss'] for k in scored}})
    for k, p in (('student', student_probs), ('teacher', teacher), ('alone', alone)):
      right[k].append(_per_image(labels, p, task))
    ratios.append(len(labels) / len(dataset.train))
  metric = distill.metric_of(task)
  ratio = float(np.mean(ratios)) if len({r['split'] for r in rows}) > 1 else 0.0
  pooled = {k: np.concatenate(v) for k, v in right.items()}
  means = {k: float(np.mean([r[k] for r in rows])) for k in ('student', 'teacher', 'alone')}
  lead = means['teacher'] - means['alone']
  return {
      'metric': metric, 'runs': rows, 'mean': means, 'test_train_ratio': ratio,
      'student_minus_teacher': {'runs': distill.corrected([r['student'] - r['teacher'] for r in rows], ratio),
                                'images': paired_difference(pooled['student'], pooled['teacher'])},
      'student_minus_alone': {'runs': distill.corrected([r['student'] - r['alone'] for r in rows], ratio),
                              'images': paired_difference(pooled['student'], pooled['alone'])},
      'gain_kept': (means['student'] - means['alone']) / lead if lead > 0 else None,
      'gain_kept_interval': list(stats.share_interval(pooled['student'] - pooled['alone'],
                                                      pooled['teacher'] - pooled['alone'])) if lead > 0 else None}


def speeds(workdir: pathlib.Path, models, runs: list[ComparisonRun], student: RunSettings) -> dict:
  """Images per second of the teacher (all its models), the student and the student alone, on one batch of
  validation images."""
  dataset = pipeline.load_dataset(student.data, progress=False)
  images = np.asarray(dataset.val.images[:64])
  trained = load_trained(sidecar.config_from_json(sidecar.read_metadata(workdir)['config']), workdir)
  out = {'teacher': distill.teacher_images_per_second(models, images),
         'student': distill.images_per_second(trained.batch_logits, images), 'batch': len(images)}
  if runs:
    alone = load_trained(sidecar.config_from_json(sidecar.read_metadata(runs[0].alone)['config']), runs[0].alone)
    out['alone'] = distill.images_per_second(alone.batch_logits, images)
  out['student_over_teacher'] = out['student'] / out['teacher']
  return out


def write(workdir: pathlib.Path, record: dict) -> None:
  """distill.json and the report's section."""
  fileio.write_json(pathlib.Path(workdir) / FILE, record)
  report.write_section(workdir, '50-distill', section(record))


def _interval(d: dict) -> str:
  if d is None or d.get('n', 0) < 2 or d['low'] != d['low']:
    return f'{100 * d["mean"]:+.2f} (one run: no interval)' if d else 'n/a'
  return f'{100 * d["mean"]:+.2f} [{100 * d["low"]:+.2f}, {100 * d["high"]:+.2f}]'


def _share(compared: dict) -> str:
  low, high = compared.get('gain_kept_interval') or (None, None)
  if low is None or low != low:
    return f'{compared["gain_kept"]:.0%}'
  bracket = f' [{_percent(low)}, {_percent(high)}] (95%, a bootstrap over the images)'
  return f'{compared["gain_kept"]:.0%}{bracket}'


def _percent(share: float) -> str:
  return f'{share:.0%}' if abs(share) != float('inf') else ('+inf' if share > 0 else '-inf')


def _unlabelled_advice(record: dict) -> list[str]:
  """What the measurements in docs/deploy.md say about unlabelled images, for a single-label student."""
  if 'mean_average_precision' in record['student'].get('validation', {}):
    return []   # a multi-label student takes no unlabelled images
  if not record['unlabelled']:
    return ['Without unlabelled images the student matches the teacher on its training images only, where the '
            'teacher\'s probabilities are nearly the labels. Unlabelled images like those it will meet '
            '(`config.distill.unlabelled`: `test` or a folder) are what carried the teacher\'s lead to unseen '
            'images where measured (docs/deploy.md).', '']
  return ['A student distilled with unlabelled images can lose its "none of my classes" separation (measured on '
          'the footprints, docs/deploy.md): check its `unknown` flag on images of other kinds before serving it.', '']


def section(record: dict) -> str:
  teacher = record['teacher']
  lines = ['## Distillation', '',
           f'Student `{record["student"]["model"]}` ({record["student"]["parameters"]:,} parameters) trained in this '
           f'workdir on the probabilities of the teacher `{teacher["path"]}` ({len(teacher["models"])} models, '
           f'{teacher["parameters"]:,} parameters) for each augmented view it saw'
           + (f', with {record["unlabelled"]} unlabelled images' if record['unlabelled'] else '') + '.', '']
  lines += _unlabelled_advice(record)
  seen = record['student'].get('validation_images_the_teacher_trained_on', 0)
  if seen:
    lines += [f'{seen} of this workdir\'s {record["student"]["validation_images"]} validation images were training '
              'images of the teacher\'s models, so its validation scores may be optimistic: what the teacher learnt '
              'of them can reach the student through its targets. '
              + ('The comparison below is on images none of them trained on.' if record.get('comparison') else
                 'config.distill.compare scores it on images none of them trained on.'), '']
  compared = record.get('comparison')
  if compared:
    metric = compared['metric']
    lines += [f'On the validation images of each split the teacher\'s models held out ({len(compared["runs"])} '
              f'runs: splits x seeds), {metric} in points, differences with 95% intervals per run (corrected) and '
              'per image (paired):', '',
              report.table([{'model': k, metric: f'{compared["mean"][k]:.4f}'} for k in ('teacher', 'student', 'alone')],
                           ['model', metric]), '',
              f'- student - teacher: runs {_interval(compared["student_minus_teacher"]["runs"])}, images '
              f'{_interval(compared["student_minus_teacher"]["images"])}',
              f'- student - student alone: runs {_interval(compared["student_minus_alone"]["runs"])}, images '
              f'{_interval(compared["student_minus_alone"]["images"])}',
              '- the teacher\'s lead over the student alone that the student keeps: '
              + (_share(compared) if compared['gain_kept'] is not None else 'n/a (no lead)'), '']
  speed = record['images_per_second']
  lines += [f'Images per second on this machine (batch {speed["batch"]}): teacher {speed["teacher"]:.0f}, student '
            f'{speed["student"]:.0f} ({speed["student_over_teacher"]:.1f}x)'
            + (f', student alone {speed["alone"]:.0f}' if 'alone' in speed else '') + '.',
            f'Files: [{FILE}]({FILE}); the comparison runs are ordinary workdirs under `compare/`.']
  return '\n'.join(lines)
