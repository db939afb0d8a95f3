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


def _sweep(config, workdir):
  from fpclass.sweep import run_sweep
  run_sweep(config, workdir)


def _calibrate(config, workdir):
  from fpclass.calibration import calibrate
  calibrate(config, workdir)


MODES = {
    'train': (_train, 'train (resuming a killed run), then evaluate the selected checkpoint'),
    'evaluate': (_evaluate, 'restore the selected checkpoint; write scores.json, plots and report.md'),
    'submit': (_submit, 'restore the selected checkpoint; write submission.csv and its probabilities'),
    'sweep': (_sweep, 'train config.sweep.variants x folds x seeds together; tables with confidence intervals'),
    'calibrate': (_calibrate, 'fit temperature and decision threshold on validation predictions; store them'),
}


def run(mode: str, config, workdir) -> None:
  from fpclass.config import validate
  from fpclass.runtime import enable_compilation_cache
  validate(config)
  enable_compilation_cache(config.data.cache_dir or None)
  MODES[mode][0](config, pathlib.Path(workdir))
