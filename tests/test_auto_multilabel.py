"""--mode auto through launch.py on a multi-label set (the quick synthetic shapes): the search ranks by mAP, its
rungs compare by the images' noise alone (mAP reads probabilities, no decision to redraw: `one_se.rung_se`), and
its final model submits tags."""
import json
import shutil

import pandas as pd

from fpclass.train import sidecar
from tests.conftest import MULTILABEL, launch

SMALL = ('--mode=auto', '--config.auto.folds=2', '--config.auto.eta=2', '--config.auto.trials=2',
         '--config.auto.finalists=1', '--config.auto.time_budget=1h', '--config.sweep.models_per_chunk=4',
         "--config.auto.space=('train.learning_rate: log(1e-4, 1e-2)',)", '--config.explain.after_training=False',
         '--config.train.tensorboard=False')


def test_auto_on_a_multilabel_set_searches_by_map_and_its_final_model_submits_tags(trained_multilabel, tmp_path):
  _, shared_env, _ = trained_multilabel
  cache = tmp_path / 'cache'
  shutil.copytree(shared_env['FPCLASS_CACHE'], cache)   # the shapes, drawn once; this run's caches go here
  env = {'FPCLASS_CACHE': str(cache)}
  workdir = tmp_path / 'auto'
  launch(MULTILABEL, *SMALL, f'--workdir={workdir}', env=env)
  record = json.loads((workdir / 'auto.json').read_text())
  assert record['metric'] == 'map'
  state = json.loads((workdir / 'auto_state.json').read_text())
  assert state['brackets'][0]['promoted'], state['brackets']   # a rung compared its trials and kept one
  assert sidecar.read_metadata(workdir / 'final')['ensemble']['kind'] == 'auto'
  launch(f'--workdir={workdir / "final"}', '--mode=submit', env=env)
  submission = pd.read_csv(workdir / 'final' / 'submission.csv', keep_default_na=False, dtype=str)
  assert list(submission.columns) == ['image_name', 'tags'] and len(submission) == 60
  names = {'circle', 'cross', 'ring', 'square', 'triangle'}
  assert all(set(tags.split()) <= names for tags in submission['tags'])
