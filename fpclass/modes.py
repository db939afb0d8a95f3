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


MODES = {
    'train': (_train, 'train (resuming a killed run), then evaluate the selected checkpoint'),
    'evaluate': (_evaluate, 'restore the selected checkpoint; write scores.json, plots and report.md'),
    'submit': (_submit, 'restore the selected checkpoint; write submission.csv and its probabilities'),
}


def run(mode: str, config, workdir) -> None:
  from fpclass.runtime import enable_compilation_cache, keep_host_buffers
  keep_host_buffers()  # first, before JAX starts its threads
  from fpclass.sharding import initialize_distributed
  initialize_distributed()  # a no-op unless the environment describes a multi-host job
  from fpclass.config import validate
  validate(config)
  enable_compilation_cache(config.data.cache_dir or None)
  MODES[mode][0](config, pathlib.Path(workdir))
