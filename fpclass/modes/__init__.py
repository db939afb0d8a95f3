"""The workflows on top of the core: one module per `--mode` of launch.py, and the runner.

Adding a mode is one module here with a function `(config, workdir, **options)` and one line in MODES.
Modules are imported by name when their mode runs (`importlib`), so `launch.py --help` stays fast and a
mode's heavy dependencies (matplotlib, FastAPI, onnx) load only when it is used. `fpclass.modes.runner.run`
validates a config and runs a mode: the package API (`run('train', config, workdir)`).

Modes marked `trained` read a trained workdir: they need no `--config`, because the workdir's sidecar
(metadata.json, or a sweep's or a search's workdir.json) holds the config it was written from (see
configs/workdir.py); overrides that would change a restored model or its input are refused
(`fpclass.train.sidecar.check_restorable`).
"""
import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Mode:
  module: str          # fpclass.modes.<module>
  function: str
  help: str
  trained: bool = False  # reads a trained workdir: --config is optional
  # Writes a workdir of many runs (not one run's metadata.json): the runner records its kind and config there
  # (workdir.json), so the modes that read it later need only --workdir.
  records_config: bool = False
  # Logged as a run to the experiment trackers config.track names (MLflow): 'run' for a mode that trains one run
  # (the root run takes its epochs), 'parent' for one whose nested runs hold its members or trials.
  tracked: str = ''
  # Owns a trained workdir's report: writes timings.json and report.md's 'Where the time went'.
  timed: bool = False
  # Runs as one program over every process of a jax.distributed job (each computes, process 0 writes).
  # The others are single-process tools and say so when started in such a job.
  multi_process: bool = False
  trains: bool = False     # writes checkpoints: holds the workdir's lock (fpclass.runtime.workdir_lock) while it runs
  read_only: bool = False  # writes nothing in --workdir (serve), so a read-only workdir is fine
  # Several launches may work in one workdir at once (auto's shared study): no workdir lock, though it trains.
  shared_workdir: bool = False
  # Reads only its own config section and writes nothing: --workdir and --config are optional (launch.py then
  # takes the main job's config file for the defaults).
  standalone: bool = False


MODES = {
    'train': Mode('train', 'train', 'train (resuming a killed run), then evaluate the selected checkpoint (and '
                  'explain it if explain.after_training)', multi_process=True, trains=True, tracked='run', timed=True),
    'evaluate': Mode('evaluate', 'evaluate_workdir', 'restore the selected checkpoint; write scores.json, plots and '
                     'report.md', trained=True, multi_process=True, timed=True),
    'explain': Mode('explain', 'explain_workdir', 'restore the selected checkpoint; write Grad-CAM overlays, an '
                    'inference grid, top losses, confused pairs and feature maps of the validation split',
                    trained=True, multi_process=True, timed=True),
    'submit': Mode('submit', 'submit', 'restore the selected checkpoint; write submission.csv and its probabilities',
                   trained=True, multi_process=True, timed=True),
    'predict': Mode('predict', 'predict', 'classify new images (config.predict.inputs: a file, folder, glob or '
                    'CSV) with the selected checkpoint; write predictions.csv', trained=True),
    'serve': Mode('serve', 'serve', 'serve the selected checkpoint: an upload page and a JSON API (FastAPI under '
                  'uvicorn, loopback by default)', trained=True, read_only=True),
    'export': Mode('export', 'export', 'write the selected checkpoint as ONNX and as a serialized jax.export '
                   '(StableHLO) artifact, preprocessing inside the graph', trained=True),
    'calibrate': Mode('calibrate', 'calibrate', 'fit temperature and decision threshold on validation predictions; '
                      'store them', trained=True, multi_process=True, timed=True),
    'clean': Mode('clean', 'clean', 'scan the data root for corrupt files and (near) duplicates; write '
                  'clean_files.csv for config.data.file_list; --apply moves the files it leaves out to '
                  '<workdir>/quarantine'),
    'compare': Mode('compare', 'compare_workdir', 'read the evaluated runs in the subfolders of --workdir (one per '
                    'backbone or freeze_till value); write comparison.csv, best macro F1 first'),
    'prepare': Mode('prepare', 'prepare', 'download and prepare config.data.tfds.name as ArrayRecord (needs '
                    'TensorFlow)'),
    'sweep': Mode('sweep', 'run_sweep', 'train config.sweep.variants x folds x seeds together; tables with '
                  'confidence intervals', trains=True, multi_process=True, records_config=True,
                  tracked='parent'),
    'probe': Mode('probe', 'probe', 'screen config.probe.backbones: a linear probe on each one\'s cached, pooled '
                  'features over folds x seeds; tables and a plot with confidence intervals'),
    'auto': Mode('auto', 'auto', 'the best model for the data within config.auto.time_budget: screen the backbones, '
                 'search with Optuna over k-fold trials, confirm the best on fresh seeds with paired intervals, '
                 'refit the choice into <workdir>/final', trains=True, shared_workdir=True, records_config=True,
                 tracked='parent'),
    'lr_find': Mode('lr_find', 'lr_find', 'fastai\'s learning-rate finder: an exponential learning-rate sweep '
                    'from the run\'s initial state (config.lr_find); write lr_find.json and lr_find.png with the '
                    'suggestions (the workdir\'s training state is untouched)'),
    'ensemble': Mode('ensemble', 'ensemble', 'the best weighted mix of a sweep\'s variants or an auto run\'s trials '
                     '(Caruana selection on their out-of-fold predictions) and a greedy soup, scored cross-fitted '
                     'against the best single; writes an ensemble workdir that submit and predict use', trained=True),
    'models': Mode('models', 'list_models', 'list the registered models (config.models.pattern, e.g. \'convnext*\'; '
                   'timm checkpoints by name: config.model.pretrained=\'hf-hub:timm/<arch>.<tag>\') with family, '
                   'parameters, default input size and verified parity', read_only=True, standalone=True),
    'distill': Mode('distill', 'distill', 'train config.model on the probabilities config.distill.teacher (an '
                    'ensemble, sweep, auto run or run) gives the very view it sees; compare it with the teacher and '
                    'with itself trained alone (paired intervals, images per second)', trains=True, timed=True),
    'label_issues': Mode('label_issues', 'label_issues', 'flag the probably wrong labels (cleanlab) from the '
                         'out-of-fold predictions below --workdir; write label_issues.csv for '
                         'config.data.exclude_csv or relabel_csv, and a grid of the top suspects', trained=True),
    'label_next': Mode('label_next', 'label_next', 'rank config.data.unlabelled\'s images for a person to label '
                       'next (config.label_next: uncertainty, diversity, foreign images apart); write '
                       'label_next.csv, a contact sheet, a labels template and a Label Studio task file',
                       trained=True),
}


def mode_function(name: str):
  mode = MODES[name]
  return getattr(importlib.import_module(f'fpclass.modes.{mode.module}'), mode.function)
