"""The workflows on top of the core: one module per `--mode` of launch.py, and the runner.

Adding a mode is one module here with a function `(config, workdir, **options)` and one line in MODES.
Modules are imported by name when their mode runs (`importlib`), so `launch.py --help` stays fast and a
mode's heavy dependencies (matplotlib, FastAPI, onnx) load only when it is used.

Modes marked `trained` read a trained workdir: they need no `--config`, because the workdir's sidecar
(metadata.json) holds the training config (see configs/workdir.py); overrides that would change the model
or its input are refused (`fpclass.checkpoint.check_restorable`).
"""
import dataclasses
import importlib
import pathlib

from fpclass import fileio
from fpclass.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Mode:
  module: str          # fpclass.modes.<module>
  function: str
  help: str
  trained: bool = False  # reads a trained workdir: --config is optional
  # Runs as one program over every process of a jax.distributed job (each computes, process 0 writes).
  # The others are single-process tools and say so when started in such a job.
  multi_process: bool = False


MODES = {
    'train': Mode('train', 'train', 'train (resuming a killed run), then evaluate the selected checkpoint (and '
                  'explain it if explain.after_training)', multi_process=True),
    'evaluate': Mode('evaluate', 'evaluate_workdir', 'restore the selected checkpoint; write scores.json, plots and '
                     'report.md', trained=True, multi_process=True),
    'explain': Mode('explain', 'explain_workdir', 'restore the selected checkpoint; write Grad-CAM overlays, an '
                    'inference grid, top losses, confused pairs and feature maps of the validation split',
                    trained=True, multi_process=True),
    'submit': Mode('submit', 'submit', 'restore the selected checkpoint; write submission.csv and its probabilities',
                   trained=True, multi_process=True),
    'predict': Mode('predict', 'predict', 'classify new images (config.predict.inputs: a file, folder, glob or '
                    'CSV) with the selected checkpoint; write predictions.csv', trained=True),
    'serve': Mode('serve', 'serve', 'serve the selected checkpoint: an upload page and a JSON API (FastAPI under '
                  'uvicorn, loopback by default)', trained=True),
    'export': Mode('export', 'export', 'write the selected checkpoint as ONNX and as a serialized jax.export '
                   '(StableHLO) artifact, preprocessing inside the graph', trained=True),
    'calibrate': Mode('calibrate', 'calibrate', 'fit temperature and decision threshold on validation predictions; '
                      'store them', trained=True, multi_process=True),
    'clean': Mode('clean', 'clean', 'scan the data root for corrupt files and (near) duplicates; write '
                  'clean_files.csv for config.data.file_list; --apply moves the files it leaves out to '
                  '<workdir>/quarantine'),
    'compare': Mode('compare', 'compare_workdir', 'read the evaluated runs in the subfolders of --workdir (one per '
                    'backbone or freeze_till value); write comparison.csv, best macro F1 first'),
    'prepare': Mode('prepare', 'prepare', 'download and prepare config.data.tfds.name as ArrayRecord (needs '
                    'TensorFlow)'),
    'sweep': Mode('sweep', 'run_sweep', 'train config.sweep.variants x folds x seeds together; tables with '
                  'confidence intervals'),
}


def mode_function(name: str):
  mode = MODES[name]
  return getattr(importlib.import_module(f'fpclass.modes.{mode.module}'), mode.function)


def run(mode: str, config, workdir, **options):
  """Validates `config` and runs `mode`; `options` are mode-specific flags (only clean takes one: apply).
  Train is followed by evaluate, and by explain when config.explain.after_training. Returns the mode's
  result (for train: evaluate's scores). The package API: `fpclass.modes.run('train', config, workdir)`."""
  # Process-wide settings first, before JAX starts its threads or sees another process.
  from fpclass import runtime  # lazy: imports jax, which --help should not wait for
  runtime.keep_host_buffers()
  from fpclass import sharding  # lazy: imports jax
  sharding.initialize_distributed()  # a no-op unless the environment describes a multi-process job
  fileio.set_primary(sharding.is_primary_process())
  if sharding.process_count() > 1 and not MODES[mode].multi_process:
    raise UserInputError(f'--mode {mode} runs on one process; this job has {sharding.process_count()} '
                         '(unset JAX_COORDINATOR_ADDRESS, or run it from one process only)')
  from fpclass import validation  # lazy: imports every model family
  validation.validate(config)
  runtime.enable_compilation_cache(config.data.cache_dir or None)
  workdir = pathlib.Path(workdir)
  result = mode_function(mode)(config, workdir, **options)
  if mode == 'train':
    dataset = result
    result = mode_function('evaluate')(config, workdir, dataset=dataset)
    if config.explain.after_training:
      mode_function('explain')(config, workdir, dataset=dataset)
  return result
