"""`--mode distill`: one model (config.model, the student) trained on a teacher's probabilities.

    python launch.py --config configs/footprint.py:exp4 --config.model.conv_channels='(8,16)' \
        --workdir runs/fp-student --mode distill --config.distill.teacher=runs/fp-sweep/ensemble

The teacher is any trained workdir (an ensemble, a sweep, an auto run, a run: `fpclass.distill.teacher`); it scores
the very augmented view the student sees, inside the student's train step. The student trains through the one
training loop (`fpclass.train.loop.run_plan`, the solo plan) into --workdir, an ordinary workdir (predict, serve,
export use it), and is evaluated there. With config.distill.compare, on each split the teacher's models held out
(x config.distill.seeds) the student is trained again with those models alone as its teacher, and alone on the
labels, under `compare/`; distill.json and report.md say how the three compare on images none of them trained
on, and their images per second (`fpclass.distill.report`).
"""
import dataclasses
import pathlib

from fpclass.config.outputs import DistillSettings
from fpclass.config.run import RunSettings
from fpclass.data import pipeline
from fpclass.distill import report as distill_report
from fpclass.distill import teacher as distill_core
from fpclass.errors import UserInputError
from fpclass.infer.evaluation import evaluate_workdir
from fpclass.train import sidecar
from fpclass.train.loop import run_plan
from fpclass.train.plan import apply_changes, solo_plan


def distill(config, workdir) -> dict:
  """Trains and evaluates the student in `workdir`, then (config.distill.compare) the comparison runs; returns
  the record written to distill.json."""
  workdir = pathlib.Path(workdir)
  settings = DistillSettings.from_config(config.distill)
  student = distill_core.student_config(config)
  student_run = RunSettings.from_config(student)
  models = distill_core.teacher_models(settings.teacher)
  data = student_run.data
  class_names = tuple(pipeline.list_source(data).class_names)
  distill_core.check_student(student_run, models, class_names, (data.decode.height, data.decode.width,
                                                            data.decode.channels))
  if settings.label_weight and data.labels.multilabel:
    raise UserInputError(f'config.distill.label_weight={settings.label_weight}: single-label tasks only (a '
                         'multi-label target is per class, and an unlabelled row has no label to weigh); set 0')
  splits = distill_core.comparison_splits(models, settings, student_run) if settings.compare else []
  unlabelled = distill_core.unlabelled_images(settings, student_run)

  splits_of_models = distill_core.model_splits(models)   # each source decoded once, for both uses below
  validated_ids = distill_core.held_out_ids(splits_of_models) if settings.cross_fit else None
  teacher = distill_core.Teacher(models, unlabelled, validated_ids, temperature=settings.temperature,
                                 label_weight=settings.label_weight)
  (run,) = run_plan(dataclasses.replace(solo_plan(student), teacher=teacher), workdir)
  if settings.unlabelled == 'test':   # the scores on those images are not on unseen ones: evaluate says so
    sidecar.write_metadata(workdir, dict(sidecar.read_metadata(workdir), **{sidecar.TEST_UNLABELLED: True}))
  scores = evaluate_workdir(student, workdir, dataset=run.data.dataset)

  runs = []
  for split in splits:
    held_out = distill_core.Teacher(distill_core.held_out_models(models, split), unlabelled,
                                    temperature=settings.temperature, label_weight=settings.label_weight)
    for seed in settings.seeds:
      member = apply_changes(student, {'data.fold': split, 'seed': seed}, 'config.distill')
      student_folder, alone_folder = distill_report.run_folders(workdir, split, seed)
      run_plan(dataclasses.replace(solo_plan(member), teacher=held_out), student_folder)
      run_plan(solo_plan(member), alone_folder)
      runs.append(distill_report.ComparisonRun(split, seed, student_folder, alone_folder, held_out))

  record = {
      'teacher': {'path': settings.teacher, 'models': teacher.describe(), 'cross_fit': settings.cross_fit,
                  'temperature': settings.temperature,
                  'parameters': int(sum(m.metadata.get('num_params') or 0 for m in models))},
      'student': {'model': student.model.name, 'parameters': int(scores['num_params']),
                  'validation': {k: scores.get(k) for k in ('accuracy', 'macro_f1', 'loss', 'mean_average_precision')
                                 if scores.get(k) is not None},
                  'validation_images': len(run.data.dataset.val),
                  'validation_images_the_teacher_trained_on': distill_core.teacher_trained_on(
                      splits_of_models, run.data.dataset.val.ids)},
      'unlabelled': 0 if unlabelled is None else len(unlabelled),
      'comparison': distill_report.score_runs(runs, student_run, class_names) if runs else None,
      'images_per_second': distill_report.speeds(workdir, models, runs, student_run)}
  distill_report.write(workdir, record)
  print(distill_report.section(record))
  return record
