"""What each `--mode` of launch.py runs. Heavy imports happen inside, so `--help` stays fast."""
import pathlib


def _train(config, workdir):
  from fpclass.train import train_and_evaluate
  train_and_evaluate(config, workdir)


def _evaluate(config, workdir):
  from fpclass.evaluate import evaluate_workdir
  evaluate_workdir(config, workdir)


def _submit(config, workdir):
  from fpclass.submit import submit
  submit(config, workdir)


def _explain(config, workdir):
  from fpclass.explain import explain_workdir
  explain_workdir(config, workdir)


def _clean(config, workdir, apply=False):
  from fpclass.data.clean import clean
  clean(config, workdir, apply=apply)


def _compare(config, workdir):
  from fpclass.compare import compare_workdir
  compare_workdir(config, workdir)


def _prepare(config, workdir):
  from fpclass.data.tfds_source import prepare
  prepare(config)


def _sweep(config, workdir):
  from fpclass.sweep import run_sweep
  run_sweep(config, workdir)


def _calibrate(config, workdir):
  from fpclass.calibration import calibrate
  calibrate(config, workdir)


MODES = {
    'train': (_train, 'train (resuming a killed run), then evaluate the selected checkpoint (and explain it if '
              'explain.after_training)'),
    'evaluate': (_evaluate, 'restore the selected checkpoint; write scores.json, plots and report.md'),
    'explain': (_explain, 'restore the selected checkpoint; write Grad-CAM overlays, an inference grid, top '
                'losses, confused pairs and feature maps of the validation split'),
    'submit': (_submit, 'restore the selected checkpoint; write submission.csv and its probabilities'),
    'clean': (_clean, 'scan the data root for corrupt files and (near) duplicates; write clean_files.csv for '
                      'config.data.file_list; --apply moves the files it leaves out to <workdir>/quarantine'),
    'compare': (_compare, 'read the evaluated runs in the subfolders of --workdir (one per backbone or '
                          'freeze_till value); write comparison.csv, best macro F1 first'),
    'prepare': (_prepare, 'download and prepare config.data.tfds.name as ArrayRecord (needs TensorFlow)'),
    'sweep': (_sweep, 'train config.sweep.variants x folds x seeds together; tables with confidence intervals'),
    'calibrate': (_calibrate, 'fit temperature and decision threshold on validation predictions; store them'),
}


def run(mode: str, config, workdir, **options) -> None:
  """Runs `mode`; `options` are mode-specific flags (only clean takes one: apply)."""
  from fpclass.runtime import enable_compilation_cache, keep_host_buffers
  keep_host_buffers()  # first, before JAX starts its threads
  from fpclass.sharding import initialize_distributed
  initialize_distributed()  # a no-op unless the environment describes a multi-host job
  from fpclass.config import validate
  validate(config)
  enable_compilation_cache(config.data.cache_dir or None)
  MODES[mode][0](config, pathlib.Path(workdir), **options)
